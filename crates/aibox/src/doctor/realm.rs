//! Checks of a Keycloak realm export (seed 000 §3, §4): password grants,
//! the implicit flow, PKCE, localhost, wildcard and plain-http redirect
//! URIs, `sslRequired`, client secrets written in the file, and `${VAR}`
//! placeholders the env file does not set.
//!
//! Keycloak substitutes `${VAR}` and `${VAR:default}` from its environment
//! when it imports a realm, so URIs are judged after the same substitution
//! from the env file. Every realm the doctor is given is treated as a
//! production realm.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

use super::model::{self, Finding, Location};
use super::secrets;
use super::sources::json_lines;

/// Clients Keycloak creates in every realm.
const BUILTIN_CLIENTS: &[&str] = &[
    "admin-cli",
    "security-admin-console",
    "account",
    "account-console",
    "broker",
    "realm-management",
];

/// Substitutes Keycloak placeholders; returns the result and the names
/// that were unset and had no default.
pub fn substitute(s: &str, vars: &BTreeMap<String, String>) -> (String, Vec<String>) {
    let mut out = String::new();
    let mut missing = Vec::new();
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            out.push_str(&rest[start..]);
            rest = "";
            break;
        };
        let inner = &after[..end];
        let (name, default) = match inner.split_once(':') {
            Some((n, d)) => (n.trim_start_matches("env."), Some(d)),
            None => (inner.trim_start_matches("env."), None),
        };
        match (vars.get(name).filter(|v| !v.is_empty()), default) {
            (Some(v), _) => out.push_str(v),
            (None, Some(d)) => out.push_str(d),
            (None, None) => {
                missing.push(name.to_owned());
                out.push_str(&rest[start..start + 2 + end + 1]);
            }
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    (out, missing)
}

/// Whether a URI's host is localhost or loopback.
fn localhost_host(host: &str) -> bool {
    let h = host
        .trim_matches(|c| c == '[' || c == ']')
        .to_ascii_lowercase();
    h == "localhost"
        || h.ends_with(".localhost")
        || h == "::1"
        || h == "0.0.0.0"
        || h.parse::<std::net::Ipv4Addr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// What is wrong with one redirect URI or origin, if anything.
#[derive(Debug, PartialEq, Eq)]
pub enum UriProblem {
    /// `*`, or a wildcard in the host.
    Wildcard,
    /// localhost or loopback.
    Localhost,
    /// Plain http to another host.
    PlainHttp,
}

/// Judges one URI (relative URIs are relative to the client's root URL,
/// which is judged on its own).
pub fn judge_uri(uri: &str) -> Option<UriProblem> {
    let u = uri.trim();
    if u == "*" {
        return Some(UriProblem::Wildcard);
    }
    let (scheme, rest) = u.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host_port = authority.rsplit('@').next().unwrap_or(authority);
    let host = if host_port.starts_with('[') {
        host_port
            .split(']')
            .next()
            .map(|h| format!("{h}]"))
            .unwrap_or_default()
    } else {
        host_port.split(':').next().unwrap_or("").to_owned()
    };
    if host.contains('*') || scheme.contains('*') {
        return Some(UriProblem::Wildcard);
    }
    if localhost_host(&host) {
        return Some(UriProblem::Localhost);
    }
    if scheme.eq_ignore_ascii_case("http") {
        return Some(UriProblem::PlainHttp);
    }
    None
}

/// Runs the realm checks on an export's text.
pub fn check(
    path: &Path,
    text: &str,
    vars: &BTreeMap<String, String>,
    out: &mut Vec<Finding>,
) -> anyhow::Result<()> {
    let doc: Value = serde_json::from_str(text).map_err(|e| {
        anyhow::anyhow!(
            "cannot parse the realm export {} at line {} column {}; fix the JSON there (export it again with `kc.sh export`)",
            path.display(),
            e.line(),
            e.column()
        )
    })?;
    let lines = json_lines(text);
    let at = |ptr: &str| Some(Location::new(path, lines.get(ptr).copied()));

    // Unset placeholders anywhere in the file.
    let mut reported = std::collections::BTreeSet::new();
    walk_strings(&doc, String::new(), &mut |ptr, s| {
        let (_, missing) = substitute(s, vars);
        for m in missing {
            if reported.insert(m.clone()) {
                out.push(Finding::new(
                    &model::REALM_UNSET_VARIABLE,
                    at(&ptr),
                    format!("the realm uses ${{{m}}}, which the env file does not set; Keycloak would import it literally"),
                    format!("set {m} in the env file and pass it to the Keycloak container"),
                ));
            }
        }
    });

    if doc
        .get("sslRequired")
        .and_then(Value::as_str)
        .is_some_and(|s| s.eq_ignore_ascii_case("none"))
    {
        out.push(Finding::new(
            &model::REALM_SSL_NONE,
            at("/sslRequired"),
            "sslRequired is \"none\"",
            "set \"sslRequired\": \"external\" (or \"all\")",
        ));
    }

    let clients = doc
        .get("clients")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for (i, c) in clients.iter().enumerate() {
        let base = format!("/clients/{i}");
        let id = c.get("clientId").and_then(Value::as_str).unwrap_or("?");
        let flag = |k: &str| c.get(k).and_then(Value::as_bool);
        let builtin = BUILTIN_CLIENTS.contains(&id);
        let client_at = at(&format!("{base}/clientId"));

        if flag("directAccessGrantsEnabled") == Some(true) {
            let rule = if builtin {
                &model::REALM_BUILTIN_PASSWORD_GRANT
            } else {
                &model::REALM_PASSWORD_GRANT
            };
            out.push(Finding::new(
                rule,
                at(&format!("{base}/directAccessGrantsEnabled")),
                format!("client '{id}' has directAccessGrantsEnabled: true (password grants)"),
                format!("set \"directAccessGrantsEnabled\": false on client '{id}'"),
            ));
        }
        if flag("implicitFlowEnabled") == Some(true) {
            out.push(Finding::new(
                &model::REALM_IMPLICIT,
                at(&format!("{base}/implicitFlowEnabled")),
                format!("client '{id}' has implicitFlowEnabled: true"),
                format!("set \"implicitFlowEnabled\": false on client '{id}'"),
            ));
        }
        let standard =
            flag("standardFlowEnabled").unwrap_or(true) && flag("bearerOnly") != Some(true);
        let pkce = c
            .get("attributes")
            .and_then(|a| a.get("pkce.code.challenge.method"))
            .and_then(Value::as_str);
        if standard && !builtin && pkce != Some("S256") {
            out.push(Finding::new(
                &model::REALM_NO_PKCE,
                client_at.clone(),
                format!(
                    "client '{id}' uses the authorization-code flow without requiring PKCE S256 ({})",
                    pkce.map(|p| format!("method '{p}'")).unwrap_or_else(|| "no pkce.code.challenge.method".to_owned())
                ),
                format!("set attributes.\"pkce.code.challenge.method\": \"S256\" on client '{id}'"),
            ));
        }
        if flag("publicClient") != Some(true)
            && let Some(secret) = c.get("secret").and_then(Value::as_str)
            && !secret.is_empty()
            && !secrets::is_reference(secret)
        {
            out.push(Finding::new(
                &model::REALM_LITERAL_SECRET,
                at(&format!("{base}/secret")),
                format!(
                    "client '{id}' has its secret written in the file ({} characters)",
                    secret.chars().count()
                ),
                format!(
                    "write \"secret\": \"${{{}}}\" and set the value in the env file",
                    crate::bootstrap::service_secret_var(id)
                ),
            ));
        }

        // Redirect URIs, origins and root URLs, after substitution.
        let mut uris: Vec<(String, String)> = Vec::new();
        for k in ["redirectUris", "webOrigins"] {
            for (j, v) in c
                .get(k)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .enumerate()
            {
                if let Some(s) = v.as_str() {
                    uris.push((format!("{base}/{k}/{j}"), s.to_owned()));
                }
            }
        }
        for k in ["rootUrl", "baseUrl", "adminUrl"] {
            if let Some(s) = c.get(k).and_then(Value::as_str) {
                uris.push((format!("{base}/{k}"), s.to_owned()));
            }
        }
        if let Some(s) = c
            .get("attributes")
            .and_then(|a| a.get("post.logout.redirect.uris"))
            .and_then(Value::as_str)
        {
            for part in s.split("##") {
                uris.push((
                    format!("{base}/attributes/post.logout.redirect.uris"),
                    part.to_owned(),
                ));
            }
        }
        for (ptr, raw) in uris {
            let (value, _) = substitute(&raw, vars);
            let Some(problem) = judge_uri(&value) else {
                continue;
            };
            let (rule, what) = match problem {
                UriProblem::Wildcard => (&model::REALM_WILDCARD_REDIRECT, "accepts any URI"),
                UriProblem::Localhost => (&model::REALM_LOCALHOST_REDIRECT, "points at localhost"),
                UriProblem::PlainHttp => (&model::REALM_HTTP_REDIRECT, "is plain http"),
            };
            let shown = if raw == value {
                format!("'{raw}'")
            } else {
                format!("'{raw}' (= '{value}')")
            };
            out.push(Finding::new(
                rule,
                at(&ptr),
                format!("client '{id}': {shown} {what}"),
                format!("list only the production https URIs of client '{id}', e.g. \"${{AIBOX_PUBLIC_URL}}/*\""),
            ));
        }
    }
    Ok(())
}

fn walk_strings(v: &Value, ptr: String, f: &mut dyn FnMut(String, &str)) {
    match v {
        Value::String(s) => f(ptr, s),
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                walk_strings(x, format!("{ptr}/{i}"), f);
            }
        }
        Value::Object(m) => {
            for (k, x) in m {
                walk_strings(
                    x,
                    format!("{ptr}/{}", k.replace('~', "~0").replace('/', "~1")),
                    f,
                );
            }
        }
        _ => {}
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn vars() -> BTreeMap<String, String> {
        [
            ("AIBOX_PUBLIC_URL", "https://ai.example.com"),
            ("S", "x"),
            ("DEV_URL", "http://localhost:3000"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    #[test]
    fn placeholders_substitute_like_keycloak() {
        let cases = [
            ("${AIBOX_PUBLIC_URL}/*", "https://ai.example.com/*", vec![]),
            ("${NOPE:https://d}/x", "https://d/x", vec![]),
            ("${env.S}", "x", vec![]),
            ("${NOPE}/x", "${NOPE}/x", vec!["NOPE"]),
        ];
        for (input, want, missing) in cases {
            let (got, m) = substitute(input, &vars());
            assert_eq!(got, want);
            assert_eq!(m, missing);
        }
    }

    #[test]
    fn uris() {
        let cases = [
            ("https://ai.example.com/*", None),
            ("/realms/aibox/account/*", None),
            ("+", None),
            ("*", Some(UriProblem::Wildcard)),
            ("https://*.example.com/cb", Some(UriProblem::Wildcard)),
            ("http://localhost:3000/*", Some(UriProblem::Localhost)),
            ("https://127.0.0.1/cb", Some(UriProblem::Localhost)),
            ("http://[::1]:8080/", Some(UriProblem::Localhost)),
            ("http://ai.example.com/cb", Some(UriProblem::PlainHttp)),
        ];
        for (u, want) in cases {
            assert_eq!(judge_uri(u), want, "{u}");
        }
    }

    fn client(extra: &str) -> String {
        format!(
            "{{\"realm\": \"aibox\", \"sslRequired\": \"external\", \"clients\": [{{\"clientId\": \"aibox-frontend\", \"publicClient\": true, \"standardFlowEnabled\": true, \"directAccessGrantsEnabled\": false, \"redirectUris\": [\"${{AIBOX_PUBLIC_URL}}/*\"], \"attributes\": {{\"pkce.code.challenge.method\": \"S256\"}}{extra}}}]}}"
        )
    }

    #[test]
    fn one_fixture_per_check_trips_only_it() {
        let cases: Vec<(String, Vec<&str>)> = vec![
            (client(""), vec![]),
            (
                client("").replace(
                    "\"directAccessGrantsEnabled\": false",
                    "\"directAccessGrantsEnabled\": true",
                ),
                vec!["AIBOX-REALM-001"],
            ),
            (
                client("").replace("${AIBOX_PUBLIC_URL}/*", "${DEV_URL}/*"),
                vec!["AIBOX-REALM-002"],
            ),
            (
                client("").replace("\"external\"", "\"none\""),
                vec!["AIBOX-REALM-003"],
            ),
            (
                client("").replace("aibox-frontend", "admin-cli").replace(
                    "\"directAccessGrantsEnabled\": false",
                    "\"directAccessGrantsEnabled\": true",
                ),
                vec!["AIBOX-REALM-004"],
            ),
            (
                client("").replace("${AIBOX_PUBLIC_URL}/*", "*"),
                vec!["AIBOX-REALM-005"],
            ),
            (client("").replace("S256", "plain"), vec!["AIBOX-REALM-006"]),
            (
                client(", \"implicitFlowEnabled\": true"),
                vec!["AIBOX-REALM-007"],
            ),
            (
                client("").replace(
                    "\"publicClient\": true",
                    "\"publicClient\": false, \"secret\": \"Zq8rT3kLm9Pw2xVb7NcY\"",
                ),
                vec!["AIBOX-REALM-008"],
            ),
            (
                client("").replace(
                    "\"publicClient\": true",
                    "\"publicClient\": false, \"secret\": \"${SERVICE_X_CLIENT_SECRET:}\"",
                ),
                vec![],
            ),
            (
                client("").replace("${AIBOX_PUBLIC_URL}/*", "${UNSET_URL}/*"),
                vec!["AIBOX-REALM-009"],
            ),
            (
                client("").replace("${AIBOX_PUBLIC_URL}/*", "http://ai.example.com/*"),
                vec!["AIBOX-REALM-010"],
            ),
        ];
        for (text, want) in cases {
            let mut out = Vec::new();
            check(Path::new("realm.json"), &text, &vars(), &mut out).unwrap();
            let mut got: Vec<&str> = out.iter().map(|f| f.rule.id).collect();
            got.sort_unstable();
            assert_eq!(got, want, "{text}\n{out:#?}");
            for f in &out {
                assert!(!f.evidence.contains("Zq8"), "{}", f.evidence);
            }
        }
        assert!(
            check(
                Path::new("realm.json"),
                "{\"clients\": [",
                &vars(),
                &mut Vec::new()
            )
            .is_err()
        );
    }
}
