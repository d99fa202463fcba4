//! `aibox doctor --sandbox`: which sandbox protections this host supports.
//!
//! The probe is the real launcher: `aibox sandbox-exec` in probe mode with
//! the default profile in `best_effort` mode applies every protection to
//! itself (resource limits, network namespace, non-root user when root,
//! `no_new_privs`, Landlock, seccomp) and prints what it applied and what
//! was missing, instead of exec'ing a server. So the doctor reports what a
//! sandboxed MCP server would get here, not what the kernel claims.

use std::process::Command;

use aibox_sandbox::{LaunchReport, LaunchRequest, Mode, RLimits, SandboxProfile};

use super::model::{self, Finding};

/// Runs the probe and adds its findings.
pub fn check(out: &mut Vec<Finding>) {
    match probe() {
        Ok(report) => {
            out.push(Finding::new(
                &model::SANDBOX_SUPPORT,
                None,
                format!("available: {}", report.applied.join(", ")),
                "nothing to do",
            ));
            for missing in &report.missing {
                out.push(Finding::new(
                    &model::SANDBOX_MISSING,
                    None,
                    missing.clone(),
                    model::SANDBOX_MISSING.help,
                ));
            }
        }
        Err(e) => out.push(Finding::new(
            &model::SANDBOX_MISSING,
            None,
            format!("the sandbox probe failed: {e}"),
            model::SANDBOX_MISSING.help,
        )),
    }
}

fn probe() -> Result<LaunchReport, String> {
    let request = LaunchRequest {
        profile: SandboxProfile {
            mode: Mode::BestEffort,
            ..SandboxProfile::default()
        },
        limits: RLimits {
            open_files: Some(256),
            ..RLimits::default()
        },
        command: "/bin/true".into(),
        args: Vec::new(),
        control: None,
        probe: true,
    };
    let json = serde_json::to_string(&request).map_err(|e| e.to_string())?;
    let output = Command::new("/proc/self/exe")
        .arg(aibox_sandbox::LAUNCHER_SUBCOMMAND)
        .env_clear()
        .env(aibox_sandbox::REQUEST_ENV, json)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("cannot start aibox sandbox-exec: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "aibox sandbox-exec exited with {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    serde_json::from_slice(&output.stdout)
        .map_err(|e| format!("the probe's report is not valid: {e}"))
}
