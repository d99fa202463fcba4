//! `aibox doctor`: the production checklist of seed 000 (§1-§9) and seed
//! 004 (§2-§11) as code.
//!
//! It reads the env file(s), the gateway config, the guardrail
//! constitution, a compose file, a Keycloak realm export, a Dockerfile and
//! systemd unit beside them, and the data directory, and reports every
//! failed check with a stable id, a severity, the evidence (file:line where
//! possible; values are described, never printed) and the fix. Output is
//! text, JSON or SARIF 2.1.0. The exit status is 1 when any high-severity
//! check fails, 0 otherwise, and 2 when an input named on the command line
//! cannot be read.
//!
//! The doctor judges the files, not the shell it runs in: the process
//! environment is ignored, so the verdict is the same on a laptop and in
//! CI. aibox's own environment is the `aibox` service of the compose file
//! when there is one (its `environment:` and `env_file:`), else the first
//! env file, as `aibox serve` would read it.
//!
//! Checks live in one module per family: [`envcheck`] (secrets, tokens,
//! the env file itself, keyrings), [`gateway`] (config, auth, issuer,
//! TLS, guardrail), [`compose`] (ports, networks, hardening, images,
//! Dockerfile, systemd), [`realm`] (Keycloak), [`data`] (plaintext secrets
//! in JSON, development keys, the filesystem MCP server) and [`audit`]
//! (audit key versions).

mod audit;
mod compose;
mod data;
mod envcheck;
mod gateway;
mod model;
mod realm;
mod report;
mod sandbox;
mod secrets;
mod sources;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;

use model::{Finding, Location};
use sources::EnvSource;

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// For people.
    Text,
    /// An object with `findings` and `summary`.
    Json,
    /// SARIF 2.1.0, for code-scanning services.
    Sarif,
}

/// Arguments of `aibox doctor`.
#[derive(Debug, Clone, clap::Args)]
pub struct DoctorArgs {
    /// An env file to check; repeat for several (the first is the one
    /// compose interpolates from and aibox reads; the others are compared
    /// with it, e.g. other services' keyrings). Default: .env
    #[arg(long = "env-file", value_name = "FILE")]
    pub env_files: Vec<PathBuf>,
    /// The gateway config (default: DEPLOY_DIR/config/gateway/config.yaml).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The deployment directory: config/, keycloak/realm-aibox.json,
    /// docker-compose.yml, Dockerfile and systemd/aibox.service are looked
    /// up in it.
    #[arg(long, value_name = "DIR", default_value = "deploy")]
    pub deploy_dir: PathBuf,
    /// The compose file (default: DEPLOY_DIR/docker-compose.yml if it exists).
    #[arg(long, value_name = "FILE")]
    pub compose: Option<PathBuf>,
    /// A Keycloak realm export (default: DEPLOY_DIR/keycloak/realm-aibox.json if it exists).
    #[arg(long, value_name = "FILE")]
    pub realm: Option<PathBuf>,
    /// aibox's data directory (audit.db, dev-keys.env, mcp/, JSON files).
    #[arg(long, value_name = "DIR", default_value = "data")]
    pub data_dir: PathBuf,
    /// Also probe live endpoints (the issuer's discovery document, 5 s timeout).
    #[arg(long)]
    pub online: bool,
    /// Also probe which sandbox protections this host supports (starts
    /// `aibox sandbox-exec` in probe mode; judges the machine, not files).
    #[arg(long)]
    pub sandbox: bool,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

/// Runs the doctor and prints its report; the exit code is 1 when a
/// high-severity check failed. Errors (exit 2 in `main`) are inputs named
/// on the command line that cannot be read or parsed.
pub fn run(args: DoctorArgs) -> anyhow::Result<ExitCode> {
    let findings = diagnose(&args)?;
    let text = match args.format {
        Format::Text => report::text(&findings),
        Format::Json => format!(
            "{}\n",
            serde_json::to_string_pretty(&report::json(&findings))?
        ),
        Format::Sarif => format!(
            "{}\n",
            serde_json::to_string_pretty(&report::sarif(&findings))?
        ),
    };
    print!("{text}");
    Ok(if report::Summary::of(&findings).failed() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn skipped(out: &mut Vec<Finding>, what: &str, path: &Path, flag: &str) {
    out.push(Finding::new(
        &model::DOCTOR_SKIPPED,
        None,
        format!(
            "{what} {} does not exist; its checks were skipped",
            path.display()
        ),
        format!("pass {flag} to check it"),
    ));
}

/// A file named on the command line must exist; a default may not.
fn pick(explicit: Option<&PathBuf>, default: PathBuf) -> anyhow::Result<(PathBuf, bool)> {
    match explicit {
        Some(p) if p.is_file() => Ok((p.clone(), true)),
        Some(p) => anyhow::bail!(
            "{} does not exist or is not a file; fix: correct the path, or leave the option out to use the default",
            p.display()
        ),
        None => {
            let exists = default.is_file();
            Ok((default, exists))
        }
    }
}

fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

/// Runs every check and returns the JSON report (for the dashboard).
pub fn json_report(args: &DoctorArgs) -> anyhow::Result<serde_json::Value> {
    Ok(report::json(&diagnose(args)?))
}

/// Runs every check and returns the findings, most severe first.
pub fn diagnose(args: &DoctorArgs) -> anyhow::Result<Vec<Finding>> {
    let mut out = Vec::new();

    // Env files.
    let explicit_env = !args.env_files.is_empty();
    let paths = if explicit_env {
        args.env_files.clone()
    } else {
        vec![PathBuf::from(".env")]
    };
    let mut env_files = Vec::new();
    for p in &paths {
        let src = EnvSource::load(p)
            .with_context(|| format!("cannot read the env file {}", p.display()))?;
        if !src.exists {
            if explicit_env {
                anyhow::bail!(
                    "the env file {} does not exist; fix: correct --env-file, or create it with `aibox bootstrap --env-file {}`",
                    p.display(),
                    p.display()
                );
            }
            skipped(&mut out, "the env file", p, "--env-file");
        }
        env_files.push(src);
    }
    let primary = env_files.first().cloned().unwrap_or_default();
    let vars = primary.vars();

    // The compose file, interpolated from the first env file.
    let (compose_path, compose_exists) = pick(
        args.compose.as_ref(),
        args.deploy_dir.join("docker-compose.yml"),
    )?;
    let compose = if compose_exists {
        Some(compose::parse(&compose_path, &read(&compose_path)?, &vars)?)
    } else {
        skipped(&mut out, "the compose file", &compose_path, "--compose");
        None
    };
    let aibox = envcheck::AiboxEnv::resolve(&primary, compose.as_ref());

    // Env files and aibox's environment.
    for f in env_files.iter().filter(|f| f.exists) {
        envcheck::check_file(f, &mut out);
        envcheck::check_values(f, &mut out);
    }
    envcheck::check_aibox(&aibox, &primary, &mut out);
    envcheck::check_keyrings(&aibox, &env_files, compose.as_ref(), &mut out);

    // Gateway config and guardrail. Without --config, the file the aibox
    // container reads (AIBOX_CONFIG mapped through its configs and bind
    // mounts) wins over the default path.
    let (config_path, config_exists) = pick(
        args.config.as_ref(),
        args.deploy_dir
            .join("config")
            .join("gateway")
            .join("config.yaml"),
    )?;
    let from_compose = match (
        &compose,
        args.config.is_none(),
        aibox.get(aibox_config::env::AIBOX_CONFIG),
    ) {
        (Some(c), true, Some(target)) => c
            .services
            .iter()
            .find(|s| s.is_aibox())
            .and_then(|s| compose::host_file(c, s, target)),
        _ => None,
    };
    let cfg = if let Some(cfg) = from_compose {
        cfg
    } else if config_exists {
        gateway::ConfigInput {
            text: read(&config_path)?,
            path: Some(config_path.clone()),
            ..gateway::ConfigInput::default()
        }
    } else {
        out.push(Finding::new(
            &model::DOCTOR_SKIPPED,
            None,
            format!(
                "the gateway config {} does not exist; the built-in defaults (and aibox's environment) were checked",
                config_path.display()
            ),
            "pass --config to check a config file",
        ));
        gateway::ConfigInput::default()
    };
    gateway::check(&cfg, &aibox, args.online, &mut out);
    let config_root = if config_exists && args.config.is_some() {
        config_path
            .parent()
            .and_then(Path::parent)
            .map(Path::to_path_buf)
            .unwrap_or_else(|| args.deploy_dir.join("config"))
    } else {
        args.deploy_dir.join("config")
    };
    let constitution = config_root.join("guardrail").join("constitution.yaml");
    if config_root.is_dir() {
        gateway::check_guardrail(&constitution, &mut out);
    } else {
        skipped(
            &mut out,
            "the config directory",
            &config_root,
            "--deploy-dir",
        );
    }

    // Compose, Dockerfiles, systemd.
    let ops_port = aibox
        .get(aibox_config::env::AIBOX_OPS_LISTEN)
        .and_then(|v| v.parse::<std::net::SocketAddr>().ok())
        .map_or(compose::OPS_PORT, |a| a.port());
    let mut dockerfiles: Vec<PathBuf> = Vec::new();
    if let Some(c) = &compose {
        compose::check(c, &primary, ops_port, &mut out);
        let dir = c.path.parent().unwrap_or(Path::new("."));
        for s in &c.services {
            match s.def.get("build") {
                Some(serde_yaml_ng::Value::String(ctx)) => {
                    dockerfiles.push(dir.join(ctx).join("Dockerfile"))
                }
                Some(b @ serde_yaml_ng::Value::Mapping(_)) => {
                    let ctx = b
                        .get("context")
                        .and_then(compose::scalar)
                        .unwrap_or_else(|| ".".into());
                    let file = b
                        .get("dockerfile")
                        .and_then(compose::scalar)
                        .unwrap_or_else(|| "Dockerfile".into());
                    dockerfiles.push(dir.join(ctx).join(file));
                }
                _ => {}
            }
        }
    }
    let deploy_dockerfile = args.deploy_dir.join("Dockerfile");
    let same = |a: &Path, b: &Path| match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    };
    if !dockerfiles.iter().any(|d| same(d, &deploy_dockerfile)) {
        dockerfiles.push(deploy_dockerfile);
    }
    for d in dockerfiles.iter().filter(|d| d.is_file()) {
        compose::check_dockerfile(&normalise_display(d), &read(d)?, &mut out);
    }
    let unit = args.deploy_dir.join("systemd").join("aibox.service");
    if unit.is_file() {
        compose::check_systemd(&unit, &read(&unit)?, &mut out);
    }

    // Keycloak realm.
    let (realm_path, realm_exists) = pick(
        args.realm.as_ref(),
        args.deploy_dir.join("keycloak").join("realm-aibox.json"),
    )?;
    if realm_exists {
        realm::check(&realm_path, &read(&realm_path)?, &vars, &mut out)?;
    } else {
        skipped(&mut out, "the realm export", &realm_path, "--realm");
    }

    // Data directory.
    if args.data_dir.is_dir() {
        data::check_dev_keys(&args.data_dir, &mut out);
        data::check_json(&args.data_dir, &mut out);
        data::check_mcp_fs(&args.data_dir, &aibox, &env_files, &mut out);
        audit::check(
            &args.data_dir,
            aibox.get(aibox_config::env::AUDIT_SIGNING_KEY),
            &aibox.at(aibox_config::env::AUDIT_SIGNING_KEY),
            &mut out,
        )?;
    } else {
        skipped(&mut out, "the data directory", &args.data_dir, "--data-dir");
    }

    out.sort_by(|a, b| {
        (
            a.severity(),
            a.rule.id,
            a.location.as_ref().map(Location::to_string),
        )
            .cmp(&(
                b.severity(),
                b.rule.id,
                b.location.as_ref().map(Location::to_string),
            ))
    });
    if args.sandbox {
        sandbox::check(&mut out);
    }
    Ok(out)
}

/// `deploy/../Dockerfile` → `Dockerfile`, for shorter evidence.
fn normalise_display(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir
                if out
                    .components()
                    .next_back()
                    .is_some_and(|l| matches!(l, std::path::Component::Normal(_))) =>
            {
                out.pop();
            }
            other => out.push(other),
        }
    }
    if out.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        out
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn display_paths_are_normalised() {
        assert_eq!(
            normalise_display(Path::new("deploy/../Dockerfile")),
            PathBuf::from("Dockerfile")
        );
        assert_eq!(
            normalise_display(Path::new("./deploy/./Dockerfile")),
            PathBuf::from("deploy/Dockerfile")
        );
        assert_eq!(normalise_display(Path::new("../x")), PathBuf::from("../x"));
    }

    fn args(dir: &Path) -> DoctorArgs {
        DoctorArgs {
            env_files: vec![dir.join(".env")],
            config: None,
            deploy_dir: dir.join("deploy"),
            compose: None,
            realm: None,
            data_dir: dir.join("data"),
            online: false,
            sandbox: false,
            format: Format::Json,
        }
    }

    #[test]
    fn named_inputs_must_exist_defaults_may_not() {
        let dir = tempfile::tempdir().unwrap();
        let e = diagnose(&args(dir.path())).unwrap_err().to_string();
        assert!(e.contains(".env") && e.contains("aibox bootstrap"), "{e}");
        std::fs::write(dir.path().join(".env"), "A=1\n").unwrap();
        let found = diagnose(&args(dir.path())).unwrap();
        let skipped = found
            .iter()
            .filter(|f| f.rule.id == "AIBOX-DOCTOR-001")
            .count();
        assert!(skipped >= 4, "{found:#?}");
        // Sorted: high first.
        assert_eq!(found[0].severity(), model::Severity::High);
        let mut a = args(dir.path());
        a.realm = Some(dir.path().join("nope.json"));
        assert!(diagnose(&a).is_err());
    }
}
