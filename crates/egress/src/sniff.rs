//! Reads the name a guest claims to be talking to from the first bytes of
//! a TCP connection: the server name of a TLS ClientHello or the Host of an
//! HTTP/1.x request. A connection allowed only because an allowed name
//! resolved to its address must name that site here, or the guest could
//! reach any other site sharing the address.
//!
//! The bytes are the guest's; anything ambiguous (duplicate server names,
//! two Host headers, bare line feeds) is [`Sniff::Other`], which the caller
//! denies, rather than a guess that a server might read differently.

use std::net::Ipv6Addr;

use super::policy::normalize_name;

/// How many bytes the caller buffers before giving up on finding a name.
pub const SNIFF_LIMIT: usize = 16 * 1024;

/// The largest TLS record payload (RFC 8446 §5.1).
const MAX_TLS_RECORD: usize = 1 << 14;
const TLS_RECORD_HEADER: usize = 5;
const TLS_HANDSHAKE: u8 = 0x16;
const TLS_CLIENT_HELLO: u8 = 1;
const TLS_EXT_SERVER_NAME: u16 = 0;
const TLS_NAME_TYPE_HOST: u8 = 0;

const HTTP_METHODS: [&[u8]; 9] = [
    b"GET", b"POST", b"PUT", b"HEAD", b"DELETE", b"OPTIONS", b"PATCH", b"CONNECT", b"TRACE",
];
const LONGEST_METHOD: usize = 7;

/// What the first bytes of a connection say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sniff {
    /// Not enough bytes yet to decide; call again with more.
    NeedMore,
    /// A TLS ClientHello.
    Tls {
        /// The `host_name` of the server_name extension, lowercase and
        /// without a trailing dot; `None` when absent or not a host name.
        server_name: Option<String>,
    },
    /// An HTTP/1.x request head.
    Http {
        /// The host the request is for (the Host header, or the target of
        /// an absolute-form or CONNECT request), lowercase, port stripped;
        /// `None` when the request names no host.
        host: Option<String>,
    },
    /// Neither, malformed, ambiguous, or no answer within [`SNIFF_LIMIT`].
    Other,
}

/// Classifies the bytes the guest sent first. Only the first
/// [`SNIFF_LIMIT`] bytes are read; if they are not enough, the answer is
/// [`Sniff::Other`].
pub fn sniff(first: &[u8]) -> Sniff {
    let data = first.get(..SNIFF_LIMIT).unwrap_or(first);
    let verdict = match data.first() {
        None => Sniff::NeedMore,
        Some(&TLS_HANDSHAKE) => tls(data),
        Some(_) => http(data),
    };
    if verdict == Sniff::NeedMore && data.len() >= SNIFF_LIMIT {
        Sniff::Other
    } else {
        verdict
    }
}

/// Bounds-checked reads over a byte slice; `None` on running out.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(rest: &'a [u8]) -> Self {
        Reader { rest }
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = self.rest.split_at_checked(n)?;
        self.rest = rest;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        let (&b, rest) = self.rest.split_first()?;
        self.rest = rest;
        Some(b)
    }

    fn u16(&mut self) -> Option<u16> {
        let b = self.take(2)?;
        Some(u16::from_be_bytes([b[0], b[1]]))
    }

    fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }
}

/// Gathers the handshake bytes from consecutive records until the whole
/// ClientHello is there, then reads it.
fn tls(data: &[u8]) -> Sniff {
    let mut handshake: Vec<u8> = Vec::new();
    let mut records = Reader::new(data);
    loop {
        let Some(header) = records.take(TLS_RECORD_HEADER) else {
            // A partial header: judge what there is of it.
            return match records.rest {
                [] | [TLS_HANDSHAKE] | [TLS_HANDSHAKE, 3, ..] => Sniff::NeedMore,
                _ => Sniff::Other,
            };
        };
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        // Only handshake records come before the ClientHello is complete,
        // and empty handshake records are forbidden.
        if header[0] != TLS_HANDSHAKE || header[1] != 3 || len == 0 || len > MAX_TLS_RECORD {
            return Sniff::Other;
        }
        let fragment = records.rest.get(..len).unwrap_or(records.rest);
        handshake.extend_from_slice(fragment);
        if let [kind, a, b, c, body @ ..] = handshake.as_slice() {
            if *kind != TLS_CLIENT_HELLO {
                return Sniff::Other;
            }
            let hello_len = usize::from(*a) << 16 | usize::from(*b) << 8 | usize::from(*c);
            if hello_len + 4 + TLS_RECORD_HEADER > SNIFF_LIMIT {
                return Sniff::Other;
            }
            if let Some(hello) = body.get(..hello_len) {
                return match client_hello_server_name(hello) {
                    Some(server_name) => Sniff::Tls { server_name },
                    None => Sniff::Other,
                };
            }
        }
        if records.take(len).is_none() {
            return Sniff::NeedMore;
        }
    }
}

/// The server name in a complete ClientHello body: `None` if malformed,
/// `Some(None)` if there is no usable name.
fn client_hello_server_name(hello: &[u8]) -> Option<Option<String>> {
    let mut r = Reader::new(hello);
    r.take(2 + 32)?; // legacy_version, random
    let session_id = usize::from(r.u8()?);
    if session_id > 32 {
        return None;
    }
    r.take(session_id)?;
    let suites = usize::from(r.u16()?);
    if suites < 2 || suites % 2 != 0 {
        return None;
    }
    r.take(suites)?;
    let compression = usize::from(r.u8()?);
    if compression == 0 {
        return None;
    }
    r.take(compression)?;
    if r.is_empty() {
        // Extensions are optional (before TLS 1.3).
        return Some(None);
    }
    let extensions_len = usize::from(r.u16()?);
    let mut extensions = Reader::new(r.take(extensions_len)?);
    if !r.is_empty() {
        return None;
    }
    let mut found: Option<Option<String>> = None;
    while !extensions.is_empty() {
        let kind = extensions.u16()?;
        let len = usize::from(extensions.u16()?);
        let data = extensions.take(len)?;
        if kind == TLS_EXT_SERVER_NAME {
            // Two server_name extensions: which one would the server use?
            if found.is_some() {
                return None;
            }
            found = Some(server_name_extension(data)?);
        }
    }
    Some(found.flatten())
}

/// The host_name in a server_name extension (RFC 6066 §3); `None` if
/// malformed or if it has more than one host_name.
fn server_name_extension(data: &[u8]) -> Option<Option<String>> {
    let mut r = Reader::new(data);
    let list_len = usize::from(r.u16()?);
    let mut list = Reader::new(r.take(list_len)?);
    if !r.is_empty() || list.is_empty() {
        return None;
    }
    let mut host: Option<&[u8]> = None;
    while !list.is_empty() {
        let kind = list.u8()?;
        let len = usize::from(list.u16()?);
        let name = list.take(len)?;
        if kind == TLS_NAME_TYPE_HOST {
            if host.is_some() {
                return None;
            }
            host = Some(name);
        }
    }
    Some(
        host.and_then(|h| std::str::from_utf8(h).ok())
            .and_then(normalize_name),
    )
}

/// Reads an HTTP/1.x request head up to the blank line that ends it.
fn http(data: &[u8]) -> Sniff {
    let Some(space) = data.iter().position(|&b| b == b' ') else {
        let could_be_method =
            data.len() <= LONGEST_METHOD && HTTP_METHODS.iter().any(|m| m.starts_with(data));
        return if could_be_method {
            Sniff::NeedMore
        } else {
            Sniff::Other
        };
    };
    if !HTTP_METHODS.contains(&&data[..space]) {
        return Sniff::Other;
    }
    let Some(line_end) = find(data, b"\r\n") else {
        return Sniff::NeedMore;
    };
    let Some(request) = RequestLine::parse(&data[..line_end]) else {
        return Sniff::Other;
    };
    let Some(head_end) = find(data, b"\r\n\r\n") else {
        return Sniff::NeedMore;
    };
    // The header lines, between the request line and the blank line.
    let headers = data.get(line_end + 2..head_end + 2).unwrap_or_default();
    let Some(header_host) = host_header(headers) else {
        return Sniff::Other;
    };
    match (request.target_host(), header_host) {
        (Target::Invalid, _) => Sniff::Other,
        (Target::Origin, host) => Sniff::Http { host },
        // The target's host wins over Host (RFC 9112 §3.2.2); if they
        // differ, a proxy and a server on the way might disagree.
        (Target::Authority(target), Some(host)) if target != host => Sniff::Other,
        (Target::Authority(target), _) => Sniff::Http { host: Some(target) },
    }
}

struct RequestLine<'a> {
    method: &'a [u8],
    target: &'a [u8],
}

enum Target {
    /// `/path` or `*`: the Host header names the host.
    Origin,
    /// Absolute-form or CONNECT's authority-form: the target names it.
    Authority(String),
    Invalid,
}

impl<'a> RequestLine<'a> {
    /// `METHOD SP target SP HTTP/1.x`, exactly one space each.
    fn parse(line: &'a [u8]) -> Option<Self> {
        let mut parts = line.split(|&b| b == b' ');
        let method = parts.next()?;
        let target = parts.next()?;
        let version = parts.next()?;
        if parts.next().is_some() || target.is_empty() || !target.iter().all(u8::is_ascii_graphic) {
            return None;
        }
        match version {
            [b'H', b'T', b'T', b'P', b'/', b'1', b'.', minor] if minor.is_ascii_digit() => {
                Some(RequestLine { method, target })
            }
            _ => None,
        }
    }

    fn target_host(&self) -> Target {
        let parsed = |authority: &[u8]| match authority_host(authority) {
            Some(host) => Target::Authority(host),
            None => Target::Invalid,
        };
        if self.method == b"CONNECT" {
            return parsed(self.target);
        }
        if self.target.starts_with(b"/") || self.target == b"*" {
            return Target::Origin;
        }
        let lower = self.target.to_ascii_lowercase();
        let Some(rest) = [&b"http://"[..], b"https://"]
            .iter()
            .find_map(|scheme| lower.strip_prefix(*scheme))
        else {
            return Target::Invalid;
        };
        let end = rest
            .iter()
            .position(|&b| matches!(b, b'/' | b'?' | b'#'))
            .unwrap_or(rest.len());
        parsed(&rest[..end])
    }
}

/// The host of the one Host header, `Ok(None)` without one; `None` (as a
/// whole) if the head is malformed or has two Host headers.
fn host_header(headers: &[u8]) -> Option<Option<String>> {
    let mut host = None;
    let mut rest = headers;
    while let Some(end) = find(rest, b"\r\n") {
        let line = &rest[..end];
        rest = &rest[end + 2..];
        // Bare CR or LF, NUL, or obs-fold continuation lines: servers split
        // these differently, so no reading of them is safe.
        if line.iter().any(|&b| matches!(b, b'\r' | b'\n' | 0))
            || line.first().is_some_and(|&b| b == b' ' || b == b'\t')
        {
            return None;
        }
        let colon = line.iter().position(|&b| b == b':')?;
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        if name.is_empty() || !name.iter().all(|&b| is_token(b)) {
            return None;
        }
        if name.eq_ignore_ascii_case(b"host") {
            if host.is_some() {
                return None;
            }
            let value = value.trim_ascii();
            host = Some(if value.is_empty() {
                None
            } else {
                Some(authority_host(value)?)
            });
        }
    }
    Some(host.flatten())
}

/// `host`, `host:port` or `[v6]:port` → the host, lowercase.
fn authority_host(authority: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(authority).ok()?;
    let (host, port) = match text.strip_prefix('[') {
        Some(rest) => {
            let (v6, after) = rest.split_once(']')?;
            let port = match after {
                "" => "",
                _ => after.strip_prefix(':')?,
            };
            (v6.parse::<Ipv6Addr>().ok()?.to_string(), port)
        }
        None => {
            let (host, port) = text.split_once(':').unwrap_or((text, ""));
            (normalize_name(host)?, port)
        }
    };
    if port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(host)
}

/// An RFC 9110 token character (header field names).
fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
#[path = "sniff_tests.rs"]
mod tests;
