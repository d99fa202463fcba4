//! Sandbox profiles: the `sandbox` object of a stdio server in
//! `registry.json`, parsed with unknown fields refused ([`RawProfile`]) and
//! validated into a [`SandboxProfile`]. Pure: no IO, no clock.
//!
//! Also the two messages between aibox and its launcher: the
//! [`LaunchRequest`] aibox hands to `aibox sandbox-exec`, and the
//! [`LaunchReport`] the launcher sends back before it execs the server.

use std::collections::BTreeSet;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::seccomp;

/// The uid and gid a sandboxed server runs as when aibox runs as root and
/// the profile names none (`nobody`/`nogroup` on Debian).
pub const NOBODY: u32 = 65534;

/// Paths every sandboxed server may read (and execute from): the system's
/// programs and libraries and the few files of `/etc` a runtime needs to
/// start, resolve names and verify TLS. `/etc` as a whole is not here, so
/// `/etc/shadow` and friends stay out of reach. Missing paths are skipped.
pub const SYSTEM_READ: &[&str] = &[
    "/usr",
    "/lib",
    "/lib64",
    "/bin",
    "/sbin",
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/localtime",
    "/etc/hosts",
    "/etc/resolv.conf",
    "/etc/nsswitch.conf",
    "/etc/host.conf",
    "/etc/gai.conf",
    "/etc/ssl",
    "/etc/ca-certificates",
    "/etc/mime.types",
    "/dev/urandom",
    "/dev/random",
    "/dev/zero",
];

/// Paths every sandboxed server may write.
pub const SYSTEM_WRITE: &[&str] = &["/dev/null"];

/// A profile problem: which key, what is wrong, and the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("sandbox.{key}: {problem}; fix: {fix}")]
pub struct ProfileError {
    /// The key under `sandbox`.
    pub key: &'static str,
    /// What is wrong.
    pub problem: String,
    /// What to do.
    pub fix: String,
}

/// What to do when a protection is not available on this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Refuse to start the server.
    #[default]
    Require,
    /// Start it with a loud, audited warning naming what is missing.
    BestEffort,
}

/// The server's network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Network {
    /// Its own network namespace whose only way out is aibox's HTTP proxy
    /// (CONNECT and plain HTTP), which sends everything through the
    /// SSRF-safe egress guard.
    #[default]
    Proxy,
    /// Its own network namespace with nothing but a loopback interface.
    None,
    /// The host's network (no isolation: the egress blocks do not hold).
    Host,
}

/// What a call on the seccomp deny-list gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnViolation {
    /// The call fails with `EPERM`; the server keeps running.
    #[default]
    Errno,
    /// The kernel kills the server with `SIGSYS` (audited as a violation).
    Kill,
}

/// The `sandbox` object as written (every key optional, unknown keys
/// refused).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProfile {
    /// `require` or `best_effort`.
    pub mode: Option<Mode>,
    /// Extra paths the server may read and execute from.
    pub read: Option<Vec<PathBuf>>,
    /// Paths the server may read and write (beneath each).
    pub write: Option<Vec<PathBuf>>,
    /// Whether [`SYSTEM_READ`] and [`SYSTEM_WRITE`] are added.
    pub system_paths: Option<bool>,
    /// `proxy`, `none` or `host`.
    pub network: Option<Network>,
    /// Syscalls added to the default deny-list.
    pub seccomp_deny: Option<Vec<String>>,
    /// Syscalls removed from the default deny-list.
    pub seccomp_allow: Option<Vec<String>>,
    /// `errno` or `kill`.
    pub on_violation: Option<OnViolation>,
    /// The uid to run as (aibox running as root only; never 0).
    pub uid: Option<u32>,
    /// The gid to run as (aibox running as root only; never 0).
    pub gid: Option<u32>,
}

/// A validated profile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxProfile {
    /// What to do when a protection is missing.
    pub mode: Mode,
    /// Absolute, normalised paths the server may read and execute from.
    pub read: Vec<PathBuf>,
    /// Absolute, normalised paths the server may read and write.
    pub write: Vec<PathBuf>,
    /// Whether the system paths are added.
    pub system_paths: bool,
    /// The network.
    pub network: Network,
    /// The syscalls denied, by name, sorted.
    pub seccomp_deny: Vec<String>,
    /// What a denied call gets.
    pub on_violation: OnViolation,
    /// The uid, when aibox runs as root (default [`NOBODY`]).
    pub uid: u32,
    /// The gid, when aibox runs as root (default [`NOBODY`]).
    pub gid: u32,
}

impl Default for SandboxProfile {
    fn default() -> Self {
        Self {
            mode: Mode::Require,
            read: Vec::new(),
            write: Vec::new(),
            system_paths: true,
            network: Network::Proxy,
            seccomp_deny: seccomp::DEFAULT_DENY
                .iter()
                .map(|s| (*s).to_owned())
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect(),
            on_violation: OnViolation::Errno,
            uid: NOBODY,
            gid: NOBODY,
        }
    }
}

/// Makes `p` absolute-and-normalised or says why it cannot be: relative
/// paths and `..` are refused (a rule must say exactly what it opens).
fn clean_path(key: &'static str, p: &Path) -> Result<PathBuf, ProfileError> {
    let shown = p.display().to_string();
    if !p.is_absolute() {
        return Err(ProfileError {
            key,
            problem: format!("'{shown}' is not an absolute path"),
            fix: "write absolute paths (rules do not depend on the working directory)".into(),
        });
    }
    let mut out = PathBuf::from("/");
    for c in p.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(n) => out.push(n),
            Component::ParentDir | Component::Prefix(_) => {
                return Err(ProfileError {
                    key,
                    problem: format!("'{shown}' contains '..'"),
                    fix: "name the directory itself, without '..'".into(),
                });
            }
        }
    }
    if out == Path::new("/") {
        return Err(ProfileError {
            key,
            problem: "'/' would open the whole filesystem".into(),
            fix: "list the directories the server needs".into(),
        });
    }
    Ok(out)
}

impl RawProfile {
    /// Validates the profile.
    pub fn validate(self) -> Result<SandboxProfile, ProfileError> {
        let mut read = Vec::new();
        for p in self.read.unwrap_or_default() {
            read.push(clean_path("read", &p)?);
        }
        let mut write = Vec::new();
        for p in self.write.unwrap_or_default() {
            write.push(clean_path("write", &p)?);
        }
        let mut deny: BTreeSet<String> = seccomp::DEFAULT_DENY
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        for name in self.seccomp_deny.unwrap_or_default() {
            if !seccomp::known(&name) {
                return Err(ProfileError {
                    key: "seccomp_deny",
                    problem: format!("unknown syscall '{}'", printable(&name)),
                    fix: format!(
                        "use one of: {}",
                        seccomp::known_names().collect::<Vec<_>>().join(", ")
                    ),
                });
            }
            deny.insert(name);
        }
        for name in self.seccomp_allow.unwrap_or_default() {
            if !deny.remove(&name) {
                return Err(ProfileError {
                    key: "seccomp_allow",
                    problem: format!(
                        "'{}' is not on the deny-list, so allowing it changes nothing",
                        printable(&name)
                    ),
                    fix: "remove it (the default deny-list is in the README)".into(),
                });
            }
        }
        let id = |key: &'static str, v: Option<u32>| -> Result<u32, ProfileError> {
            match v {
                Some(0) => Err(ProfileError {
                    key,
                    problem: "0 is root".into(),
                    fix: format!("leave it unset ({NOBODY}) or name an unprivileged id"),
                }),
                Some(v) => Ok(v),
                None => Ok(NOBODY),
            }
        };
        Ok(SandboxProfile {
            mode: self.mode.unwrap_or_default(),
            read,
            write,
            system_paths: self.system_paths.unwrap_or(true),
            network: self.network.unwrap_or_default(),
            seccomp_deny: deny.into_iter().collect(),
            on_violation: self.on_violation.unwrap_or_default(),
            uid: id("uid", self.uid)?,
            gid: id("gid", self.gid)?,
        })
    }
}

fn printable(s: &str) -> String {
    s.chars()
        .take(64)
        .map(|c| if c.is_ascii_graphic() { c } else { '?' })
        .collect()
}

impl SandboxProfile {
    /// The read rules the launcher applies (system paths first).
    pub fn read_paths(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = if self.system_paths {
            SYSTEM_READ.iter().map(PathBuf::from).collect()
        } else {
            Vec::new()
        };
        v.extend(self.read.iter().cloned());
        v
    }

    /// The write rules the launcher applies.
    pub fn write_paths(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = if self.system_paths {
            SYSTEM_WRITE.iter().map(PathBuf::from).collect()
        } else {
            Vec::new()
        };
        v.extend(self.write.iter().cloned());
        v
    }

    /// A one-line summary for logs and audit events.
    pub fn summary(&self) -> String {
        let list = |v: &[PathBuf]| {
            v.iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(",")
        };
        format!(
            "mode={} network={} read=[{}] write=[{}] system_paths={} seccomp_deny={} on_violation={} uid={} gid={}",
            match self.mode {
                Mode::Require => "require",
                Mode::BestEffort => "best_effort",
            },
            match self.network {
                Network::Proxy => "proxy",
                Network::None => "none",
                Network::Host => "host",
            },
            list(&self.read),
            list(&self.write),
            self.system_paths,
            self.seccomp_deny.len(),
            match self.on_violation {
                OnViolation::Errno => "errno",
                OnViolation::Kill => "kill",
            },
            self.uid,
            self.gid,
        )
    }
}

/// Resource limits the launcher sets on itself before exec (`setrlimit`
/// semantics; unset means inherited).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RLimits {
    /// CPU seconds (`RLIMIT_CPU`).
    pub cpu_secs: Option<u64>,
    /// Address space in MiB (`RLIMIT_AS`).
    pub memory_mb: Option<u64>,
    /// Open file descriptors (`RLIMIT_NOFILE`).
    pub open_files: Option<u64>,
    /// Processes of the server's user (`RLIMIT_NPROC`).
    pub processes: Option<u64>,
}

/// What aibox asks the launcher to do (passed as JSON in
/// [`REQUEST_ENV`](crate::REQUEST_ENV), which the launcher removes from
/// the server's environment).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaunchRequest {
    /// The profile.
    pub profile: SandboxProfile,
    /// The resource limits.
    pub limits: RLimits,
    /// The program to exec.
    pub command: String,
    /// Its arguments.
    pub args: Vec<String>,
    /// aibox's per-spawn control socket (a Unix socket path), where the
    /// launcher sends its [`LaunchReport`] and, with a proxied network,
    /// the listening socket it opened inside the namespace. `None` in
    /// probe mode.
    pub control: Option<PathBuf>,
    /// Probe mode (`aibox doctor`): apply everything, print the report on
    /// stdout, exec nothing.
    #[serde(default)]
    pub probe: bool,
}

/// What the launcher did, sent to aibox before it execs the server.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaunchReport {
    /// Protections in force, e.g. `landlock(abi=7)`, `seccomp(41 denied)`.
    pub applied: Vec<String>,
    /// Protections that could not be applied, each with the reason.
    pub missing: Vec<String>,
    /// Set when the launcher refused to exec (require mode, something
    /// missing): the server never ran.
    pub refused: bool,
    /// The in-namespace proxy port (network `proxy`), whose listening
    /// socket accompanies this report.
    pub proxy_port: Option<u16>,
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<SandboxProfile, String> {
        let raw: RawProfile = serde_json::from_str(json).map_err(|e| e.to_string())?;
        raw.validate().map_err(|e| e.to_string())
    }

    #[test]
    fn empty_object_is_the_strict_default() {
        let p = parse("{}").unwrap();
        assert_eq!(p, SandboxProfile::default());
        assert_eq!(p.mode, Mode::Require);
        assert_eq!(p.network, Network::Proxy);
        assert_eq!(p.uid, NOBODY);
        for s in [
            "ptrace",
            "mount",
            "bpf",
            "kexec_load",
            "unshare",
            "setns",
            "keyctl",
        ] {
            assert!(p.seccomp_deny.iter().any(|d| d == s), "{s} not denied");
        }
        assert!(!p.read_paths().iter().any(|p| p == Path::new("/etc")));
        assert!(p.read_paths().iter().any(|p| p == Path::new("/usr")));
    }

    #[test]
    fn bad_profiles_name_the_key_and_the_fix() {
        let table: &[(&str, &str)] = &[
            (
                r#"{"read": ["relative/dir"]}"#,
                "sandbox.read: 'relative/dir' is not an absolute path",
            ),
            (
                r#"{"write": ["/srv/../etc"]}"#,
                "sandbox.write: '/srv/../etc' contains '..'",
            ),
            (
                r#"{"read": ["/"]}"#,
                "sandbox.read: '/' would open the whole filesystem",
            ),
            (r#"{"read": ["//./"]}"#, "would open the whole filesystem"),
            (
                r#"{"seccomp_deny": ["nosuchcall"]}"#,
                "sandbox.seccomp_deny: unknown syscall 'nosuchcall'",
            ),
            (
                r#"{"seccomp_allow": ["read"]}"#,
                "sandbox.seccomp_allow: 'read' is not on the deny-list",
            ),
            (r#"{"uid": 0}"#, "sandbox.uid: 0 is root"),
            (r#"{"gid": 0}"#, "sandbox.gid: 0 is root"),
            (r#"{"mode": "sometimes"}"#, "unknown variant"),
            (r#"{"network": "bridge"}"#, "unknown variant"),
            (r#"{"readonly": ["/srv"]}"#, "unknown field `readonly`"),
        ];
        for (json, want) in table {
            let err = parse(json).expect_err(json);
            assert!(err.contains(want), "{json}: {err}");
        }
    }

    #[test]
    fn deny_list_is_adjustable_both_ways() {
        let p =
            parse(r#"{"seccomp_deny": ["chroot"], "seccomp_allow": ["perf_event_open"]}"#).unwrap();
        assert!(p.seccomp_deny.iter().any(|s| s == "chroot"));
        assert!(!p.seccomp_deny.iter().any(|s| s == "perf_event_open"));
    }

    #[test]
    fn paths_are_normalised_and_system_paths_can_be_dropped() {
        let p = parse(r#"{"read": ["/srv/./tools/"], "write": ["/var/lib/x"], "system_paths": false, "mode": "best_effort", "network": "none", "on_violation": "kill", "uid": 1000, "gid": 1001}"#).unwrap();
        assert_eq!(p.read, vec![PathBuf::from("/srv/tools")]);
        assert_eq!(p.read_paths(), vec![PathBuf::from("/srv/tools")]);
        assert_eq!(p.write_paths(), vec![PathBuf::from("/var/lib/x")]);
        assert_eq!(
            (p.mode, p.network, p.on_violation, p.uid, p.gid),
            (
                Mode::BestEffort,
                Network::None,
                OnViolation::Kill,
                1000,
                1001
            )
        );
        let s = p.summary();
        assert!(
            s.contains("mode=best_effort network=none read=[/srv/tools]"),
            "{s}"
        );
    }

    #[test]
    fn request_and_report_round_trip() {
        let req = LaunchRequest {
            profile: SandboxProfile::default(),
            limits: RLimits {
                memory_mb: Some(256),
                ..RLimits::default()
            },
            command: "/usr/bin/python3".into(),
            args: vec!["server.py".into()],
            control: Some("/run/aibox/ctl".into()),
            probe: false,
        };
        let back: LaunchRequest =
            serde_json::from_str(&serde_json::to_string(&req).unwrap()).unwrap();
        assert_eq!(back, req);
    }
}
