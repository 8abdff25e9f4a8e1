//! The guest's network: loopback at boot, and per step (only when the step
//! may reach the outside) the virtio-net interface, its default route and
//! the resolver the VMM answers on.
//!
//! Everything is done with a handful of ioctls on one datagram socket
//! instead of running `ip`: each guest syscall is expensive on emulated
//! hosts and a fork+exec costs hundreds of them.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use guest_init::proto::NetworkSetup;

use crate::run::STEP_ROOT;
use crate::sys::{Context, SysError};

/// The interface the VMM's virtio-net device appears as.
const INTERFACE: &str = "eth0";

/// `struct rtentry` of `<linux/route.h>` (x86_64 layout).
#[repr(C)]
struct RtEntry {
    rt_pad1: libc::c_ulong,
    rt_dst: libc::sockaddr,
    rt_gateway: libc::sockaddr,
    rt_genmask: libc::sockaddr,
    rt_flags: libc::c_ushort,
    rt_pad2: libc::c_short,
    rt_pad3: libc::c_ulong,
    rt_pad4: *mut libc::c_void,
    rt_metric: libc::c_short,
    rt_dev: *mut libc::c_char,
    rt_mtu: libc::c_ulong,
    rt_window: libc::c_ulong,
    rt_irtt: libc::c_ushort,
}

/// `RTF_UP | RTF_GATEWAY`.
const RTF_UP_GATEWAY: libc::c_ushort = 0x0001 | 0x0002;

fn control_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the result is checked before it is wrapped.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn sockaddr_in(addr: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(addr.octets()),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size (16 bytes) and
    // the kernel reads a sockaddr_in out of the sockaddr field for AF_INET.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

fn ifreq(name: &str) -> libc::ifreq {
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    req
}

fn ioctl_ifreq(sock: &OwnedFd, request: libc::c_ulong, req: &mut libc::ifreq) -> io::Result<()> {
    // SAFETY: every request used here reads or writes one `struct ifreq`,
    // which `req` is, and it outlives the call.
    let ret = unsafe { libc::ioctl(sock.as_raw_fd(), request, req as *mut libc::ifreq) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn link_up(sock: &OwnedFd, name: &str) -> io::Result<()> {
    let mut req = ifreq(name);
    ioctl_ifreq(sock, libc::SIOCGIFFLAGS, &mut req)?;
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    req.ifr_ifru.ifru_flags = flags | (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    ioctl_ifreq(sock, libc::SIOCSIFFLAGS, &mut req)
}

/// Brings up loopback: steps expect `localhost` to work even without any
/// network. Done once at boot, so it is part of the snapshot.
pub fn loopback_up() -> Result<(), SysError> {
    let sock = control_socket().context("open a socket to configure lo")?;
    link_up(&sock, "lo").context("bring up lo")
}

/// Configures the step's interface, default route and resolver. Called
/// once per VM (a VM serves exactly one step).
pub fn configure(setup: &NetworkSetup) -> Result<(), SysError> {
    let sock = control_socket().context("open a socket to configure eth0")?;
    let mut req = ifreq(INTERFACE);
    req.ifr_ifru.ifru_addr = sockaddr_in(setup.address);
    ioctl_ifreq(&sock, libc::SIOCSIFADDR, &mut req).context("set the address of eth0")?;
    let mut req = ifreq(INTERFACE);
    req.ifr_ifru.ifru_netmask = sockaddr_in(netmask(setup.prefix_len));
    ioctl_ifreq(&sock, libc::SIOCSIFNETMASK, &mut req).context("set the netmask of eth0")?;
    link_up(&sock, INTERFACE).context("bring up eth0")?;
    add_default_route(&sock, setup.gateway).context("add the default route")?;
    let resolv = format!("{STEP_ROOT}/etc/resolv.conf");
    std::fs::write(&resolv, format!("nameserver {}\n", setup.dns))
        .context(format!("write {resolv}"))?;
    Ok(())
}

fn add_default_route(sock: &OwnedFd, gateway: Ipv4Addr) -> io::Result<()> {
    let mut device = *b"eth0\0";
    let mut route = RtEntry {
        rt_pad1: 0,
        rt_dst: sockaddr_in(Ipv4Addr::UNSPECIFIED),
        rt_gateway: sockaddr_in(gateway),
        rt_genmask: sockaddr_in(Ipv4Addr::UNSPECIFIED),
        rt_flags: RTF_UP_GATEWAY,
        rt_pad2: 0,
        rt_pad3: 0,
        rt_pad4: std::ptr::null_mut(),
        rt_metric: 0,
        rt_dev: device.as_mut_ptr().cast(),
        rt_mtu: 0,
        rt_window: 0,
        rt_irtt: 0,
    };
    // SAFETY: SIOCADDRT reads one `struct rtentry`, laid out as `RtEntry`;
    // `route` and the NUL-terminated device name it points to outlive the call.
    let ret = unsafe {
        libc::ioctl(
            sock.as_raw_fd(),
            libc::SIOCADDRT,
            &mut route as *mut RtEntry,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The netmask of a prefix length (values above 32 saturate).
pub fn netmask(prefix_len: u8) -> Ipv4Addr {
    let bits = u32::from(prefix_len.min(32));
    Ipv4Addr::from(u32::MAX.checked_shl(32 - bits).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netmask_of_common_prefixes() {
        assert_eq!(netmask(24), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(netmask(32), Ipv4Addr::BROADCAST);
        assert_eq!(netmask(0), Ipv4Addr::UNSPECIFIED);
        assert_eq!(netmask(200), Ipv4Addr::BROADCAST);
    }

    #[test]
    fn rtentry_has_the_kernel_layout() {
        // The x86_64 kernel's struct rtentry is 120 bytes.
        assert_eq!(std::mem::size_of::<RtEntry>(), 120);
    }
}
