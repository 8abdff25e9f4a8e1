//! Wires the guest's network together inside the VMM: the virtio-net
//! device hands guest frames to the network thread, the network thread
//! hands frames back through the device's transport, and the broker
//! channel carries requests to the runner and its replies (with the
//! sockets it opened) back to the network thread.

use std::fs::File;
use std::net::{IpAddr, TcpStream};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixDatagram;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use vmm_sys_util::eventfd::EventFd;

use super::devices::virtio::{MmioTransport, NetBackend, RxOutcome};
use super::net::{BrokerClient, BrokerReply, GuestPort, NetInput};
use sbxrun_egress::EgressEvent;
use sbxrun_proto::netchan::{self, NetReply, NetRequest};

/// The sending side of the network thread's inbox: every send is followed
/// by a write to the eventfd the thread polls.
#[derive(Clone)]
pub(crate) struct NetInbox {
    tx: Sender<NetInput>,
    wake: Arc<EventFd>,
}

impl NetInbox {
    pub(crate) fn new(tx: Sender<NetInput>, wake: Arc<EventFd>) -> Self {
        NetInbox { tx, wake }
    }

    /// Queues `input`; false once the network thread is gone.
    pub(crate) fn send(&self, input: NetInput) -> bool {
        if self.tx.send(input).is_err() {
            return false;
        }
        let _ = self.wake.write(1);
        true
    }
}

/// The virtio-net device's backend: guest frames go to the network thread.
pub(crate) struct DeviceBackend {
    inbox: NetInbox,
}

impl DeviceBackend {
    pub(crate) fn new(inbox: NetInbox) -> Self {
        DeviceBackend { inbox }
    }
}

impl NetBackend for DeviceBackend {
    fn transmit(&mut self, frame: &[u8]) {
        self.inbox.send(NetInput::GuestFrame(frame.to_vec()));
    }

    fn rx_buffers_available(&mut self) {
        self.inbox.send(NetInput::RxSpace);
    }
}

/// Frames for the guest, through the virtio-net transport.
pub(crate) struct TransportPort {
    transport: Arc<Mutex<MmioTransport>>,
}

impl TransportPort {
    pub(crate) fn new(transport: Arc<Mutex<MmioTransport>>) -> Self {
        TransportPort { transport }
    }
}

impl GuestPort for TransportPort {
    fn deliver(&mut self, frame: &[u8]) -> bool {
        let Ok(mut transport) = self.transport.lock() else {
            // A poisoned device is dead; dropping the frame is all we can do.
            return true;
        };
        match transport.net_push_frame(frame) {
            Ok(RxOutcome::Delivered | RxOutcome::Dropped) | Err(_) => true,
            Ok(RxOutcome::NoBuffer | RxOutcome::NotReady) => false,
        }
    }
}

/// Requests to the runner over the broker channel.
pub(crate) struct ChannelBroker {
    sock: UnixDatagram,
}

impl ChannelBroker {
    pub(crate) fn new(sock: UnixDatagram) -> Self {
        ChannelBroker { sock }
    }

    fn send(&self, request: &NetRequest) {
        // A runner that stopped listening answers nothing; the stack's own
        // timeouts then fail the guest's request.
        if let Err(e) = netchan::send(&self.sock, request, None::<&File>) {
            tracing::debug!("broker request not sent: {e}");
        }
    }
}

impl BrokerClient for ChannelBroker {
    fn resolve(&mut self, id: u64, name: &str) {
        self.send(&NetRequest::Resolve {
            id,
            name: name.to_owned(),
        });
    }

    fn connect(&mut self, id: u64, ip: IpAddr, port: u16, names: &[String]) {
        self.send(&NetRequest::Connect {
            id,
            ip,
            port,
            names: names.to_vec(),
        });
    }

    fn event(&mut self, event: EgressEvent) {
        self.send(&NetRequest::Event { event });
    }
}

/// Turns one broker reply (and the socket attached to it) into the network
/// thread's input. A `Connected` without its socket is a failure.
pub(crate) fn reply_to_input(reply: NetReply, fd: Option<File>) -> NetInput {
    match reply {
        NetReply::Policy { policy } => NetInput::SetPolicy {
            policy,
            step_started: Instant::now(),
        },
        NetReply::Resolved {
            id,
            addresses,
            trusted,
            error,
        } => NetInput::Broker(BrokerReply::Resolved {
            id,
            result: match error {
                None => Ok((addresses, trusted)),
                Some(e) => Err(e),
            },
        }),
        NetReply::Connected { id, error } => NetInput::Broker(BrokerReply::Connected {
            id,
            result: match (error, fd) {
                (None, Some(file)) => Ok(TcpStream::from(OwnedFd::from(file))),
                (None, None) => Err("the broker sent no socket".into()),
                (Some(e), _) => Err(e),
            },
        }),
    }
}

/// Starts the thread that reads the runner's broker replies into the
/// network thread's inbox. It ends when the runner closes the channel.
pub(crate) fn spawn_broker_reader(sock: UnixDatagram, inbox: NetInbox) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("net-broker".into())
        .spawn(move || loop {
            match netchan::recv::<NetReply>(&sock) {
                Ok(Some((reply, fd))) => {
                    if !inbox.send(reply_to_input(reply, fd)) {
                        return;
                    }
                }
                Ok(None) | Err(netchan::NetChanError::Io(_)) => return,
                Err(e) => tracing::warn!("bad broker reply ignored: {e}"),
            }
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn a_connected_reply_without_a_socket_is_a_failure() {
        match reply_to_input(NetReply::Connected { id: 3, error: None }, None) {
            NetInput::Broker(BrokerReply::Connected { id: 3, result }) => {
                assert!(result.is_err())
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn a_connected_reply_carries_the_socket_through() {
        let server = TcpListener::bind("127.0.0.1:0").unwrap();
        let stream = TcpStream::connect(server.local_addr().unwrap()).unwrap();
        let local = stream.local_addr().unwrap();
        let file = File::from(OwnedFd::from(stream));
        match reply_to_input(NetReply::Connected { id: 4, error: None }, Some(file)) {
            NetInput::Broker(BrokerReply::Connected { id: 4, result }) => {
                assert_eq!(result.unwrap().local_addr().unwrap(), local)
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn resolved_errors_stay_errors() {
        let input = reply_to_input(
            NetReply::Resolved {
                id: 1,
                addresses: vec![],
                trusted: false,
                error: Some("nope".into()),
            },
            None,
        );
        assert!(matches!(
            input,
            NetInput::Broker(BrokerReply::Resolved {
                id: 1,
                result: Err(_)
            })
        ));
    }
}
