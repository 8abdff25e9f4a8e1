//! The network thread: woken by the eventfd, it answers and stops.

use std::sync::mpsc::{channel, Sender};
use std::time::{Duration, Instant};

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::test_guest::{dns_query, guest_udp_frame};
use super::{run_net_thread, BrokerClient, GuestPort, NetInput, NetStack, GATEWAY_IP};
use sbxrun_egress::dns::TYPE_A;
use sbxrun_egress::EgressEvent;

struct ChannelPort(Sender<Vec<u8>>);

impl GuestPort for ChannelPort {
    fn deliver(&mut self, frame: &[u8]) -> bool {
        self.0.send(frame.to_vec()).is_ok()
    }
}

struct NoBroker(Sender<EgressEvent>);

impl BrokerClient for NoBroker {
    fn resolve(&mut self, _id: u64, name: &str) {
        panic!("asked to resolve {name} under policy none");
    }
    fn connect(&mut self, _id: u64, ip: std::net::IpAddr, port: u16, _names: &[String]) {
        panic!("asked to connect to {ip}:{port} under policy none");
    }
    fn event(&mut self, event: EgressEvent) {
        let _ = self.0.send(event);
    }
}

#[test]
fn thread_answers_when_woken_and_stops_on_shutdown() {
    let (frames_tx, frames) = channel();
    let (events_tx, events) = channel();
    let stack = NetStack::new(
        Box::new(ChannelPort(frames_tx)),
        Box::new(NoBroker(events_tx)),
        Instant::now(),
    );
    let (inbox_tx, inbox) = channel();
    let wake = EventFd::new(EFD_NONBLOCK).expect("eventfd");
    let waker = wake.try_clone().expect("clone eventfd");
    let thread = std::thread::spawn(move || run_net_thread(stack, inbox, wake));

    let query = guest_udp_frame(GATEWAY_IP, 53, &dns_query(9, "svc.test", TYPE_A));
    inbox_tx.send(NetInput::GuestFrame(query)).expect("send");
    waker.write(1).expect("wake");
    let answer = frames
        .recv_timeout(Duration::from_secs(10))
        .expect("an answer");
    // Ethernet, IPv4 and UDP headers, then the DNS header: REFUSED.
    assert_eq!(answer[14 + 20 + 8 + 3] & 0xf, 5);
    let event = events.recv_timeout(Duration::from_secs(10)).expect("event");
    assert_eq!(event.name.as_deref(), Some("svc.test"));

    inbox_tx.send(NetInput::Shutdown).expect("send");
    waker.write(1).expect("wake");
    thread.join().expect("join").expect("clean stop");
}
