//! The broker channel between a VMM's network stack and the runner.
//!
//! The VMM never opens a host socket: it asks the runner to resolve names
//! and to connect, and receives connected sockets back. That needs
//! descriptor passing, so this is a `SOCK_SEQPACKET` socketpair (one JSON
//! message per packet, a descriptor attached to the packet it belongs to),
//! separate from the control stream so that no reader of the control
//! stream can drop a descriptor on the floor.
//!
//! Pure data and framing: the runner (`broker`) and the VMM
//! (`net`) both use it; nothing here touches KVM.

use std::fs::File;
use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixDatagram;

use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use sbxrun_egress::{EgressEvent, EgressPolicy};

/// Largest message either side sends or accepts.
pub const MAX_NET_MESSAGE: usize = 64 * 1024;

/// VMM -> runner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum NetRequest {
    /// Resolve `name` (already allowed by the VMM's copy of the policy).
    Resolve { id: u64, name: String },
    /// Open a TCP connection; `names` are the allowed names pinned to `ip`
    /// that made it reachable (empty when an address rule did).
    Connect {
        id: u64,
        ip: IpAddr,
        port: u16,
        names: Vec<String>,
    },
    /// Something was denied; for the step's report.
    Event { event: EgressEvent },
}

/// Runner -> VMM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum NetReply {
    /// The policy of the step this VM now serves. Until it arrives the VMM
    /// denies everything.
    Policy { policy: EgressPolicy },
    /// Answer to [`NetRequest::Resolve`]. `trusted`: the addresses come from
    /// the operator (`--resolve`), not from DNS.
    Resolved {
        id: u64,
        addresses: Vec<IpAddr>,
        trusted: bool,
        error: Option<String>,
    },
    /// Answer to [`NetRequest::Connect`]; the connected, non-blocking
    /// socket is attached to this message when `error` is `None`.
    Connected { id: u64, error: Option<String> },
}

/// Errors of the broker channel.
#[derive(Debug, thiserror::Error)]
pub enum NetChanError {
    #[error("broker channel I/O")]
    Io(#[from] io::Error),
    #[error("broker message of {0} bytes exceeds the {MAX_NET_MESSAGE} byte limit")]
    TooLarge(usize),
    #[error("malformed broker message")]
    Malformed(#[from] serde_json::Error),
}

/// A connected pair of seqpacket sockets: (runner end, VMM end).
pub fn pair() -> io::Result<(UnixDatagram, UnixDatagram)> {
    let (runner, vmm) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(io::Error::from)?;
    // A UnixDatagram's send/recv are plain send(2)/recv(2), which keep a
    // seqpacket socket's message boundaries.
    Ok((UnixDatagram::from(runner), UnixDatagram::from(vmm)))
}

/// Sends one message, with `fd` attached when given.
pub fn send<T: Serialize>(
    sock: &UnixDatagram,
    msg: &T,
    fd: Option<&impl AsRawFd>,
) -> Result<(), NetChanError> {
    let body = serde_json::to_vec(msg)?;
    if body.len() > MAX_NET_MESSAGE {
        return Err(NetChanError::TooLarge(body.len()));
    }
    let fds: Vec<RawFd> = fd.map(|f| f.as_raw_fd()).into_iter().collect();
    sock.send_with_fds(&[body.as_slice()], &fds)
        .map_err(|e| NetChanError::Io(io::Error::from_raw_os_error(e.errno())))?;
    Ok(())
}

/// Receives one message and the descriptor attached to it, if any.
/// `Ok(None)` when the peer has closed its end.
pub fn recv<T: DeserializeOwned>(
    sock: &UnixDatagram,
) -> Result<Option<(T, Option<File>)>, NetChanError> {
    let mut buf = vec![0u8; MAX_NET_MESSAGE + 1];
    let (len, file) = sock
        .recv_with_fd(&mut buf)
        .map_err(|e| NetChanError::Io(io::Error::from_raw_os_error(e.errno())))?;
    if len == 0 {
        return Ok(None);
    }
    if len > MAX_NET_MESSAGE {
        return Err(NetChanError::TooLarge(len));
    }
    Ok(Some((serde_json::from_slice(&buf[..len])?, file)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn a_reply_carries_its_descriptor() {
        let (runner, vmm) = pair().unwrap();
        let (mut a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        send(
            &runner,
            &NetReply::Connected { id: 7, error: None },
            Some(&b),
        )
        .unwrap();
        drop(b);
        let (msg, file) = recv::<NetReply>(&vmm).unwrap().unwrap();
        assert_eq!(msg, NetReply::Connected { id: 7, error: None });
        let mut passed = std::os::unix::net::UnixStream::from(std::os::fd::OwnedFd::from(
            file.expect("a descriptor"),
        ));
        passed.write_all(b"hi").unwrap();
        let mut got = [0u8; 2];
        a.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hi");
    }

    #[test]
    fn messages_keep_their_boundaries() {
        let (runner, vmm) = pair().unwrap();
        for id in 0..3 {
            send(
                &vmm,
                &NetRequest::Resolve {
                    id,
                    name: "a.test".into(),
                },
                None::<&File>,
            )
            .unwrap();
        }
        for id in 0..3 {
            let (msg, file) = recv::<NetRequest>(&runner).unwrap().unwrap();
            assert!(file.is_none());
            assert_eq!(
                msg,
                NetRequest::Resolve {
                    id,
                    name: "a.test".into()
                }
            );
        }
    }

    #[test]
    fn a_closed_peer_reads_as_none_and_garbage_as_malformed() {
        let (runner, vmm) = pair().unwrap();
        vmm.send(b"{not json").unwrap();
        assert!(matches!(
            recv::<NetRequest>(&runner),
            Err(NetChanError::Malformed(_))
        ));
        drop(vmm);
        assert!(recv::<NetRequest>(&runner).unwrap().is_none());
    }
}
