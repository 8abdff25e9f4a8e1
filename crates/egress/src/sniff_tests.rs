//! The sniffer against real first bytes (captured from curl 7.88 with
//! OpenSSL 3.0) and hand-built hostile ones.

use proptest::prelude::*;

use super::*;

/// `curl https://pypi.org/`: one record, SNI `pypi.org`.
const CURL_HELLO: &[u8] = include_bytes!("testdata/curl_client_hello_pypi.bin");
/// `curl http://pypi.org:18080/simple/`.
const CURL_GET: &[u8] = include_bytes!("testdata/curl_http_get_pypi.txt");

fn tls(name: &str) -> Sniff {
    Sniff::Tls {
        server_name: Some(name.into()),
    }
}

fn http(host: &str) -> Sniff {
    Sniff::Http {
        host: Some(host.into()),
    }
}

// ---- building ClientHellos ----

fn u16be(n: usize) -> [u8; 2] {
    u16::try_from(n).expect("test length").to_be_bytes()
}

/// A server_name extension (type, length, list) with these entries.
fn sni_ext(entries: &[(u8, &[u8])]) -> Vec<u8> {
    let mut list = Vec::new();
    for (kind, name) in entries {
        list.push(*kind);
        list.extend_from_slice(&u16be(name.len()));
        list.extend_from_slice(name);
    }
    let mut data = u16be(list.len()).to_vec();
    data.extend_from_slice(&list);
    ext(0, &data)
}

fn ext(kind: u16, data: &[u8]) -> Vec<u8> {
    let mut out = kind.to_be_bytes().to_vec();
    out.extend_from_slice(&u16be(data.len()));
    out.extend_from_slice(data);
    out
}

/// A ClientHello body; `extensions: None` leaves the block out entirely.
fn hello_body(extensions: Option<&[u8]>) -> Vec<u8> {
    let mut b = vec![3, 3];
    b.extend_from_slice(&[0x11; 32]);
    b.push(32);
    b.extend_from_slice(&[0x22; 32]);
    b.extend_from_slice(&[0, 4, 0x13, 0x01, 0x13, 0x02]);
    b.extend_from_slice(&[1, 0]);
    if let Some(exts) = extensions {
        b.extend_from_slice(&u16be(exts.len()));
        b.extend_from_slice(exts);
    }
    b
}

/// The handshake message: type 1 and a 24-bit length.
fn handshake(body: &[u8]) -> Vec<u8> {
    let len = u32::try_from(body.len())
        .expect("test length")
        .to_be_bytes();
    let mut out = vec![1, len[1], len[2], len[3]];
    out.extend_from_slice(body);
    out
}

/// `message` in handshake records of at most `chunk` bytes each.
fn records(message: &[u8], chunk: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for part in message.chunks(chunk) {
        out.extend_from_slice(&[0x16, 3, 1]);
        out.extend_from_slice(&u16be(part.len()));
        out.extend_from_slice(part);
    }
    out
}

fn hello_with(extensions: &[u8]) -> Vec<u8> {
    records(&handshake(&hello_body(Some(extensions))), 1 << 14)
}

// ---- TLS ----

#[test]
fn curl_client_hello_yields_its_server_name() {
    assert_eq!(sniff(CURL_HELLO), tls("pypi.org"));
}

#[test]
fn every_prefix_of_a_client_hello_needs_more() {
    for len in 0..CURL_HELLO.len() {
        assert_eq!(sniff(&CURL_HELLO[..len]), Sniff::NeedMore, "{len}");
    }
}

#[test]
fn client_hello_split_across_records_is_reassembled() {
    // The curl hello's handshake message, re-framed in small records.
    let message = &CURL_HELLO[5..];
    for chunk in [1, 2, 3, 4, 5, 7, 64, 300] {
        let framed = records(message, chunk);
        assert_eq!(sniff(&framed), tls("pypi.org"), "chunk {chunk}");
        for len in [0, 3, 5, 6, 9, framed.len() / 2, framed.len() - 1] {
            assert_eq!(
                sniff(&framed[..len]),
                Sniff::NeedMore,
                "chunk {chunk} len {len}"
            );
        }
    }
}

#[test]
fn bytes_after_the_client_hello_are_ignored() {
    let mut data = CURL_HELLO.to_vec();
    data.extend_from_slice(&[0x17, 3, 3, 0, 1, 0]);
    assert_eq!(sniff(&data), tls("pypi.org"));
}

#[test]
fn client_hello_without_extensions_has_no_server_name() {
    let data = records(&handshake(&hello_body(None)), 1 << 14);
    assert_eq!(sniff(&data), Sniff::Tls { server_name: None });
}

#[test]
fn client_hello_without_a_server_name_extension_has_none() {
    let data = hello_with(&ext(0x000a, &[0, 2, 0, 0x1d]));
    assert_eq!(sniff(&data), Sniff::Tls { server_name: None });
}

#[test]
fn server_name_is_lowercased_without_its_trailing_dot() {
    let mut exts = ext(0x000a, &[0, 2, 0, 0x1d]);
    exts.extend(sni_ext(&[(0, b"Files.PythonHosted.org.")]));
    assert_eq!(sniff(&hello_with(&exts)), tls("files.pythonhosted.org"));
}

#[test]
fn server_name_that_is_not_a_host_name_is_none() {
    for bad in [&b""[..], b"a b.org", b"a\0.org", b"\xff.org", b"a..org"] {
        let data = hello_with(&sni_ext(&[(0, bad)]));
        assert_eq!(sniff(&data), Sniff::Tls { server_name: None }, "{bad:?}");
    }
}

#[test]
fn unknown_server_name_types_are_skipped() {
    let data = hello_with(&sni_ext(&[(7, b"ignored"), (0, b"pypi.org")]));
    assert_eq!(sniff(&data), tls("pypi.org"));
}

#[test]
fn two_server_names_are_ambiguous() {
    let data = hello_with(&sni_ext(&[(0, b"pypi.org"), (0, b"evil.org")]));
    assert_eq!(sniff(&data), Sniff::Other);
    let mut exts = sni_ext(&[(0, b"pypi.org")]);
    exts.extend(sni_ext(&[(0, b"evil.org")]));
    assert_eq!(sniff(&hello_with(&exts)), Sniff::Other);
}

#[test]
fn server_name_extension_with_lying_lengths_is_malformed() {
    // The list length claims more than the extension holds.
    let data = hello_with(&ext(0, &[0, 20, 0, 0, 3, b'a', b'.', b'b']));
    assert_eq!(sniff(&data), Sniff::Other);
    // The entry length claims more than the list holds.
    let data = hello_with(&ext(0, &[0, 6, 0, 0, 9, b'a', b'.', b'b']));
    assert_eq!(sniff(&data), Sniff::Other);
    // Bytes after the list.
    let data = hello_with(&ext(0, &[0, 6, 0, 0, 3, b'a', b'.', b'b', 0]));
    assert_eq!(sniff(&data), Sniff::Other);
    // An empty extension.
    assert_eq!(sniff(&hello_with(&ext(0, &[]))), Sniff::Other);
}

#[test]
fn client_hello_with_lying_lengths_is_malformed() {
    let good = hello_body(Some(&sni_ext(&[(0, b"pypi.org")])));
    let mutate = |at: usize, byte: u8| {
        let mut body = good.clone();
        body[at] = byte;
        sniff(&records(&handshake(&body), 1 << 14))
    };
    // Session id longer than 32 bytes.
    assert_eq!(mutate(34, 33), Sniff::Other);
    // Odd and empty cipher suite lengths.
    assert_eq!(mutate(68, 3), Sniff::Other);
    assert_eq!(mutate(68, 0), Sniff::Other);
    // No compression methods.
    assert_eq!(mutate(73, 0), Sniff::Other);
    // Extensions block longer than the hello.
    assert_eq!(mutate(75, 0xff), Sniff::Other);
    // Extensions block shorter than the hello: trailing bytes.
    assert_eq!(mutate(76, 1), Sniff::Other);
    // A lying extension length.
    assert_eq!(mutate(79, 0xff), Sniff::Other);
    assert_eq!(sniff(&records(&handshake(&good), 1 << 14)), tls("pypi.org"));
}

#[test]
fn client_hello_cut_short_inside_its_own_length_is_malformed() {
    // The handshake says 10 bytes; that is too few for a ClientHello.
    let data = records(&[1, 0, 0, 10, 3, 3, 0, 0, 0, 0, 0, 0, 0, 0], 1 << 14);
    assert_eq!(sniff(&data), Sniff::Other);
}

#[test]
fn records_that_are_not_handshakes_are_other() {
    assert_eq!(sniff(&[0x16, 2]), Sniff::Other);
    assert_eq!(sniff(&[0x16, 3, 3, 0, 0]), Sniff::Other);
    assert_eq!(sniff(&[0x16, 3, 3, 0x40, 1]), Sniff::Other);
    assert_eq!(sniff(&[0x17, 3, 3, 0, 1, 0]), Sniff::Other);
    // A handshake that is not a ClientHello.
    assert_eq!(sniff(&[0x16, 3, 3, 0, 4, 2, 0, 0, 0]), Sniff::Other);
    // An alert between the pieces of a split hello.
    let mut data = records(&CURL_HELLO[5..], 100)[..105].to_vec();
    data.extend_from_slice(&[0x15, 3, 3, 0, 2, 2, 40]);
    assert_eq!(sniff(&data), Sniff::Other);
}

#[test]
fn client_hello_that_cannot_fit_the_limit_is_other_at_once() {
    let data = [0x16, 3, 3, 0x40, 0, 1, 0x00, 0x40, 0x00];
    assert_eq!(sniff(&data), Sniff::Other);
}

#[test]
fn client_hello_still_incomplete_at_the_limit_is_other() {
    // One byte per record: the framing alone outgrows the limit.
    let message = handshake(&hello_body(Some(&ext(0x15, &[0; 4000]))));
    let framed = records(&message, 1);
    assert!(framed.len() > SNIFF_LIMIT);
    assert_eq!(sniff(&framed[..SNIFF_LIMIT - 1]), Sniff::NeedMore);
    assert_eq!(sniff(&framed[..SNIFF_LIMIT]), Sniff::Other);
    assert_eq!(sniff(&framed), Sniff::Other);
}

#[test]
fn large_client_hello_within_the_limit_is_read() {
    let mut exts = ext(0x15, &[0; 12_000]);
    exts.extend(sni_ext(&[(0, b"pypi.org")]));
    let data = records(&handshake(&hello_body(Some(&exts))), 5000);
    assert!(data.len() < SNIFF_LIMIT);
    assert_eq!(sniff(&data), tls("pypi.org"));
    assert_eq!(sniff(&data[..data.len() - 1]), Sniff::NeedMore);
}

// ---- HTTP ----

#[test]
fn curl_request_yields_its_host_without_the_port() {
    assert_eq!(sniff(CURL_GET), http("pypi.org"));
}

#[test]
fn every_prefix_of_a_request_head_needs_more() {
    for len in 0..CURL_GET.len() {
        assert_eq!(sniff(&CURL_GET[..len]), Sniff::NeedMore, "{len}");
    }
}

#[test]
fn every_known_method_is_recognized() {
    for method in [
        "GET", "POST", "PUT", "HEAD", "DELETE", "OPTIONS", "PATCH", "TRACE",
    ] {
        let head = format!("{method} /x HTTP/1.1\r\nHost: a.org\r\n\r\n");
        assert_eq!(sniff(head.as_bytes()), http("a.org"), "{method}");
        assert_eq!(sniff(&method.as_bytes()[..1]), Sniff::NeedMore, "{method}");
    }
}

#[test]
fn unknown_or_lowercase_methods_are_other() {
    for head in [
        "get / HTTP/1.1\r\n",
        "BREW / HTTP/1.1\r\n",
        "GETX",
        "PRI * HTTP/2.0\r\n\r\n",
        "\r\nGET / HTTP/1.1\r\n",
        "SSH-2.0-OpenSSH_9.2\r\n",
    ] {
        assert_eq!(sniff(head.as_bytes()), Sniff::Other, "{head:?}");
    }
}

#[test]
fn malformed_request_lines_are_other() {
    for head in [
        "GET  / HTTP/1.1\r\n",
        "GET / HTTP/2.0\r\n",
        "GET / HTTP/1.1 x\r\n",
        "GET /\r\n",
        "GET / http/1.1\r\n",
        "GET /\x01 HTTP/1.1\r\n",
        "GET / HTTP/1.1\nHost: evil.org\r\n\r\n",
    ] {
        assert_eq!(sniff(head.as_bytes()), Sniff::Other, "{head:?}");
    }
}

#[test]
fn host_header_is_case_insensitive_and_lowercased() {
    let head = b"GET / HTTP/1.1\r\nhOsT:   PyPI.Org.  \r\nAccept: */*\r\n\r\n";
    assert_eq!(sniff(head), http("pypi.org"));
}

#[test]
fn host_port_is_stripped_including_from_ipv6_literals() {
    for (value, want) in [
        ("a.org:8080", "a.org"),
        ("a.org:", "a.org"),
        ("[2001:DB8::1]:443", "2001:db8::1"),
        ("[::1]", "::1"),
        ("1.2.3.4:80", "1.2.3.4"),
    ] {
        let head = format!("GET / HTTP/1.1\r\nHost: {value}\r\n\r\n");
        assert_eq!(sniff(head.as_bytes()), http(want), "{value}");
    }
}

#[test]
fn request_without_a_host_names_no_host() {
    assert_eq!(sniff(b"GET / HTTP/1.0\r\n\r\n"), Sniff::Http { host: None });
    assert_eq!(
        sniff(b"GET / HTTP/1.1\r\nHost:\r\n\r\n"),
        Sniff::Http { host: None }
    );
}

#[test]
fn invalid_host_values_are_other() {
    for value in [
        "a b.org",
        "a.org:http",
        "a.org:123456",
        "[zz]:1",
        "[::1]x",
        "user@a.org",
        "a.org:1:2",
    ] {
        let head = format!("GET / HTTP/1.1\r\nHost: {value}\r\n\r\n");
        assert_eq!(sniff(head.as_bytes()), Sniff::Other, "{value}");
    }
}

#[test]
fn ambiguous_header_blocks_are_other() {
    for head in [
        "GET / HTTP/1.1\r\nHost: a.org\r\nHost: evil.org\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a.org\r\n evil.org\r\n\r\n",
        "GET / HTTP/1.1\r\nX: 1\nHost: evil.org\r\nHost: a.org\r\n\r\n",
        "GET / HTTP/1.1\r\nHost : a.org\r\n\r\n",
        "GET / HTTP/1.1\r\nno colon here\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a.org\r\nX: \0\r\n\r\n",
        "GET / HTTP/1.1\r\nX: 1\rHost: evil.org\r\n\r\n",
    ] {
        assert_eq!(sniff(head.as_bytes()), Sniff::Other, "{head:?}");
    }
}

#[test]
fn connect_uses_its_target_as_host() {
    assert_eq!(
        sniff(b"CONNECT PyPI.org:443 HTTP/1.1\r\nHost: pypi.org:443\r\n\r\n"),
        http("pypi.org")
    );
    assert_eq!(
        sniff(b"CONNECT [2001:db8::1]:443 HTTP/1.1\r\n\r\n"),
        http("2001:db8::1")
    );
    assert_eq!(
        sniff(b"CONNECT pypi.org:443 HTTP/1.1\r\nHost: evil.org\r\n\r\n"),
        Sniff::Other
    );
    assert_eq!(sniff(b"CONNECT / HTTP/1.1\r\n\r\n"), Sniff::Other);
}

#[test]
fn absolute_form_target_names_the_host() {
    assert_eq!(
        sniff(b"GET HTTP://PyPI.org:80/simple/?q HTTP/1.1\r\n\r\n"),
        http("pypi.org")
    );
    assert_eq!(
        sniff(b"GET https://pypi.org HTTP/1.1\r\nHost: pypi.org\r\n\r\n"),
        http("pypi.org")
    );
    assert_eq!(
        sniff(b"GET http://pypi.org/ HTTP/1.1\r\nHost: evil.org\r\n\r\n"),
        Sniff::Other
    );
    assert_eq!(sniff(b"GET ftp://pypi.org/ HTTP/1.1\r\n\r\n"), Sniff::Other);
    assert_eq!(
        sniff(b"OPTIONS * HTTP/1.1\r\nHost: a.org\r\n\r\n"),
        http("a.org")
    );
}

#[test]
fn request_head_without_an_end_within_the_limit_is_other() {
    let mut head = b"GET / HTTP/1.1\r\nHost: a.org\r\nX: ".to_vec();
    head.resize(SNIFF_LIMIT - 1, b'a');
    assert_eq!(sniff(&head), Sniff::NeedMore);
    head.push(b'a');
    assert_eq!(sniff(&head), Sniff::Other);
    head.extend_from_slice(b"\r\n\r\n");
    assert_eq!(sniff(&head), Sniff::Other);
}

#[test]
fn request_head_ending_within_the_limit_is_read() {
    let mut head = b"GET / HTTP/1.1\r\nHost: a.org\r\nX: ".to_vec();
    head.resize(SNIFF_LIMIT - 4, b'a');
    head.extend_from_slice(b"\r\n\r\n");
    assert_eq!(head.len(), SNIFF_LIMIT);
    assert_eq!(sniff(&head), http("a.org"));
}

#[test]
fn other_protocols_are_other() {
    assert_eq!(sniff(b"SSH-2.0-OpenSSH\r\n"), Sniff::Other);
    assert_eq!(sniff(&[0x00, 0x00, 0x00, 0x08]), Sniff::Other);
    assert_eq!(sniff(b"\x05\x01\x00"), Sniff::Other);
}

// ---- properties ----

proptest! {
    #[test]
    fn sniff_never_panics(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = sniff(&data);
    }

    #[test]
    fn sniff_never_panics_on_tls_looking_bytes(
        tail in proptest::collection::vec(any::<u8>(), 0..2048),
        record_len in 0..20_000u16,
    ) {
        let mut data = vec![0x16, 3, 1];
        data.extend_from_slice(&record_len.to_be_bytes());
        data.extend_from_slice(&tail);
        let _ = sniff(&data);
    }

    #[test]
    fn sniff_never_panics_on_mutated_client_hellos(
        flips in proptest::collection::vec((0..CURL_HELLO.len(), any::<u8>()), 1..8),
        cut in 0..=CURL_HELLO.len(),
    ) {
        let mut data = CURL_HELLO.to_vec();
        for (at, byte) in flips {
            data[at] = byte;
        }
        data.truncate(cut);
        let _ = sniff(&data);
    }

    #[test]
    fn sniff_never_panics_on_http_looking_bytes(
        body in "[ -~\r\n\t]{0,400}",
    ) {
        let _ = sniff(format!("GET / HTTP/1.1\r\n{body}").as_bytes());
        let _ = sniff(format!("CONNECT {body}").as_bytes());
    }

    #[test]
    fn a_decision_on_a_prefix_stands_when_more_bytes_arrive(
        data in prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..512),
            "(GET|CONNECT) [ -~\r\n]{0,200}".prop_map(String::into_bytes),
            (0..CURL_HELLO.len(), any::<u8>(), 0..=CURL_HELLO.len()).prop_map(|(at, b, cut)| {
                let mut d = CURL_HELLO.to_vec();
                d[at] = b;
                d.truncate(cut);
                d
            }),
        ],
        split in any::<prop::sample::Index>(),
    ) {
        let cut = split.index(data.len() + 1);
        let early = sniff(&data[..cut]);
        if early != Sniff::NeedMore {
            prop_assert_eq!(early, sniff(&data));
        }
    }

    #[test]
    fn sniff_decides_once_the_limit_is_reached(
        data in proptest::collection::vec(any::<u8>(), SNIFF_LIMIT..SNIFF_LIMIT + 16),
    ) {
        prop_assert_ne!(sniff(&data), Sniff::NeedMore);
    }

    #[test]
    fn built_client_hellos_yield_their_server_name_in_any_framing(
        name in "[a-z0-9]{1,20}(\\.[a-z0-9]{1,20}){1,3}",
        chunk in 1..600usize,
        padding in 0..3000usize,
    ) {
        let mut exts = ext(0x15, &vec![0; padding]);
        exts.extend(sni_ext(&[(0, name.as_bytes())]));
        let framed = records(&handshake(&hello_body(Some(&exts))), chunk);
        prop_assume!(framed.len() < SNIFF_LIMIT);
        prop_assert_eq!(sniff(&framed), tls(&name));
        prop_assert_eq!(sniff(&framed[..framed.len() - 1]), Sniff::NeedMore);
    }
}
