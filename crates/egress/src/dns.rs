//! DNS on the wire, as far as the VMM's resolver needs it: read the one
//! question a guest asks, and write the answer, refusal or error it gets
//! back. The guest writes these packets, so the reader accepts only the
//! plain form a stub resolver sends (one question, no compression) and
//! checks every length; the writer never exceeds the 512-byte UDP limit.

use std::net::Ipv4Addr;

/// Resource record type A (an IPv4 address).
pub const TYPE_A: u16 = 1;
/// Resource record type AAAA (an IPv6 address).
pub const TYPE_AAAA: u16 = 28;
/// Class IN (the internet).
pub const CLASS_IN: u16 = 1;
/// The most addresses one answer carries.
pub const MAX_ANSWERS: usize = 16;

/// RCODE values the VMM sends.
const RCODE_FORMERR: u8 = 1;
const RCODE_SERVFAIL: u8 = 2;
const RCODE_NXDOMAIN: u8 = 3;
const RCODE_REFUSED: u8 = 5;

const HEADER_LEN: usize = 12;
/// A DNS message over UDP without EDNS; we never echo the guest's OPT
/// record, so this is the most the guest has agreed to receive.
const MAX_UDP_MESSAGE: usize = 512;
/// The longest name on the wire: length bytes, labels and the root byte.
const MAX_WIRE_NAME: usize = 255;
/// One A record after the question: pointer, type, class, TTL, length, address.
const A_RECORD_LEN: usize = 16;

const FLAG_QR: u16 = 0x8000;
const FLAG_RD: u16 = 0x0100;
const FLAG_RA: u16 = 0x0080;

/// The question of a standard query, as the guest asked it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsQuery {
    /// The transaction id, echoed in the reply.
    pub id: u16,
    /// The name asked for: lowercase labels of letters, digits, `-` and
    /// `_`, joined by dots, without a trailing dot; empty for the root.
    pub name: String,
    /// QTYPE ([`TYPE_A`], [`TYPE_AAAA`], ...).
    pub qtype: u16,
    /// QCLASS ([`CLASS_IN`], ...).
    pub qclass: u16,
    /// The RD flag, echoed in the reply.
    pub recursion_desired: bool,
    /// The question section as received (name, type, class), echoed in the
    /// reply so the guest's resolver sees its own bytes, case included.
    pub raw_question: Vec<u8>,
}

/// Why a packet is not a query the VMM answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DnsError {
    /// Fewer bytes than a header.
    #[error("message of {0} bytes is shorter than a DNS header")]
    ShortHeader(usize),
    /// QR is set.
    #[error("message is a response, not a query")]
    Response,
    /// Not a standard query (opcode 0).
    #[error("opcode {0} is not a standard query")]
    Opcode(u8),
    /// QDCOUNT is not 1.
    #[error("message has {0} questions instead of one")]
    QuestionCount(u16),
    /// The question ends before its name, type or class does.
    #[error("question is cut short")]
    Truncated,
    /// A compression pointer in the question name; stub resolvers never
    /// send one, and following pointers is how parsers get looped.
    #[error("question name uses a compression pointer")]
    Compressed,
    /// A label type other than a plain length (0x40 and 0x80 prefixes).
    #[error("question name uses reserved label type {0:#04x}")]
    LabelType(u8),
    /// More than 255 bytes of name on the wire.
    #[error("question name is longer than 255 bytes")]
    NameTooLong,
    /// A byte no host name contains; a `.` inside a label would make the
    /// name mean something else as text.
    #[error("question name contains byte {0:#04x}, which no host name has")]
    NameByte(u8),
}

/// The transaction id of a packet worth answering with [`formerr`]: a full
/// header that is not a response. Shorter packets are noise, and answering
/// responses could start a loop.
pub fn query_id(packet: &[u8]) -> Option<u16> {
    let header = packet.first_chunk::<HEADER_LEN>()?;
    let flags = u16::from_be_bytes([header[2], header[3]]);
    (flags & FLAG_QR == 0).then(|| u16::from_be_bytes([header[0], header[1]]))
}

/// Reads a standard query with exactly one question. Anything after the
/// question (answer, authority, additional records such as the EDNS OPT)
/// is ignored.
pub fn parse_query(packet: &[u8]) -> Result<DnsQuery, DnsError> {
    let header = packet
        .first_chunk::<HEADER_LEN>()
        .ok_or(DnsError::ShortHeader(packet.len()))?;
    let id = u16::from_be_bytes([header[0], header[1]]);
    let flags = u16::from_be_bytes([header[2], header[3]]);
    let qdcount = u16::from_be_bytes([header[4], header[5]]);
    if flags & FLAG_QR != 0 {
        return Err(DnsError::Response);
    }
    // Four bits, so the cast keeps everything.
    let opcode = ((flags >> 11) & 0xf) as u8;
    if opcode != 0 {
        return Err(DnsError::Opcode(opcode));
    }
    if qdcount != 1 {
        return Err(DnsError::QuestionCount(qdcount));
    }
    let (name, name_end) = read_name(packet, HEADER_LEN)?;
    let question_end = name_end.checked_add(4).ok_or(DnsError::Truncated)?;
    let fixed = packet
        .get(name_end..question_end)
        .ok_or(DnsError::Truncated)?;
    let raw_question = packet
        .get(HEADER_LEN..question_end)
        .ok_or(DnsError::Truncated)?
        .to_vec();
    Ok(DnsQuery {
        id,
        name,
        qtype: u16::from_be_bytes([fixed[0], fixed[1]]),
        qclass: u16::from_be_bytes([fixed[2], fixed[3]]),
        recursion_desired: flags & FLAG_RD != 0,
        raw_question,
    })
}

/// Decodes the uncompressed name at `start`; returns it and the offset just
/// past its root byte.
fn read_name(packet: &[u8], start: usize) -> Result<(String, usize), DnsError> {
    let mut name = String::new();
    let mut pos = start;
    loop {
        let len = *packet.get(pos).ok_or(DnsError::Truncated)?;
        match len & 0xc0 {
            0xc0 => return Err(DnsError::Compressed),
            0x40 | 0x80 => return Err(DnsError::LabelType(len & 0xc0)),
            _ => {}
        }
        if len == 0 {
            return Ok((name, pos + 1));
        }
        let len = usize::from(len);
        // The bytes so far, this label with its length byte, and the root.
        if pos - start + 1 + len + 1 > MAX_WIRE_NAME {
            return Err(DnsError::NameTooLong);
        }
        let label = packet
            .get(pos + 1..pos + 1 + len)
            .ok_or(DnsError::Truncated)?;
        if let Some(&bad) = label
            .iter()
            .find(|&&b| !(b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
        {
            return Err(DnsError::NameByte(bad));
        }
        if !name.is_empty() {
            name.push('.');
        }
        name.extend(label.iter().map(|&b| char::from(b.to_ascii_lowercase())));
        pos += 1 + len;
    }
}

/// An answer with up to [`MAX_ANSWERS`] A records (fewer if the question
/// is so long that more would pass 512 bytes). Each record names the
/// question by a pointer to offset 12.
pub fn answer_a(q: &DnsQuery, ips: &[Ipv4Addr], ttl: u32) -> Vec<u8> {
    let room = MAX_UDP_MESSAGE.saturating_sub(HEADER_LEN + q.raw_question.len()) / A_RECORD_LEN;
    let ips = &ips[..ips.len().min(MAX_ANSWERS).min(room)];
    let mut out = reply(q, 0, ips.len());
    for ip in ips {
        out.extend_from_slice(&[0xc0, 0x0c]);
        out.extend_from_slice(&TYPE_A.to_be_bytes());
        out.extend_from_slice(&CLASS_IN.to_be_bytes());
        out.extend_from_slice(&ttl.to_be_bytes());
        out.extend_from_slice(&4u16.to_be_bytes());
        out.extend_from_slice(&ip.octets());
    }
    out
}

/// NOERROR with no records: the name exists (or may) but has no data of
/// the asked type, e.g. AAAA for an allowed name.
pub fn empty_answer(q: &DnsQuery) -> Vec<u8> {
    reply(q, 0, 0)
}

/// NXDOMAIN: an allowed name that does not exist.
pub fn nxdomain(q: &DnsQuery) -> Vec<u8> {
    reply(q, RCODE_NXDOMAIN, 0)
}

/// REFUSED: the policy does not allow this name.
pub fn refused(q: &DnsQuery) -> Vec<u8> {
    reply(q, RCODE_REFUSED, 0)
}

/// SERVFAIL: the host could not resolve an allowed name.
pub fn servfail(q: &DnsQuery) -> Vec<u8> {
    reply(q, RCODE_SERVFAIL, 0)
}

/// FORMERR for a packet whose question could not be read; only the id
/// (from [`query_id`]) is echoed.
pub fn formerr(id: u16) -> Vec<u8> {
    header(id, FLAG_QR | FLAG_RA | u16::from(RCODE_FORMERR), 0, 0)
}

/// Header and echoed question; the caller appends `answers` records.
fn reply(q: &DnsQuery, rcode: u8, answers: usize) -> Vec<u8> {
    let rd = if q.recursion_desired { FLAG_RD } else { 0 };
    let flags = FLAG_QR | FLAG_RA | rd | u16::from(rcode & 0xf);
    let ancount = u16::try_from(answers).unwrap_or(u16::MAX);
    let mut out = header(q.id, flags, 1, ancount);
    out.extend_from_slice(&q.raw_question);
    out
}

fn header(id: u16, flags: u16, qdcount: u16, ancount: u16) -> Vec<u8> {
    let mut out = Vec::with_capacity(MAX_UDP_MESSAGE);
    for field in [id, flags, qdcount, ancount, 0, 0] {
        out.extend_from_slice(&field.to_be_bytes());
    }
    out
}

#[cfg(test)]
#[path = "dns_tests.rs"]
mod tests;
