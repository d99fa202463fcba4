//! aibox's side of the launcher handshake: a per-spawn control socket in a
//! private directory, and the receipt of the launcher's report with the
//! listening socket it opened inside the server's network namespace.
//!
//! The socket is a filesystem path (not an abstract name, which belongs to
//! a network namespace) in a fresh `0700` directory of aibox's user, so no
//! other local user can pose as a launcher.

use std::io::Read as _;
use std::os::fd::{AsFd as _, OwnedFd};
use std::os::unix::fs::DirBuilderExt as _;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::profile::LaunchReport;

/// The longest report accepted.
const MAX_REPORT: usize = 64 * 1024;

/// A control socket; the directory is removed when dropped.
#[derive(Debug)]
pub struct ControlSocket {
    dir: PathBuf,
    path: PathBuf,
    listener: UnixListener,
}

impl ControlSocket {
    /// Creates `BASE/aibox-sandbox-PID-RANDOM/ctl` (`BASE` is the system's
    /// temporary directory).
    pub fn create(tag: &str) -> std::io::Result<Self> {
        let mut rnd = [0u8; 8];
        rustix::rand::getrandom(&mut rnd, rustix::rand::GetRandomFlags::empty())
            .map_err(std::io::Error::from)?;
        let hex: String = rnd.iter().map(|b| format!("{b:02x}")).collect();
        let dir =
            std::env::temp_dir().join(format!("aibox-sandbox-{}-{tag}-{hex}", std::process::id()));
        std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
        let path = dir.join("ctl");
        let listener = match UnixListener::bind(&path) {
            Ok(l) => l,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        Ok(Self {
            dir,
            path,
            listener,
        })
    }

    /// The socket's path (for the [`LaunchRequest`](crate::LaunchRequest)).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Waits (blocking, at most `timeout`) for the launcher's report and
    /// the listening socket that may come with it.
    pub fn receive(&self, timeout: Duration) -> Result<(LaunchReport, Option<OwnedFd>), String> {
        self.listener
            .set_nonblocking(true)
            .map_err(|e| e.to_string())?;
        let deadline = std::time::Instant::now() + timeout;
        let stream = loop {
            match self.listener.accept() {
                Ok((s, _)) => break s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if std::time::Instant::now() >= deadline {
                        return Err(format!(
                            "the launcher did not report within {} ms",
                            timeout.as_millis()
                        ));
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(e) => return Err(e.to_string()),
            }
        };
        stream.set_nonblocking(false).map_err(|e| e.to_string())?;
        stream
            .set_read_timeout(Some(
                deadline
                    .saturating_duration_since(std::time::Instant::now())
                    .max(Duration::from_millis(10)),
            ))
            .map_err(|e| e.to_string())?;
        receive_on(stream)
    }
}

fn receive_on(mut stream: UnixStream) -> Result<(LaunchReport, Option<OwnedFd>), String> {
    use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, recvmsg};
    let mut buf = vec![0u8; MAX_REPORT];
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut anc = RecvAncillaryBuffer::new(&mut space);
    let got = recvmsg(
        stream.as_fd(),
        &mut [std::io::IoSliceMut::new(&mut buf)],
        &mut anc,
        RecvFlags::CMSG_CLOEXEC,
    )
    .map_err(|e| format!("cannot read the launcher's report: {e}"))?;
    let mut fd = None;
    for msg in anc.drain() {
        if let RecvAncillaryMessage::ScmRights(fds) = msg {
            for f in fds {
                // Only the first descriptor is expected; extra ones are
                // dropped (closed) here.
                if fd.is_none() {
                    fd = Some(f);
                }
            }
        }
    }
    let mut len = got.bytes;
    // The rest of the line, if the message was split.
    while !buf[..len].contains(&b'\n') && len < MAX_REPORT {
        match stream.read(&mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) => return Err(format!("cannot read the launcher's report: {e}")),
        }
    }
    let line = buf[..len].split(|b| *b == b'\n').next().unwrap_or_default();
    let report: LaunchReport = serde_json::from_slice(line)
        .map_err(|e| format!("the launcher's report is not valid: {e}"))?;
    Ok((report, fd))
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
