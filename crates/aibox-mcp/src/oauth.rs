//! OAuth metadata discovery for remote MCP servers, through the egress
//! guard only.
//!
//! A remote MCP server that wants a token answers `401` with
//! `WWW-Authenticate: Bearer resource_metadata="..."` (MCP authorization,
//! RFC 9728 §5.1). aibox then reads the server's protected-resource
//! metadata (RFC 9728: the URL from the header, else
//! `/.well-known/oauth-protected-resource` inserted before the resource's
//! path), checks that it describes this very resource (§3.3), and reads
//! the first authorization server's metadata (RFC 8414:
//! `/.well-known/oauth-authorization-server` inserted before the issuer's
//! path), checking that its `issuer` is the one named (§3.3) and that its
//! endpoints are `https`. Every document is fetched with
//! [`HttpEgress::fetch`], so the SSRF-safe guard checks each URL, address
//! and redirect: a hostile server cannot point aibox at an internal address
//! by naming it as its metadata or authorization server.
//!
//! aibox does not yet obtain tokens for remote servers; the discovery names
//! the authorization server and token endpoint in the error the operator
//! sees, instead of a bare "HTTP 401".

use serde_json::Value;

use crate::seams::HttpEgress;

/// The RFC 9728 well-known suffix.
pub const PROTECTED_RESOURCE_WELL_KNOWN: &str = "/.well-known/oauth-protected-resource";
/// The RFC 8414 well-known suffix.
pub const AUTHORIZATION_SERVER_WELL_KNOWN: &str = "/.well-known/oauth-authorization-server";

/// What discovery found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthDiscovery {
    /// The protected resource (the MCP server's URL as its metadata says).
    pub resource: String,
    /// The authorization server's issuer.
    pub issuer: String,
    /// Its token endpoint.
    pub token_endpoint: String,
    /// Its authorization endpoint, if it has one.
    pub authorization_endpoint: Option<String>,
    /// Whether it supports PKCE with S256 (MCP requires it).
    pub pkce_s256: bool,
}

/// Why discovery failed; the message names the document and the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("OAuth discovery for {resource}: {why}")]
pub struct DiscoveryError {
    /// The resource.
    pub resource: String,
    /// What went wrong.
    pub why: String,
}

/// The `resource_metadata` parameter of a `WWW-Authenticate: Bearer`
/// challenge, if present.
pub fn resource_metadata_param(www_authenticate: &str) -> Option<String> {
    let rest = www_authenticate.trim();
    let rest = rest
        .get(..6)
        .filter(|s| s.eq_ignore_ascii_case("bearer"))
        .map(|_| &rest[6..])?;
    let mut s = rest;
    loop {
        s = s.trim_start_matches([' ', ',', '\t']);
        if s.is_empty() {
            return None;
        }
        let eq = s.find('=')?;
        let name = s[..eq].trim();
        s = &s[eq + 1..];
        let value;
        if let Some(quoted) = s.strip_prefix('"') {
            let end = quoted.find('"')?;
            value = &quoted[..end];
            s = &quoted[end + 1..];
        } else {
            let end = s.find(',').unwrap_or(s.len());
            value = s[..end].trim();
            s = &s[end..];
        }
        if name.eq_ignore_ascii_case("resource_metadata") {
            return Some(value.to_owned());
        }
    }
}

/// `scheme://authority` + `suffix` + the path of `url` (without a lone
/// `/`), no query or fragment: the well-known location of RFC 8414 §3.1 and
/// RFC 9728 §3.1.
pub fn well_known(url: &url::Url, suffix: &str) -> url::Url {
    let mut u = url.clone();
    let path = url.path().trim_end_matches('/').to_owned();
    u.set_path(&format!("{suffix}{path}"));
    u.set_query(None);
    u.set_fragment(None);
    u
}

fn https(v: &str) -> bool {
    url::Url::parse(v).is_ok_and(|u| u.scheme() == "https" && u.host_str().is_some())
}

/// Checks a protected-resource metadata document (RFC 9728 §2, §3.3):
/// its `resource` must be `resource`; returns the first authorization
/// server.
pub fn check_protected_resource(doc: &Value, resource: &url::Url) -> Result<url::Url, String> {
    let named = doc
        .get("resource")
        .and_then(Value::as_str)
        .ok_or("the protected-resource metadata has no 'resource'")?;
    let same = url::Url::parse(named)
        .is_ok_and(|u| u.as_str().trim_end_matches('/') == resource.as_str().trim_end_matches('/'));
    if !same {
        return Err(format!(
            "the protected-resource metadata describes '{named}', not this server (RFC 9728 §3.3); it is ignored"
        ));
    }
    let first = doc
        .get("authorization_servers")
        .and_then(Value::as_array)
        .and_then(|a| a.first())
        .and_then(Value::as_str)
        .ok_or("the protected-resource metadata names no authorization_servers")?;
    if !https(first) {
        return Err(format!(
            "the authorization server '{first}' is not an https URL (RFC 8414 §2)"
        ));
    }
    url::Url::parse(first).map_err(|e| format!("the authorization server URL: {e}"))
}

/// Checks an authorization-server metadata document (RFC 8414 §2, §3.3).
pub fn check_authorization_server(
    doc: &Value,
    issuer: &url::Url,
    resource: &str,
) -> Result<OAuthDiscovery, String> {
    let named = doc
        .get("issuer")
        .and_then(Value::as_str)
        .ok_or("the authorization-server metadata has no 'issuer'")?;
    if named.trim_end_matches('/') != issuer.as_str().trim_end_matches('/') {
        return Err(format!(
            "the authorization-server metadata names issuer '{named}', not '{issuer}' (RFC 8414 §3.3); it is ignored"
        ));
    }
    let token_endpoint = doc
        .get("token_endpoint")
        .and_then(Value::as_str)
        .filter(|v| https(v))
        .ok_or("the authorization-server metadata has no https token_endpoint")?;
    let authorization_endpoint = match doc.get("authorization_endpoint").and_then(Value::as_str) {
        None => None,
        Some(v) if https(v) => Some(v.to_owned()),
        Some(v) => return Err(format!("the authorization_endpoint '{v}' is not https")),
    };
    let pkce_s256 = doc
        .get("code_challenge_methods_supported")
        .and_then(Value::as_array)
        .is_some_and(|a| a.iter().any(|m| m.as_str() == Some("S256")));
    Ok(OAuthDiscovery {
        resource: resource.to_owned(),
        issuer: named.to_owned(),
        token_endpoint: token_endpoint.to_owned(),
        authorization_endpoint,
        pkce_s256,
    })
}

async fn fetch_json(egress: &dyn HttpEgress, url: &url::Url) -> Result<Value, String> {
    let f = egress.fetch(url).await.map_err(|r| {
        if r.refusal {
            format!(
                "fetching {url} was refused by the egress rule '{}': {}",
                r.rule, r.message
            )
        } else {
            format!("fetching {url} failed: {}", r.message)
        }
    })?;
    if f.status != 200 {
        return Err(format!("{url} answered HTTP {}", f.status));
    }
    serde_json::from_slice(&f.body).map_err(|e| format!("{url} is not JSON: {e}"))
}

/// Discovers the authorization server of `resource` (a remote MCP server's
/// URL), from its `WWW-Authenticate` challenge if it sent one.
pub async fn discover(
    egress: &dyn HttpEgress,
    resource: &url::Url,
    www_authenticate: Option<&str>,
) -> Result<OAuthDiscovery, DiscoveryError> {
    let err = |why: String| DiscoveryError {
        resource: resource.to_string(),
        why,
    };
    let metadata_url = match www_authenticate.and_then(resource_metadata_param) {
        Some(u) => url::Url::parse(&u).map_err(|e| {
            err(format!(
                "the resource_metadata URL '{u}' does not parse: {e}"
            ))
        })?,
        None => well_known(resource, PROTECTED_RESOURCE_WELL_KNOWN),
    };
    let doc = fetch_json(egress, &metadata_url).await.map_err(err)?;
    let issuer = check_protected_resource(&doc, resource).map_err(err)?;
    let as_url = well_known(&issuer, AUTHORIZATION_SERVER_WELL_KNOWN);
    let doc = fetch_json(egress, &as_url).await.map_err(err)?;
    check_authorization_server(&doc, &issuer, resource.as_str()).map_err(err)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::seams::{BoxFuture, FetchRefused, Fetched};
    use serde_json::json;
    use std::collections::HashMap;
    use std::sync::Mutex;

    /// Answers from a map of URL to (status, body); anything else is
    /// refused as the guard would refuse an internal address.
    struct Docs {
        docs: HashMap<String, (u16, String)>,
        seen: Mutex<Vec<String>>,
    }

    impl HttpEgress for Docs {
        fn check(&self, _: &url::Url) -> Result<(), String> {
            Ok(())
        }
        fn client(&self) -> reqwest::Client {
            reqwest::Client::new()
        }
        fn resolve<'a>(
            &'a self,
            _: &'a url::Url,
        ) -> BoxFuture<'a, Result<Vec<std::net::SocketAddr>, String>> {
            Box::pin(async { Err("not used by these tests".to_owned()) })
        }
        fn fetch<'a>(&'a self, url: &'a url::Url) -> BoxFuture<'a, Result<Fetched, FetchRefused>> {
            self.seen.lock().unwrap().push(url.to_string());
            let r = match self.docs.get(url.as_str()) {
                Some((status, body)) => Ok(Fetched {
                    status: *status,
                    url: url.to_string(),
                    content_type: Some("application/json".into()),
                    body: bytes::Bytes::from(body.clone()),
                }),
                None => Err(FetchRefused {
                    rule: "loopback".into(),
                    refusal: true,
                    message: format!("egress refused {url}"),
                }),
            };
            Box::pin(async move { r })
        }
    }

    fn docs(pairs: &[(&str, Value)]) -> Docs {
        Docs {
            docs: pairs
                .iter()
                .map(|(u, v)| ((*u).to_owned(), (200, v.to_string())))
                .collect(),
            seen: Mutex::new(Vec::new()),
        }
    }

    const RS: &str = "https://tools.example.com/mcp";
    const PRM: &str = "https://tools.example.com/.well-known/oauth-protected-resource/mcp";
    const ASM: &str = "https://auth.example.com/.well-known/oauth-authorization-server/tenant1";

    fn prm() -> Value {
        json!({"resource": RS, "authorization_servers": ["https://auth.example.com/tenant1"]})
    }

    fn asm() -> Value {
        json!({"issuer": "https://auth.example.com/tenant1",
               "token_endpoint": "https://auth.example.com/tenant1/token",
               "authorization_endpoint": "https://auth.example.com/tenant1/authorize",
               "code_challenge_methods_supported": ["S256"]})
    }

    #[test]
    fn well_known_locations_and_the_challenge_parameter() {
        let u = url::Url::parse("https://tools.example.com/mcp?x=1").unwrap();
        assert_eq!(well_known(&u, PROTECTED_RESOURCE_WELL_KNOWN).as_str(), PRM);
        let u = url::Url::parse("https://auth.example.com/").unwrap();
        assert_eq!(
            well_known(&u, AUTHORIZATION_SERVER_WELL_KNOWN).as_str(),
            "https://auth.example.com/.well-known/oauth-authorization-server"
        );
        for (header, want) in [
            (
                r#"Bearer resource_metadata="https://x/.well-known/oauth-protected-resource""#,
                Some("https://x/.well-known/oauth-protected-resource"),
            ),
            (
                r#"Bearer realm="mcp", error="invalid_token", resource_metadata="https://y/m""#,
                Some("https://y/m"),
            ),
            (
                "bearer resource_metadata=https://z/m, scope=a",
                Some("https://z/m"),
            ),
            (r#"Basic realm="x""#, None),
            ("Bearer realm=\"x\"", None),
            ("", None),
        ] {
            assert_eq!(resource_metadata_param(header).as_deref(), want, "{header}");
        }
    }

    #[tokio::test]
    async fn discovery_through_the_egress_finds_the_token_endpoint() {
        let e = docs(&[(PRM, prm()), (ASM, asm())]);
        let d = discover(&e, &url::Url::parse(RS).unwrap(), None)
            .await
            .unwrap();
        assert_eq!(d.token_endpoint, "https://auth.example.com/tenant1/token");
        assert!(d.pkce_s256);
        assert_eq!(e.seen.lock().unwrap().as_slice(), [PRM, ASM]);
        // The challenge's URL is used when given.
        let alt = "https://tools.example.com/meta.json";
        let e = docs(&[(alt, prm()), (ASM, asm())]);
        let header = format!(r#"Bearer resource_metadata="{alt}""#);
        discover(&e, &url::Url::parse(RS).unwrap(), Some(&header))
            .await
            .unwrap();
    }

    /// Each row: the two documents, and a fragment the error must contain.
    #[tokio::test]
    async fn hostile_or_broken_metadata_is_refused() {
        let rs = url::Url::parse(RS).unwrap();
        let cases: Vec<(Value, Value, &str)> = vec![
            (
                json!({"resource": "https://other.example.com/mcp", "authorization_servers": ["https://auth.example.com/tenant1"]}),
                asm(),
                "RFC 9728 §3.3",
            ),
            (json!({"resource": RS}), asm(), "no authorization_servers"),
            (
                json!({"resource": RS, "authorization_servers": ["http://169.254.169.254/"]}),
                asm(),
                "not an https URL",
            ),
            (
                prm(),
                json!({"issuer": "https://evil.example.com/", "token_endpoint": "https://evil.example.com/t"}),
                "RFC 8414 §3.3",
            ),
            (
                prm(),
                json!({"issuer": "https://auth.example.com/tenant1", "token_endpoint": "http://auth.example.com/t"}),
                "no https token_endpoint",
            ),
        ];
        for (p, a, want) in cases {
            let e = docs(&[(PRM, p), (ASM, a)]);
            let err = discover(&e, &rs, None).await.unwrap_err().to_string();
            assert!(err.contains(want), "{err}");
        }
        // A metadata URL pointing inside is refused by the egress, and said so.
        let e = docs(&[]);
        let header = r#"Bearer resource_metadata="http://127.0.0.1:9000/meta""#;
        let err = discover(&e, &rs, Some(header))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("egress rule 'loopback'"), "{err}");
    }
}
