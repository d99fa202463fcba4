//! Judging secret values without ever printing them: which variable and
//! JSON key names hold secrets, and whether a value is a placeholder, a
//! well-known default, too short, malformed, or shaped like a known token.
//! Every verdict describes the value (its length, its shape), never
//! quotes it.

use aibox_config::env;
use aibox_core::keyring::{Keyring, check_audit_signing_key};

use crate::bootstrap::is_placeholder;

/// The shortest password or token the doctor accepts, in characters.
pub const MIN_SECRET_CHARS: usize = 16;

/// The keyring variables (KEY_ID:BASE64URL format).
pub const KEYRINGS: [&str; 3] = [
    env::AIBOX_PRINCIPAL_KEYS,
    env::AIBOX_CAPTOKEN_KEYS,
    env::SECRETS_MASTER_KEY,
];

/// Variable-name endings that name something about a secret rather than
/// the secret itself (`*_TOKEN_URL`, `*_SECRET_FILE`, `*_CLIENT_ID`).
const NOT_SECRET_SUFFIXES: &[&str] = &[
    "_FILE",
    "_ENV",
    "_URL",
    "_URI",
    "_PATH",
    "_ID",
    "_NAME",
    "_TTL",
    "_TTL_SECS",
    "_SECS",
    "_MS",
    "_ENABLED",
    "_AUDIENCE",
    "_HEADER",
    "_ALGORITHM",
    "_TYPE",
    "_LENGTH",
    "_EXPIRES",
    "_EXPIRY",
    "_HOST",
    "_PORT",
    "_USER",
    "_USERNAME",
];

/// Whether an environment variable holds a secret, by its name.
pub fn is_secret_var(name: &str) -> bool {
    let n = name.to_ascii_uppercase();
    if NOT_SECRET_SUFFIXES.iter().any(|s| n.ends_with(s)) {
        return false;
    }
    [
        "PASSWORD",
        "PASSWD",
        "SECRET",
        "TOKEN",
        "API_KEY",
        "APIKEY",
        "PRIVATE_KEY",
        "CREDENTIAL",
    ]
    .iter()
    .any(|w| n.contains(w))
        || n.ends_with("_KEY")
        || n.ends_with("_KEYS")
        || n == "SALT"
        || n.ends_with("_SALT")
}

/// Whether a secret-looking variable is public by design (a Langfuse public
/// key): it is not held to the length rule, only to the default rule.
pub fn is_public_var(name: &str) -> bool {
    name.to_ascii_uppercase().contains("PUBLIC")
}

/// Splits a JSON key into lower-case words (camelCase, snake_case,
/// kebab-case, dots).
fn words(key: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut prev_lower = false;
    for c in key.chars() {
        if !c.is_ascii_alphanumeric() {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            prev_lower = false;
            continue;
        }
        if c.is_ascii_uppercase() && prev_lower && !cur.is_empty() {
            out.push(std::mem::take(&mut cur));
        }
        prev_lower = c.is_ascii_lowercase() || c.is_ascii_digit();
        cur.push(c.to_ascii_lowercase());
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Whether a JSON key names a secret (`token`, `botToken`, `api_key`,
/// `apiKey`, `client_secret`, `password`), but not something about one
/// (`token_url`, `secret_name`, `max_tokens`, `tokenizer`).
pub fn is_secret_key(key: &str) -> bool {
    let w = words(key);
    let Some(last) = w.last() else {
        return false;
    };
    const ABOUT: &[&str] = &[
        "url", "uri", "file", "path", "name", "env", "id", "ref", "type", "hint", "ttl", "count",
        "limit", "length", "endpoint", "header", "expiry", "expires", "at", "len", "max", "min",
        "enabled", "required", "policy", "prefix", "format", "source",
    ];
    if ABOUT.contains(&last.as_str()) {
        return false;
    }
    let has = |x: &str| w.iter().any(|v| v == x);
    let pair = |a: &str, b: &str| w.windows(2).any(|p| p[0] == a && p[1] == b);
    has("token")
        || has("secret")
        || has("password")
        || has("passwd")
        || has("credential")
        || has("credentials")
        || has("apikey")
        || pair("api", "key")
        || pair("private", "key")
        || pair("access", "key")
        || pair("secret", "key")
}

/// What is wrong with a secret value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Weakness {
    /// `changeme`, `<your-password>`, `${VAR}` and friends.
    Placeholder,
    /// A well-known or patterned value; the string says which.
    Default(&'static str),
    /// Too short or malformed; the string describes it (never the value).
    Weak(String),
}

impl Weakness {
    /// "is a placeholder", "is a well-known default (...)", "is 8
    /// characters ...".
    pub fn describe(&self) -> String {
        match self {
            Weakness::Placeholder => "is a placeholder".to_owned(),
            Weakness::Default(why) => format!("is a well-known default ({why})"),
            Weakness::Weak(why) => why.clone(),
        }
    }
}

/// Known default values, compared after removing everything but letters
/// and digits and lower-casing.
const KNOWN_DEFAULTS: &[&str] = &[
    "pklf1234567890",
    "sklf1234567890",
    "lfpk1234567890",
    "lfsk1234567890",
    "mysecret",
    "mysalt",
    "minioadmin",
    "postgres",
    "langfuse",
    "redis",
    "keycloak",
    "admin123",
    "password123",
    "secret123",
    "letmein",
    "qwerty",
    "test",
    "testing",
    "dev",
    "development",
    "insecure",
    "notsecure",
    "sk1234",
    "root",
    "guest",
];

/// Whether `s` (lower-case letters and digits) is a run like `123456`,
/// `67890123` or `abcdef`.
fn is_sequential(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() >= 4
        && b.windows(2)
            .all(|p| p[1] == p[0].wrapping_add(1) || (p[0] == b'9' && p[1] == b'0'))
}

fn distinct(s: &str) -> usize {
    let mut seen = std::collections::BTreeSet::new();
    for c in s.chars() {
        seen.insert(c);
    }
    seen.len()
}

/// Why `value` is a default or patterned value, if it is one.
pub fn default_reason(value: &str) -> Option<&'static str> {
    let lower = value.trim().to_ascii_lowercase();
    let fold = |s: &str| -> String { s.chars().filter(char::is_ascii_alphanumeric).collect() };
    let folded = fold(&lower);
    if folded.is_empty() {
        return None;
    }
    if KNOWN_DEFAULTS.contains(&folded.as_str()) {
        return Some("a published default value");
    }
    for prefix in ["pk-lf-", "sk-lf-", "lf_pk_", "lf_sk_", "sk-", "pk-"] {
        if let Some(rest) = lower.strip_prefix(prefix) {
            let body = fold(rest);
            if body.len() < 12 || is_sequential(&body) || distinct(&body) <= 3 {
                return Some(if prefix.contains("lf") {
                    "a development Langfuse key: the prefix followed by a short or sequential body"
                } else {
                    "a development API key: the prefix followed by a short or sequential body"
                });
            }
        }
    }
    if folded.len() >= 6 && distinct(&folded) <= 2 {
        return Some("one or two characters repeated");
    }
    if is_sequential(&folded) {
        return Some("a sequential run of characters");
    }
    None
}

/// Judges a non-empty secret value of variable `name`; `None` when it
/// passes. Order matters so that one value gets one verdict: placeholder,
/// then default, then length and format.
pub fn judge(name: &str, value: &str) -> Option<Weakness> {
    if value.trim().is_empty() {
        return None;
    }
    if is_placeholder(value) {
        return Some(Weakness::Placeholder);
    }
    if let Some(why) = default_reason(value) {
        return Some(Weakness::Default(why));
    }
    let len = value.trim().chars().count();
    if name == env::AUDIT_SIGNING_KEY {
        return check_audit_signing_key(value).err().map(|_| {
            Weakness::Weak(format!(
                "is {len} characters; at least {} are required",
                aibox_core::keyring::AUDIT_KEY_MIN_CHARS
            ))
        });
    }
    if KEYRINGS.contains(&name) {
        return Keyring::parse(value.trim())
            .err()
            .map(|e| Weakness::Weak(format!("is not a valid keyring: {e}")));
    }
    if !is_public_var(name) && len < MIN_SECRET_CHARS {
        return Some(Weakness::Weak(format!(
            "is {len} characters; at least {MIN_SECRET_CHARS} are required"
        )));
    }
    None
}

/// Token prefixes with the shortest body after them and a description.
const SHAPES: &[(&str, usize, &str)] = &[
    ("sk-ant-", 20, "an Anthropic API key"),
    ("sk-proj-", 20, "an OpenAI project key"),
    ("sk-lf-", 8, "a Langfuse secret key"),
    ("sk-", 20, "an OpenAI-style API key"),
    ("github_pat_", 30, "a GitHub token"),
    ("ghp_", 30, "a GitHub token"),
    ("gho_", 30, "a GitHub token"),
    ("ghu_", 30, "a GitHub token"),
    ("ghs_", 30, "a GitHub token"),
    ("ghr_", 30, "a GitHub token"),
    ("glpat-", 20, "a GitLab token"),
    ("xoxb-", 10, "a Slack bot token"),
    ("xoxp-", 10, "a Slack user token"),
    ("xoxa-", 10, "a Slack token"),
    ("xoxe-", 10, "a Slack token"),
    ("xapp-", 10, "a Slack app token"),
    ("hf_", 30, "a Hugging Face token"),
    ("npm_", 36, "an npm token"),
    ("sk_live_", 16, "a Stripe secret key"),
    ("rk_live_", 16, "a Stripe restricted key"),
    ("AIza", 35, "a Google API key"),
    ("aibox_", 20, "an aibox API key"),
];

fn token_chars(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// What well-known kind of token `value` looks like, if any.
pub fn token_shape(value: &str) -> Option<&'static str> {
    let v = value.trim();
    if v.contains("-----BEGIN") && v.contains("PRIVATE KEY") {
        return Some("a private key");
    }
    for (prefix, min, what) in SHAPES {
        if let Some(body) = v.strip_prefix(prefix)
            && body.len() >= *min
            && token_chars(body)
            && default_reason(v).is_none()
        {
            return Some(what);
        }
    }
    if let Some(rest) = v.strip_prefix("AKIA")
        && rest.len() == 16
        && rest
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
    {
        return Some("an AWS access key id");
    }
    if v.starts_with("eyJ") {
        let parts: Vec<&str> = v.split('.').collect();
        if parts.len() == 3 && parts[..2].iter().all(|p| p.len() >= 10 && token_chars(p)) {
            return Some("a JWT");
        }
    }
    if let Some((id, secret)) = v.split_once(':')
        && (8..=10).contains(&id.len())
        && id.bytes().all(|b| b.is_ascii_digit())
        && secret.len() == 35
        && token_chars(secret)
    {
        return Some("a Telegram bot token");
    }
    None
}

/// Whether a value refers to a secret kept elsewhere rather than holding
/// one: `${VAR}`, `{{ var }}`, `env:NAME`, `vault:name`, masked `*****`.
pub fn is_reference(value: &str) -> bool {
    let v = value.trim();
    (v.starts_with("${") && v.ends_with('}'))
        || (v.starts_with("{{") && v.ends_with("}}"))
        || v.starts_with("env:")
        || v.starts_with("vault:")
        || v.starts_with("secret:")
        || (!v.is_empty() && v.chars().all(|c| c == '*'))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn secret_variable_names() {
        for n in [
            "POSTGRES_PASSWORD",
            "SERVICE_AUDIT_CLIENT_SECRET",
            "OPS_CONTROLLER_TOKEN",
            "AIBOX_PRINCIPAL_KEYS",
            "SECRETS_MASTER_KEY",
            "OPENAI_API_KEY",
            "LANGFUSE_SECRET_KEY",
            "LANGFUSE_PUBLIC_KEY",
            "NEXTAUTH_SECRET",
            "SALT",
            "AUDIT_SIGNING_KEY",
        ] {
            assert!(is_secret_var(n), "{n}");
        }
        for n in [
            "AIBOX_AUTH_JWKS_URL",
            "TOKEN_URL",
            "CLIENT_SECRET_FILE",
            "SERVICE_CLIENT_ID",
            "AIBOX_MCP_CAPTOKEN_AUDIENCE",
            "POSTGRES_USER",
            "AIBOX_LISTEN",
            "FILESYSTEM_ROOT",
        ] {
            assert!(!is_secret_var(n), "{n}");
        }
    }

    #[test]
    fn secret_json_keys() {
        for k in [
            "token",
            "botToken",
            "apiKey",
            "api_key",
            "client_secret",
            "password",
            "auth-token",
            "secretKey",
            "privateKey",
            "accessKey",
        ] {
            assert!(is_secret_key(k), "{k}");
        }
        for k in [
            "token_url",
            "secret_name",
            "max_tokens",
            "tokenizer",
            "passwordHint",
            "tokenEndpoint",
            "name",
            "keyId",
        ] {
            assert!(!is_secret_key(k), "{k}");
        }
    }

    #[test]
    fn verdicts_are_exclusive_and_never_quote_the_value() {
        let strong = "Zq8-rT3_kLm9Pw2xVb7NcY4sHd6Jf1Ga";
        let keyring = {
            use base64::Engine as _;
            let bytes: Vec<u8> = (0u8..32)
                .map(|i| i.wrapping_mul(37).wrapping_add(11))
                .collect();
            format!(
                "v1:{}",
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
            )
        };
        let cases: Vec<(&str, String, Option<&str>)> = vec![
            ("POSTGRES_PASSWORD", "changeme".into(), Some("placeholder")),
            ("POSTGRES_PASSWORD", "<set-me>".into(), Some("placeholder")),
            (
                "LANGFUSE_SECRET_KEY",
                "sk-lf-1234567890".into(),
                Some("well-known"),
            ),
            (
                "LANGFUSE_PUBLIC_KEY",
                "pk-lf-1234567890".into(),
                Some("well-known"),
            ),
            (
                "LANGFUSE_PUBLIC_KEY",
                "pk-lf-3f1c9a5e-7b2d-4c8e-9a6f-1d2e3f4a5b6c".into(),
                None,
            ),
            (
                "MINIO_ROOT_PASSWORD",
                "minioadmin".into(),
                Some("well-known"),
            ),
            ("ENCRYPTION_KEY", "0".repeat(64), Some("well-known")),
            (
                "REDIS_PASSWORD",
                "1234567890123456".into(),
                Some("well-known"),
            ),
            (
                "REDIS_PASSWORD",
                "hunter2hunter".into(),
                Some("13 characters"),
            ),
            (
                "AUDIT_SIGNING_KEY",
                "Zq8-rT3_kLm9Pw2xVb7N".into(),
                Some("20 characters"),
            ),
            ("AUDIT_SIGNING_KEY", strong.into(), None),
            (
                "AIBOX_PRINCIPAL_KEYS",
                "v1:tooshortkey".into(),
                Some("not a valid keyring"),
            ),
            ("AIBOX_PRINCIPAL_KEYS", keyring, None),
            ("DASHBOARD_AUTH_TOKEN", strong.into(), None),
            ("LANGFUSE_PUBLIC_KEY", "pk-abc".into(), Some("well-known")),
        ];
        for (name, value, want) in cases {
            let got = judge(name, &value).map(|w| w.describe());
            match (want, &got) {
                (None, None) => {}
                (Some(w), Some(g)) => {
                    assert!(g.contains(w), "{name}={value}: {g}");
                    assert!(!g.contains(&value), "{g} quotes the value");
                }
                _ => panic!("{name}={value}: want {want:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn token_shapes() {
        let cases = [
            (
                "ghp_0123456789abcdefghijABCDEFGHIJ0123",
                Some("a GitHub token"),
            ),
            ("xoxb-1234567890-abcdefghij", Some("a Slack bot token")),
            (
                "sk-Zq8rT3kLm9Pw2xVb7NcY4sHd6Jf1Ga",
                Some("an OpenAI-style API key"),
            ),
            ("sk-1234", None),
            ("AKIAIOSFODNN7EXAMPLE", Some("an AWS access key id")),
            (
                "123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw1",
                Some("a Telegram bot token"),
            ),
            (
                "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.sig",
                Some("a JWT"),
            ),
            (
                "-----BEGIN OPENSSH PRIVATE KEY-----\nabc",
                Some("a private key"),
            ),
            ("hello world", None),
            ("github-token", None),
        ];
        for (v, want) in cases {
            assert_eq!(token_shape(v), want, "{v}");
        }
    }

    #[test]
    fn references_are_not_secrets() {
        for v in [
            "${SERVICE_X_CLIENT_SECRET}",
            "**********",
            "env:GITHUB_TOKEN",
            "{{ token }}",
        ] {
            assert!(is_reference(v), "{v}");
        }
        assert!(!is_reference("abc${X}"));
    }
}
