//! The DNS reader against real and hostile packets, and the writers checked
//! by a second decoder written here from RFC 1035, independent of the code
//! under test.

use std::net::Ipv4Addr;

use proptest::prelude::*;

use super::*;

/// A query laid out as `dig example.com A` (BIND 9.18) sends it: RD and AD
/// set, one question, one additional record: EDNS OPT with a UDP size of
/// 1232 and a client cookie (id and cookie bytes arbitrary).
const DIG_EXAMPLE_COM: [u8; 52] = [
    0x1d, 0x5b, 0x01, 0x20, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, // header
    0x07, b'e', b'x', b'a', b'm', b'p', b'l', b'e', 0x03, b'c', b'o', b'm', 0x00, // name
    0x00, 0x01, 0x00, 0x01, // A, IN
    0x00, 0x00, 0x29, 0x04, 0xd0, 0x00, 0x00, 0x00, 0x00, 0x00, 0x0c, // OPT
    0x00, 0x0a, 0x00, 0x08, 0x8a, 0x61, 0x3f, 0x0e, 0x2b, 0x45, 0x11, 0x7c, // cookie
];

/// A query built by hand: `labels` on the wire, then type and class.
fn query(id: u16, flags: u16, labels: &[&[u8]], qtype: u16) -> Vec<u8> {
    let mut p = Vec::new();
    for field in [id, flags, 1, 0, 0, 0] {
        p.extend_from_slice(&field.to_be_bytes());
    }
    for label in labels {
        p.push(label.len() as u8);
        p.extend_from_slice(label);
    }
    p.push(0);
    p.extend_from_slice(&qtype.to_be_bytes());
    p.extend_from_slice(&CLASS_IN.to_be_bytes());
    p
}

fn parsed(packet: &[u8]) -> DnsQuery {
    parse_query(packet).expect("test query parses")
}

// ---- an independent decoder for what the VMM writes ----

#[derive(Debug, PartialEq)]
struct Decoded {
    id: u16,
    qr: bool,
    opcode: u16,
    aa: bool,
    tc: bool,
    rd: bool,
    ra: bool,
    rcode: u16,
    questions: Vec<(String, u16, u16)>,
    answers: Vec<(String, u16, u16, u32, Vec<u8>)>,
}

fn be16(m: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([m[at], m[at + 1]])
}

/// Follows pointers (to earlier offsets only) as any resolver would.
fn decode_name(m: &[u8], mut at: usize) -> (String, usize) {
    let mut labels = Vec::new();
    let mut end = None;
    loop {
        let len = m[at];
        if len & 0xc0 == 0xc0 {
            let target = usize::from(be16(m, at) & 0x3fff);
            assert!(target < at, "pointer must go backwards");
            end.get_or_insert(at + 2);
            at = target;
            continue;
        }
        if len == 0 {
            end.get_or_insert(at + 1);
            break;
        }
        let l = usize::from(len);
        labels.push(String::from_utf8(m[at + 1..at + 1 + l].to_vec()).expect("ascii label"));
        at += 1 + l;
    }
    (labels.join("."), end.expect("name end"))
}

fn decode(m: &[u8]) -> Decoded {
    let flags = be16(m, 2);
    let (qd, an, ns, ar) = (be16(m, 4), be16(m, 6), be16(m, 8), be16(m, 10));
    assert_eq!((ns, ar), (0, 0));
    let mut at = 12;
    let mut questions = Vec::new();
    for _ in 0..qd {
        let (name, end) = decode_name(m, at);
        questions.push((name, be16(m, end), be16(m, end + 2)));
        at = end + 4;
    }
    let mut answers = Vec::new();
    for _ in 0..an {
        let (name, end) = decode_name(m, at);
        let ttl = u32::from_be_bytes([m[end + 4], m[end + 5], m[end + 6], m[end + 7]]);
        let rdlen = usize::from(be16(m, end + 8));
        let rdata = m[end + 10..end + 10 + rdlen].to_vec();
        answers.push((name, be16(m, end), be16(m, end + 2), ttl, rdata));
        at = end + 10 + rdlen;
    }
    assert_eq!(at, m.len(), "no trailing bytes");
    Decoded {
        id: be16(m, 0),
        qr: flags & 0x8000 != 0,
        opcode: (flags >> 11) & 0xf,
        aa: flags & 0x0400 != 0,
        tc: flags & 0x0200 != 0,
        rd: flags & 0x0100 != 0,
        ra: flags & 0x0080 != 0,
        rcode: flags & 0xf,
        questions,
        answers,
    }
}

// ---- reading ----

#[test]
fn dig_query_with_edns_parses() {
    let q = parsed(&DIG_EXAMPLE_COM);
    assert_eq!(q.id, 0x1d5b);
    assert_eq!(q.name, "example.com");
    assert_eq!(q.qtype, TYPE_A);
    assert_eq!(q.qclass, CLASS_IN);
    assert!(q.recursion_desired);
    assert_eq!(q.raw_question, DIG_EXAMPLE_COM[12..29]);
}

#[test]
fn query_name_is_lowercased_but_the_echoed_question_keeps_its_case() {
    let packet = query(7, 0, &[b"PyPI", b"ORG"], TYPE_AAAA);
    let q = parsed(&packet);
    assert_eq!(q.name, "pypi.org");
    assert_eq!(q.qtype, TYPE_AAAA);
    assert!(!q.recursion_desired);
    assert_eq!(&q.raw_question[1..5], b"PyPI");
}

#[test]
fn root_query_has_an_empty_name() {
    let q = parsed(&query(1, 0x0100, &[], 2));
    assert_eq!(q.name, "");
    assert_eq!(q.raw_question, [0, 0, 2, 0, 1]);
}

#[test]
fn short_packets_are_rejected() {
    for len in 0..12 {
        assert_eq!(
            parse_query(&DIG_EXAMPLE_COM[..len]),
            Err(DnsError::ShortHeader(len))
        );
        assert_eq!(query_id(&DIG_EXAMPLE_COM[..len]), None);
    }
}

#[test]
fn truncated_questions_are_rejected_but_keep_their_id() {
    for len in 12..29 {
        let cut = &DIG_EXAMPLE_COM[..len];
        assert_eq!(parse_query(cut), Err(DnsError::Truncated), "{len}");
        assert_eq!(query_id(cut), Some(0x1d5b));
    }
    assert!(parse_query(&DIG_EXAMPLE_COM[..29]).is_ok());
}

#[test]
fn responses_are_rejected_and_never_get_an_id_to_answer() {
    let mut packet = DIG_EXAMPLE_COM;
    packet[2] |= 0x80;
    assert_eq!(parse_query(&packet), Err(DnsError::Response));
    assert_eq!(query_id(&packet), None);
}

#[test]
fn opcodes_other_than_query_are_rejected() {
    for opcode in 1..16u16 {
        let packet = query(9, opcode << 11, &[b"a", b"org"], TYPE_A);
        assert_eq!(parse_query(&packet), Err(DnsError::Opcode(opcode as u8)));
        assert_eq!(query_id(&packet), Some(9));
    }
}

#[test]
fn question_count_other_than_one_is_rejected_with_the_id_kept() {
    for count in [0u16, 2, 0xffff] {
        let mut packet = query(0xbeef, 0, &[b"a", b"org"], TYPE_A);
        packet[4..6].copy_from_slice(&count.to_be_bytes());
        assert_eq!(parse_query(&packet), Err(DnsError::QuestionCount(count)));
        assert_eq!(query_id(&packet), Some(0xbeef));
    }
}

#[test]
fn compression_pointers_in_the_question_are_rejected() {
    let mut packet = query(1, 0, &[b"a"], TYPE_A);
    // Replace the root byte with a pointer back to the name itself.
    packet.truncate(14);
    packet.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1]);
    assert_eq!(parse_query(&packet), Err(DnsError::Compressed));
    // A pointer to itself as the very first label.
    let mut packet = query(1, 0, &[], TYPE_A);
    packet.truncate(12);
    packet.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1]);
    assert_eq!(parse_query(&packet), Err(DnsError::Compressed));
}

#[test]
fn reserved_label_types_are_rejected() {
    for prefix in [0x40u8, 0x80] {
        let mut packet = query(1, 0, &[], TYPE_A);
        packet.truncate(12);
        packet.extend_from_slice(&[prefix | 1, b'a', 0, 0, 1, 0, 1]);
        assert_eq!(parse_query(&packet), Err(DnsError::LabelType(prefix)));
    }
}

#[test]
fn names_longer_than_255_wire_bytes_are_rejected() {
    let label = [b'a'; 63];
    // 4 * 64 + 1 = 257 bytes.
    let packet = query(1, 0, &[&label, &label, &label, &label], TYPE_A);
    assert_eq!(parse_query(&packet), Err(DnsError::NameTooLong));
    // 3 * 64 + 62 + 1 = 255 bytes: the longest legal name.
    let packet = query(1, 0, &[&label, &label, &label, &label[..61]], TYPE_A);
    let q = parsed(&packet);
    assert_eq!(q.name.len(), 253);
    assert!(crate::normalize_name(&q.name).is_some());
}

#[test]
fn label_bytes_outside_host_names_are_rejected() {
    for bad in [b'.', b' ', 0, b'*', 0xc3, b'/', b'\\'] {
        let packet = query(1, 0, &[&[b'a', bad, b'b'], b"org"], TYPE_A);
        assert_eq!(
            parse_query(&packet),
            Err(DnsError::NameByte(bad)),
            "{bad:#x}"
        );
    }
}

#[test]
fn records_after_the_question_are_ignored() {
    let mut packet = query(1, 0, &[b"a", b"org"], TYPE_A);
    packet[6..12].copy_from_slice(&[0, 3, 0, 9, 0xff, 0xff]);
    packet.extend_from_slice(&[0xde, 0xad]);
    assert_eq!(parsed(&packet).name, "a.org");
}

// ---- writing ----

#[test]
fn answer_a_echoes_the_question_and_points_records_at_it() {
    let q = parsed(&DIG_EXAMPLE_COM);
    let ips = [Ipv4Addr::new(93, 184, 215, 14), Ipv4Addr::new(1, 2, 3, 4)];
    let reply = answer_a(&q, &ips, 300);
    assert_eq!(
        decode(&reply),
        Decoded {
            id: 0x1d5b,
            qr: true,
            opcode: 0,
            aa: false,
            tc: false,
            rd: true,
            ra: true,
            rcode: 0,
            questions: vec![("example.com".into(), TYPE_A, CLASS_IN)],
            answers: vec![
                (
                    "example.com".into(),
                    TYPE_A,
                    CLASS_IN,
                    300,
                    vec![93, 184, 215, 14]
                ),
                (
                    "example.com".into(),
                    TYPE_A,
                    CLASS_IN,
                    300,
                    vec![1, 2, 3, 4]
                ),
            ],
        }
    );
}

#[test]
fn answer_a_matches_known_bytes() {
    let q = parsed(&DIG_EXAMPLE_COM);
    let reply = answer_a(&q, &[Ipv4Addr::new(93, 184, 215, 14)], 60);
    let mut want = vec![0x1d, 0x5b, 0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0];
    want.extend_from_slice(&DIG_EXAMPLE_COM[12..29]);
    want.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 93, 184, 215, 14]);
    assert_eq!(reply, want);
}

#[test]
fn answer_a_carries_at_most_sixteen_addresses() {
    let q = parsed(&DIG_EXAMPLE_COM);
    let ips: Vec<Ipv4Addr> = (0..40u32).map(Ipv4Addr::from).collect();
    let d = decode(&answer_a(&q, &ips, 1));
    assert_eq!(d.answers.len(), MAX_ANSWERS);
    assert_eq!(d.answers[15].4, vec![0, 0, 0, 15]);
}

#[test]
fn answer_a_for_the_longest_name_stays_within_512_bytes() {
    let label = [b'a'; 63];
    let q = parsed(&query(
        1,
        0,
        &[&label, &label, &label, &label[..61]],
        TYPE_A,
    ));
    let ips: Vec<Ipv4Addr> = (0..16u32).map(Ipv4Addr::from).collect();
    let reply = answer_a(&q, &ips, 1);
    assert!(reply.len() <= 512, "{}", reply.len());
    let d = decode(&reply);
    assert!(!d.tc);
    assert_eq!(d.answers.len(), (512 - 12 - 259) / 16);
}

#[test]
fn answer_a_with_no_addresses_is_an_empty_answer() {
    let q = parsed(&DIG_EXAMPLE_COM);
    assert_eq!(answer_a(&q, &[], 1), empty_answer(&q));
}

#[test]
fn error_replies_echo_the_question_with_their_rcode() {
    let q = parsed(&query(0x4242, 0, &[b"Evil", b"org"], TYPE_AAAA));
    for (reply, rcode) in [
        (empty_answer(&q), 0),
        (servfail(&q), 2),
        (nxdomain(&q), 3),
        (refused(&q), 5),
    ] {
        let d = decode(&reply);
        assert_eq!(d.id, 0x4242);
        assert!(d.qr && d.ra && !d.aa && !d.rd && !d.tc);
        assert_eq!(d.rcode, rcode);
        assert_eq!(d.questions, vec![("Evil.org".into(), TYPE_AAAA, CLASS_IN)]);
        assert!(d.answers.is_empty());
    }
}

#[test]
fn formerr_is_a_bare_header_with_the_id() {
    let reply = formerr(0xabcd);
    assert_eq!(reply, [0xab, 0xcd, 0x80, 0x81, 0, 0, 0, 0, 0, 0, 0, 0]);
    let d = decode(&reply);
    assert_eq!((d.id, d.rcode, d.qr), (0xabcd, 1, true));
}

#[test]
fn replies_are_never_parsed_as_queries() {
    let q = parsed(&DIG_EXAMPLE_COM);
    let reply = answer_a(&q, &[Ipv4Addr::LOCALHOST], 1);
    assert_eq!(parse_query(&reply), Err(DnsError::Response));
    assert_eq!(query_id(&reply), None);
}

// ---- properties ----

fn label() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(
        prop_oneof![
            proptest::char::range('a', 'z').prop_map(|c| c as u8),
            proptest::char::range('A', 'Z').prop_map(|c| c as u8),
            proptest::char::range('0', '9').prop_map(|c| c as u8),
            Just(b'-'),
            Just(b'_'),
        ],
        1..=63,
    )
}

proptest! {
    #[test]
    fn parse_query_never_panics(packet in proptest::collection::vec(any::<u8>(), 0..600)) {
        if let Ok(q) = parse_query(&packet) {
            prop_assert!(q.raw_question.len() <= 259);
            prop_assert!(q.name.len() <= 253);
            let _ = answer_a(&q, &[Ipv4Addr::LOCALHOST], 0);
        }
        let _ = query_id(&packet);
    }

    #[test]
    fn parse_query_never_panics_on_mutated_real_queries(
        flips in proptest::collection::vec((0..52usize, any::<u8>()), 0..6),
        cut in 0..=52usize,
    ) {
        let mut packet = DIG_EXAMPLE_COM.to_vec();
        for (at, byte) in flips {
            packet[at] = byte;
        }
        packet.truncate(cut);
        let _ = parse_query(&packet);
    }

    #[test]
    fn valid_queries_round_trip_through_the_independent_decoder(
        labels in proptest::collection::vec(label(), 0..4),
        id in any::<u16>(),
        rd in any::<bool>(),
        qtype in any::<u16>(),
        ips in proptest::collection::vec(any::<u32>(), 0..20),
        ttl in any::<u32>(),
    ) {
        let refs: Vec<&[u8]> = labels.iter().map(Vec::as_slice).collect();
        let wire_len: usize = refs.iter().map(|l| l.len() + 1).sum::<usize>() + 1;
        let packet = query(id, if rd { 0x0100 } else { 0 }, &refs, qtype);
        let result = parse_query(&packet);
        if wire_len > 255 {
            prop_assert_eq!(result, Err(DnsError::NameTooLong));
            return Ok(());
        }
        let q = result.expect("valid query");
        let text: Vec<String> = labels
            .iter()
            .map(|l| String::from_utf8(l.clone()).expect("ascii"))
            .collect();
        prop_assert_eq!(&q.name, &text.join(".").to_ascii_lowercase());
        prop_assert_eq!(q.qtype, qtype);
        let ips: Vec<Ipv4Addr> = ips.into_iter().map(Ipv4Addr::from).collect();
        let reply = answer_a(&q, &ips, ttl);
        prop_assert!(reply.len() <= 512);
        let d = decode(&reply);
        prop_assert_eq!(d.id, id);
        prop_assert_eq!(d.rd, rd);
        prop_assert!(d.qr && d.ra && !d.aa);
        prop_assert_eq!(&d.questions, &vec![(text.join("."), qtype, CLASS_IN)]);
        let room = (512 - 12 - (wire_len + 4)) / 16;
        prop_assert_eq!(d.answers.len(), ips.len().min(MAX_ANSWERS).min(room));
        for (answer, ip) in d.answers.iter().zip(&ips) {
            prop_assert_eq!(answer.0.to_ascii_lowercase(), q.name.clone());
            prop_assert_eq!(answer.3, ttl);
            prop_assert_eq!(&answer.4, &ip.octets().to_vec());
        }
    }
}
