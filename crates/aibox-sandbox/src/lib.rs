//! Confinement of aibox's tool server processes.
//!
//! A stdio MCP server with a `sandbox` profile in `registry.json` is not
//! spawned directly: aibox spawns itself as `aibox sandbox-exec` (the
//! [`launch`] module), which confines its own single-threaded process with
//! resource limits, a network namespace, a non-root user, `no_new_privs`,
//! Landlock and a seccomp deny-list, reports what it applied over a
//! per-spawn [`control`] socket, and execs the server. The workspace
//! forbids `unsafe`, and this design needs none: every step is a safe call
//! of `rustix`, `nix`, `landlock` or `seccompiler` in the process that is
//! about to become the server.
//!
//! [`profile`] (the registry's `sandbox` object, validated) and the filter
//! construction in [`seccomp`] are pure.

pub mod control;
pub mod kernel_audit;
pub mod launch;
mod netlink;
pub mod profile;
pub mod seccomp;

pub use control::ControlSocket;
pub use profile::{
    LaunchReport, LaunchRequest, Mode, Network, OnViolation, ProfileError, RLimits, RawProfile,
    SandboxProfile,
};

/// The environment variable that carries the [`LaunchRequest`] (JSON) from
/// aibox to the launcher. The launcher removes it before exec.
pub const REQUEST_ENV: &str = "AIBOX_SANDBOX_REQUEST";
/// The hidden subcommand of the `aibox` binary that runs [`launch::main`].
pub const LAUNCHER_SUBCOMMAND: &str = "sandbox-exec";
