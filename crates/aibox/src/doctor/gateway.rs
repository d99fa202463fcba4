//! Checks of the gateway configuration (seed 000 §2, §3, §7): that it
//! loads, that authentication is on, that the issuer is https (and, with
//! `--online`, matches the provider's discovery document), that keys and
//! tokens are not fetched over plain http across a network, and that the
//! guardrail constitution parses and is enabled.
//!
//! The effective values are the config file's, overridden by aibox's
//! environment (`AIBOX_AUTH_*`), exactly as `aibox serve` resolves them.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use aibox_config::env;
use serde_yaml_ng::Value;

use super::envcheck::AiboxEnv;
use super::model::{self, Finding, Location};
use super::sources::{Seg, yaml_line};

/// How long `--online` waits for the discovery document.
pub const DISCOVERY_TIMEOUT: Duration = Duration::from_secs(5);

/// The gateway config as the doctor sees it.
#[derive(Debug, Clone, Default)]
pub struct ConfigInput {
    /// The file findings point at, if any.
    pub path: Option<PathBuf>,
    /// Its text (empty for built-in defaults).
    pub text: String,
    /// Lines before the text in that file (a config written inline in a
    /// compose file's `configs:` starts below its `content:` key).
    pub line_offset: usize,
    /// How to name it in messages, when not just the path.
    pub label: Option<String>,
}

impl ConfigInput {
    fn name(&self) -> Option<PathBuf> {
        self.label
            .as_ref()
            .map(PathBuf::from)
            .or_else(|| self.path.clone())
    }
}

/// One effective setting and where it was set.
#[derive(Debug, Clone)]
pub struct Setting {
    /// The value.
    pub value: String,
    /// Where.
    pub at: Option<Location>,
    /// How to name it in a fix: `auth.issuer` or the variable.
    pub key: String,
}

fn setting(
    cfg: &ConfigInput,
    raw: Option<&Value>,
    aibox: &AiboxEnv,
    var: &str,
    path: &[&str],
) -> Option<Setting> {
    if let Some(v) = aibox.vars.get(var) {
        return Some(Setting {
            value: v.clone(),
            at: Some(aibox.at(var)),
            key: var.to_owned(),
        });
    }
    let mut cur = raw?;
    for k in path {
        cur = cur.get(*k)?;
    }
    let value = super::compose::scalar(cur)?;
    let segs: Vec<Seg<'_>> = path.iter().map(|k| Seg::Key(k)).collect();
    Some(Setting {
        value,
        at: cfg
            .path
            .as_ref()
            .map(|p| Location::new(p, yaml_line(&cfg.text, &segs).map(|l| l + cfg.line_offset))),
        key: path.join("."),
    })
}

/// Whether `host` is only reachable inside a deployment: a single-label
/// service name, localhost, `.internal`/`.local`/`.svc` names, loopback,
/// private and link-local addresses.
pub fn is_internal_host(host: &str) -> bool {
    let h = host
        .trim_matches(|c| c == '[' || c == ']')
        .to_ascii_lowercase();
    if let Ok(ip) = h.parse::<IpAddr>() {
        return match ip {
            IpAddr::V4(v4) => v4.is_loopback() || v4.is_private() || v4.is_link_local(),
            IpAddr::V6(v6) => {
                v6.is_loopback()
                    || (v6.segments()[0] & 0xfe00) == 0xfc00
                    || (v6.segments()[0] & 0xffc0) == 0xfe80
            }
        };
    }
    !h.contains('.')
        || h == "localhost"
        || [
            ".localhost",
            ".internal",
            ".local",
            ".lan",
            ".svc",
            ".cluster.local",
            ".home.arpa",
        ]
        .iter()
        .any(|s| h.ends_with(s))
}

/// Runs the config checks. `online` fetches the discovery document.
pub fn check(cfg: &ConfigInput, aibox: &AiboxEnv, online: bool, out: &mut Vec<Finding>) {
    let file_loc = cfg.path.as_ref().map(|p| Location::new(p, None));
    let name = cfg.name();
    if let Err(e) = aibox_config::load_from_str(&cfg.text, name.as_deref(), &aibox.vars) {
        out.push(Finding::new(
            &model::CONFIG_INVALID,
            file_loc.clone(),
            e.to_string(),
            match (&cfg.label, &cfg.path) {
                (None, Some(p)) => format!("run `aibox config check --config {}` and apply the fix it names", p.display()),
                (Some(l), _) => format!("correct {l} as the message says (`aibox config check` on a copy shows the same)"),
                (None, None) => "run `aibox config check` and apply the fix it names".to_owned(),
            },
        ));
    }
    let raw: Option<Value> = if cfg.text.trim().is_empty() {
        None
    } else {
        match serde_yaml_ng::from_str(&cfg.text) {
            Ok(v) => Some(v),
            // CONFIG-001 already says where the YAML is broken.
            Err(_) => return,
        }
    };
    let raw = raw.as_ref();

    let enabled = setting(
        cfg,
        raw,
        aibox,
        env::AIBOX_AUTH_ENABLED,
        &["auth", "enabled"],
    );
    let is_on = enabled
        .as_ref()
        .is_some_and(|s| super::compose::truthy_str(&s.value));
    if !is_on {
        let (evidence, at) = match &enabled {
            Some(s) => (format!("{} is '{}'", s.key, s.value), s.at.clone()),
            None => (
                "auth.enabled is not set (the default is false)".to_owned(),
                file_loc.clone(),
            ),
        };
        out.push(Finding::new(
            &model::AUTH_DISABLED,
            at,
            format!("{evidence}: every request is served as tenant 'default' without authentication"),
            "set auth.enabled: true with auth.issuer and auth.jwks_url (or AIBOX_AUTH_ENABLED=true in aibox's environment)",
        ));
    }

    let issuer = setting(cfg, raw, aibox, env::AIBOX_AUTH_ISSUER, &["auth", "issuer"]);
    if let Some(iss) = &issuer {
        match url::Url::parse(&iss.value) {
            Ok(u) if u.scheme() == "https" => {}
            Ok(u) => out.push(Finding::new(
                &model::AUTH_ISSUER_HTTP,
                iss.at.clone(),
                format!("{} is a {} URL (host '{}')", iss.key, u.scheme(), u.host_str().unwrap_or("")),
                format!("terminate TLS in front of the identity provider and set {} to its https URL (https://HOST/realms/REALM)", iss.key),
            )),
            Err(_) => out.push(Finding::new(
                &model::AUTH_ISSUER_HTTP,
                iss.at.clone(),
                format!("{} is not an absolute URL (an unset variable?)", iss.key),
                format!("set {} to the provider's https issuer URL", iss.key),
            )),
        }
    }
    let jwks = setting(
        cfg,
        raw,
        aibox,
        env::AIBOX_AUTH_JWKS_URL,
        &["auth", "jwks_url"],
    );
    let token_url = setting(cfg, raw, aibox, "", &["service_auth", "token_url"]);
    for s in [jwks, token_url].into_iter().flatten() {
        if let Ok(u) = url::Url::parse(&s.value) {
            let host = u.host_str().unwrap_or("");
            if u.scheme() == "http" && !is_internal_host(host) {
                out.push(Finding::new(
                    &model::TLS_PLAIN_HTTP,
                    s.at.clone(),
                    format!("{} is plain http to '{host}', which is not an internal host", s.key),
                    format!("use https for {}, or the internal service name on the backend network (http://keycloak:8080/...)", s.key),
                ));
            }
        }
    }

    match (&issuer, online) {
        (Some(iss), true) => online_issuer(iss, out),
        (Some(iss), false) => out.push(Finding::new(
            &model::DOCTOR_OFFLINE,
            iss.at.clone(),
            format!(
                "{} was not compared with {}/.well-known/openid-configuration",
                iss.key,
                iss.value.trim_end_matches('/')
            ),
            "run `aibox doctor --online` where the provider is reachable",
        )),
        (None, _) => {}
    }
}

/// Fetches `{issuer}/.well-known/openid-configuration` and compares its
/// `issuer` with the configured one, exactly.
fn online_issuer(iss: &Setting, out: &mut Vec<Finding>) {
    let url = format!(
        "{}/.well-known/openid-configuration",
        iss.value.trim_end_matches('/')
    );
    match fetch_discovery_issuer(&url) {
        Ok(found) if found == iss.value => {}
        Ok(found) => out.push(Finding::new(
            &model::AUTH_ISSUER_MISMATCH,
            iss.at.clone(),
            format!("{} is '{}' but the provider's discovery document says '{found}'", iss.key, iss.value),
            format!("set {} to '{found}', or fix the provider's public hostname (KC_HOSTNAME) so tokens carry '{}'", iss.key, iss.value),
        )),
        Err(why) => out.push(Finding::new(
            &model::AUTH_DISCOVERY_UNREACHABLE,
            iss.at.clone(),
            format!("GET {url} failed: {why}"),
            format!("check {} and that the provider is reachable from here", iss.key),
        )),
    }
}

fn fetch_discovery_issuer(url: &str) -> Result<String, String> {
    // reqwest is built without a default TLS provider; install ring once
    // per process (a second install is refused harmlessly).
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    rt.block_on(async {
        let client = reqwest::Client::builder()
            .timeout(DISCOVERY_TIMEOUT)
            .connect_timeout(DISCOVERY_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        let resp = client
            .get(url)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| describe(&e))?;
        let status = resp.status();
        if !status.is_success() {
            return Err(format!("status {status}"));
        }
        let body = resp.bytes().await.map_err(|e| describe(&e))?;
        if body.len() > 1 << 20 {
            return Err("the document is over 1 MiB".to_owned());
        }
        let doc: serde_json::Value =
            serde_json::from_slice(&body).map_err(|_| "the body is not JSON".to_owned())?;
        doc.get("issuer")
            .and_then(|v| v.as_str())
            .map(str::to_owned)
            .ok_or_else(|| "the document has no \"issuer\"".to_owned())
    })
}

fn describe(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        format!("timed out after {} s", DISCOVERY_TIMEOUT.as_secs())
    } else if e.is_connect() {
        "cannot connect".to_owned()
    } else {
        let mut s = e.to_string();
        let mut src = std::error::Error::source(e);
        while let Some(inner) = src {
            s = format!("{s}: {inner}");
            src = inner.source();
        }
        s
    }
}

/// Checks the guardrail constitution: it parses as YAML and `enabled` is
/// not false.
pub fn check_guardrail(path: &Path, out: &mut Vec<Finding>) {
    let text =
        match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(_) => {
                out.push(Finding::new(
                &model::GUARD_DISABLED,
                Some(Location::new(path, None)),
                "the constitution file does not exist, so only built-in guardrail defaults apply",
                format!("create {} (the repository ships one) and review it", path.display()),
            ));
                return;
            }
        };
    let doc: Value = match serde_yaml_ng::from_str(&text) {
        Ok(v) => v,
        Err(e) => {
            let line = e.location().map(|l| l.line());
            out.push(Finding::new(
                &model::GUARD_INVALID,
                Some(Location::new(path, line)),
                "the constitution is not valid YAML",
                format!("fix the YAML at that position in {}", path.display()),
            ));
            return;
        }
    };
    match doc.get("enabled") {
        Some(Value::Bool(true)) => {}
        Some(Value::Bool(false)) => out.push(Finding::new(
            &model::GUARD_DISABLED,
            Some(Location::new(
                path,
                yaml_line(&text, &[Seg::Key("enabled")]),
            )),
            "enabled is false: no scanner and no critique runs",
            "set `enabled: true`",
        )),
        Some(_) => out.push(Finding::new(
            &model::GUARD_INVALID,
            Some(Location::new(
                path,
                yaml_line(&text, &[Seg::Key("enabled")]),
            )),
            "enabled is not a boolean",
            "set `enabled: true`",
        )),
        None => out.push(Finding::new(
            &model::GUARD_DISABLED,
            Some(Location::new(path, None)),
            "`enabled` is not set; say `enabled: true` explicitly so a review sees it",
            "add `enabled: true` at the top level",
        )),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::doctor::sources::EnvSource;

    fn ids(out: &[Finding]) -> Vec<&'static str> {
        let mut v: Vec<&str> = out.iter().map(|f| f.rule.id).collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    #[test]
    fn internal_hosts() {
        for h in [
            "keycloak",
            "localhost",
            "127.0.0.1",
            "10.1.2.3",
            "192.168.0.5",
            "[::1]",
            "kc.svc",
            "idp.internal",
            "fd00::1",
        ] {
            assert!(is_internal_host(h), "{h}");
        }
        for h in ["auth.example.com", "8.8.8.8", "2001:db8::1"] {
            assert!(!is_internal_host(h), "{h}");
        }
    }

    fn run(yaml: &str, env: &str) -> Vec<Finding> {
        let cfg = ConfigInput {
            path: Some(PathBuf::from("config.yaml")),
            text: yaml.to_owned(),
            ..ConfigInput::default()
        };
        let src = EnvSource::parse(Path::new(".env"), env);
        let aibox = AiboxEnv::resolve(&src, None);
        let mut out = Vec::new();
        check(&cfg, &aibox, false, &mut out);
        out.retain(|f| f.rule.id != "AIBOX-DOCTOR-002");
        out
    }

    #[test]
    fn auth_fixtures() {
        let good = "auth:\n  enabled: true\n  issuer: https://auth.example.com/realms/aibox\n  jwks_url: http://keycloak:8080/realms/aibox/protocol/openid-connect/certs\n";
        let cases: Vec<(String, &str, Vec<&str>)> = vec![
            (good.into(), "", vec![]),
            (
                good.replace("enabled: true", "enabled: false"),
                "",
                vec!["AIBOX-AUTH-001"],
            ),
            (
                good.into(),
                "AIBOX_AUTH_ENABLED=false\n",
                vec!["AIBOX-AUTH-001"],
            ),
            (
                good.replace("enabled: true", "enabled: false"),
                "AIBOX_AUTH_ENABLED=true\n",
                vec![],
            ),
            (String::new(), "", vec!["AIBOX-AUTH-001"]),
            (
                good.replace("https://auth", "http://auth"),
                "",
                vec!["AIBOX-AUTH-002"],
            ),
            (
                good.replace("http://keycloak:8080", "http://auth.example.com"),
                "",
                vec!["AIBOX-TLS-001"],
            ),
            (
                good.into(),
                "AIBOX_AUTH_ISSUER=/realms/aibox\n",
                vec!["AIBOX-AUTH-002", "AIBOX-CONFIG-001"],
            ),
            (
                format!("{good}bogus_key: 1\n"),
                "",
                vec!["AIBOX-CONFIG-001"],
            ),
        ];
        for (yaml, env, want) in cases {
            let out = run(&yaml, env);
            assert_eq!(ids(&out), want, "{yaml} {env}\n{out:#?}");
        }
        let out = run(&good.replace("enabled: true", "enabled: false"), "");
        assert_eq!(out[0].location.as_ref().unwrap().line, Some(2));
        let out = run(good, "AIBOX_AUTH_ENABLED=no\n");
        assert_eq!(out[0].location.as_ref().unwrap().to_string(), ".env:1");
    }

    #[test]
    fn guardrail_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.yaml");
        let cases = [
            (None, vec!["AIBOX-GUARD-002"]),
            (Some("enabled: true\nprofile: strict\n"), vec![]),
            (Some("enabled: false\n"), vec!["AIBOX-GUARD-002"]),
            (Some("profile: [\n"), vec!["AIBOX-GUARD-001"]),
            (Some("profile: strict\n"), vec!["AIBOX-GUARD-002"]),
        ];
        for (text, want) in cases {
            let _ = std::fs::remove_file(&p);
            if let Some(t) = text {
                std::fs::write(&p, t).unwrap();
            }
            let mut out = Vec::new();
            check_guardrail(&p, &mut out);
            assert_eq!(ids(&out), want, "{text:?}");
        }
    }
}
