//! Checks of the env files and of aibox's own environment (seed 000 §1,
//! §9; seed 004 §4, §5): placeholder, default, short and malformed secrets,
//! aibox's keys, dashboard and ops tokens, safety switches, the file's mode
//! and whether git tracks it, and keyrings that differ between services.

use std::collections::BTreeMap;
use std::path::Path;

use aibox_config::env;
use aibox_core::keyring::Keyring;

use super::compose::{self, Compose};
use super::model::{self, Finding, Location};
use super::secrets::{self, Weakness};
use super::sources::EnvSource;

/// aibox's four keys: unset, `aibox serve` makes development keys.
pub const AIBOX_KEYS: [&str; 4] = [
    env::AUDIT_SIGNING_KEY,
    env::AIBOX_PRINCIPAL_KEYS,
    env::AIBOX_CAPTOKEN_KEYS,
    env::SECRETS_MASTER_KEY,
];

/// The fixed variables `aibox bootstrap` writes (its `FIXED` table; a
/// test below keeps the two in step).
pub const BOOTSTRAP_FIXED: &[&str] = &[
    "POSTGRES_PASSWORD",
    "MINIO_ROOT_PASSWORD",
    "REDIS_PASSWORD",
    "KEYCLOAK_ADMIN_PASSWORD",
    "AUDIT_SIGNING_KEY",
    "AIBOX_PRINCIPAL_KEYS",
    "AIBOX_CAPTOKEN_KEYS",
    "SECRETS_MASTER_KEY",
    "DIFY_SECRET_KEY",
    "DIFY_DB_PASSWORD",
    "DIFY_INIT_PASSWORD",
    "DIFY_PLUGIN_DAEMON_KEY",
    "DIFY_PLUGIN_INNER_API_KEY",
    "DIFY_SANDBOX_API_KEY",
    "DASHBOARD_AUTH_TOKEN",
    "OPS_CONTROLLER_TOKEN",
];

/// Seed secrets that must not be empty when an env file lists them.
const SEED_SECRETS: &[&str] = &[
    "POSTGRES_PASSWORD",
    "MINIO_ROOT_PASSWORD",
    "REDIS_PASSWORD",
    "KEYCLOAK_ADMIN_PASSWORD",
];

const DASHBOARD_VARS: [&str; 2] = ["DASHBOARD_AUTH_TOKEN", "DASHBOARD_PASSWORD"];
const OPS_TOKEN: &str = "OPS_CONTROLLER_TOKEN";

/// The environment `aibox serve` will run with, and where each value was
/// written.
#[derive(Debug, Clone)]
pub struct AiboxEnv {
    /// Variable → value.
    pub vars: BTreeMap<String, String>,
    /// Variable → where it is set.
    pub origin: BTreeMap<String, Location>,
    /// "service 'aibox' of FILE" or the env file's path, for evidence.
    pub label: String,
    /// Where to point when a variable is missing.
    pub home: Location,
}

impl AiboxEnv {
    /// aibox's environment: the compose service `aibox` when the compose
    /// file has one (its `env_file:` and `environment:`; the project's
    /// `.env` only feeds interpolation), else the first env file.
    pub fn resolve(primary: &EnvSource, compose: Option<&Compose>) -> Self {
        if let Some(c) = compose
            && let Some(s) = c.services.iter().find(|s| s.is_aibox())
        {
            let mut vars = BTreeMap::new();
            let mut origin = BTreeMap::new();
            for (k, (v, at)) in s.effective_env() {
                vars.insert(k.clone(), v);
                origin.insert(k, at);
            }
            for e in &s.env {
                if let Some(v) = &e.value {
                    vars.insert(e.name.clone(), v.clone());
                    origin.insert(e.name.clone(), Location::new(&c.path, e.line));
                }
            }
            let line = super::sources::yaml_line(
                &c.text,
                &[
                    super::sources::Seg::Key("services"),
                    super::sources::Seg::Key(&s.name),
                ],
            );
            return Self {
                vars,
                origin,
                label: format!("service '{}' of {}", s.name, c.path.display()),
                home: Location::new(&c.path, line),
            };
        }
        Self {
            vars: primary.vars(),
            origin: primary
                .effective()
                .into_iter()
                .map(|(k, e)| (k.to_owned(), Location::new(&primary.path, Some(e.line))))
                .collect(),
            label: primary.path.display().to_string(),
            home: Location::new(&primary.path, None),
        }
    }

    /// The non-empty value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.vars
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.trim().is_empty())
    }

    /// Where `name` is set, else where it should be.
    pub fn at(&self, name: &str) -> Location {
        self.origin
            .get(name)
            .cloned()
            .unwrap_or_else(|| self.home.clone())
    }
}

/// Checks the values of one env file.
pub fn check_values(src: &EnvSource, out: &mut Vec<Finding>) {
    for (name, e) in src.effective() {
        let at = Some(Location::new(&src.path, Some(e.line)));
        if compose::is_danger_switch(name) && compose::truthy_str(&e.value) {
            out.push(Finding::new(
                &model::DANGER_FLAG,
                at.clone(),
                format!("{name} is set to a true value"),
                format!("remove {name} from {}", src.path.display()),
            ));
        }
        if !secrets::is_secret_var(name) {
            continue;
        }
        if e.value.trim().is_empty() {
            let seed = SEED_SECRETS.contains(&name)
                || (name.starts_with("SERVICE_") && name.ends_with("_CLIENT_SECRET"))
                || (name.starts_with("DIFY_") && secrets::is_secret_var(name));
            if seed {
                out.push(Finding::new(
                    &model::SECRET_PLACEHOLDER,
                    at,
                    format!("{name} is empty"),
                    format!("run `aibox bootstrap --env-file {}` or set {name} from your secret manager", src.path.display()),
                ));
            }
            continue;
        }
        let Some(w) = secrets::judge(name, &e.value) else {
            continue;
        };
        let rule = match w {
            Weakness::Placeholder => &model::SECRET_PLACEHOLDER,
            Weakness::Default(_) => &model::SECRET_DEFAULT,
            Weakness::Weak(_) => &model::SECRET_WEAK,
        };
        let fix = match w {
            Weakness::Placeholder => format!(
                "run `aibox bootstrap --env-file {}` (it replaces placeholders) or set {name} from your secret manager",
                src.path.display()
            ),
            _ if secrets::KEYRINGS.contains(&name) || name == env::AUDIT_SIGNING_KEY => format!(
                "set a strong {name} (`aibox keys rotate` puts a new key in front and keeps old versions for verification)"
            ),
            _ => format!(
                "replace {name} with a random value (`openssl rand -hex 32`) and change it at the service too"
            ),
        };
        out.push(Finding::new(
            rule,
            at,
            format!("{name} {}", w.describe()),
            fix,
        ));
    }
}

/// Checks the file itself: mode and git.
pub fn check_file(src: &EnvSource, out: &mut Vec<Finding>) {
    if !src.exists {
        return;
    }
    #[cfg(unix)]
    if let Ok(meta) = std::fs::metadata(&src.path) {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            let who = match (mode & 0o070 != 0, mode & 0o007 != 0) {
                (true, true) => "group and others",
                (true, false) => "its group",
                _ => "others",
            };
            out.push(Finding::new(
                &model::ENVFILE_MODE,
                Some(Location::new(&src.path, None)),
                format!("mode is {mode:04o}: {who} can access it"),
                format!("chmod 600 {}", src.path.display()),
            ));
        }
    }
    if git_tracks(&src.path) {
        out.push(Finding::new(
            &model::ENVFILE_GIT,
            Some(Location::new(&src.path, None)),
            "git tracks this file, so every clone of the repository holds its secrets",
            format!(
                "git rm --cached {} && echo '{}' >> .gitignore, then rotate every secret it held",
                src.path.display(),
                src.path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default()
            ),
        ));
    }
}

/// Whether `path` is tracked by git (false outside a work tree or without
/// git).
fn git_tracks(path: &Path) -> bool {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let Some(name) = path.file_name() else {
        return false;
    };
    let inside = std::process::Command::new("git")
        .arg("-C")
        .arg(&dir)
        .args(["rev-parse", "--is-inside-work-tree"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
    if !inside.is_ok_and(|s| s.success()) {
        return false;
    }
    std::process::Command::new("git")
        .arg("-C")
        .arg(&dir)
        .args(["ls-files", "--error-unmatch", "--"])
        .arg(name)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Checks aibox's keys and the seed 004 tokens.
pub fn check_aibox(aibox: &AiboxEnv, primary: &EnvSource, out: &mut Vec<Finding>) {
    for name in AIBOX_KEYS {
        if aibox.get(name).is_some() {
            continue;
        }
        let state = if aibox.vars.contains_key(name) {
            "is empty"
        } else {
            "is not set"
        };
        out.push(Finding::new(
            &model::SECRET_MISSING_KEY,
            Some(aibox.at(name)),
            format!(
                "{name} {state} in {}; aibox serve would generate a development key beside the data",
                aibox.label
            ),
            if aibox.label == primary.path.display().to_string() {
                format!("run `aibox bootstrap --env-file {}`", primary.path.display())
            } else {
                format!(
                    "run `aibox bootstrap --env-file {}` and pass it to aibox: `{name}: ${{{name}}}` under its environment",
                    primary.path.display()
                )
            },
        ));
    }
    let get = |n: &str| primary.get(n).filter(|e| !e.value.trim().is_empty());
    if DASHBOARD_VARS.iter().all(|n| get(n).is_none()) {
        let line = DASHBOARD_VARS
            .iter()
            .find_map(|n| primary.get(n))
            .map(|e| e.line);
        out.push(Finding::new(
            &model::DASHBOARD_AUTH_UNSET,
            Some(Location::new(&primary.path, line)),
            "DASHBOARD_AUTH_TOKEN and DASHBOARD_PASSWORD are both empty, so the dashboard has no authentication",
            format!("set DASHBOARD_AUTH_TOKEN in {} (`aibox bootstrap` writes one)", primary.path.display()),
        ));
    }
    if get(OPS_TOKEN).is_none() {
        out.push(Finding::new(
            &model::OPS_TOKEN_UNSET,
            Some(Location::new(
                &primary.path,
                primary.get(OPS_TOKEN).map(|e| e.line),
            )),
            format!(
                "{OPS_TOKEN} is {}",
                if primary.get(OPS_TOKEN).is_some() {
                    "empty"
                } else {
                    "not set"
                }
            ),
            format!(
                "set {OPS_TOKEN} in {} (`aibox bootstrap` writes one)",
                primary.path.display()
            ),
        ));
    }
}

/// One place that holds a keyring.
struct RingSource {
    label: String,
    at: Location,
    ring: Keyring,
}

/// Checks that every service and env file holding a principal or
/// CapToken keyring can verify what aibox signs: the signer's current key
/// id must be present with the same key, and no key id may hold different
/// keys in two places.
pub fn check_keyrings(
    aibox: &AiboxEnv,
    env_files: &[EnvSource],
    compose: Option<&Compose>,
    out: &mut Vec<Finding>,
) {
    for var in [env::AIBOX_PRINCIPAL_KEYS, env::AIBOX_CAPTOKEN_KEYS] {
        let mut sources: Vec<RingSource> = Vec::new();
        let mut push = |label: String, at: Location, value: &str| {
            if let Ok(ring) = Keyring::parse(value.trim()) {
                sources.push(RingSource { label, at, ring });
            }
        };
        // The signer first: aibox's own environment.
        if let Some(v) = aibox.get(var) {
            push(aibox.label.clone(), aibox.at(var), v);
        }
        if let Some(c) = compose {
            for s in c.services.iter().filter(|s| !s.is_aibox()) {
                let mut env = s.effective_env();
                for e in &s.env {
                    if let Some(v) = &e.value {
                        env.insert(e.name.clone(), (v.clone(), Location::new(&c.path, e.line)));
                    }
                }
                if let Some((v, at)) = env.get(var).filter(|(v, _)| !v.trim().is_empty()) {
                    push(
                        format!("service '{}' of {}", s.name, c.path.display()),
                        at.clone(),
                        v,
                    );
                }
            }
        }
        for f in env_files {
            if let Some(e) = f.get(var).filter(|e| !e.value.trim().is_empty()) {
                push(
                    f.path.display().to_string(),
                    Location::new(&f.path, Some(e.line)),
                    &e.value,
                );
            }
        }
        let Some((reference, rest)) = sources.split_first() else {
            continue;
        };
        let signing = reference.ring.signing();
        for s in rest {
            let mut problems = Vec::new();
            if s.ring.get(signing.id()).is_none() {
                problems.push(format!(
                    "lacks key id '{}' that {} signs with",
                    signing.id(),
                    reference.label
                ))
            }
            for e in s.ring.entries() {
                if let Some(r) = reference.ring.get(e.id())
                    && r.fingerprint() != e.fingerprint()
                {
                    problems.push(format!(
                        "holds a different key under id '{}' (fingerprint {} vs {})",
                        e.id(),
                        e.fingerprint(),
                        r.fingerprint()
                    ));
                }
            }
            if !problems.is_empty() {
                out.push(Finding::new(
                    &model::KEYRING_MISMATCH,
                    Some(s.at.clone()),
                    format!("{var} of {} {}", s.label, problems.join("; ")),
                    format!(
                        "give {} the same {var} as {} (e.g. `{var}: ${{{var}}}` from one env file), then restart both",
                        s.label, reference.label
                    ),
                ));
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn ring(id: &str, byte: u8) -> String {
        use base64::Engine as _;
        format!(
            "{id}:{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([byte; 32])
        )
    }

    fn ids(out: &[Finding]) -> Vec<&'static str> {
        let mut v: Vec<&str> = out.iter().map(|f| f.rule.id).collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    fn strong() -> String {
        "Zq8-rT3_kLm9Pw2xVb7NcY4sHd6Jf1GaQ".to_owned()
    }

    #[test]
    fn env_values_one_rule_each() {
        let cases: Vec<(String, Vec<&str>)> = vec![
            (format!("POSTGRES_PASSWORD={}\n", strong()), vec![]),
            (
                "POSTGRES_PASSWORD=changeme\n".into(),
                vec!["AIBOX-SECRET-001"],
            ),
            ("POSTGRES_PASSWORD=\n".into(), vec!["AIBOX-SECRET-001"]),
            ("OPENAI_API_KEY=\n".into(), vec![]),
            (
                "LANGFUSE_SECRET_KEY=sk-lf-1234567890\n".into(),
                vec!["AIBOX-SECRET-004"],
            ),
            ("REDIS_PASSWORD=short-pw\n".into(), vec!["AIBOX-SECRET-003"]),
            (
                "AUDIT_SIGNING_KEY=aibox-audit-signing-key-change-me\n".into(),
                vec!["AIBOX-SECRET-001"],
            ),
            (
                "AIBOX_CAPTOKEN_KEYS=v1:abc\n".into(),
                vec!["AIBOX-SECRET-003"],
            ),
            (
                "AIBOX_ALLOW_PUBLIC_BIND=true\n".into(),
                vec!["AIBOX-DANGER-001"],
            ),
            ("AIBOX_ALLOW_PUBLIC_BIND=false\n".into(), vec![]),
            ("AIBOX_LISTEN=0.0.0.0:8080\n".into(), vec![]),
        ];
        for (text, want) in cases {
            let src = EnvSource::parse(Path::new(".env"), &text);
            let mut out = Vec::new();
            check_values(&src, &mut out);
            assert_eq!(ids(&out), want, "{text}");
            for f in &out {
                assert!(
                    !f.evidence.contains("changeme") && !f.evidence.contains("short-pw"),
                    "{}",
                    f.evidence
                );
                assert_eq!(f.location.as_ref().unwrap().line, Some(1));
            }
        }
    }

    #[test]
    fn aibox_keys_dashboard_and_ops() {
        let full = format!(
            "AUDIT_SIGNING_KEY={s}\nAIBOX_PRINCIPAL_KEYS={p}\nAIBOX_CAPTOKEN_KEYS={p}\nSECRETS_MASTER_KEY={p}\nDASHBOARD_AUTH_TOKEN={s}\nOPS_CONTROLLER_TOKEN={s}\n",
            s = strong(),
            p = ring("v1", 7)
        );
        let cases: Vec<(String, Vec<&str>)> = vec![
            (full.clone(), vec![]),
            (
                full.replace("AUDIT_SIGNING_KEY=", "X="),
                vec!["AIBOX-SECRET-002"],
            ),
            (
                full.replace("DASHBOARD_AUTH_TOKEN=", "DASHBOARD_AUTH_TOKEN=\n#"),
                vec!["AIBOX-DASH-001"],
            ),
            (
                full.replace("DASHBOARD_AUTH_TOKEN=", "DASHBOARD_PASSWORD="),
                vec![],
            ),
            (
                full.replace("OPS_CONTROLLER_TOKEN=", "X="),
                vec!["AIBOX-OPS-001"],
            ),
        ];
        for (text, want) in cases {
            let src = EnvSource::parse(Path::new(".env"), &text);
            let aibox = AiboxEnv::resolve(&src, None);
            let mut out = Vec::new();
            check_aibox(&aibox, &src, &mut out);
            assert_eq!(ids(&out), want, "{text}");
        }
    }

    #[test]
    fn bootstrap_output_passes_and_its_names_are_known() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(".env");
        crate::bootstrap::run(None, &p, &[]).unwrap();
        let src = EnvSource::load(&p).unwrap();
        let mut out = Vec::new();
        check_values(&src, &mut out);
        check_file(&src, &mut out);
        check_aibox(&AiboxEnv::resolve(&src, None), &src, &mut out);
        assert!(out.is_empty(), "{out:#?}");
        for e in &src.entries {
            let service = e.name.starts_with("SERVICE_") && e.name.ends_with("_CLIENT_SECRET");
            assert!(
                service || BOOTSTRAP_FIXED.contains(&e.name.as_str()),
                "{} is not in BOOTSTRAP_FIXED",
                e.name
            );
        }
        assert_eq!(
            src.entries
                .iter()
                .filter(|e| !e.name.starts_with("SERVICE_"))
                .count(),
            BOOTSTRAP_FIXED.len()
        );
    }

    #[test]
    fn keyrings_must_agree() {
        let a = EnvSource::parse(
            Path::new("gw.env"),
            &format!("AIBOX_PRINCIPAL_KEYS={},{}\n", ring("v2", 2), ring("v1", 1)),
        );
        let aibox = AiboxEnv::resolve(&a, None);
        let cases: Vec<(String, bool, &str)> = vec![
            (
                format!("AIBOX_PRINCIPAL_KEYS={},{}\n", ring("v2", 2), ring("v1", 1)),
                false,
                "",
            ),
            // Verifies with the current key only: fine.
            (
                format!("AIBOX_PRINCIPAL_KEYS={}\n", ring("v2", 2)),
                false,
                "",
            ),
            (
                format!("AIBOX_PRINCIPAL_KEYS={}\n", ring("v1", 1)),
                true,
                "lacks key id 'v2'",
            ),
            (
                format!("AIBOX_PRINCIPAL_KEYS={}\n", ring("v2", 9)),
                true,
                "different key under id 'v2'",
            ),
            ("AIBOX_CAPTOKEN_KEYS=\n".into(), false, ""),
        ];
        for (text, bad, what) in cases {
            let b = EnvSource::parse(Path::new("memory.env"), &text);
            let mut out = Vec::new();
            check_keyrings(&aibox, &[a.clone(), b], None, &mut out);
            assert_eq!(!out.is_empty(), bad, "{text}: {out:?}");
            if bad {
                assert_eq!(ids(&out), vec!["AIBOX-KEYRING-001"]);
                assert!(out[0].evidence.contains(what), "{}", out[0].evidence);
                assert!(out[0].evidence.contains("memory.env"));
            }
        }
    }
}
