//! The launcher: `aibox sandbox-exec`, the process aibox spawns in place of
//! a sandboxed tool server. It is a fresh, single-threaded process, so it
//! can confine *itself* through safe APIs and then exec the server, which
//! inherits every restriction. No `pre_exec` (and so no `unsafe`) needed.
//!
//! The order matters, each step needing the privileges the next one drops:
//! 1. connect to aibox's per-spawn control socket (a Unix socket path that
//!    only aibox's user can open);
//! 2. resource limits (`setrlimit`; no window in which the server runs
//!    unlimited);
//! 3. a new network namespace (`unshare(CLONE_NEWNET)`, or a user and
//!    network namespace when aibox is not root), loopback up, and with
//!    network `proxy` a listening socket on `127.0.0.1:PORT` inside it;
//! 4. the non-root user (`setgroups`, `setgid`, `setuid`) when root;
//! 5. `no_new_privs`;
//! 6. Landlock: filesystem read/write rules, TCP connect only to the proxy
//!    port, no signals or abstract Unix sockets outside the sandbox;
//! 7. the seccomp deny-list (last: it denies `unshare` and friends);
//! 8. the [`LaunchReport`] (with the listening socket, by `SCM_RIGHTS`) to
//!    aibox, then exec.
//!
//! A protection that cannot be applied is reported as missing; in
//! `require` mode the launcher then refuses (exit [`EXIT_REFUSED`]) before
//! exec, so the server never runs unconfined.

use std::io::Write as _;
use std::net::TcpListener;
use std::os::fd::AsFd as _;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Command, ExitCode};

use landlock::{
    ABI, Access, AccessFs, AccessNet, CompatLevel, Compatible, NetPort, Ruleset, RulesetAttr,
    RulesetCreatedAttr, RulesetStatus, Scope, path_beneath_rules,
};

use crate::profile::{LaunchReport, LaunchRequest, Mode, Network, RLimits};
use crate::{REQUEST_ENV, seccomp};

/// The exit status of a launcher that refused to exec (`EX_CONFIG`).
pub const EXIT_REFUSED: u8 = 78;
/// The exit status when the request itself is unusable (`EX_USAGE`).
pub const EXIT_USAGE: u8 = 64;
/// The exit status when exec failed.
pub const EXIT_EXEC: u8 = 127;
/// The Landlock ABI this code was written and tested against.
pub const LANDLOCK_ABI: ABI = ABI::V6;
/// The proxy variables set in a proxied server's environment (upper and
/// lower case: runtimes disagree on which they read).
pub const PROXY_VARS: &[&str] = &[
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
];

/// Runs the launcher from [`REQUEST_ENV`]; returns only on failure (or in
/// probe mode).
pub fn main() -> ExitCode {
    let raw = match std::env::var(REQUEST_ENV) {
        Ok(v) => v,
        Err(_) => {
            eprintln!(
                "aibox sandbox-exec: {REQUEST_ENV} is not set; this command is started by aibox for sandboxed MCP servers, not by hand"
            );
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let req: LaunchRequest = match serde_json::from_str(&raw) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("aibox sandbox-exec: {REQUEST_ENV} is not a launch request: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    run(&req)
}

/// Collects what was applied and decides, per the mode, whether a missing
/// protection stops the launch.
struct Steps {
    report: LaunchReport,
    strict: bool,
}

impl Steps {
    fn ok(&mut self, what: String) {
        self.report.applied.push(what);
    }

    /// Records a missing protection; `false` means stop (require mode).
    fn missing(&mut self, what: String) -> bool {
        self.report.missing.push(what);
        !self.strict
    }
}

fn run(req: &LaunchRequest) -> ExitCode {
    let mut ctl = match &req.control {
        Some(path) => match UnixStream::connect(path) {
            Ok(s) => Some(s),
            Err(e) => {
                eprintln!(
                    "aibox sandbox-exec: cannot reach aibox's control socket {}: {e}",
                    path.display()
                );
                return ExitCode::from(EXIT_USAGE);
            }
        },
        None => None,
    };
    let p = &req.profile;
    let mut steps = Steps {
        report: LaunchReport::default(),
        strict: p.mode == Mode::Require,
    };
    let mut listener = None;
    let go = confine(req, &mut steps, &mut listener);
    steps.report.refused = !go;
    if let Some(l) = &listener {
        steps.report.proxy_port = l.local_addr().ok().map(|a| a.port());
    }
    if req.probe {
        let text = serde_json::to_string(&steps.report).unwrap_or_default();
        let _ = writeln!(std::io::stdout(), "{text}");
        return ExitCode::SUCCESS;
    }
    if let Some(s) = ctl.as_mut()
        && let Err(e) = send_report(s, &steps.report, listener.as_ref())
    {
        eprintln!("aibox sandbox-exec: cannot report to aibox: {e}");
        return ExitCode::from(EXIT_USAGE);
    }
    drop(ctl);
    // The listening socket now belongs to aibox; the server must not hold
    // it (it would steal connections meant for the proxy).
    let port = steps.report.proxy_port;
    drop(listener);
    if !go {
        eprintln!(
            "aibox sandbox-exec: refusing to start the server (sandbox mode require): missing {}; fix: make the protection available on this host (see `aibox doctor`) or set \"mode\": \"best_effort\" in the server's sandbox profile",
            steps.report.missing.join("; ")
        );
        return ExitCode::from(EXIT_REFUSED);
    }
    let mut cmd = Command::new(&req.command);
    cmd.args(&req.args).env_remove(REQUEST_ENV);
    if let Some(port) = port {
        let url = format!("http://127.0.0.1:{port}");
        for var in PROXY_VARS {
            cmd.env(var, &url);
        }
        cmd.env("NO_PROXY", "").env("no_proxy", "");
    }
    let e = cmd.exec();
    eprintln!("aibox sandbox-exec: cannot exec '{}': {e}", req.command);
    ExitCode::from(EXIT_EXEC)
}

/// Applies every step; `false` means refuse.
fn confine(req: &LaunchRequest, steps: &mut Steps, listener: &mut Option<TcpListener>) -> bool {
    let p = &req.profile;
    // Limits are never optional: a server that asked for a memory cap and
    // did not get one could take the host down.
    if let Err(e) = set_limits(&req.limits) {
        steps.report.missing.push(e);
        return false;
    }
    if req.limits != RLimits::default() {
        steps.ok("rlimits".into());
    }

    let was_root = rustix::process::geteuid().is_root();
    if p.network != Network::Host {
        match enter_netns(was_root) {
            Ok(how) => steps.ok(how),
            Err(e) => {
                if !steps.missing(format!("netns: {e}")) {
                    return false;
                }
            }
        }
        if p.network == Network::Proxy {
            match TcpListener::bind("127.0.0.1:0") {
                Ok(l) => *listener = Some(l),
                Err(e) => {
                    if !steps.missing(format!("proxy listener: {e}")) {
                        return false;
                    }
                }
            }
        }
    } else {
        steps.ok("network=host".into());
    }

    if was_root {
        match drop_to(p.uid, p.gid) {
            Ok(()) => steps.ok(format!("user(uid={},gid={})", p.uid, p.gid)),
            Err(e) => {
                if !steps.missing(format!("user: {e}")) {
                    return false;
                }
            }
        }
    } else {
        steps.ok(format!(
            "user(uid={}, aibox is not root)",
            rustix::process::geteuid().as_raw()
        ));
    }

    match rustix::thread::set_no_new_privs(true) {
        Ok(()) => steps.ok("no_new_privs".into()),
        Err(e) => {
            if !steps.missing(format!("no_new_privs: {e}")) {
                return false;
            }
        }
    }

    let port = listener
        .as_ref()
        .and_then(|l| l.local_addr().ok())
        .map(|a| a.port());
    match landlock(req, port) {
        Ok(what) => steps.ok(what),
        Err(e) => {
            if !steps.missing(format!("landlock: {e}")) {
                return false;
            }
        }
    }

    match seccomp::build(&p.seccomp_deny, p.on_violation).and_then(|progs| seccomp::apply(&progs)) {
        Ok(()) => steps.ok(format!("seccomp({} denied)", p.seccomp_deny.len())),
        Err(e) => {
            if !steps.missing(format!("seccomp: {e}")) {
                return false;
            }
        }
    }
    true
}

fn set_limits(l: &RLimits) -> Result<(), String> {
    use rlimit::Resource;
    let wanted = [
        (Resource::CPU, "cpu_secs", l.cpu_secs, 1),
        (Resource::AS, "memory_mb", l.memory_mb, 1024 * 1024),
        (Resource::NOFILE, "open_files", l.open_files, 1),
        (Resource::NPROC, "processes", l.processes, 1),
    ];
    for (res, field, value, unit) in wanted {
        let Some(v) = value else { continue };
        let v = v.saturating_mul(unit);
        let (_, hard) = res
            .get()
            .map_err(|e| format!("limits.{field}: cannot read the current limit: {e}"))?;
        // An unprivileged process may lower its hard limit, never raise it.
        let v = v.min(hard);
        res.set(v, v)
            .map_err(|e| format!("limits.{field}: cannot apply {v}: {e}"))?;
    }
    Ok(())
}

fn enter_netns(root: bool) -> Result<String, String> {
    use nix::sched::{CloneFlags, unshare};
    let how = if root {
        unshare(CloneFlags::CLONE_NEWNET).map_err(|e| format!("unshare(CLONE_NEWNET): {e}"))?;
        "netns"
    } else {
        // Unprivileged: a user namespace gives the capabilities a network
        // namespace needs; the ids map to themselves, so the server keeps
        // aibox's (non-root) user.
        let uid = rustix::process::geteuid().as_raw();
        let gid = rustix::process::getegid().as_raw();
        unshare(CloneFlags::CLONE_NEWUSER | CloneFlags::CLONE_NEWNET).map_err(|e| {
            format!(
                "unshare(CLONE_NEWUSER|CLONE_NEWNET): {e} (unprivileged user namespaces disabled?)"
            )
        })?;
        std::fs::write("/proc/self/setgroups", "deny")
            .and_then(|()| std::fs::write("/proc/self/uid_map", format!("{uid} {uid} 1")))
            .and_then(|()| std::fs::write("/proc/self/gid_map", format!("{gid} {gid} 1")))
            .map_err(|e| format!("cannot map the user namespace's ids: {e}"))?;
        "netns(user)"
    };
    crate::netlink::loopback_up().map_err(|e| format!("cannot bring lo up: {e}"))?;
    Ok(how.into())
}

fn drop_to(uid: u32, gid: u32) -> Result<(), String> {
    use nix::unistd::{Gid, Uid, setgid, setgroups, setuid};
    setgroups(&[Gid::from_raw(gid)]).map_err(|e| format!("setgroups: {e}"))?;
    setgid(Gid::from_raw(gid)).map_err(|e| format!("setgid({gid}): {e}"))?;
    setuid(Uid::from_raw(uid)).map_err(|e| format!("setuid({uid}): {e}"))?;
    // setuid from root to another id drops every id; check it held.
    if rustix::process::geteuid().is_root() || rustix::process::getuid().is_root() {
        return Err("still root after setuid".into());
    }
    Ok(())
}

fn existing(paths: Vec<std::path::PathBuf>) -> Vec<std::path::PathBuf> {
    paths
        .into_iter()
        .filter(|p| Path::new(p).exists())
        .collect()
}

fn landlock(req: &LaunchRequest, proxy_port: Option<u16>) -> Result<String, String> {
    let p = &req.profile;
    let abi = LANDLOCK_ABI;
    let level = match p.mode {
        Mode::Require => CompatLevel::HardRequirement,
        Mode::BestEffort => CompatLevel::BestEffort,
    };
    let err = |e: landlock::RulesetError| e.to_string();
    let mut ruleset = Ruleset::default()
        .set_compatibility(level)
        .handle_access(AccessFs::from_all(abi))
        .map_err(err)?;
    if p.network != Network::Host {
        ruleset = ruleset
            .handle_access(AccessNet::from_all(abi))
            .map_err(err)?;
    }
    // Scoping (no signals to, no abstract sockets of, processes outside;
    // Linux 6.12) is defence in depth over the uid drop and the network
    // namespace: best effort even in require mode, and reported.
    let mut created = ruleset
        .set_compatibility(CompatLevel::BestEffort)
        .scope(Scope::from_all(abi))
        .map_err(err)?
        .create()
        .map_err(err)?;
    created = created
        .add_rules(path_beneath_rules(
            existing(p.read_paths()),
            AccessFs::from_read(abi),
        ))
        .map_err(err)?
        .add_rules(path_beneath_rules(
            existing(p.write_paths()),
            AccessFs::from_all(abi),
        ))
        .map_err(err)?;
    if let Some(port) = proxy_port {
        created = created
            .add_rule(NetPort::new(port, AccessNet::ConnectTcp))
            .map_err(err)?;
    }
    let status = created.restrict_self().map_err(err)?;
    match status.ruleset {
        RulesetStatus::FullyEnforced => Ok(format!("landlock(abi={})", abi as i32)),
        // In require mode the filesystem and network rights were hard
        // requirements, so only the scoping can be missing.
        RulesetStatus::PartiallyEnforced if p.mode == Mode::Require => Ok(format!(
            "landlock(abi={}, without signal and abstract-socket scoping)",
            abi as i32
        )),
        // best_effort: the rules in force stay, and the gap is reported as
        // missing (so the spawn is audited as degraded).
        RulesetStatus::PartiallyEnforced => Err(format!(
            "only partly enforced: this kernel lacks some access rights of Landlock ABI {}",
            abi as i32
        )),
        RulesetStatus::NotEnforced => Err("not supported by this kernel".into()),
    }
}

/// Sends the report as one JSON line, with the listening socket attached.
fn send_report(
    s: &mut UnixStream,
    report: &LaunchReport,
    listener: Option<&TcpListener>,
) -> Result<(), String> {
    use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags, sendmsg};
    let mut line = serde_json::to_vec(report).map_err(|e| e.to_string())?;
    line.push(b'\n');
    let fds;
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut anc = SendAncillaryBuffer::new(&mut space);
    if let Some(l) = listener {
        fds = [l.as_fd()];
        if !anc.push(SendAncillaryMessage::ScmRights(&fds)) {
            return Err("no room for the socket in the message".into());
        }
    }
    let sent = sendmsg(
        s.as_fd(),
        &[std::io::IoSlice::new(&line)],
        &mut anc,
        SendFlags::empty(),
    )
    .map_err(|e| e.to_string())?;
    if sent < line.len() {
        s.write_all(&line[sent..]).map_err(|e| e.to_string())?;
    }
    Ok(())
}
