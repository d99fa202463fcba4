//! Violations the kernel reports for sandboxed servers: the audit
//! subsystem's seccomp records (a process killed by the filter, with the
//! syscall), read by `aibox_sandbox::kernel_audit` on a dedicated thread and
//! recorded as `sandbox` events `violation` of the server whose process it
//! was. Without `CAP_AUDIT_READ` the watch is off (logged once); exit
//! statuses (`SIGSYS`, `SIGXCPU`) are still audited by the supervisor.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use aibox_core::audit::EventKind;

use crate::seams::{SandboxRecord, ToolAudit};

/// The current process of every sandboxed server.
#[derive(Debug, Default)]
pub struct ServerPids(Mutex<HashMap<String, u32>>);

impl ServerPids {
    /// Records `server`'s current pid.
    pub fn set(&self, server: &str, pid: u32) {
        if let Ok(mut m) = self.0.lock() {
            m.insert(server.to_owned(), pid);
        }
    }

    /// The server whose current process is `pid`.
    pub fn server_of(&self, pid: u32) -> Option<String> {
        self.0
            .lock()
            .ok()?
            .iter()
            .find(|(_, p)| **p == pid)
            .map(|(s, _)| s.clone())
    }
}

/// Starts the watch (a thread blocked on the kernel's audit netlink group,
/// and a task that records what it reads).
pub fn start(pids: Arc<ServerPids>, audit: Arc<dyn ToolAudit>) {
    let sub = match aibox_sandbox::kernel_audit::KernelAudit::subscribe() {
        Ok(s) => s,
        Err(e) => {
            tracing::info!(error = %e, "the kernel audit log is not readable (needs CAP_AUDIT_READ); sandbox kills are audited from exit statuses only");
            return;
        }
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let spawned = std::thread::Builder::new()
        .name("aibox-kernel-audit".into())
        .spawn(move || {
            while let Ok(r) = sub.next_seccomp() {
                if tx.send(r).is_err() {
                    break;
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start the kernel audit watch");
        return;
    }
    tokio::spawn(async move {
        while let Some(r) = rx.recv().await {
            let Some(server) = pids.server_of(r.pid) else {
                tracing::info!(
                    pid = r.pid,
                    syscall = r.syscall,
                    "kernel seccomp record for a process that is not a sandboxed server's main process"
                );
                continue;
            };
            let detail = format!(
                "pid={} kernel audit: seccomp {} syscall {} ({})",
                r.pid,
                if r.sig == Some(31) {
                    "killed the process at"
                } else {
                    "acted on"
                },
                r.syscall,
                r.name.unwrap_or("unknown"),
            );
            tracing::warn!(server = %server, %detail, "sandbox violation reported by the kernel");
            let rec = SandboxRecord {
                at_ms: crate::stdio::now_ms(),
                kind: EventKind::Sandbox {
                    server: server.clone(),
                    what: "violation".into(),
                    detail,
                },
            };
            if let Err(e) = audit.record_sandbox(rec).await {
                tracing::error!(server = %server, error = %e, "cannot record the violation in the audit log");
            }
        }
    });
}
