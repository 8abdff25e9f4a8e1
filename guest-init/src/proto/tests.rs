//! Round trips and hostile-input behaviour of the frame codec.

use super::*;
use proptest::prelude::*;

fn sample_request() -> RunRequest {
    RunRequest {
        command: Command::Argv(vec!["echo".into(), "hi".into()]),
        env: vec![("A".into(), "b c".into())],
        cwd: "/work".into(),
        user: User::Root,
        rlimits: Rlimits {
            nofile: Some(64),
            ..Rlimits::default()
        },
        unix_time_ns: 1_700_000_000_000_000_000,
        rng_seed: [7; 32],
        timeout_ms: Some(5000),
        stdin: Some(vec![0, 1, 0xff]),
        artifacts: ArtifactsRequest {
            unpack_inputs: true,
            input_bytes: Some(10240),
            outputs: vec!["out/*.txt".into()],
        },
        network: None,
        stdin_file: None,
        cpu_time_ms: None,
        memory_max: None,
    }
}

fn all_guest_msgs() -> Vec<GuestMsg> {
    vec![
        GuestMsg::Ready(Ready {
            proto_version: PROTO_VERSION,
            kernel_release: "6.1.0".into(),
            boot_ms: 9000,
            init_ms: 12,
            agent_version: "0.1.0".into(),
        }),
        GuestMsg::Pong(Pong { nonce: u64::MAX }),
        GuestMsg::Stdout(vec![0, 0xff, b'\n', 0x1b]),
        GuestMsg::Stderr(Vec::new()),
        GuestMsg::Exited(Exited {
            status: ExitStatus::Signal(9),
            rusage: Rusage {
                user_us: 1,
                system_us: 2,
                max_rss_kib: 3,
            },
            wall_us: 4,
            timed_out: true,
            outputs: Some(PackSummary {
                entries: 2,
                bytes: 3072,
                pack_us: 5,
                failed: false,
            }),
            memory: Some(MemoryEvents {
                max: 3,
                oom: 1,
                oom_kill: 1,
            }),
            phases: Some(GuestPhases {
                prepared_us: 1,
                inputs_us: 2,
                sandbox_us: 3,
                spawned_us: 4,
                exited_us: 5,
                outputs_us: 6,
                reply_us: 7,
            }),
        }),
        GuestMsg::Error(ErrorReport {
            code: ErrorCode::CommandNotFound,
            message: "nope".into(),
        }),
    ]
}

fn decode_all<M: Message>(bytes: &[u8]) -> Vec<Result<M, ProtoError>> {
    let mut d = FrameDecoder::<M>::new();
    d.feed(bytes);
    let mut out = Vec::new();
    loop {
        match d.next_message() {
            Ok(Some(m)) => out.push(Ok(m)),
            Ok(None) => break,
            Err(e @ ProtoError::FrameTooLarge { .. }) => {
                out.push(Err(e));
                break;
            }
            Err(e) => out.push(Err(e)),
        }
    }
    out
}

#[test]
fn guest_messages_round_trip_byte_by_byte() {
    let msgs = all_guest_msgs();
    let mut wire = Vec::new();
    for m in &msgs {
        encode_into(m, &mut wire).unwrap();
    }
    let mut d = FrameDecoder::<GuestMsg>::new();
    let mut got = Vec::new();
    for b in &wire {
        d.feed(std::slice::from_ref(b));
        while let Some(m) = d.next_message().unwrap() {
            got.push(m);
        }
    }
    assert_eq!(got, msgs);
    assert_eq!(d.buffered(), 0);
}

#[test]
fn host_messages_round_trip() {
    let msgs = vec![
        HostMsg::Ping(Ping { nonce: 42 }),
        HostMsg::Run(sample_request()),
        HostMsg::Shutdown,
    ];
    let mut wire = Vec::new();
    for m in &msgs {
        encode_into(m, &mut wire).unwrap();
    }
    let got: Vec<HostMsg> = decode_all(&wire).into_iter().map(|r| r.unwrap()).collect();
    assert_eq!(got, msgs);
}

#[test]
fn frame_layout_is_length_kind_payload() {
    let wire = encode(&GuestMsg::Stdout(b"ab".to_vec())).unwrap();
    assert_eq!(wire, [3, 0, 0, 0, kind::STDOUT, b'a', b'b']);
    assert_eq!(raw_header(kind::STDOUT, 2).unwrap(), wire[..HEADER_LEN]);
}

#[test]
fn run_request_defaults_fill_missing_optional_fields() {
    let json = format!(
        r#"{{"command":{{"shell":"true"}},"unix_time_ns":5,"rng_seed":"{}"}}"#,
        "00".repeat(32)
    );
    let req: RunRequest = serde_json::from_str(&json).unwrap();
    assert_eq!(req.cwd, DEFAULT_CWD);
    assert_eq!(req.user, User::Unprivileged);
    assert_eq!(req.rlimits, Rlimits::default());
    assert_eq!(req.timeout_ms, None);
    assert_eq!(req.stdin, None);
    assert!(req.env.is_empty());
}

#[test]
fn run_request_rejects_unknown_fields_and_short_seed() {
    let base = format!(
        r#"{{"command":{{"shell":"true"}},"unix_time_ns":5,"rng_seed":"{}""#,
        "00".repeat(32)
    );
    let extra = format!("{base},\"surprise\":1}}");
    assert!(serde_json::from_str::<RunRequest>(&extra).is_err());
    let short = r#"{"command":{"shell":"true"},"unix_time_ns":5,"rng_seed":"0011"}"#;
    assert!(serde_json::from_str::<RunRequest>(short).is_err());
}

#[test]
fn run_request_validation_catches_what_exec_would_refuse() {
    let mut r = sample_request();
    assert_eq!(r.validate(), Ok(()));
    r.command = Command::Argv(vec![]);
    assert_eq!(r.validate(), Err(RequestError::EmptyArgv));
    r.command = Command::Shell("a\0b".into());
    assert_eq!(r.validate(), Err(RequestError::Nul("script")));
    r = sample_request();
    r.env.push(("A=B".into(), "x".into()));
    assert_eq!(r.validate(), Err(RequestError::BadEnvName("A=B".into())));
    r = sample_request();
    r.cwd = "work".into();
    assert_eq!(r.validate(), Err(RequestError::RelativeCwd("work".into())));
    r = sample_request();
    r.stdin_file = Some("in\0put".into());
    assert_eq!(r.validate(), Err(RequestError::Nul("stdin_file")));
    r.stdin_file = Some(String::new());
    assert_eq!(r.validate(), Err(RequestError::EmptyStdinFile));
}

#[test]
fn grading_fields_are_left_out_unless_set_so_older_guests_accept_the_request() {
    let plain = serde_json::to_string(&sample_request()).unwrap();
    for field in ["stdin_file", "cpu_time_ms", "memory_max"] {
        assert!(!plain.contains(field), "{field} in {plain}");
    }
    let mut r = sample_request();
    r.stdin_file = Some("tests/1.in".into());
    r.cpu_time_ms = Some(1500);
    r.memory_max = Some(64 << 20);
    let json = serde_json::to_string(&r).unwrap();
    assert_eq!(serde_json::from_str::<RunRequest>(&json).unwrap(), r);
}

#[test]
fn memory_events_parse_the_counters_and_ignore_the_rest() {
    let text = "low 0\nhigh 0\nmax 12\noom 2\noom_kill 1\noom_group_kill 0\nbroken\nmax x\n";
    assert_eq!(
        MemoryEvents::parse(text),
        MemoryEvents {
            max: 12,
            oom: 2,
            oom_kill: 1
        }
    );
    assert_eq!(MemoryEvents::parse(""), MemoryEvents::default());
}

#[test]
fn unknown_error_code_from_newer_guest_decodes_as_other() {
    let r: ErrorReport = serde_json::from_str(r#"{"code":"brand_new","message":"m"}"#).unwrap();
    assert_eq!(r.code, ErrorCode::Other);
}

#[test]
fn decoder_rejects_oversized_length_before_buffering_and_stays_poisoned() {
    let mut d = FrameDecoder::<GuestMsg>::new();
    d.feed(&(MAX_FRAME_LEN as u32 + 1).to_le_bytes());
    let e = d.next_message().unwrap_err();
    assert!(matches!(e, ProtoError::FrameTooLarge { .. }));
    d.feed(&encode(&GuestMsg::Stdout(vec![1])).unwrap());
    assert_eq!(d.next_message().unwrap_err(), e);
    assert_eq!(d.buffered(), 0);
}

#[test]
fn decoder_reports_unknown_kind_and_continues() {
    let mut wire = vec![1, 0, 0, 0, 0x7f];
    encode_into(&HostMsg::Ping(Ping { nonce: 1 }), &mut wire).unwrap();
    let got = decode_all::<HostMsg>(&wire);
    assert_eq!(got[0], Err(ProtoError::UnknownKind(0x7f)));
    assert_eq!(got[1], Ok(HostMsg::Ping(Ping { nonce: 1 })));
}

#[test]
fn decoder_refuses_messages_meant_for_the_other_side() {
    let wire = encode(&HostMsg::Shutdown).unwrap();
    let got = decode_all::<GuestMsg>(&wire);
    assert_eq!(got, vec![Err(ProtoError::UnknownKind(kind::SHUTDOWN))]);
}

#[test]
fn decoder_reports_bad_json_empty_frame_and_waits_on_truncation() {
    let mut wire = vec![0, 0, 0, 0];
    wire.extend_from_slice(&[3, 0, 0, 0, kind::PING, b'{', b'x']);
    let got = decode_all::<HostMsg>(&wire);
    assert_eq!(got[0], Err(ProtoError::EmptyFrame));
    assert!(matches!(
        got[1],
        Err(ProtoError::BadPayload {
            kind: kind::PING,
            ..
        })
    ));

    let full = encode(&HostMsg::Run(sample_request())).unwrap();
    let mut d = FrameDecoder::<HostMsg>::new();
    d.feed(&full[..full.len() - 1]);
    assert_eq!(d.next_message(), Ok(None));
    d.feed(&full[full.len() - 1..]);
    assert!(matches!(d.next_message(), Ok(Some(HostMsg::Run(_)))));
}

#[test]
fn shutdown_with_payload_is_refused() {
    let got = decode_all::<HostMsg>(&[2, 0, 0, 0, kind::SHUTDOWN, 0]);
    assert!(matches!(got[0], Err(ProtoError::BadPayload { .. })));
}

#[test]
fn encode_refuses_output_chunk_above_frame_limit() {
    let big = GuestMsg::Stdout(vec![0; MAX_FRAME_LEN]);
    let mut out = vec![9];
    assert!(matches!(
        encode_into(&big, &mut out),
        Err(ProtoError::FrameTooLarge { .. })
    ));
    assert_eq!(out, [9]);
    assert!(raw_header(kind::STDOUT, MAX_FRAME_LEN).is_err());
    assert!(raw_header(kind::STDOUT, MAX_FRAME_LEN - 1).is_ok());
}

proptest! {
    #[test]
    fn decoder_never_panics_on_random_bytes(
        chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..16)
    ) {
        let mut g = FrameDecoder::<GuestMsg>::new();
        let mut h = FrameDecoder::<HostMsg>::new();
        for c in &chunks {
            g.feed(c);
            h.feed(c);
            for _ in 0..8 {
                let _ = g.next_message();
                let _ = h.next_message();
            }
        }
    }

    #[test]
    fn decoder_never_panics_on_corrupted_valid_frames(
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
        cut in any::<usize>(),
    ) {
        let mut wire = Vec::new();
        for m in all_guest_msgs() {
            encode_into(&m, &mut wire).unwrap();
        }
        for (pos, val) in flips {
            let i = pos % wire.len();
            wire[i] = val;
        }
        wire.truncate(cut % (wire.len() + 1));
        let _ = decode_all::<GuestMsg>(&wire);
    }

    #[test]
    fn output_chunks_round_trip_any_bytes(data in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let wire = encode(&GuestMsg::Stderr(data.clone())).unwrap();
        let got = decode_all::<GuestMsg>(&wire);
        prop_assert_eq!(got, vec![Ok(GuestMsg::Stderr(data))]);
    }
}
