//! Brings the loopback interface of a fresh network namespace up with one
//! rtnetlink `RTM_NEWLINK` message (what `ip link set lo up` sends), so the
//! launcher needs neither `ioctl` (unsafe) nor the `ip` program.

use rustix::net::netlink::SocketAddrNetlink;
use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketType};

const RTM_NEWLINK: u16 = 16;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLMSG_ERROR: u16 = 2;
const IFF_UP: u32 = 1;

/// Sets `lo` up in the calling thread's network namespace.
pub fn loopback_up() -> Result<(), String> {
    let probe = rustix::net::socket(AddressFamily::INET, SocketType::DGRAM, None)
        .map_err(|e| format!("socket: {e}"))?;
    let index = rustix::net::netdevice::name_to_index(&probe, "lo")
        .map_err(|e| format!("no 'lo' interface: {e}"))?;
    let index = i32::try_from(index).map_err(|_| "interface index out of range".to_owned())?;
    let fd = rustix::net::socket(AddressFamily::NETLINK, SocketType::RAW, None)
        .map_err(|e| format!("netlink socket: {e}"))?;
    // struct nlmsghdr (16 bytes) + struct ifinfomsg (16 bytes), native
    // endian as the kernel expects.
    let mut msg = Vec::with_capacity(32);
    msg.extend_from_slice(&32u32.to_ne_bytes());
    msg.extend_from_slice(&RTM_NEWLINK.to_ne_bytes());
    msg.extend_from_slice(&(NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes()); // sequence
    msg.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it
    msg.push(0); // AF_UNSPEC
    msg.push(0); // padding
    msg.extend_from_slice(&0u16.to_ne_bytes()); // device type
    msg.extend_from_slice(&index.to_ne_bytes());
    msg.extend_from_slice(&IFF_UP.to_ne_bytes()); // flags
    msg.extend_from_slice(&IFF_UP.to_ne_bytes()); // change mask
    rustix::net::sendto(&fd, &msg, SendFlags::empty(), &SocketAddrNetlink::new(0, 0))
        .map_err(|e| format!("netlink send: {e}"))?;
    let mut buf = [0u8; 256];
    let (n, _) = rustix::net::recv(&fd, &mut buf[..], RecvFlags::empty())
        .map_err(|e| format!("netlink receive: {e}"))?;
    let field = |at: usize, len: usize| buf.get(at..at + len).filter(|_| at + len <= n);
    let kind = field(4, 2)
        .and_then(|b| b.try_into().ok())
        .map(u16::from_ne_bytes);
    let code = field(16, 4)
        .and_then(|b| b.try_into().ok())
        .map(i32::from_ne_bytes);
    match (kind, code) {
        (Some(NLMSG_ERROR), Some(0)) => Ok(()),
        (Some(NLMSG_ERROR), Some(c)) => Err(format!(
            "the kernel refused: {}",
            std::io::Error::from_raw_os_error(-c)
        )),
        _ => Err("unexpected netlink answer".into()),
    }
}
