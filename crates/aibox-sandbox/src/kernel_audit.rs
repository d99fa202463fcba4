//! The kernel's own reports of sandbox violations: the audit subsystem's
//! `SECCOMP` records (type 1326), emitted when a seccomp filter kills a
//! process (`on_violation: kill`) whether or not auditd runs, read from the
//! audit netlink multicast group (`AUDIT_NLGRP_READLOG`, which needs
//! `CAP_AUDIT_READ`: aibox running as root).
//!
//! `EPERM` answers of the filter and Landlock's `EACCES` are not logged
//! here: the first would need the `SECCOMP_FILTER_FLAG_LOG` filter flag,
//! the second an enabled audit subsystem (auditd running).

use rustix::net::netlink::SocketAddrNetlink;
use rustix::net::{AddressFamily, RecvFlags, SocketType};

/// `AUDIT_NLGRP_READLOG`, as a group bit.
const READLOG_GROUP: u32 = 1;
/// `AUDIT_SECCOMP`.
pub const AUDIT_SECCOMP: u16 = 1326;

/// One seccomp record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeccompRecord {
    /// The process the filter acted on.
    pub pid: u32,
    /// The syscall number.
    pub syscall: i64,
    /// Its name, when it is one aibox knows.
    pub name: Option<&'static str>,
    /// The signal sent (31 = SIGSYS), if any.
    pub sig: Option<i32>,
}

/// Parses the text of a `SECCOMP` record (`audit(...): auid=... pid=N ...
/// sig=31 arch=... syscall=101 ...`). Pure.
pub fn parse_seccomp(text: &str) -> Option<SeccompRecord> {
    let field = |key: &str| {
        text.split_whitespace()
            .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
    };
    let pid = field("pid")?.parse().ok()?;
    let syscall = field("syscall")?.parse().ok()?;
    Some(SeccompRecord {
        pid,
        syscall,
        name: crate::seccomp::name_of(syscall),
        sig: field("sig").and_then(|s| s.parse().ok()),
    })
}

/// A subscription to the kernel's audit records.
pub struct KernelAudit {
    fd: std::os::fd::OwnedFd,
}

impl KernelAudit {
    /// Subscribes; fails without `CAP_AUDIT_READ` or without audit support.
    pub fn subscribe() -> Result<Self, String> {
        let fd = rustix::net::socket(
            AddressFamily::NETLINK,
            SocketType::RAW,
            Some(rustix::net::netlink::AUDIT),
        )
        .map_err(|e| format!("audit netlink socket: {e}"))?;
        rustix::net::bind(&fd, &SocketAddrNetlink::new(0, READLOG_GROUP))
            .map_err(|e| format!("cannot join the kernel audit log group: {e}"))?;
        Ok(Self { fd })
    }

    /// Blocks for the next `SECCOMP` record (other records are skipped).
    pub fn next_seccomp(&self) -> Result<SeccompRecord, String> {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let (n, _) = rustix::net::recv(&self.fd, &mut buf[..], RecvFlags::empty())
                .map_err(|e| format!("audit netlink receive: {e}"))?;
            let Some(header) = buf.get(..16.min(n)).filter(|h| h.len() == 16) else {
                continue;
            };
            let kind = u16::from_ne_bytes([header[4], header[5]]);
            if kind != AUDIT_SECCOMP {
                continue;
            }
            let text = String::from_utf8_lossy(&buf[16..n]);
            if let Some(r) = parse_seccomp(&text) {
                return Ok(r);
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn seccomp_records_parse() {
        let line = "audit(1796393473.944:2): auid=4294967295 uid=65534 gid=65534 ses=4294967295 pid=7202 comm=\"python3\" exe=\"/usr/bin/python3.11\" sig=31 arch=c000003e syscall=101 compat=0 ip=0x7fc4b30fc34a code=0x80000000";
        let r = parse_seccomp(line).unwrap();
        assert_eq!(r.pid, 7202);
        assert_eq!(r.syscall, 101);
        assert_eq!(r.sig, Some(31));
        #[cfg(target_arch = "x86_64")]
        assert_eq!(r.name, Some("ptrace"));
        assert!(parse_seccomp("audit(1:2): something else").is_none());
        // "ppid=" must not be read as "pid=".
        assert_eq!(parse_seccomp("ppid=1 pid=5 syscall=9").unwrap().pid, 5);
    }
}
