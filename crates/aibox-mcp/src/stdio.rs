//! stdio tool servers as supervised child processes.
//!
//! Each server gets one supervisor task that starts the process, speaks MCP
//! to it over stdin/stdout (newline-delimited JSON-RPC, many calls in flight
//! at once, matched by id), and starts it again with exponential backoff
//! when it dies. A call writes its request line on stdin itself (see
//! `Conn::write_line`) and one reader task per process hands each answer
//! to its caller, so a call costs one task hand-off, not two.
//!
//! The process is controlled:
//! - its environment is cleared, then given only `PATH` (a fixed safe
//!   default, [`SAFE_PATH`]), the registry's `env` and the `secrets` the
//!   [`SecretSource`] returns, so aibox's own keys never reach a tool;
//! - it runs in the registry's `cwd`, in its own process group (so a
//!   terminal's signals do not reach it, and the whole group is killed
//!   together);
//! - with a `sandbox` profile, the process is `aibox sandbox-exec` (see
//!   `aibox-sandbox`), which applies the resource limits, a network
//!   namespace, a non-root user, `no_new_privs`, Landlock and seccomp to
//!   itself, reports what it applied over a per-spawn control socket (with
//!   the in-namespace proxy socket, served by [`crate::egress_proxy`]) and
//!   execs the server; the spawn is audited with the profile and what was
//!   applied or missing, a `require` profile that cannot be applied is
//!   refused, and a kernel kill (`SIGSYS`, `SIGXCPU`) is a `violation`;
//! - without one, resource limits are applied with `prlimit(2)` on the child right after
//!   it is spawned. The workspace forbids `unsafe`, which `pre_exec` (and so
//!   `setrlimit` between fork and exec) needs; the cost is a window of
//!   microseconds in which the new process runs unlimited. If a configured
//!   limit cannot be applied, the process is killed (fail closed);
//! - stderr is logged line by line with the server's name, never parsed;
//! - every spawn and exit is logged and sent to the audit hook as a
//!   `sandbox` event naming the command, the arguments and the *names* of
//!   the variables it got, never their values;
//! - on shutdown, and whenever a run ends, the process group gets SIGTERM,
//!   then SIGKILL after [`STOP_GRACE`].

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use aibox_core::audit::EventKind;
use futures_util::FutureExt as _;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot, watch};

use crate::protocol::{self, Message, RpcError, codes};
use crate::registry::{Limits, StdioSpec};
use crate::seams::{BoxFuture, HttpEgress, SandboxRecord, SecretSource, ToolAudit};
use crate::upstream::{
    CallError, HealthState, MAX_MESSAGE_BYTES, Offers, ServerHealth, ToolInfo, Upstream,
    accept_tools, tools_page,
};

/// The only `PATH` a tool process gets unless the registry sets one.
pub const SAFE_PATH: &str = "/usr/local/bin:/usr/bin:/bin";
/// How long a new process may take to answer `initialize` and `tools/list`.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// The first restart delay; it doubles per consecutive failure.
pub const BACKOFF_MIN: Duration = Duration::from_millis(500);
/// The longest restart delay.
pub const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// A process that stayed up this long resets the failure count.
pub const HEALTHY_AFTER: Duration = Duration::from_secs(60);
/// Consecutive failures from which the log calls it a crash loop.
pub const CRASH_LOOP_AFTER: u32 = 5;
/// How long a process gets between SIGTERM and SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(3);
/// How long a server whose stdout closed gets to exit by itself.
const EXIT_GRACE: Duration = Duration::from_millis(500);
/// The longest stderr line logged (the rest is cut).
const STDERR_LINE_MAX: usize = 4096;
/// Pages of `tools/list` read at most.
const MAX_PAGES: usize = 64;

/// The restart delay after `failures` consecutive failures (1-based).
pub fn backoff(failures: u32) -> Duration {
    let shift = failures.saturating_sub(1).min(16);
    BACKOFF_MIN.saturating_mul(1u32 << shift).min(BACKOFF_MAX)
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The write end of a process's stdin, shared by every caller.
type Stdin = Arc<tokio::sync::Mutex<tokio::process::ChildStdin>>;

/// A request as it goes on the wire, serialised straight from borrowed
/// parts (no intermediate `Value` map per call).
#[derive(serde::Serialize)]
struct OutgoingRequest<'a, P> {
    jsonrpc: &'static str,
    id: u64,
    method: &'a str,
    params: &'a P,
}

/// One live connection to a running process.
struct Conn {
    stdin: Stdin,
    pending: Mutex<HashMap<u64, oneshot::Sender<Result<Value, RpcError>>>>,
    next_id: AtomicU64,
    alive: AtomicBool,
    /// What the process announced in its `initialize` answer.
    offers: std::sync::OnceLock<Offers>,
}

impl Conn {
    fn new(stdin: tokio::process::ChildStdin) -> Self {
        Self {
            stdin: Arc::new(tokio::sync::Mutex::new(stdin)),
            pending: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            alive: AtomicBool::new(true),
            offers: std::sync::OnceLock::new(),
        }
    }

    async fn send(&self, msg: &impl serde::Serialize) -> Result<(), CallError> {
        let mut line = Vec::with_capacity(256);
        serde_json::to_writer(&mut line, msg).map_err(|e| CallError::Protocol(e.to_string()))?;
        line.push(b'\n');
        self.write_line(line).await
    }

    /// Writes one message line on the process's stdin.
    ///
    /// The caller writes it itself rather than handing it to a writer
    /// task: a hand-off costs a task wake-up on every call, and a pipe with
    /// room (the common case) takes the whole line at once without waiting.
    /// Only when the pipe is full does a task take over the rest, holding
    /// the lock until it is written, so that a caller that gives up (its
    /// future dropped on a timeout or a client that went away) never leaves
    /// half a message for the next one to be appended to.
    async fn write_line(&self, line: Vec<u8>) -> Result<(), CallError> {
        let closed = || CallError::Unavailable("the server's stdin is closed".into());
        let mut stdin = self.stdin.clone().lock_owned().await;
        let mut written = 0;
        while written < line.len() {
            // One poll: a pipe write either takes some bytes at once or
            // takes none and reports that it would wait.
            match stdin
                .write(line.get(written..).unwrap_or_default())
                .now_or_never()
            {
                Some(Ok(0) | Err(_)) => return Err(closed()),
                Some(Ok(n)) => written += n,
                None => break,
            }
        }
        if written == line.len() {
            return Ok(());
        }
        tokio::spawn(async move {
            let rest = line.get(written..).unwrap_or_default();
            stdin.write_all(rest).await
        })
        .await
        .map_err(|_| closed())?
        .map_err(|_| closed())
    }

    /// Sends a request and waits for its answer; `timeout` covers both,
    /// since writing waits too when a server stops reading its stdin and
    /// the pipe fills up.
    async fn request(
        self: &Arc<Self>,
        method: &str,
        params: &(impl serde::Serialize + Sync),
        timeout: Duration,
    ) -> Result<Value, CallError> {
        if !self.alive.load(Ordering::SeqCst) {
            return Err(CallError::Unavailable("the server exited".into()));
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        if let Ok(mut p) = self.pending.lock() {
            p.insert(id, tx);
        }
        let msg = OutgoingRequest {
            jsonrpc: "2.0",
            id,
            method,
            params,
        };
        match tokio::time::timeout_at(deadline, self.send(&msg)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                self.forget(id);
                return Err(e);
            }
            Err(_) => {
                self.forget(id);
                return Err(CallError::Timeout(timeout));
            }
        }
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(Ok(v))) => Ok(v),
            Ok(Ok(Err(e))) => Err(CallError::Rpc(e)),
            Ok(Err(_)) => Err(CallError::Unavailable(
                "the server exited before it answered".into(),
            )),
            Err(_) => {
                self.forget(id);
                // Tell the server to stop working on it (MCP cancellation),
                // from another task: a hung server may not read its stdin,
                // and the caller must not wait for that.
                let conn = self.clone();
                tokio::spawn(async move {
                    let cancel = protocol::notification(
                        "notifications/cancelled",
                        Some(json!({"requestId": id, "reason": "aibox: the call timed out"})),
                    );
                    let _ = conn.send(&cancel).await;
                });
                Err(CallError::Timeout(timeout))
            }
        }
    }

    fn forget(&self, id: u64) {
        if let Ok(mut p) = self.pending.lock() {
            p.remove(&id);
        }
    }

    fn resolve(&self, id: u64, outcome: Result<Value, RpcError>) {
        let tx = self.pending.lock().ok().and_then(|mut p| p.remove(&id));
        if let Some(tx) = tx {
            let _ = tx.send(outcome);
        }
    }

    /// Marks the connection dead; every call in flight fails at once.
    fn close(&self) {
        self.alive.store(false, Ordering::SeqCst);
        if let Ok(mut p) = self.pending.lock() {
            p.clear();
        }
    }
}

#[derive(Debug)]
struct Status {
    state: HealthState,
    pid: Option<u32>,
    restarts: u32,
    consecutive_failures: u32,
    last_error: Option<String>,
    next_attempt: Option<Instant>,
}

struct Inner {
    name: String,
    spec: StdioSpec,
    audit: Arc<dyn ToolAudit>,
    secrets: Arc<dyn SecretSource>,
    sandbox: SandboxDeps,
    startup_wait: Duration,
    conn: RwLock<Option<Arc<Conn>>>,
    tools: RwLock<Arc<Vec<ToolInfo>>>,
    status: Mutex<Status>,
    /// Bumped on every state change, so waiters re-check.
    changed: watch::Sender<u64>,
    stop: watch::Sender<bool>,
}

/// What sandboxed servers need besides their profile: the launcher
/// program (`aibox` itself, run as `aibox sandbox-exec`) and the egress
/// seam their proxy sends everything through.
#[derive(Clone)]
pub struct SandboxDeps {
    /// The launcher: normally `/proc/self/exe`, the running aibox binary.
    pub launcher: PathBuf,
    /// The egress guard for the sandbox proxy.
    pub egress: Arc<dyn HttpEgress>,
    /// Where the current pid of each sandboxed server is kept, for the
    /// kernel's violation reports.
    pub pids: Arc<crate::sandbox_watch::ServerPids>,
}

/// How long a launcher may take to confine itself and report.
pub const LAUNCH_REPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// A supervised stdio tool server.
pub struct StdioServer {
    inner: Arc<Inner>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl StdioServer {
    /// Starts supervising `spec` (the first spawn happens in the background).
    /// Calls and tool lists wait up to `startup_wait` for a process that is
    /// (re)starting.
    pub fn start(
        name: &str,
        spec: StdioSpec,
        audit: Arc<dyn ToolAudit>,
        secrets: Arc<dyn SecretSource>,
        sandbox: SandboxDeps,
        startup_wait: Duration,
    ) -> Self {
        let inner = Arc::new(Inner {
            name: name.to_owned(),
            spec,
            audit,
            secrets,
            sandbox,
            startup_wait,
            conn: RwLock::new(None),
            tools: RwLock::new(Arc::new(Vec::new())),
            status: Mutex::new(Status {
                state: HealthState::Starting,
                pid: None,
                restarts: 0,
                consecutive_failures: 0,
                last_error: None,
                next_attempt: None,
            }),
            changed: watch::channel(0).0,
            stop: watch::channel(false).0,
        });
        let task = tokio::spawn(supervise(inner.clone()));
        Self {
            inner,
            task: Mutex::new(Some(task)),
        }
    }

    /// The live connection, waiting up to `wait` for a process that is
    /// starting for the first time or being restarted after one failure. A
    /// server that failed twice in a row is not waited for: one broken
    /// server must not slow down every tool list.
    async fn live_conn(&self, wait: Duration) -> Result<Arc<Conn>, CallError> {
        // The common case, a running process, needs no subscription.
        if let Some(c) = self.inner.current()
            && c.alive.load(Ordering::SeqCst)
        {
            return Ok(c);
        }
        let mut changed = self.inner.changed.subscribe();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(c) = self.inner.current()
                && c.alive.load(Ordering::SeqCst)
            {
                return Ok(c);
            }
            if !self.inner.worth_waiting(deadline.into_std()) {
                return Err(CallError::Unavailable(self.inner.unavailable_reason()));
            }
            match tokio::time::timeout_at(deadline, changed.changed()).await {
                Ok(Ok(())) => continue,
                _ => return Err(CallError::Unavailable(self.inner.unavailable_reason())),
            }
        }
    }
}

impl StdioServer {
    /// One request to the live process, waiting for a (re)starting one
    /// within `timeout`.
    async fn send_request(
        &self,
        method: &str,
        params: &(impl serde::Serialize + Sync),
        timeout: Duration,
    ) -> Result<Value, CallError> {
        let started = tokio::time::Instant::now();
        let conn = self.live_conn(self.inner.startup_wait.min(timeout)).await?;
        let left = timeout.saturating_sub(started.elapsed());
        conn.request(method, params, left)
            .await
            .map_err(|e| match e {
                CallError::Timeout(_) => CallError::Timeout(timeout),
                other => other,
            })
    }
}

impl Inner {
    fn worth_waiting(&self, deadline: Instant) -> bool {
        let Ok(s) = self.status.lock() else {
            return false;
        };
        match s.state {
            HealthState::Starting | HealthState::Ready => true,
            // One failure is worth waiting for (a crash, then a quick
            // restart); a second in a row is a loop, not a hiccup.
            HealthState::Restarting => {
                s.consecutive_failures < 2 && s.next_attempt.is_none_or(|at| at < deadline)
            }
            HealthState::Unreachable | HealthState::Stopped => false,
        }
    }

    fn current(&self) -> Option<Arc<Conn>> {
        self.conn.read().ok().and_then(|c| c.clone())
    }

    fn set_status(&self, f: impl FnOnce(&mut Status)) {
        if let Ok(mut s) = self.status.lock() {
            f(&mut s);
        }
        self.changed.send_modify(|g| *g = g.wrapping_add(1));
    }

    fn unavailable_reason(&self) -> String {
        let Ok(s) = self.status.lock() else {
            return "the server is not available".into();
        };
        match s.state {
            HealthState::Starting => "the server is still starting; retry shortly".into(),
            HealthState::Stopped => "the server is stopped".into(),
            _ => match s.next_attempt {
                Some(at) => format!(
                    "the server is restarting after {} failure(s); next attempt in {} ms",
                    s.consecutive_failures,
                    at.saturating_duration_since(Instant::now()).as_millis()
                ),
                None => "the server is restarting".into(),
            },
        }
    }

    async fn sandbox(&self, what: &str, detail: String) -> Result<(), String> {
        self.audit
            .record_sandbox(SandboxRecord {
                at_ms: now_ms(),
                kind: EventKind::Sandbox {
                    server: self.name.clone(),
                    what: what.to_owned(),
                    detail,
                },
            })
            .await
    }
}

/// Kills the process group when dropped, so that every way out of a run
/// (errors included) leaves no process behind.
struct GroupGuard(Option<rustix::process::Pid>);

impl GroupGuard {
    fn signal(&self, sig: rustix::process::Signal) {
        if let Some(pid) = self.0 {
            let _ = rustix::process::kill_process_group(pid, sig);
        }
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.signal(rustix::process::Signal::KILL);
    }
}

fn apply_limits(pid: u32, limits: &Limits) -> Result<(), String> {
    use rlimit::Resource;
    let pid = i32::try_from(pid).map_err(|_| "pid out of range".to_owned())?;
    let wanted = [
        (Resource::CPU, "cpu_secs", limits.cpu_secs, 1),
        (Resource::AS, "memory_mb", limits.memory_mb, 1024 * 1024),
        (Resource::NOFILE, "open_files", limits.open_files, 1),
        (Resource::NPROC, "processes", limits.processes, 1),
    ];
    for (res, field, value, unit) in wanted {
        let Some(v) = value else { continue };
        let v = v.saturating_mul(unit);
        let (mut soft, mut hard) = (0u64, 0u64);
        rlimit::prlimit(pid, res, None, Some((&mut soft, &mut hard)))
            .map_err(|e| format!("cannot read limit {field}: {e}"))?;
        // An unprivileged process may lower its hard limit, never raise it.
        let v = v.min(hard);
        rlimit::prlimit(pid, res, Some((v, v)), None)
            .map_err(|e| format!("cannot apply limits.{field}: {e}"))?;
    }
    Ok(())
}

fn spawn_detail(spec: &StdioSpec, pid: u32) -> String {
    let mut env: Vec<&str> = spec.env.keys().map(String::as_str).collect();
    if !spec.env.contains_key("PATH") {
        env.push("PATH");
    }
    env.sort_unstable();
    let secrets: Vec<&str> = spec.secrets.keys().map(String::as_str).collect();
    let l = &spec.limits;
    let mut args = serde_json::to_string(&spec.args).unwrap_or_default();
    if args.len() > 512 {
        let mut cut = 512;
        while !args.is_char_boundary(cut) {
            cut -= 1;
        }
        args.truncate(cut);
        args.push('…');
    }
    format!(
        "pid={pid} command={} args={args} env=[{}] secrets=[{}] cwd={} limits=cpu_secs:{:?},memory_mb:{:?},open_files:{:?},processes:{:?}",
        spec.command,
        env.join(","),
        secrets.join(","),
        spec.cwd
            .as_ref()
            .map_or_else(|| "(inherited)".to_owned(), |c| c.display().to_string()),
        l.cpu_secs,
        l.memory_mb,
        l.open_files,
        l.processes,
    )
}

async fn supervise(inner: Arc<Inner>) {
    let mut stop = inner.stop.subscribe();
    let mut failures: u32 = 0;
    loop {
        if *stop.borrow() {
            break;
        }
        let started = Instant::now();
        let why = run_once(&inner, &mut stop).await;
        if *stop.borrow() {
            break;
        }
        if started.elapsed() >= HEALTHY_AFTER {
            failures = 0;
        }
        failures = failures.saturating_add(1);
        let delay = backoff(failures);
        inner.set_status(|s| {
            s.state = HealthState::Restarting;
            s.pid = None;
            s.consecutive_failures = failures;
            s.last_error = Some(why.clone());
            s.next_attempt = Some(Instant::now() + delay);
        });
        if failures >= CRASH_LOOP_AFTER {
            tracing::error!(server = %inner.name, failures, delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX), reason = %why,
                "MCP server is in a crash loop; fix its command, environment or secrets in data/mcp/registry.json");
        } else {
            tracing::warn!(server = %inner.name, failures, delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX), reason = %why,
                "MCP server stopped; restarting after a delay");
        }
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            _ = stop.changed() => {}
        }
        inner.set_status(|s| s.restarts = s.restarts.saturating_add(1));
    }
    inner.set_status(|s| {
        s.state = HealthState::Stopped;
        s.pid = None;
        s.next_attempt = None;
    });
}

/// Runs the process once; returns why the run ended.
async fn run_once(inner: &Arc<Inner>, stop: &mut watch::Receiver<bool>) -> String {
    let spec = &inner.spec;
    let mut env: Vec<(String, String)> = Vec::new();
    if !spec.env.contains_key("PATH") {
        env.push(("PATH".into(), SAFE_PATH.into()));
    }
    env.extend(spec.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    let mut secret_env = Vec::new();
    for (var, secret) in &spec.secrets {
        match inner.secrets.get(&inner.name, secret).await {
            Ok(s) => secret_env.push((var.clone(), s)),
            Err(e) => return e,
        }
    }

    // A sandboxed server is started through the launcher, which confines
    // itself and then execs the server (see aibox-sandbox).
    let control = match &spec.sandbox {
        Some(_) => match aibox_sandbox::ControlSocket::create(&inner.name) {
            Ok(c) => Some(c),
            Err(e) => {
                return format!(
                    "cannot create the sandbox control socket in {}: {e}; fix: make the temporary directory (TMPDIR) writable by aibox",
                    std::env::temp_dir().display()
                );
            }
        },
        None => None,
    };
    let mut cmd = match (&spec.sandbox, &control) {
        (Some(profile), Some(control)) => {
            let request = aibox_sandbox::LaunchRequest {
                profile: profile.clone(),
                limits: aibox_sandbox::RLimits {
                    cpu_secs: spec.limits.cpu_secs,
                    memory_mb: spec.limits.memory_mb,
                    open_files: spec.limits.open_files,
                    processes: spec.limits.processes,
                },
                command: spec.command.clone(),
                args: spec.args.clone(),
                control: Some(control.path().to_path_buf()),
                probe: false,
            };
            let json = match serde_json::to_string(&request) {
                Ok(j) => j,
                Err(e) => return format!("cannot encode the launch request: {e}"),
            };
            let mut c = Command::new(&inner.sandbox.launcher);
            c.arg(aibox_sandbox::LAUNCHER_SUBCOMMAND)
                .env_clear()
                .env(aibox_sandbox::REQUEST_ENV, json);
            c
        }
        _ => {
            let mut c = Command::new(&spec.command);
            c.args(&spec.args).env_clear();
            c
        }
    };
    cmd.envs(env)
        .envs(secret_env.iter().map(|(k, v)| (k.as_str(), v.expose())))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .process_group(0);
    if let Some(cwd) = &spec.cwd {
        cmd.current_dir(cwd);
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return format!(
                "cannot start '{}': {e}; check \"command\" and \"cwd\" in registry.json",
                spec.command
            );
        }
    };
    drop(secret_env);
    let Some(pid) = child.id() else {
        return "the process exited at once".into();
    };
    let guard = GroupGuard(
        i32::try_from(pid)
            .ok()
            .and_then(rustix::process::Pid::from_raw),
    );
    // Taken before anything waits on the child: tokio's `Child::wait`
    // closes a stdin still held by the child handle.
    let (Some(stdin), Some(stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return "the process has no stdio pipes".into();
    };
    let mut detail = spawn_detail(spec, pid);
    let mut _proxy = None;
    if let (Some(profile), Some(control)) = (&spec.sandbox, control) {
        let mut received = tokio::task::spawn_blocking(move || {
            let r = control.receive(LAUNCH_REPORT_TIMEOUT);
            drop(control);
            r
        });
        let received = tokio::select! {
            r = &mut received => r,
            status = child.wait() => {
                // A launcher that refuses reports first and exits at once:
                // the report may still be on its way.
                match tokio::time::timeout(Duration::from_secs(1), &mut received).await {
                    Ok(r) => r,
                    Err(_) => {
                        let why = format!("the sandbox launcher exited before it reported ({})", exit_text(status));
                        let _ = inner.sandbox("refused", format!("pid={pid} {} {why}", profile.summary())).await;
                        return why;
                    }
                }
            }
        };
        let (report, listener) = match received {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return format!("sandbox launcher: {e}"),
            Err(e) => return format!("sandbox launcher: {e}"),
        };
        detail.push_str(&format!(
            " sandbox=[{}] applied=[{}] missing=[{}]",
            profile.summary(),
            report.applied.join(","),
            report.missing.join("; ")
        ));
        if report.refused {
            let why = format!(
                "sandbox mode require: missing {}; the server was not started; fix: make the protection available on this host (see `aibox doctor`) or set \"mode\": \"best_effort\" in its sandbox profile",
                report.missing.join("; ")
            );
            tracing::error!(server = %inner.name, %detail, "MCP server refused: its sandbox cannot be applied");
            let _ = inner.sandbox("refused", detail).await;
            return why;
        }
        if !report.missing.is_empty() {
            tracing::warn!(server = %inner.name, missing = %report.missing.join("; "),
                "MCP SERVER RUNS WITH A WEAKER SANDBOX THAN ITS PROFILE ASKS (best_effort): these protections are missing on this host");
            if let Err(e) = inner
                .sandbox(
                    "degraded",
                    format!("pid={pid} missing=[{}]", report.missing.join("; ")),
                )
                .await
            {
                return format!(
                    "the degraded sandbox could not be recorded in the audit log ({e})"
                );
            }
        }
        inner.sandbox.pids.set(&inner.name, pid);
        if let Some(fd) = listener {
            match crate::egress_proxy::spawn(
                inner.name.clone(),
                std::net::TcpListener::from(fd),
                inner.sandbox.egress.clone(),
                inner.audit.clone(),
            ) {
                Ok(p) => _proxy = Some(p),
                Err(e) => return format!("cannot serve the sandbox proxy: {e}"),
            }
        } else if profile.network == aibox_sandbox::Network::Proxy && report.missing.is_empty() {
            return "the sandbox launcher sent no proxy socket".into();
        }
    } else {
        if let Err(e) = apply_limits(pid, &spec.limits) {
            let _ = inner.sandbox("degraded", format!("pid={pid} {e}")).await;
            return format!("{e}; the process was killed (limits are not optional)");
        }
        detail.push_str(" sandbox=none");
        tracing::warn!(server = %inner.name, "MCP server runs unconfined: it has no \"sandbox\" profile in registry.json");
    }
    tracing::info!(server = %inner.name, %detail, "MCP server spawned");
    if let Err(e) = inner.sandbox("spawn", detail).await {
        tracing::error!(server = %inner.name, error = %e, "cannot record the spawn in the audit log; killing the process");
        return format!("the spawn could not be recorded in the audit log ({e})");
    }
    inner.set_status(|s| s.pid = Some(pid));

    let conn = Arc::new(Conn::new(stdin));
    let (refresh_tx, mut refresh_rx) = mpsc::channel::<()>(1);
    let mut reader = tokio::spawn(read_loop(
        inner.name.clone(),
        stdout,
        conn.clone(),
        refresh_tx,
    ));
    let stderr_task = tokio::spawn(log_stderr(inner.name.clone(), stderr));

    let ended = async {
        let handshake = async {
            let init = conn
                .request(
                    "initialize",
                    &protocol::client_initialize_params(protocol::LATEST_PROTOCOL_VERSION),
                    HANDSHAKE_TIMEOUT,
                )
                .await
                .map_err(|e| format!("initialize failed: {e}"))?;
            let version = init
                .get("protocolVersion")
                .and_then(Value::as_str)
                .unwrap_or("");
            if !protocol::UPSTREAM_PROTOCOL_VERSIONS.contains(&version) {
                return Err(format!(
                    "the server speaks MCP revision '{}', which aibox does not",
                    crate::names::printable(version)
                ));
            }
            let _ = conn.offers.set(Offers::from_initialize(&init));
            conn.send(&protocol::notification("notifications/initialized", None))
                .await
                .map_err(|e| e.to_string())?;
            fetch_tools(&inner.name, &conn, HANDSHAKE_TIMEOUT)
                .await
                .map_err(|e| format!("tools/list failed: {e}"))
        };
        let tools = tokio::select! {
            r = handshake => match r {
                Ok(t) => t,
                Err(e) => return e,
            },
            status = child.wait() => return inner.exited(pid, status).await,
            _ = stop.changed() => {
                stop_child(&guard, &mut child).await;
                return "stopped".into();
            }
        };
        let count = tools.len();
        if let Ok(mut t) = inner.tools.write() {
            *t = Arc::new(tools);
        }
        if let Ok(mut c) = inner.conn.write() {
            *c = Some(conn.clone());
        }
        inner.set_status(|s| {
            s.state = HealthState::Ready;
            s.last_error = None;
            s.next_attempt = None;
        });
        tracing::info!(server = %inner.name, pid, tools = count, "MCP server ready");
        loop {
            tokio::select! {
                status = child.wait() => return inner.exited(pid, status).await,
                _ = stop.changed() => {
                    stop_child(&guard, &mut child).await;
                    return "stopped".into();
                }
                _ = &mut reader => {
                    // A closed stdout usually means the process died: its
                    // exit status (a kernel kill is a sandbox violation)
                    // says more than the closed pipe.
                    if let Ok(status) = tokio::time::timeout(EXIT_GRACE, child.wait()).await {
                        return inner.exited(pid, status).await;
                    }
                    stop_child(&guard, &mut child).await;
                    return "the server closed its stdout or wrote an oversized message".into();
                }
                Some(()) = refresh_rx.recv() => {
                    match fetch_tools(&inner.name, &conn, HANDSHAKE_TIMEOUT).await {
                        Ok(t) => {
                            tracing::info!(server = %inner.name, tools = t.len(), "MCP server's tool list changed");
                            if let Ok(mut cur) = inner.tools.write() {
                                *cur = Arc::new(t);
                            }
                        }
                        Err(e) => tracing::warn!(server = %inner.name, error = %e, "cannot refresh the tool list"),
                    }
                }
            }
        }
    }
    .await;

    conn.close();
    if let Ok(mut c) = inner.conn.write() {
        *c = None;
    }
    reader.abort();
    stderr_task.abort();
    drop(guard);
    let _ = child.wait().await;
    let _ = inner
        .sandbox("exit", format!("pid={pid} {ended}"))
        .await
        .map_err(|e| tracing::error!(server = %inner.name, error = %e, "cannot record the exit in the audit log"));
    ended
}

/// What a signal that ended a server says about the sandbox, if anything:
/// these are the violations the kernel reports to aibox.
pub fn violation_of(status: &std::process::ExitStatus) -> Option<String> {
    use std::os::unix::process::ExitStatusExt as _;
    let sig = status.signal()?;
    let what = match sig {
        31 => "SIGSYS: a system call on the seccomp deny-list (on_violation kill)",
        24 => "SIGXCPU: the CPU time limit (limits.cpu_secs) was reached",
        9 => "SIGKILL: killed by the kernel (the CPU hard limit, or out of memory)",
        25 => "SIGXFSZ: the file size limit was reached",
        _ => return None,
    };
    Some(what.to_owned())
}

impl Inner {
    /// Describes the end of a run, auditing a violation the kernel reported.
    async fn exited(&self, pid: u32, status: std::io::Result<std::process::ExitStatus>) -> String {
        if self.spec.sandbox.is_some()
            && let Ok(s) = &status
            && let Some(v) = violation_of(s)
        {
            tracing::warn!(server = %self.name, pid, violation = %v, "MCP server killed by the sandbox");
            if let Err(e) = self.sandbox("violation", format!("pid={pid} {v}")).await {
                tracing::error!(server = %self.name, error = %e, "cannot record the violation in the audit log");
            }
        }
        exit_text(status)
    }
}

fn exit_text(status: std::io::Result<std::process::ExitStatus>) -> String {
    match status {
        Ok(s) => format!("the process exited ({s})"),
        Err(e) => format!("cannot wait for the process: {e}"),
    }
}

async fn stop_child(guard: &GroupGuard, child: &mut Child) {
    guard.signal(rustix::process::Signal::TERM);
    if tokio::time::timeout(STOP_GRACE, child.wait())
        .await
        .is_err()
    {
        guard.signal(rustix::process::Signal::KILL);
        let _ = child.wait().await;
    }
}

async fn fetch_tools(
    server: &str,
    conn: &Arc<Conn>,
    timeout: Duration,
) -> Result<Vec<ToolInfo>, CallError> {
    let mut all = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..MAX_PAGES {
        let params = match &cursor {
            Some(c) => json!({"cursor": c}),
            None => json!({}),
        };
        let result = conn.request("tools/list", &params, timeout).await?;
        let (tools, next) = tools_page(&result)?;
        all.extend(tools);
        match next {
            Some(n) if Some(&n) != cursor.as_ref() => cursor = Some(n),
            _ => break,
        }
    }
    Ok(accept_tools(server, all))
}

async fn read_loop(
    server: String,
    stdout: tokio::process::ChildStdout,
    conn: Arc<Conn>,
    refresh: mpsc::Sender<()>,
) {
    let mut reader = BufReader::new(stdout);
    let mut buf = Vec::with_capacity(8192);
    let limit = u64::try_from(MAX_MESSAGE_BYTES).unwrap_or(u64::MAX);
    loop {
        buf.clear();
        match (&mut reader)
            .take(limit + 1)
            .read_until(b'\n', &mut buf)
            .await
        {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        if buf.len() > MAX_MESSAGE_BYTES {
            tracing::error!(server = %server, max = MAX_MESSAGE_BYTES, "the MCP server wrote a message larger than allowed; stopping it");
            break;
        }
        let text = String::from_utf8_lossy(&buf);
        let text = text.trim();
        if text.is_empty() {
            continue;
        }
        let value: Value = match serde_json::from_str(text) {
            Ok(v) => v,
            Err(_) => {
                tracing::warn!(server = %server, "the MCP server wrote a non-JSON line on stdout (MCP forbids that); ignored");
                continue;
            }
        };
        match value {
            Value::Array(items) => {
                for m in items {
                    handle_message(&server, &conn, &refresh, m);
                }
            }
            m => handle_message(&server, &conn, &refresh, m),
        }
    }
    conn.close();
}

fn handle_message(server: &str, conn: &Arc<Conn>, refresh: &mpsc::Sender<()>, m: Value) {
    match protocol::classify(m) {
        Ok(Message::Response { id, outcome }) => match id.as_u64() {
            Some(id) => conn.resolve(id, outcome),
            None => tracing::debug!(server, "a response with an id aibox did not send; ignored"),
        },
        Ok(Message::Request { id, method, .. }) => {
            // aibox offers tool servers no client features (roots,
            // sampling, elicitation): a server must not reach back to a
            // model or a user through the gateway.
            let reply = if method == "ping" {
                protocol::response(&id, json!({}))
            } else {
                protocol::error_response(
                    Some(&id),
                    &RpcError::new(
                        codes::METHOD_NOT_FOUND,
                        format!(
                            "aibox does not offer '{}' to tool servers",
                            crate::names::printable(&method)
                        ),
                    ),
                )
            };
            // Answered from another task: the reader must never wait for
            // stdin, or a server that stops reading its stdin until its
            // stdout is read would block both for good.
            let conn = conn.clone();
            tokio::spawn(async move {
                let _ = conn.send(&reply).await;
            });
        }
        Ok(Message::Notification { method, params }) => match method.as_str() {
            "notifications/tools/list_changed" => {
                let _ = refresh.try_send(());
            }
            "notifications/message" => {
                let params = params.unwrap_or(Value::Null);
                tracing::debug!(server, %params, "MCP server log message");
            }
            _ => {}
        },
        Err(e) => {
            tracing::warn!(server, error = %e.message, "invalid JSON-RPC message from the MCP server; ignored")
        }
    }
}

async fn log_stderr(server: String, stderr: tokio::process::ChildStderr) {
    let mut reader = BufReader::new(stderr);
    let mut buf = Vec::with_capacity(1024);
    let limit = u64::try_from(STDERR_LINE_MAX).unwrap_or(4096);
    loop {
        buf.clear();
        match (&mut reader).take(limit).read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let line = String::from_utf8_lossy(&buf);
        let line = line.trim_end();
        if !line.is_empty() {
            tracing::info!(target: "aibox_mcp::stderr", server = %server, line = %line, "MCP server stderr");
        }
    }
}

impl Upstream for StdioServer {
    fn tools(&self) -> BoxFuture<'_, Result<Arc<Vec<ToolInfo>>, CallError>> {
        Box::pin(async move {
            self.live_conn(self.inner.startup_wait).await?;
            Ok(self
                .inner
                .tools
                .read()
                .map(|t| t.clone())
                .unwrap_or_default())
        })
    }

    fn call<'a>(
        &'a self,
        tool: &'a str,
        arguments: Value,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<Value, CallError>> {
        // The params are serialised straight from their parts onto the
        // wire, without building a map for them first.
        #[derive(serde::Serialize)]
        struct CallParams<'a> {
            name: &'a str,
            arguments: Value,
        }
        Box::pin(async move {
            let params = CallParams {
                name: tool,
                arguments,
            };
            self.send_request("tools/call", &params, timeout).await
        })
    }

    fn offers(&self) -> BoxFuture<'_, Result<Offers, CallError>> {
        Box::pin(async move {
            let conn = self.live_conn(self.inner.startup_wait).await?;
            Ok(conn.offers.get().copied().unwrap_or_default())
        })
    }

    fn request<'a>(
        &'a self,
        method: &'a str,
        params: Value,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<Value, CallError>> {
        Box::pin(async move { self.send_request(method, &params, timeout).await })
    }

    fn health(&self) -> ServerHealth {
        let tools = self.inner.tools.read().map(|t| t.len()).unwrap_or(0);
        let s = self.inner.status.lock();
        let (state, pid, restarts, consecutive_failures, last_error, next) = match &s {
            Ok(s) => (
                s.state,
                s.pid,
                s.restarts,
                s.consecutive_failures,
                s.last_error.clone(),
                s.next_attempt,
            ),
            Err(_) => (HealthState::Restarting, None, 0, 0, None, None),
        };
        ServerHealth {
            name: self.inner.name.clone(),
            transport: "stdio",
            state,
            pid,
            restarts,
            consecutive_failures,
            last_error,
            tools,
            next_attempt_in_ms: next.map(|at| {
                u64::try_from(at.saturating_duration_since(Instant::now()).as_millis())
                    .unwrap_or(u64::MAX)
            }),
        }
    }

    fn restart(&self) -> Result<String, String> {
        // The supervisor sees the process group end and starts a new
        // process, recording both in the audit log as for any exit.
        let pid = self
            .inner
            .status
            .lock()
            .ok()
            .and_then(|s| s.pid)
            .ok_or_else(|| {
                "the server has no running process now (starting or restarting)".to_owned()
            })?;
        let group = i32::try_from(pid)
            .ok()
            .and_then(rustix::process::Pid::from_raw)
            .ok_or_else(|| format!("pid {pid} is out of range"))?;
        rustix::process::kill_process_group(group, rustix::process::Signal::TERM)
            .map_err(|e| format!("cannot signal process group {pid}: {e}"))?;
        Ok(format!(
            "pid={pid} terminated; the supervisor starts a new process"
        ))
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let _ = self.inner.stop.send(true);
            let task = self.task.lock().ok().and_then(|mut t| t.take());
            if let Some(task) = task {
                // The supervisor gives the process STOP_GRACE after SIGTERM.
                let _ = tokio::time::timeout(STOP_GRACE + Duration::from_secs(2), task).await;
            }
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!(backoff(1), Duration::from_millis(500));
        assert_eq!(backoff(2), Duration::from_secs(1));
        assert_eq!(backoff(3), Duration::from_secs(2));
        assert_eq!(backoff(8), Duration::from_secs(60));
        assert_eq!(backoff(1000), BACKOFF_MAX);
    }

    #[test]
    fn spawn_detail_names_variables_never_values() {
        let spec = StdioSpec {
            command: "/usr/bin/python3".into(),
            args: vec!["server.py".into()],
            env: [("LOG_LEVEL".to_owned(), "debug-value".to_owned())].into(),
            secrets: [("GITHUB_TOKEN".to_owned(), "gh".to_owned())].into(),
            cwd: None,
            limits: Limits {
                cpu_secs: Some(5),
                ..Limits::default()
            },
            sandbox: None,
        };
        let d = spawn_detail(&spec, 42);
        assert!(d.contains("pid=42"), "{d}");
        assert!(d.contains("env=[LOG_LEVEL,PATH]"), "{d}");
        assert!(d.contains("secrets=[GITHUB_TOKEN]"), "{d}");
        assert!(d.contains("cpu_secs:Some(5)"), "{d}");
        assert!(!d.contains("debug-value"), "{d}");
    }
}
