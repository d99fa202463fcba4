//! The MCP server registry: `servers.txt` and `registry.json` (parsing and
//! validation are pure; [`load_dir`] reads the two files).
//!
//! `servers.txt` lists the enabled servers, one name per line; `#` starts a
//! comment, blank lines are ignored. `registry.json` describes every server
//! an operator may enable:
//!
//! ```json
//! {"servers": {
//!   "local": {
//!     "transport": "stdio",
//!     "command": "/usr/bin/python3", "args": ["/srv/tools/server.py"],
//!     "env": {"LOG_LEVEL": "info"},
//!     "secrets": {"GITHUB_TOKEN": "github-token"},
//!     "cwd": "/srv/tools",
//!     "limits": {"cpu_secs": 600, "memory_mb": 1024, "open_files": 256, "processes": 256},
//!     "sandbox": {"mode": "require", "read": ["/srv/tools"], "write": ["/srv/tools/cache"], "network": "proxy"},
//!     "timeout_ms": 30000,
//!     "allow_clients": ["tenant:acme&role:tools"],
//!     "tools": {"allow": ["search", "read_*"], "deny": ["delete_*"]},
//!     "resources": {"allow": ["notes://*"], "deny": ["notes://private/*"]},
//!     "prompts": {"deny": ["debug_*"]}
//!   },
//!   "remote": {"transport": "http", "url": "https://tools.example.com/mcp", "allow_clients": ["*"]},
//!   "filesystem": {"transport": "builtin", "allow_clients": []},
//!   "fetch": {"transport": "builtin", "allow_clients": ["role:research"]}
//! }}
//! ```
//!
//! Every object refuses unknown fields, and fields that do not belong to the
//! server's transport. Plaintext `env` values whose name looks like a
//! credential (`*KEY*`, `*TOKEN*`, `*SECRET*`, `*PASSWORD*`, `*PASSWD*`,
//! `*CREDENTIAL*`) or whose value looks like a well-known token are refused:
//! credentials come from the vault through `secrets` (seed 004 §11), never
//! from a JSON file that ends up in backups. Errors name the file, the
//! server, the problem and the fix.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde::de::{MapAccess, Visitor};

use crate::names::{self, Namespace};
use crate::passthrough::{self, ExtraRules, ResourceRules};
use crate::policy::{ClientSelector, ToolPattern, ToolRules};

/// The enabled-servers file, relative to the MCP directory.
pub const SERVERS_FILE: &str = "servers.txt";
/// The registry file, relative to the MCP directory.
pub const REGISTRY_FILE: &str = "registry.json";
/// The name of the built-in filesystem server.
pub const FILESYSTEM_SERVER: &str = "filesystem";
/// The longest per-server timeout.
pub const MAX_TIMEOUT_MS: u64 = 600_000;

/// A registry problem, naming where and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {}{problem}; fix: {fix}", server.as_ref().map(|s| format!("server '{s}': ")).unwrap_or_default())]
pub struct RegistryError {
    /// The file.
    pub file: String,
    /// The server, when the problem is in one.
    pub server: Option<String>,
    /// What is wrong.
    pub problem: String,
    /// What to do.
    pub fix: String,
}

/// The validated registry: the enabled servers, in `servers.txt` order.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    /// The enabled servers.
    pub servers: Vec<ServerSpec>,
}

impl Registry {
    /// The enabled server named `name`.
    pub fn get(&self, name: &str) -> Option<&ServerSpec> {
        self.servers.iter().find(|s| s.name == name)
    }
}

/// One enabled server.
#[derive(Debug, Clone)]
pub struct ServerSpec {
    /// Its registry name (also the namespace of its tools).
    pub name: String,
    /// How to reach it.
    pub transport: Transport,
    /// The per-call timeout, if the registry sets one.
    pub timeout: Option<Duration>,
    /// Who may use it.
    pub allow_clients: Vec<ClientSelector>,
    /// Which of its tools are exposed.
    pub tools: ToolRules,
    /// Which of its resources and prompts are exposed (none by default).
    pub extras: ExtraRules,
}

/// How a server is reached.
#[derive(Debug, Clone)]
pub enum Transport {
    /// A child process speaking MCP on stdin/stdout.
    Stdio(StdioSpec),
    /// A remote server speaking Streamable HTTP.
    Http(HttpSpec),
    /// A server built into aibox.
    Builtin(Builtin),
}

impl Transport {
    /// `stdio`, `http` or `builtin`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Stdio(_) => "stdio",
            Self::Http(_) => "http",
            Self::Builtin(_) => "builtin",
        }
    }
}

/// A stdio server's process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StdioSpec {
    /// An absolute path, or a bare name looked up in the fixed `PATH`.
    pub command: String,
    /// Its arguments.
    pub args: Vec<String>,
    /// Non-secret environment variables.
    pub env: BTreeMap<String, String>,
    /// Environment variable name → vault secret name.
    pub secrets: BTreeMap<String, String>,
    /// The working directory (absolute), if set.
    pub cwd: Option<PathBuf>,
    /// Resource limits.
    pub limits: Limits,
    /// The sandbox profile; `None` runs the server unconfined (logged and
    /// audited as such at every spawn).
    pub sandbox: Option<aibox_sandbox::SandboxProfile>,
}

/// Resource limits of a child process (`setrlimit` semantics; unset means
/// inherited from aibox).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// CPU seconds (`RLIMIT_CPU`).
    pub cpu_secs: Option<u64>,
    /// Address space in MiB (`RLIMIT_AS`).
    pub memory_mb: Option<u64>,
    /// Open file descriptors (`RLIMIT_NOFILE`).
    pub open_files: Option<u64>,
    /// Processes of aibox's user (`RLIMIT_NPROC`, counted per user by the
    /// kernel, not per process tree).
    pub processes: Option<u64>,
}

/// A remote server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpSpec {
    /// Its MCP endpoint.
    pub url: url::Url,
}

/// The servers built into aibox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Builtin {
    /// The confined filesystem server (`FILESYSTEM_ROOT`).
    Filesystem,
    /// The `fetch` tool, whose only way out is the SSRF-safe egress.
    Fetch,
}

// ---------------------------------------------------------------------------
// Raw shapes
// ---------------------------------------------------------------------------

/// A JSON object whose duplicate keys are an error (serde's maps keep the
/// last one silently, which would hide a copy-paste mistake).
#[derive(Debug, Default)]
struct UniqueMap<V>(BTreeMap<String, V>);

impl<'de, V: Deserialize<'de>> Deserialize<'de> for UniqueMap<V> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V2<V>(std::marker::PhantomData<V>);
        impl<'de, V: Deserialize<'de>> Visitor<'de> for V2<V> {
            type Value = UniqueMap<V>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object with unique keys")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
                let mut out = BTreeMap::new();
                while let Some((k, v)) = m.next_entry::<String, V>()? {
                    if out.contains_key(&k) {
                        return Err(serde::de::Error::custom(format!("duplicate key '{k}'")));
                    }
                    out.insert(k, v);
                }
                Ok(UniqueMap(out))
            }
        }
        d.deserialize_map(V2(std::marker::PhantomData))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRegistry {
    servers: UniqueMap<RawServer>,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum RawTransport {
    Stdio,
    Http,
    Builtin,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    transport: RawTransport,
    /// An operator's note; not used.
    #[serde(default)]
    #[allow(dead_code)]
    description: Option<String>,
    command: Option<String>,
    args: Option<Vec<String>>,
    env: Option<UniqueMap<String>>,
    secrets: Option<UniqueMap<String>>,
    cwd: Option<PathBuf>,
    limits: Option<Limits>,
    sandbox: Option<aibox_sandbox::RawProfile>,
    url: Option<String>,
    timeout_ms: Option<u64>,
    allow_clients: Option<Vec<String>>,
    tools: Option<RawTools>,
    resources: Option<RawTools>,
    prompts: Option<RawTools>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTools {
    allow: Option<Vec<String>>,
    #[serde(default)]
    deny: Vec<String>,
}

// ---------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------

/// Parses `servers.txt`: the enabled names, in order.
pub fn parse_servers_txt(text: &str, file: &str) -> Result<Vec<String>, RegistryError> {
    let mut names: Vec<String> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let err = |problem: String, fix: &str| RegistryError {
            file: format!("{file}:{}", i + 1),
            server: None,
            problem,
            fix: fix.to_owned(),
        };
        if !names::valid_server(line) {
            return Err(err(
                format!("'{}' is not a valid server name", names::printable(line)),
                "server names are 1-32 characters from [a-z0-9-], one per line",
            ));
        }
        if names.iter().any(|n| n == line) {
            return Err(err(
                format!("'{line}' is listed twice"),
                "list each server once",
            ));
        }
        names.push(line.to_owned());
    }
    Ok(names)
}

/// Environment-variable names that hold credentials by convention.
const SECRET_NAME_PARTS: [&str; 6] = ["KEY", "TOKEN", "SECRET", "PASSWORD", "PASSWD", "CREDENTIAL"];
/// Prefixes of well-known credential formats.
const SECRET_VALUE_PREFIXES: [&str; 10] = [
    "sk-",
    "ghp_",
    "gho_",
    "ghs_",
    "github_pat_",
    "glpat-",
    "xoxb-",
    "xoxp-",
    "hf_",
    "AKIA",
];

fn looks_like_secret(name: &str, value: &str) -> bool {
    if value.is_empty() {
        return false;
    }
    let upper = name.to_ascii_uppercase();
    SECRET_NAME_PARTS.iter().any(|p| upper.contains(p))
        || SECRET_VALUE_PREFIXES
            .iter()
            .any(|p| value.starts_with(p) && value.len() >= p.len() + 12)
}

/// `--token=VALUE`-style arguments and well-known token formats. Names
/// with `KEY` are not matched here (`--keyfile /path` is common and safe).
fn arg_looks_like_secret(arg: &str) -> bool {
    let value_is_token = |v: &str| {
        SECRET_VALUE_PREFIXES
            .iter()
            .any(|p| v.starts_with(p) && v.len() >= p.len() + 12)
    };
    if let Some((name, value)) = arg.split_once('=')
        && name.starts_with('-')
        && !value.is_empty()
    {
        let upper = name.to_ascii_uppercase();
        if ["TOKEN", "SECRET", "PASSWORD", "PASSWD", "CREDENTIAL"]
            .iter()
            .any(|p| upper.contains(p))
        {
            return true;
        }
        return value_is_token(value);
    }
    value_is_token(arg)
}

fn valid_env_name(n: &str) -> bool {
    let b = n.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphabetic() || b[0] == b'_')
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_')
}

fn valid_secret_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 128
        && n.bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"._-".contains(&c))
}

/// Parses and validates both files. `servers_file` and `registry_file` are
/// the names used in errors.
pub fn parse(
    servers_txt: &str,
    servers_file: &str,
    registry_json: Option<&str>,
    registry_file: &str,
) -> Result<Registry, RegistryError> {
    let enabled = parse_servers_txt(servers_txt, servers_file)?;
    if enabled.is_empty() {
        return Ok(Registry::default());
    }
    let Some(json) = registry_json else {
        return Err(RegistryError {
            file: registry_file.to_owned(),
            server: None,
            problem: format!(
                "the file is missing, but {servers_file} enables {}",
                enabled.join(", ")
            ),
            fix: format!(
                "create {registry_file} describing those servers, or remove them from {servers_file}"
            ),
        });
    };
    let de = &mut serde_json::Deserializer::from_str(json);
    let raw: RawRegistry = serde_path_to_error::deserialize(de).map_err(|e| RegistryError {
        file: registry_file.to_owned(),
        server: None,
        problem: format!("at {}: {}", e.path(), e.inner()),
        fix: "see the registry format in the aibox-mcp crate docs (unknown fields are refused)"
            .to_owned(),
    })?;
    let mut raw = raw.servers.0;
    for name in raw.keys() {
        if !names::valid_server(name) {
            return Err(RegistryError {
                file: registry_file.to_owned(),
                server: Some(names::printable(name)),
                problem: "invalid server name".to_owned(),
                fix: "server names are 1-32 characters from [a-z0-9-] starting and ending with a letter or digit (no '_': it separates server and tool in SERVER__TOOL)".to_owned(),
            });
        }
    }
    let mut servers = Vec::with_capacity(enabled.len());
    for name in &enabled {
        let Some(r) = raw.remove(name) else {
            return Err(RegistryError {
                file: servers_file.to_owned(),
                server: Some(name.clone()),
                problem: format!("enabled here but not described in {registry_file}"),
                fix: format!(
                    "add \"{name}\" under \"servers\" in {registry_file}, or remove it from {servers_file}"
                ),
            });
        };
        servers.push(validate_server(name, r, registry_file)?);
    }
    Ok(Registry { servers })
}

fn validate_server(name: &str, r: RawServer, file: &str) -> Result<ServerSpec, RegistryError> {
    let err = |problem: String, fix: String| RegistryError {
        file: file.to_owned(),
        server: Some(name.to_owned()),
        problem,
        fix,
    };
    let kind = match r.transport {
        RawTransport::Stdio => "stdio",
        RawTransport::Http => "http",
        RawTransport::Builtin => "builtin",
    };
    let misplaced = |field: &str| {
        err(
            format!("field '{field}' does not apply to transport '{kind}'"),
            format!("remove '{field}'"),
        )
    };
    let present: [(&str, bool); 8] = [
        ("command", r.command.is_some()),
        ("args", r.args.is_some()),
        ("env", r.env.is_some()),
        ("secrets", r.secrets.is_some()),
        ("cwd", r.cwd.is_some()),
        ("limits", r.limits.is_some()),
        ("sandbox", r.sandbox.is_some()),
        ("url", r.url.is_some()),
    ];
    let allowed_fields: &[&str] = match r.transport {
        RawTransport::Stdio => &[
            "command", "args", "env", "secrets", "cwd", "limits", "sandbox",
        ],
        RawTransport::Http => &["url"],
        RawTransport::Builtin => &[],
    };
    if let Some((field, _)) = present
        .iter()
        .find(|(f, set)| *set && !allowed_fields.contains(f))
    {
        return Err(misplaced(field));
    }

    let transport = match r.transport {
        RawTransport::Stdio => {
            let command = r.command.unwrap_or_default();
            if command.trim().is_empty() {
                return Err(err(
                    "transport 'stdio' needs a 'command'".into(),
                    "set \"command\" to an absolute path or a program name on PATH (/usr/local/bin:/usr/bin:/bin)".into(),
                ));
            }
            if command.contains('/') && !command.starts_with('/') {
                return Err(err(
                    format!("command '{command}' is a relative path"),
                    "use an absolute path (the working directory is not a search path)".into(),
                ));
            }
            let env = r.env.map(|m| m.0).unwrap_or_default();
            for (k, v) in &env {
                if !valid_env_name(k) {
                    return Err(err(
                        format!("env name '{}' is invalid", names::printable(k)),
                        "environment variable names are [A-Za-z_][A-Za-z0-9_]*".into(),
                    ));
                }
                if looks_like_secret(k, v) {
                    return Err(err(
                        format!("env '{k}' holds a plaintext value that looks like a credential"),
                        format!(
                            "store the value in the vault and reference it with \"secrets\": {{\"{k}\": \"SECRET_NAME\"}} instead of \"env\" (seed 004 §11)"
                        ),
                    ));
                }
            }
            let secrets = r.secrets.map(|m| m.0).unwrap_or_default();
            for (k, v) in &secrets {
                if !valid_env_name(k) {
                    return Err(err(
                        format!("secrets: env name '{}' is invalid", names::printable(k)),
                        "environment variable names are [A-Za-z_][A-Za-z0-9_]*".into(),
                    ));
                }
                if !valid_secret_name(v) {
                    return Err(err(
                        format!("secrets: '{k}' names an invalid secret"),
                        "secret names are 1-128 characters from [A-Za-z0-9._-]".into(),
                    ));
                }
                if env.contains_key(k) {
                    return Err(err(
                        format!("'{k}' is set both in env and in secrets"),
                        format!("remove '{k}' from env"),
                    ));
                }
            }
            if let Some(cwd) = &r.cwd
                && !cwd.is_absolute()
            {
                return Err(err(
                    format!("cwd '{}' is not absolute", cwd.display()),
                    "use an absolute working directory".into(),
                ));
            }
            let limits = r.limits.unwrap_or_default();
            for (field, v) in [
                ("cpu_secs", limits.cpu_secs),
                ("memory_mb", limits.memory_mb),
                ("open_files", limits.open_files),
                ("processes", limits.processes),
            ] {
                if v == Some(0) {
                    return Err(err(
                        format!("limits.{field} is 0"),
                        format!(
                            "set limits.{field} to a positive number, or leave it out to inherit aibox's limit"
                        ),
                    ));
                }
            }
            let args = r.args.unwrap_or_default();
            if let Some(i) = args.iter().position(|a| arg_looks_like_secret(a)) {
                return Err(err(
                    format!("args[{i}] holds a plaintext value that looks like a credential"),
                    "pass credentials through \"secrets\" (an environment variable from the vault), never in args (seed 004 §11)".into(),
                ));
            }
            let sandbox = match r.sandbox {
                Some(raw) => Some(raw.validate().map_err(|e| {
                    err(
                        format!("sandbox.{}: {}", e.key, e.problem),
                        format!("{} (the profile keys are listed in the README)", e.fix),
                    )
                })?),
                None => None,
            };
            Transport::Stdio(StdioSpec {
                command,
                args,
                env,
                secrets,
                cwd: r.cwd,
                limits,
                sandbox,
            })
        }
        RawTransport::Http => {
            let text = r.url.unwrap_or_default();
            let url = url::Url::parse(&text).map_err(|e| {
                err(
                    format!("url is not a valid URL ({e})"),
                    "set \"url\" to the server's MCP endpoint, e.g. https://tools.example.com/mcp"
                        .into(),
                )
            })?;
            if !matches!(url.scheme(), "http" | "https") {
                return Err(err(
                    format!("url scheme '{}' is not http or https", url.scheme()),
                    "use an http(s) URL".into(),
                ));
            }
            if !url.username().is_empty() || url.password().is_some() {
                return Err(err(
                    "url carries credentials".into(),
                    "remove the user:password part; credentials never go in registry.json".into(),
                ));
            }
            if url.fragment().is_some() || url.host_str().is_none() {
                return Err(err(
                    "url has a fragment or no host".into(),
                    "use a plain http(s)://host[:port]/path URL".into(),
                ));
            }
            Transport::Http(HttpSpec { url })
        }
        RawTransport::Builtin => match name {
            FILESYSTEM_SERVER => Transport::Builtin(Builtin::Filesystem),
            crate::fetch::FETCH_SERVER => Transport::Builtin(Builtin::Fetch),
            _ => {
                return Err(err(
                    format!("there is no built-in server named '{name}'"),
                    format!(
                        "the built-in servers are: {FILESYSTEM_SERVER}, {}",
                        crate::fetch::FETCH_SERVER
                    ),
                ));
            }
        },
    };

    let timeout = match r.timeout_ms {
        None => None,
        Some(ms) if (1..=MAX_TIMEOUT_MS).contains(&ms) => Some(Duration::from_millis(ms)),
        Some(ms) => {
            return Err(err(
                format!("timeout_ms {ms} is out of range"),
                format!("use 1..={MAX_TIMEOUT_MS}"),
            ));
        }
    };
    let allow_clients = r
        .allow_clients
        .unwrap_or_default()
        .iter()
        .map(|s| ClientSelector::parse(s))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(format!("allow_clients: {e}"), "fix the selector".into()))?;
    let tools = match r.tools {
        None => ToolRules::default(),
        Some(t) => {
            let parse = |list: &[String]| {
                list.iter()
                    .map(|p| ToolPattern::parse(p))
                    .collect::<Result<Vec<_>, _>>()
            };
            let allow = t
                .allow
                .as_deref()
                .map(parse)
                .transpose()
                .map_err(|e| err(format!("tools.allow: {e}"), "fix the pattern".into()))?;
            let deny = parse(&t.deny)
                .map_err(|e| err(format!("tools.deny: {e}"), "fix the pattern".into()))?;
            // Exact names must make valid, distinct namespaced names.
            let mut ns = Namespace::new();
            for p in allow.iter().flatten() {
                if p.as_str().ends_with('*') {
                    continue;
                }
                let full = names::join(name, p.as_str())
                    .map_err(|e| err(format!("tools.allow: {e}"), "shorten the name".into()))?;
                ns.insert(&full).map_err(|c| {
                    err(
                        format!("tools.allow: {c}"),
                        "list each tool once, with its exact case".into(),
                    )
                })?;
            }
            ToolRules { allow, deny }
        }
    };
    let resources = r
        .resources
        .map(|t| {
            let allow = t
                .allow
                .as_deref()
                .map(passthrough::uri_patterns)
                .transpose()
                .map_err(|e| err(format!("resources.allow: {e}"), "fix the pattern".into()))?;
            let deny = passthrough::uri_patterns(&t.deny)
                .map_err(|e| err(format!("resources.deny: {e}"), "fix the pattern".into()))?;
            Ok::<_, RegistryError>(ResourceRules { allow, deny })
        })
        .transpose()?;
    let prompts = r
        .prompts
        .map(|t| {
            let allow = t
                .allow
                .as_deref()
                .map(passthrough::prompt_patterns)
                .transpose()
                .map_err(|e| err(format!("prompts.allow: {e}"), "fix the pattern".into()))?;
            let deny = passthrough::prompt_patterns(&t.deny)
                .map_err(|e| err(format!("prompts.deny: {e}"), "fix the pattern".into()))?;
            Ok::<_, RegistryError>(ToolRules { allow, deny })
        })
        .transpose()?;
    if (resources.is_some() || prompts.is_some()) && matches!(transport, Transport::Builtin(_)) {
        return Err(err(
            "the built-in servers have no resources or prompts".into(),
            "remove \"resources\" and \"prompts\"".into(),
        ));
    }
    Ok(ServerSpec {
        name: name.to_owned(),
        transport,
        timeout,
        allow_clients,
        tools,
        extras: ExtraRules { resources, prompts },
    })
}

/// Reads `DIR/servers.txt` and `DIR/registry.json`. Without `servers.txt`
/// no server is enabled (the MCP endpoint then lists no tools).
pub fn load_dir(dir: &Path) -> Result<Registry, RegistryError> {
    let servers_path = dir.join(SERVERS_FILE);
    let registry_path = dir.join(REGISTRY_FILE);
    let read = |p: &Path| -> Result<Option<String>, RegistryError> {
        match std::fs::read_to_string(p) {
            Ok(s) => Ok(Some(s)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(RegistryError {
                file: p.display().to_string(),
                server: None,
                problem: format!("cannot read the file ({e})"),
                fix: "make it readable by aibox's user".to_owned(),
            }),
        }
    };
    let Some(servers) = read(&servers_path)? else {
        return Ok(Registry::default());
    };
    let registry = read(&registry_path)?;
    parse(
        &servers,
        &servers_path.display().to_string(),
        registry.as_deref(),
        &registry_path.display().to_string(),
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn load(servers: &str, json: &str) -> Result<Registry, RegistryError> {
        parse(servers, "servers.txt", Some(json), "registry.json")
    }

    const GOOD: &str = r#"{"servers": {
        "local": {"transport": "stdio", "command": "/usr/bin/python3", "args": ["s.py"],
                  "env": {"LOG_LEVEL": "info"}, "secrets": {"GITHUB_TOKEN": "github-token"},
                  "cwd": "/srv", "limits": {"cpu_secs": 10, "memory_mb": 512},
                  "sandbox": {"mode": "best_effort", "read": ["/srv"]},
                  "timeout_ms": 5000, "allow_clients": ["tenant:acme&role:tools", "user:acme/bob"],
                  "tools": {"allow": ["echo", "read_*"], "deny": ["read_secret"]},
                  "resources": {"allow": ["notes://*"], "deny": ["notes://private/*"]},
                  "prompts": {}},
        "remote": {"transport": "http", "url": "https://tools.example.com/mcp", "allow_clients": ["*"]},
        "filesystem": {"transport": "builtin", "allow_clients": []},
        "spare": {"transport": "stdio", "command": "npx"}
    }}"#;

    #[test]
    fn good_registry_loads_in_servers_txt_order() {
        let r = load(
            "# enabled\nremote\n\nlocal  # the local one\nfilesystem\n",
            GOOD,
        )
        .unwrap();
        let names: Vec<&str> = r.servers.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["remote", "local", "filesystem"]);
        let local = r.get("local").unwrap();
        assert_eq!(local.timeout, Some(Duration::from_millis(5000)));
        assert_eq!(local.allow_clients.len(), 2);
        assert!(local.tools.permits("read_file"));
        assert!(!local.tools.permits("read_secret"));
        assert!(!local.tools.permits("write"));
        match &local.transport {
            Transport::Stdio(s) => {
                assert_eq!(s.secrets["GITHUB_TOKEN"], "github-token");
                assert_eq!(s.limits.cpu_secs, Some(10));
                assert_eq!(s.limits.open_files, None);
                let sb = s.sandbox.as_ref().unwrap();
                assert_eq!(sb.read, vec![PathBuf::from("/srv")]);
                assert_eq!(sb.mode, aibox_sandbox::Mode::BestEffort);
            }
            other => panic!("{other:?}"),
        }
        // Resources and prompts are exposed only where the registry says so.
        use crate::policy::ToolVerdict;
        assert_eq!(local.extras.resource("notes://1"), ToolVerdict::Allowed);
        assert_eq!(
            local.extras.resource("notes://private/1"),
            ToolVerdict::Denied
        );
        assert_eq!(
            local.extras.resource("file:///etc/passwd"),
            ToolVerdict::NotAllowed
        );
        assert_eq!(local.extras.prompt("anything"), ToolVerdict::Allowed);
        let remote = r.get("remote").unwrap();
        assert_eq!(remote.extras.resource("notes://1"), ToolVerdict::NotAllowed);
        assert_eq!(remote.extras.prompt("anything"), ToolVerdict::NotAllowed);
        // Missing allow_clients and allow_clients: [] both admit nobody.
        assert!(r.get("filesystem").unwrap().allow_clients.is_empty());
        assert!(r.get("spare").is_none());
    }

    #[test]
    fn no_enabled_server_needs_no_registry() {
        let r = parse("# nothing\n", "servers.txt", None, "registry.json").unwrap();
        assert!(r.servers.is_empty());
        let e = parse("local\n", "servers.txt", None, "registry.json").unwrap_err();
        assert!(
            e.to_string().contains("registry.json: the file is missing"),
            "{e}"
        );
    }

    /// (servers.txt, registry.json, words the error must contain)
    #[test]
    fn refused_registries() {
        let stdio = |extra: &str| {
            format!(
                r#"{{"servers": {{"s": {{"transport": "stdio", "command": "/bin/x"{extra}}}}}}}"#
            )
        };
        let cases: Vec<(&str, String, Vec<&str>)> = vec![
            ("ghost\n", GOOD.to_owned(), vec!["servers.txt", "ghost", "not described in registry.json"]),
            ("local\nlocal\n", GOOD.to_owned(), vec!["servers.txt:2", "listed twice"]),
            ("Local\n", GOOD.to_owned(), vec!["servers.txt:1", "not a valid server name"]),
            ("s\n", stdio(r#", "colour": 1"#), vec!["registry.json", "unknown field `colour`"]),
            ("s\n", stdio(r#", "limits": {"cpu": 1}"#), vec!["servers.s.limits", "unknown field `cpu`"]),
            ("s\n", stdio(r#", "env": {"API_KEY": "abc"}"#), vec!["server 's'", "API_KEY", "secrets"]),
            ("s\n", stdio(r#", "env": {"GITHUB_TOKEN": "x"}"#), vec!["GITHUB_TOKEN", "vault"]),
            ("s\n", stdio(r#", "env": {"db_password": "hunter2"}"#), vec!["db_password", "secrets"]),
            ("s\n", stdio(r#", "env": {"OPENAI": "sk-abcdefghijklmnopqrstu"}"#), vec!["OPENAI", "credential"]),
            ("s\n", stdio(r#", "env": {"A": "1", "A": "2"}"#), vec!["duplicate key 'A'"]),
            ("s\n", stdio(r#", "env": {"1X": "1"}"#), vec!["env name"]),
            ("s\n", stdio(r#", "secrets": {"T": "bad name"}"#), vec!["invalid secret"]),
            ("s\n", stdio(r#", "env": {"T": ""}, "secrets": {"T": "t"}"#), vec!["both in env and in secrets"]),
            ("s\n", stdio(r#", "url": "http://x""#), vec!["'url' does not apply to transport 'stdio'"]),
            ("s\n", stdio(r#", "args": ["--token=abc"]"#), vec!["args[0]", "secrets"]),
            ("s\n", stdio(r#", "args": ["-v", "ghp_abcdefghijklmnopqrstuvwxyz"]"#), vec!["args[1]"]),
            ("s\n", stdio(r#", "cwd": "rel/dir""#), vec!["not absolute"]),
            ("s\n", stdio(r#", "limits": {"memory_mb": 0}"#), vec!["limits.memory_mb is 0"]),
            ("s\n", stdio(r#", "timeout_ms": 0"#), vec!["timeout_ms 0"]),
            ("s\n", stdio(r#", "sandbox": {"read": ["tools"]}"#), vec!["sandbox.read", "not an absolute path"]),
            ("s\n", stdio(r#", "sandbox": {"uid": 0}"#), vec!["sandbox.uid: 0 is root"]),
            ("s\n", stdio(r#", "sandbox": {"seccomp_deny": ["nope"]}"#), vec!["unknown syscall 'nope'"]),
            ("s\n", stdio(r#", "sandbox": {"net": "none"}"#), vec!["servers.s.sandbox", "unknown field `net`"]),
            ("s\n", r#"{"servers": {"s": {"transport": "http", "url": "https://x", "sandbox": {}}}}"#.into(), vec!["'sandbox' does not apply"]),
            ("s\n", stdio(r#", "allow_clients": ["team:x"]"#), vec!["allow_clients", "team:x"]),
            ("s\n", stdio(r#", "tools": {"allow": ["a.b"]}"#), vec!["tools.allow", "a.b"]),
            ("s\n", stdio(r#", "tools": {"allow": ["Read", "read"]}"#), vec!["collision"]),
            ("s\n", stdio(r#", "tools": {"allow": ["x"], "block": []}"#), vec!["unknown field `block`"]),
            ("s\n", stdio(r#", "resources": {"allow": ["notes:// x"]}"#), vec!["resources.allow", "notes:// x"]),
            ("s\n", stdio(r#", "resources": {"deny": [""]}"#), vec!["resources.deny"]),
            ("s\n", stdio(r#", "resources": {"read": []}"#), vec!["unknown field `read`"]),
            ("s\n", stdio(r#", "prompts": {"allow": ["a b"]}"#), vec!["prompts.allow", "a b"]),
            ("filesystem\n", r#"{"servers": {"filesystem": {"transport": "builtin", "prompts": {}}}}"#.into(), vec!["built-in servers have no resources or prompts"]),
            ("s\n", r#"{"servers": {"s": {"transport": "stdio"}}}"#.into(), vec!["needs a 'command'"]),
            ("s\n", r#"{"servers": {"s": {"transport": "stdio", "command": "bin/x"}}}"#.into(), vec!["relative path"]),
            ("s\n", r#"{"servers": {"s": {"transport": "ws", "command": "/x"}}}"#.into(), vec!["unknown variant `ws`"]),
            ("s\n", r#"{"servers": {"s": {"transport": "http", "url": "ftp://x"}}}"#.into(), vec!["scheme 'ftp'"]),
            ("s\n", r#"{"servers": {"s": {"transport": "http", "url": "https://u:p@x/mcp"}}}"#.into(), vec!["credentials"]),
            ("s\n", r#"{"servers": {"s": {"transport": "http", "url": "not a url"}}}"#.into(), vec!["not a valid URL"]),
            ("s\n", r#"{"servers": {"s": {"transport": "http", "url": "https://x", "command": "/x"}}}"#.into(), vec!["'command' does not apply"]),
            ("s\n", r#"{"servers": {"s": {"transport": "builtin"}}}"#.into(), vec!["no built-in server named 's'"]),
            ("filesystem\n", r#"{"servers": {"filesystem": {"transport": "builtin", "cwd": "/x"}}}"#.into(), vec!["'cwd' does not apply"]),
            ("s\n", r#"{"servers": {"s": {"transport": "http", "url": "https://x"}, "s": {"transport": "http", "url": "https://y"}}}"#.into(), vec!["duplicate key 's'"]),
            ("s\n", r#"{"servers": {"s": {"transport": "http", "url": "https://x"}, "Bad_Name": {"transport": "http", "url": "https://y"}}}"#.into(), vec!["Bad_Name", "invalid server name"]),
            ("s\n", r#"{"servers": {}, "extra": 1}"#.into(), vec!["unknown field `extra`"]),
            ("s\n", "{not json".into(), vec!["registry.json"]),
        ];
        for (servers, json, words) in cases {
            let e = load(servers, &json).expect_err(&json).to_string();
            for w in &words {
                assert!(e.contains(w), "error for {json} lacks '{w}': {e}");
            }
            assert!(e.contains("fix:"), "{e}");
        }
    }

    #[test]
    fn secret_values_never_appear_in_errors() {
        let json = r#"{"servers": {"s": {"transport": "stdio", "command": "/x", "env": {"MY_TOKEN": "supersecretvalue123"}}}}"#;
        let e = load("s\n", json).unwrap_err().to_string();
        assert!(!e.contains("supersecretvalue123"), "{e}");
    }

    #[test]
    fn load_dir_reads_both_files() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load_dir(dir.path()).unwrap().servers.is_empty());
        std::fs::write(dir.path().join(SERVERS_FILE), "remote\n").unwrap();
        let e = load_dir(dir.path()).unwrap_err();
        assert!(e.file.ends_with(REGISTRY_FILE), "{e}");
        std::fs::write(dir.path().join(REGISTRY_FILE), GOOD).unwrap();
        assert_eq!(load_dir(dir.path()).unwrap().servers.len(), 1);
    }
}
