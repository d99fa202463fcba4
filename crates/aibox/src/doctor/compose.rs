//! Checks of a Docker Compose file (seed 000 §5, seed 004 §2, §3, §7-§9):
//! published ports of internal services and of the ops port, the backend
//! network, per-service hardening (`cap_drop`, `read_only`,
//! `no-new-privileges`, a non-root `user`, nothing privileged), images
//! pinned by digest (and the `FROM` lines of Dockerfiles built here),
//! safety switches turned off, secrets written literally, and variables
//! the env file does not set.
//!
//! Values are interpolated the way compose does, from the first env file,
//! so `${AIBOX_PUBLIC_URL}` is judged as the value it will have.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_yaml_ng::Value;

use super::model::{self, Finding, Location};
use super::secrets::{self, Weakness};
use super::sources::{EnvSource, Seg, VarRef, interpolate, line_containing, yaml_line};

/// Services that must never publish a port (seed 000 §5, seed 004 §2-§3),
/// matched against service names and image names.
const INTERNAL: &[&str] = &[
    "agent-runtime",
    "guardrail",
    "memory",
    "inference-router",
    "knowledge",
    "sandbox",
    "observability",
    "audit",
    "qdrant",
    "minio",
    "redis",
    "valkey",
    "postgres",
    "postgresql",
    "pgvector",
    "ollama",
    "ops-controller",
];

/// Services that may publish on all interfaces: the gateway, the frontend
/// and the identity provider (seed 000 §5), and TLS terminators.
const PUBLIC: &[&str] = &[
    "aibox",
    "gateway",
    "frontend",
    "open-webui",
    "openwebui",
    "webui",
    "keycloak",
    "caddy",
    "traefik",
    "nginx",
    "proxy",
];

/// The ops port (seed 004 §3; aibox's `server.ops_listen` default).
pub const OPS_PORT: u16 = 9000;

/// One `environment:` entry of a service.
#[derive(Debug, Clone)]
pub struct SvcEnv {
    /// The variable.
    pub name: String,
    /// Its value after interpolation (`None`: passed through from the
    /// environment of `docker compose` and unset there).
    pub value: Option<String>,
    /// Whether the raw value was written literally (no `$`).
    pub literal: bool,
    /// The line.
    pub line: Option<usize>,
}

/// One service.
#[derive(Debug, Clone)]
pub struct Service {
    /// Its name.
    pub name: String,
    /// The interpolated definition.
    pub def: Value,
    /// `environment:` entries.
    pub env: Vec<SvcEnv>,
    /// Variables from its `env_file:` files, as (file, entries).
    pub env_files: Vec<EnvSource>,
}

impl Service {
    /// Its environment: `env_file:` values overlaid by `environment:`.
    pub fn effective_env(&self) -> BTreeMap<String, (String, Location)> {
        let mut out = BTreeMap::new();
        for f in &self.env_files {
            for (k, e) in f.effective() {
                out.insert(
                    k.to_owned(),
                    (e.value.clone(), Location::new(&f.path, Some(e.line))),
                );
            }
        }
        out
    }

    fn str_field(&self, key: &str) -> Option<String> {
        scalar(self.def.get(key)?)
    }

    /// The image without tag or digest, last path segment, lower case.
    pub fn image_base(&self) -> Option<String> {
        let image = self.str_field("image")?;
        let no_digest = image.split('@').next().unwrap_or(&image);
        let last = no_digest.rsplit('/').next().unwrap_or(no_digest);
        Some(last.split(':').next().unwrap_or(last).to_ascii_lowercase())
    }

    fn name_matches(&self, list: &[&'static str]) -> Option<&'static str> {
        let name = self.name.to_ascii_lowercase().replace('_', "-");
        let image = self.image_base().unwrap_or_default();
        list.iter().copied().find(|k| {
            name == *k
                || name.starts_with(&format!("{k}-"))
                || name.ends_with(&format!("-{k}"))
                || name.contains(&format!("-{k}-"))
                || image == *k
        })
    }

    /// The internal kind of this service (`postgres`, `redis`, ...).
    pub fn internal_kind(&self) -> Option<&'static str> {
        if self.is_aibox() {
            return None;
        }
        self.name_matches(INTERNAL)
    }

    /// Whether the service is aibox itself.
    pub fn is_aibox(&self) -> bool {
        self.name.eq_ignore_ascii_case("aibox") || self.image_base().is_some_and(|i| i == "aibox")
    }
}

/// A parsed compose file.
#[derive(Debug, Clone)]
pub struct Compose {
    /// The file.
    pub path: PathBuf,
    /// Its text.
    pub text: String,
    /// Services in file order.
    pub services: Vec<Service>,
    /// Top-level networks: name → (internal, external).
    pub networks: BTreeMap<String, (bool, bool)>,
    /// Variable references, in order.
    pub refs: Vec<VarRef>,
    /// The interpolated document.
    pub doc: Value,
}

/// A string view of a YAML scalar (numbers and booleans included).
pub fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn truthy(v: Option<&Value>) -> bool {
    match v {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => matches!(s.to_ascii_lowercase().as_str(), "true" | "yes" | "1"),
        _ => false,
    }
}

/// Whether a switch value turns something on.
pub fn truthy_str(s: &str) -> bool {
    matches!(
        s.trim().to_ascii_lowercase().as_str(),
        "true" | "yes" | "1" | "on"
    )
}

fn interp_value(v: &Value, vars: &BTreeMap<String, String>, refs: &mut Vec<VarRef>) -> Value {
    match v {
        Value::String(s) => Value::String(interpolate(s, vars, refs)),
        Value::Sequence(seq) => {
            Value::Sequence(seq.iter().map(|x| interp_value(x, vars, refs)).collect())
        }
        Value::Mapping(m) => Value::Mapping(
            m.iter()
                .map(|(k, x)| (k.clone(), interp_value(x, vars, refs)))
                .collect(),
        ),
        Value::Tagged(t) => interp_value(&t.value, vars, refs),
        other => other.clone(),
    }
}

/// Parses a compose file, interpolating with `vars`. Errors name the
/// position only (a parser message could quote a secret).
pub fn parse(path: &Path, text: &str, vars: &BTreeMap<String, String>) -> anyhow::Result<Compose> {
    let mut raw: Value = serde_yaml_ng::from_str(text).map_err(|e| {
        let at = e
            .location()
            .map(|l| format!(" at line {} column {}", l.line(), l.column()))
            .unwrap_or_default();
        anyhow::anyhow!(
            "cannot parse the compose file {}{at}; fix the YAML there (`docker compose config` shows the same)",
            path.display()
        )
    })?;
    // `<<: *anchor` merge keys, as compose applies them.
    raw.apply_merge().map_err(|_| {
        anyhow::anyhow!(
            "cannot apply the `<<` merge keys of the compose file {}; fix them (`docker compose config` shows the same)",
            path.display()
        )
    })?;
    let mut refs = Vec::new();
    let doc = interp_value(&raw, vars, &mut refs);
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut services = Vec::new();
    if let (Some(Value::Mapping(raw_svcs)), Some(Value::Mapping(svcs))) =
        (raw.get("services"), doc.get("services"))
    {
        for (k, def) in svcs {
            let Some(name) = scalar(k) else { continue };
            let raw_def = raw_svcs.get(k).cloned().unwrap_or(Value::Null);
            let env = service_env(text, &name, &raw_def, def, vars);
            let env_files = service_env_files(def, dir)?;
            services.push(Service {
                name,
                def: def.clone(),
                env,
                env_files,
            });
        }
    }
    let mut networks = BTreeMap::new();
    if let Some(Value::Mapping(nets)) = doc.get("networks") {
        for (k, def) in nets {
            if let Some(name) = scalar(k) {
                networks.insert(
                    name,
                    (truthy(def.get("internal")), truthy(def.get("external"))),
                );
            }
        }
    }
    Ok(Compose {
        path: path.to_path_buf(),
        text: text.to_owned(),
        services,
        networks,
        refs,
        doc,
    })
}

/// The host-side source of a file aibox reads at `target` inside its
/// container: a `configs:` entry (`file:` or inline `content:`) or a bind
/// mount. Inline content comes with the compose file, the line offset of
/// its first line and a label.
pub fn host_file(c: &Compose, s: &Service, target: &str) -> Option<super::gateway::ConfigInput> {
    let dir = c.path.parent().unwrap_or(Path::new("."));
    if let Some(Value::Sequence(cfgs)) = s.def.get("configs") {
        for item in cfgs {
            let (source, tgt) = match item {
                Value::Mapping(_) => {
                    let src = item.get("source").and_then(scalar)?;
                    let tgt = item
                        .get("target")
                        .and_then(scalar)
                        .unwrap_or_else(|| format!("/{src}"));
                    (src, tgt)
                }
                other => {
                    let src = scalar(other)?;
                    let tgt = format!("/{src}");
                    (src, tgt)
                }
            };
            if tgt != target {
                continue;
            }
            let top = c.doc.get("configs")?.get(source.as_str())?;
            if let Some(content) = top.get("content").and_then(scalar) {
                let offset = yaml_line(
                    &c.text,
                    &[Seg::Key("configs"), Seg::Key(&source), Seg::Key("content")],
                )
                .unwrap_or(0);
                return Some(super::gateway::ConfigInput {
                    path: Some(c.path.clone()),
                    text: content,
                    line_offset: offset,
                    label: Some(format!("{} (configs.{source})", c.path.display())),
                });
            }
            let file = top.get("file").and_then(scalar)?;
            let p = dir.join(file);
            let text = std::fs::read_to_string(&p).ok()?;
            return Some(super::gateway::ConfigInput {
                path: Some(p),
                text,
                ..Default::default()
            });
        }
    }
    for v in list_of_strings(s.def.get("volumes")) {
        let mut parts = v.split(':');
        let (Some(host), Some(container)) = (parts.next(), parts.next()) else {
            continue;
        };
        if !(host.starts_with('.') || host.starts_with('/')) {
            continue;
        }
        let rest = if target == container {
            Some("")
        } else {
            target
                .strip_prefix(container)
                .and_then(|r| r.strip_prefix('/'))
        };
        if let Some(rest) = rest {
            let p = if rest.is_empty() {
                dir.join(host)
            } else {
                dir.join(host).join(rest)
            };
            let text = std::fs::read_to_string(&p).ok()?;
            return Some(super::gateway::ConfigInput {
                path: Some(p),
                text,
                ..Default::default()
            });
        }
    }
    None
}

fn service_env(
    text: &str,
    svc: &str,
    raw: &Value,
    def: &Value,
    vars: &BTreeMap<String, String>,
) -> Vec<SvcEnv> {
    let mut out = Vec::new();
    let line = |name: &str| {
        yaml_line(
            text,
            &[
                Seg::Key("services"),
                Seg::Key(svc),
                Seg::Key("environment"),
                Seg::Key(name),
            ],
        )
    };
    match (raw.get("environment"), def.get("environment")) {
        (Some(Value::Mapping(rm)), Some(Value::Mapping(m))) => {
            for (k, v) in m {
                let Some(name) = scalar(k) else { continue };
                let raw_v = rm.get(k).and_then(scalar);
                let value = match v {
                    Value::Null => vars.get(&name).cloned(),
                    other => scalar(other),
                };
                out.push(SvcEnv {
                    literal: raw_v.as_deref().is_some_and(|r| !r.contains('$')),
                    line: line(&name),
                    name,
                    value,
                });
            }
        }
        (Some(Value::Sequence(rs)), Some(Value::Sequence(s))) => {
            for (i, item) in s.iter().enumerate() {
                let Some(item) = scalar(item) else { continue };
                let raw_item = rs.get(i).and_then(scalar).unwrap_or_default();
                let (name, value) = match item.split_once('=') {
                    Some((k, v)) => (k.trim().to_owned(), Some(v.to_owned())),
                    None => (item.trim().to_owned(), vars.get(item.trim()).cloned()),
                };
                let raw_value = raw_item.split_once('=').map(|(_, v)| v.to_owned());
                out.push(SvcEnv {
                    literal: raw_value.as_deref().is_some_and(|r| !r.contains('$')),
                    line: yaml_line(
                        text,
                        &[
                            Seg::Key("services"),
                            Seg::Key(svc),
                            Seg::Key("environment"),
                            Seg::Index(i),
                        ],
                    ),
                    name,
                    value,
                });
            }
        }
        _ => {}
    }
    out
}

fn service_env_files(def: &Value, dir: &Path) -> anyhow::Result<Vec<EnvSource>> {
    let mut paths = Vec::new();
    match def.get("env_file") {
        Some(Value::String(s)) => paths.push(s.clone()),
        Some(Value::Sequence(seq)) => {
            for item in seq {
                match item {
                    Value::String(s) => paths.push(s.clone()),
                    Value::Mapping(_) => {
                        if let Some(p) = item.get("path").and_then(scalar) {
                            paths.push(p);
                        }
                    }
                    _ => {}
                }
            }
        }
        _ => {}
    }
    let mut out = Vec::new();
    for p in paths {
        let path = dir.join(&p);
        let src = EnvSource::load(&path)
            .map_err(|e| anyhow::anyhow!("cannot read the env_file {}: {e}", path.display()))?;
        if src.exists {
            out.push(src);
        }
    }
    Ok(out)
}

/// A published port mapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortMap {
    /// The host address, if one is given.
    pub host_ip: Option<String>,
    /// The host port or range, if one is given (else a random port).
    pub host_port: Option<String>,
    /// The container port or range.
    pub container: String,
}

impl PortMap {
    /// Whether the mapping listens on every interface of the host.
    pub fn all_interfaces(&self) -> bool {
        match self.host_ip.as_deref() {
            None => true,
            Some(ip) => matches!(ip, "" | "0.0.0.0" | "::" | "[::]"),
        }
    }

    /// Whether the host or the container side covers `port`.
    pub fn covers(&self, port: u16) -> bool {
        let hit = |spec: &str| {
            let spec = spec.trim();
            match spec.split_once('-') {
                Some((a, b)) => match (a.parse::<u16>(), b.parse::<u16>()) {
                    (Ok(a), Ok(b)) => (a..=b).contains(&port),
                    _ => false,
                },
                None => spec.parse::<u16>() == Ok(port),
            }
        };
        hit(&self.container) || self.host_port.as_deref().is_some_and(hit)
    }
}

/// Parses one `ports:` entry (short or long syntax).
pub fn parse_port(v: &Value) -> Option<PortMap> {
    if let Value::Mapping(_) = v {
        return Some(PortMap {
            host_ip: v.get("host_ip").and_then(scalar),
            host_port: v.get("published").and_then(scalar),
            container: v.get("target").and_then(scalar)?,
        });
    }
    let s = scalar(v)?;
    let s = s.split('/').next().unwrap_or(&s).trim().to_owned();
    let (ip, rest) = if let Some(inner) = s.strip_prefix('[') {
        let (ip, rest) = inner.split_once(']')?;
        (Some(ip.to_owned()), rest.trim_start_matches(':').to_owned())
    } else {
        (None, s.clone())
    };
    let parts: Vec<&str> = rest.split(':').collect();
    let (host_ip, host_port, container) = match (ip, parts.as_slice()) {
        (Some(ip), [h, c]) => (Some(ip), Some((*h).to_owned()), (*c).to_owned()),
        (Some(ip), [c]) => (Some(ip), None, (*c).to_owned()),
        (None, [c]) => (None, None, (*c).to_owned()),
        (None, [h, c]) => (None, Some((*h).to_owned()), (*c).to_owned()),
        (None, [ip @ .., h, c]) => (Some(ip.join(":")), Some((*h).to_owned()), (*c).to_owned()),
        _ => return None,
    };
    Some(PortMap {
        host_ip,
        host_port: host_port.filter(|h| !h.is_empty()),
        container,
    })
}

/// Whether `user:` names root (or nothing).
pub fn is_root_user(user: Option<&str>) -> bool {
    match user.map(str::trim) {
        None | Some("") => true,
        Some(u) => {
            let who = u.split(':').next().unwrap_or(u);
            who == "0" || who.eq_ignore_ascii_case("root")
        }
    }
}

fn list_of_strings(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::Sequence(s)) => s.iter().filter_map(scalar).collect(),
        Some(other) => scalar(other).into_iter().collect(),
        None => Vec::new(),
    }
}

/// Whether a `security_opt` entry enables no-new-privileges.
fn is_no_new_privs(opt: &str) -> bool {
    let o = opt.trim().to_ascii_lowercase().replace('=', ":");
    o == "no-new-privileges" || o == "no-new-privileges:true"
}

/// The networks a service is attached to.
fn service_networks(def: &Value) -> Vec<String> {
    match def.get("networks") {
        Some(Value::Sequence(s)) => s.iter().filter_map(scalar).collect(),
        Some(Value::Mapping(m)) => m.keys().filter_map(scalar).collect(),
        _ => vec!["default".to_owned()],
    }
}

/// Whether an image reference is pinned by a sha256 digest.
pub fn pinned(image: &str) -> bool {
    image
        .split_once("@sha256:")
        .is_some_and(|(_, d)| d.len() == 64 && d.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Runs every compose check.
pub fn check(c: &Compose, env: &EnvSource, aibox_ops_port: u16, out: &mut Vec<Finding>) {
    let loc = |path: &[Seg<'_>]| Some(Location::new(&c.path, yaml_line(&c.text, path)));
    let internal_nets: Vec<&String> = c
        .networks
        .iter()
        .filter(|(_, (internal, _))| *internal)
        .map(|(n, _)| n)
        .collect();
    let internal_services: Vec<&Service> = c
        .services
        .iter()
        .filter(|s| s.internal_kind().is_some())
        .collect();

    // Networks (seed 004 §2).
    let mut flagged_backend = false;
    for (name, (internal, external)) in &c.networks {
        let lower = name.to_ascii_lowercase();
        if (lower.contains("backend") || lower.contains("internal")) && !internal && !external {
            flagged_backend = true;
            out.push(Finding::new(
                &model::NET_BACKEND_NOT_INTERNAL,
                loc(&[Seg::Key("networks"), Seg::Key(name)]),
                format!("network '{name}' is not `internal: true`, so the services on it have a route out"),
                format!("add `internal: true` under networks.{name}"),
            ));
        }
    }
    let no_internal_net = internal_nets.is_empty() && !internal_services.is_empty();
    if no_internal_net && !flagged_backend {
        let names: Vec<&str> = internal_services.iter().map(|s| s.name.as_str()).collect();
        out.push(Finding::new(
            &model::NET_BACKEND_NOT_INTERNAL,
            loc(&[Seg::Key("networks")]),
            format!(
                "no network is `internal: true`; internal services ({}) share networks that have a route out",
                names.join(", ")
            ),
            "declare `networks: {backend: {internal: true}, frontend: {}}` and attach internal services only to backend",
        ));
    }
    if !no_internal_net {
        for s in &internal_services {
            for n in service_networks(&s.def) {
                let (internal, external) = c.networks.get(&n).copied().unwrap_or((false, false));
                let backend_named = {
                    let l = n.to_ascii_lowercase();
                    l.contains("backend") || l.contains("internal")
                };
                if !internal && !external && !backend_named {
                    out.push(Finding::new(
                        &model::NET_INTERNAL_SERVICE_EXPOSED,
                        loc(&[Seg::Key("services"), Seg::Key(&s.name), Seg::Key("networks")]),
                        format!(
                            "internal service '{}' is attached to network '{n}', which is not internal",
                            s.name
                        ),
                        format!(
                            "attach '{}' only to an `internal: true` network (e.g. backend)",
                            s.name
                        ),
                    ));
                }
            }
        }
    }

    for s in &c.services {
        check_service(c, s, aibox_ops_port, out);
    }

    // Variables the compose file uses that the env file does not set.
    let vars = env.vars();
    let mut seen = std::collections::BTreeSet::new();
    for r in &c.refs {
        if r.has_default || !seen.insert(r.name.clone()) {
            continue;
        }
        let line = line_containing(&c.text, &format!("${{{}", r.name))
            .or_else(|| line_containing(&c.text, &format!("${}", r.name)));
        let at = Some(Location::new(&c.path, line));
        let value = vars.get(&r.name);
        if secrets::is_secret_var(&r.name) {
            if secrets::KEYRINGS.contains(&r.name.as_str())
                || r.name == aibox_config::env::AUDIT_SIGNING_KEY
            {
                // AIBOX-SECRET-002 reports aibox's own keys.
                continue;
            }
            if value.is_none_or(|v| v.is_empty()) {
                out.push(Finding::new(
                    &model::SECRET_PLACEHOLDER,
                    at,
                    format!(
                        "the compose file passes ${{{}}} but {} does not set it, so the service gets an empty secret",
                        r.name,
                        env.path.display()
                    ),
                    fill_hint(&r.name, &env.path),
                ));
            }
        } else if value.is_none() {
            out.push(Finding::new(
                &model::COMPOSE_UNSET_VARIABLE,
                at,
                format!(
                    "${{{}}} is used but {} does not set it; compose substitutes an empty string",
                    r.name,
                    env.path.display()
                ),
                format!(
                    "set {} in {}, or write ${{{}:-default}}",
                    r.name,
                    env.path.display(),
                    r.name
                ),
            ));
        }
    }
}

fn check_service(c: &Compose, s: &Service, aibox_ops_port: u16, out: &mut Vec<Finding>) {
    let svc = s.name.as_str();
    let key = |k: &'static str| -> Vec<Seg<'_>> {
        vec![Seg::Key("services"), Seg::Key(svc), Seg::Key(k)]
    };
    let loc = |path: &[Seg<'_>]| Some(Location::new(&c.path, yaml_line(&c.text, path)));
    let def = &s.def;
    let internal = s.internal_kind();
    let public = internal.is_none() && s.name_matches(PUBLIC).is_some();

    // Ports (seed 000 §5, seed 004 §3).
    if let Some(Value::Sequence(ports)) = def.get("ports") {
        for (i, p) in ports.iter().enumerate() {
            let mut path = key("ports");
            path.push(Seg::Index(i));
            let at = loc(&path);
            let Some(pm) = parse_port(p) else { continue };
            let desc = scalar(p).unwrap_or_else(|| {
                format!(
                    "{}:{}:{}",
                    pm.host_ip.clone().unwrap_or_default(),
                    pm.host_port.clone().unwrap_or_default(),
                    pm.container
                )
            });
            let ops = pm.covers(OPS_PORT) || (s.is_aibox() && pm.covers(aibox_ops_port));
            if ops {
                out.push(Finding::new(
                    &model::PORT_OPS,
                    at.clone(),
                    format!("service '{svc}' publishes '{desc}', which includes the ops port"),
                    format!("remove '{desc}' from services.{svc}.ports; use an SSH tunnel or `docker compose exec` for ops access"),
                ));
            }
            if let Some(kind) = internal {
                out.push(Finding::new(
                    &model::PORT_INTERNAL,
                    at,
                    format!("internal service '{svc}' ({kind}) publishes '{desc}'"),
                    format!("remove services.{svc}.ports (use `expose:` for other containers)"),
                ));
            } else if !ops && !public && !s.is_aibox() && pm.all_interfaces() {
                out.push(Finding::new(
                    &model::PORT_ALL_INTERFACES,
                    at,
                    format!("service '{svc}' publishes '{desc}' on all interfaces (0.0.0.0)"),
                    format!(
                        "bind it to 127.0.0.1 ('127.0.0.1:{}:{}') or remove it",
                        pm.host_port.clone().unwrap_or_else(|| pm.container.clone()),
                        pm.container
                    ),
                ));
            }
        }
    }

    // Hardening (seed 004 §7-§8).
    let caps = list_of_strings(def.get("cap_drop"));
    if !caps.iter().any(|c| c.eq_ignore_ascii_case("ALL")) {
        out.push(Finding::new(
            &model::HARDEN_CAP_DROP,
            loc(&key("cap_drop")),
            format!("service '{svc}' does not have `cap_drop: [ALL]`"),
            format!("add `cap_drop: [ALL]` to services.{svc} (and cap_add only what it needs)"),
        ));
    }
    if !truthy(def.get("read_only")) {
        out.push(Finding::new(
            &model::HARDEN_READ_ONLY,
            loc(&key("read_only")),
            format!("service '{svc}' does not have `read_only: true`"),
            format!("add `read_only: true` to services.{svc} with a tmpfs or volume for the paths it writes"),
        ));
    }
    let opts = list_of_strings(def.get("security_opt"));
    if !opts.iter().any(|o| is_no_new_privs(o)) {
        out.push(Finding::new(
            &model::HARDEN_NO_NEW_PRIVS,
            loc(&key("security_opt")),
            format!("service '{svc}' does not set `no-new-privileges:true`"),
            format!("add `security_opt: [\"no-new-privileges:true\"]` to services.{svc}"),
        ));
    }
    let user = def.get("user").and_then(scalar);
    if is_root_user(user.as_deref()) {
        let evidence = match &user {
            None => format!(
                "service '{svc}' has no `user:`, so it runs as the image's default user (often root)"
            ),
            Some(u) => format!("service '{svc}' runs as '{u}' (root)"),
        };
        out.push(Finding::new(
            &model::HARDEN_ROOT_USER,
            loc(&key("user")),
            evidence,
            format!("set services.{svc}.user to a non-root \"UID:GID\" that owns its volumes"),
        ));
    }
    let mut privileged = Vec::new();
    if truthy(def.get("privileged")) {
        privileged.push("privileged: true".to_owned());
    }
    for c in list_of_strings(def.get("cap_add")) {
        let u = c.to_ascii_uppercase();
        if u == "ALL" || u == "SYS_ADMIN" || u == "CAP_SYS_ADMIN" {
            privileged.push(format!("cap_add {c}"));
        }
    }
    for k in ["network_mode", "pid", "ipc", "userns_mode"] {
        if def.get(k).and_then(scalar).is_some_and(|v| v == "host") {
            privileged.push(format!("{k}: host"));
        }
    }
    for v in list_of_strings(def.get("volumes")) {
        if v.contains("docker.sock") {
            privileged.push("mounts the Docker socket".to_owned());
        }
    }
    if let Some(Value::Sequence(vols)) = def.get("volumes") {
        for v in vols {
            if v.get("source")
                .and_then(scalar)
                .is_some_and(|s| s.contains("docker.sock"))
            {
                privileged.push("mounts the Docker socket".to_owned());
            }
        }
    }
    if !privileged.is_empty() {
        out.push(Finding::new(
            &model::HARDEN_PRIVILEGED,
            loc(&[Seg::Key("services"), Seg::Key(svc)]),
            format!("service '{svc}': {}", privileged.join(", ")),
            format!("remove these from services.{svc}"),
        ));
    }

    // Images (seed 004 §9): built images are judged by their Dockerfile.
    if def.get("build").is_none() {
        match def.get("image").and_then(scalar) {
            Some(image) if !pinned(&image) => out.push(Finding::new(
                &model::IMAGE_NOT_PINNED,
                loc(&key("image")),
                format!("service '{svc}' uses '{image}', which is not pinned by digest"),
                format!("pin it: `image: {}@sha256:<digest>` (digest from `docker buildx imagetools inspect {}`)", image.split('@').next().unwrap_or(&image), image.split('@').next().unwrap_or(&image)),
            )),
            _ => {}
        }
    }

    // Safety switches.
    for k in ["command", "entrypoint"] {
        for arg in list_of_strings(def.get(k)) {
            for word in arg.split_whitespace() {
                if word.starts_with("--danger") {
                    let flag = word.split('=').next().unwrap_or(word);
                    out.push(Finding::new(
                        &model::DANGER_FLAG,
                        loc(&key(k)),
                        format!("service '{svc}' runs with {flag}"),
                        format!("remove {flag} from services.{svc}.{k}"),
                    ));
                }
            }
        }
    }
    for e in &s.env {
        let at = Some(Location::new(&c.path, e.line));
        if is_danger_switch(&e.name) && e.value.as_deref().is_some_and(truthy_str) {
            out.push(Finding::new(
                &model::DANGER_FLAG,
                at.clone(),
                format!("service '{svc}' sets {} to a true value", e.name),
                format!("remove {} from services.{svc}.environment", e.name),
            ));
        }
        // Secrets written into the compose file itself.
        let Some(v) = e.value.as_deref().filter(|v| !v.is_empty()) else {
            continue;
        };
        if e.literal && secrets::is_secret_var(&e.name) {
            let (rule, what) = match secrets::judge(&e.name, v) {
                Some(Weakness::Placeholder) => {
                    (&model::SECRET_PLACEHOLDER, "is a placeholder".to_owned())
                }
                Some(w @ Weakness::Default(_)) => (&model::SECRET_DEFAULT, w.describe()),
                Some(w @ Weakness::Weak(_)) => (&model::SECRET_WEAK, w.describe()),
                None => (
                    &model::SECRET_IN_COMPOSE,
                    format!(
                        "is written in the compose file ({} characters)",
                        v.chars().count()
                    ),
                ),
            };
            out.push(Finding::new(
                rule,
                at,
                format!("{} of service '{svc}' {what}", e.name),
                format!(
                    "write `{}: ${{{}}}` and set a strong value in the env file",
                    e.name, e.name
                ),
            ));
        } else if e.literal && url_has_password(v) {
            out.push(Finding::new(
                &model::SECRET_IN_COMPOSE,
                at,
                format!("{} of service '{svc}' is a URL with a password written in the compose file", e.name),
                "write the password as ${VAR} from the env file, e.g. postgres://user:${POSTGRES_PASSWORD}@host/db".to_string(),
            ));
        }
    }
}

/// How to fill an unset secret: bootstrap writes the seed's secrets and
/// `SERVICE_<NAME>_CLIENT_SECRET` with `--service`; others need a value.
fn fill_hint(name: &str, env: &Path) -> String {
    let e = env.display();
    if let Some(svc) = name
        .strip_prefix("SERVICE_")
        .and_then(|r| r.strip_suffix("_CLIENT_SECRET"))
    {
        let svc = svc.to_ascii_lowercase().replace('_', "-");
        return format!(
            "run `aibox bootstrap --env-file {e} --service {svc}`, which writes {name}"
        );
    }
    if super::envcheck::BOOTSTRAP_FIXED.contains(&name) {
        return format!("run `aibox bootstrap --env-file {e}`, which writes {name}");
    }
    format!(
        "set {name} in {e} to a random value (`openssl rand -hex 32`) or the value the service issued"
    )
}

/// Whether a variable name is a switch that turns a protection off.
pub fn is_danger_switch(name: &str) -> bool {
    let n = name.to_ascii_uppercase();
    n.starts_with("AIBOX_ALLOW") || n.contains("DANGER")
}

fn url_has_password(v: &str) -> bool {
    url::Url::parse(v).is_ok_and(|u| u.password().is_some_and(|p| !p.is_empty()))
}

/// Checks the `FROM` lines (digest pins) and the final `USER` of a
/// Dockerfile.
pub fn check_dockerfile(path: &Path, text: &str, out: &mut Vec<Finding>) {
    let mut args: BTreeMap<String, String> = BTreeMap::new();
    let mut stages: Vec<String> = Vec::new();
    let mut final_user: Option<(String, usize)> = None;
    let mut final_from: Option<(String, usize)> = None;
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        let mut words = line.split_whitespace();
        let Some(instr) = words.next() else { continue };
        match instr.to_ascii_uppercase().as_str() {
            "ARG" => {
                if let Some((k, v)) = words.next().and_then(|a| a.split_once('=')) {
                    args.insert(k.to_owned(), v.trim_matches('"').to_owned());
                }
            }
            "FROM" => {
                let rest: Vec<&str> = words.filter(|w| !w.starts_with("--")).collect();
                let Some(image) = rest.first() else { continue };
                let image = interpolate(image, &args, &mut Vec::new());
                // A stage built earlier in this file is not an image to pin.
                let is_stage = stages.contains(&image.to_ascii_lowercase());
                if let (Some(kw), Some(alias)) = (rest.get(1), rest.get(2))
                    && kw.eq_ignore_ascii_case("as")
                {
                    stages.push(alias.to_ascii_lowercase());
                }
                final_user = None;
                final_from = Some((image.clone(), i + 1));
                if image == "scratch" || is_stage || pinned(&image) {
                    continue;
                }
                out.push(Finding::new(
                    &model::IMAGE_NOT_PINNED,
                    Some(Location::new(path, Some(i + 1))),
                    format!("FROM {image} is not pinned by digest"),
                    format!("write FROM {image}@sha256:<digest> (digest from `docker buildx imagetools inspect {image}`)"),
                ));
            }
            "USER" => {
                if let Some(u) = words.next() {
                    final_user = Some((u.to_owned(), i + 1));
                }
            }
            _ => {}
        }
    }
    let Some((from, from_line)) = final_from else {
        return;
    };
    let nonroot_base = from.contains("nonroot");
    match final_user {
        Some((u, line)) if is_root_user(Some(&u)) => out.push(Finding::new(
            &model::HARDEN_ROOT_USER,
            Some(Location::new(path, Some(line))),
            format!("the final stage runs as USER {u}"),
            "set USER to a non-root UID:GID in the final stage",
        )),
        None if !nonroot_base => out.push(Finding::new(
            &model::HARDEN_ROOT_USER,
            Some(Location::new(path, Some(from_line))),
            "the final stage sets no USER, so the image runs as root",
            "add `USER 65532:65532` (or another non-root UID:GID) to the final stage",
        )),
        _ => {}
    }
}

/// Checks a systemd unit for aibox: hardening directives and safety flags.
pub fn check_systemd(path: &Path, text: &str, out: &mut Vec<Finding>) {
    let mut keys: BTreeMap<String, (String, usize)> = BTreeMap::new();
    for (i, raw) in text.lines().enumerate() {
        let l = raw.trim();
        if l.starts_with('#') || l.starts_with(';') {
            continue;
        }
        if let Some((k, v)) = l.split_once('=') {
            keys.insert(k.trim().to_owned(), (v.trim().to_owned(), i + 1));
        }
    }
    let yes = |k: &str| keys.get(k).is_some_and(|(v, _)| truthy_str(v));
    let mut missing = Vec::new();
    if !yes("NoNewPrivileges") {
        missing.push("NoNewPrivileges=yes");
    }
    if keys.get("ProtectSystem").is_none_or(|(v, _)| v != "strict") {
        missing.push("ProtectSystem=strict");
    }
    if !yes("PrivateTmp") {
        missing.push("PrivateTmp=yes");
    }
    if !keys
        .get("CapabilityBoundingSet")
        .is_some_and(|(v, _)| v.is_empty())
    {
        missing.push("CapabilityBoundingSet= (empty)");
    }
    if keys.get("User").is_none_or(|(v, _)| is_root_user(Some(v))) {
        missing.push("User= (a dedicated non-root user)");
    }
    if !missing.is_empty() {
        out.push(Finding::new(
            &model::SYSTEMD_WEAK,
            Some(Location::new(path, keys.get("ExecStart").map(|(_, l)| *l))),
            format!("the unit lacks {}", missing.join(", ")),
            format!("add to [Service]: {}", missing.join(", ")),
        ));
    }
    if let Some((v, line)) = keys.get("ExecStart")
        && let Some(flag) = v.split_whitespace().find(|w| w.starts_with("--danger"))
    {
        out.push(Finding::new(
            &model::DANGER_FLAG,
            Some(Location::new(path, Some(*line))),
            format!("ExecStart runs aibox with {flag}"),
            format!("remove {flag} from ExecStart"),
        ));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn ids(out: &[Finding]) -> Vec<&'static str> {
        let mut v: Vec<&str> = out.iter().map(|f| f.rule.id).collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    #[test]
    fn port_syntaxes() {
        let cases: &[(&str, Option<&str>, Option<&str>, &str)] = &[
            ("8080", None, None, "8080"),
            ("8080:80", None, Some("8080"), "80"),
            ("127.0.0.1:8080:80", Some("127.0.0.1"), Some("8080"), "80"),
            ("127.0.0.1::80", Some("127.0.0.1"), None, "80"),
            ("[::1]:8080:80/tcp", Some("::1"), Some("8080"), "80"),
            ("9000-9001:9000-9001", None, Some("9000-9001"), "9000-9001"),
        ];
        for (s, ip, host, container) in cases {
            let p = parse_port(&Value::String((*s).to_owned())).unwrap();
            assert_eq!(
                (
                    p.host_ip.as_deref(),
                    p.host_port.as_deref(),
                    p.container.as_str()
                ),
                (*ip, *host, *container),
                "{s}"
            );
        }
        let long: Value =
            serde_yaml_ng::from_str("{target: 9000, published: 19000, host_ip: 127.0.0.1}")
                .unwrap();
        let p = parse_port(&long).unwrap();
        assert!(p.covers(9000) && !p.all_interfaces());
        assert!(
            parse_port(&Value::String("9000-9001:9000-9001".into()))
                .unwrap()
                .covers(9001)
        );
        assert!(
            parse_port(&Value::Number(8080.into()))
                .unwrap()
                .all_interfaces()
        );
    }

    #[test]
    fn root_users_and_digests() {
        for (u, root) in [
            (None, true),
            (Some("0"), true),
            (Some("root:root"), true),
            (Some("0:0"), true),
            (Some("1000:1000"), false),
            (Some("aibox"), false),
        ] {
            assert_eq!(is_root_user(u), root, "{u:?}");
        }
        let d = "a".repeat(64);
        assert!(pinned(&format!("redis:7@sha256:{d}")));
        assert!(!pinned("redis:7"));
        assert!(!pinned("redis@sha256:abc"));
    }

    const HARDENED: &str = "    cap_drop: [ALL]\n    read_only: true\n    security_opt: [\"no-new-privileges:true\"]\n    user: \"1000:1000\"\n";

    fn svc(name: &str, image: &str, extra: &str) -> String {
        format!(
            "  {name}:\n    image: {image}@sha256:{}\n{HARDENED}{extra}",
            "b".repeat(64)
        )
    }

    fn run(yaml: &str, env: &str) -> Vec<Finding> {
        let env = EnvSource::parse(Path::new(".env"), env);
        let c = parse(Path::new("compose.yml"), yaml, &env.vars()).unwrap();
        let mut out = Vec::new();
        check(&c, &env, OPS_PORT, &mut out);
        out
    }

    #[test]
    fn one_fixture_per_check_trips_only_it() {
        let nets = "networks:\n  backend:\n    internal: true\n  frontend: {}\n";
        let base = |services: &str| format!("services:\n{services}{nets}");
        let pg = svc("postgres", "postgres:16", "    networks: [backend]\n");
        let cases: Vec<(String, Vec<&str>)> = vec![
            (base(&pg), vec![]),
            (
                base(&svc(
                    "postgres",
                    "postgres:16",
                    "    networks: [backend]\n    ports: [\"5432:5432\"]\n",
                )),
                vec!["AIBOX-PORT-001"],
            ),
            (
                base(&svc(
                    "aibox",
                    "aibox",
                    "    ports: [\"127.0.0.1:9000:9000\"]\n",
                )),
                vec!["AIBOX-PORT-002"],
            ),
            (
                base(&svc("n8n", "n8nio/n8n", "    ports: [\"5678:5678\"]\n")),
                vec!["AIBOX-PORT-003"],
            ),
            (
                base(&svc(
                    "n8n",
                    "n8nio/n8n",
                    "    ports: [\"127.0.0.1:5678:5678\"]\n",
                )),
                vec![],
            ),
            (
                base(&svc("keycloak", "keycloak", "    ports: [\"8081:8080\"]\n")),
                vec![],
            ),
            (
                format!("services:\n{pg}networks:\n  backend: {{}}\n"),
                vec!["AIBOX-NET-001"],
            ),
            (
                format!("services:\n{}", svc("redis", "redis", "")),
                vec!["AIBOX-NET-001"],
            ),
            (
                base(&svc(
                    "redis",
                    "redis",
                    "    networks: [backend, frontend]\n",
                )),
                vec!["AIBOX-NET-002"],
            ),
            (
                base(&format!(
                    "  x:\n    image: x@sha256:{}\n    read_only: true\n    security_opt: [\"no-new-privileges:true\"]\n    user: \"1:1\"\n",
                    "c".repeat(64)
                )),
                vec!["AIBOX-HARDEN-001"],
            ),
            (
                base(&format!(
                    "  x:\n    image: x@sha256:{}\n    cap_drop: [ALL]\n    security_opt: [\"no-new-privileges:true\"]\n    user: \"1:1\"\n",
                    "c".repeat(64)
                )),
                vec!["AIBOX-HARDEN-002"],
            ),
            (
                base(&format!(
                    "  x:\n    image: x@sha256:{}\n    cap_drop: [ALL]\n    read_only: true\n    user: \"1:1\"\n",
                    "c".repeat(64)
                )),
                vec!["AIBOX-HARDEN-003"],
            ),
            (
                base(&format!(
                    "  x:\n    image: x@sha256:{}\n    cap_drop: [ALL]\n    read_only: true\n    security_opt: [\"no-new-privileges:true\"]\n",
                    "c".repeat(64)
                )),
                vec!["AIBOX-HARDEN-004"],
            ),
            (
                base(
                    &format!(
                        "  x:\n    image: x@sha256:{}\n{HARDENED}    user: \"0\"\n",
                        "c".repeat(64)
                    )
                    .replace("    user: \"1000:1000\"\n", ""),
                ),
                vec!["AIBOX-HARDEN-004"],
            ),
            (
                base(&svc(
                    "x",
                    "x",
                    "    volumes: [\"/var/run/docker.sock:/var/run/docker.sock\"]\n",
                )),
                vec!["AIBOX-HARDEN-005"],
            ),
            (
                base(&svc("x", "x", "    privileged: true\n")),
                vec!["AIBOX-HARDEN-005"],
            ),
            (
                base(&format!("  x:\n    image: x:1.0\n{HARDENED}")),
                vec!["AIBOX-IMAGE-001"],
            ),
            (base(&format!("  x:\n    build: .\n{HARDENED}")), vec![]),
            (
                base(&svc(
                    "aibox",
                    "aibox",
                    "    command: [\"serve\", \"--danger-allow-unauthenticated-public-bind\"]\n",
                )),
                vec!["AIBOX-DANGER-001"],
            ),
            (
                base(&svc(
                    "x",
                    "x",
                    "    environment:\n      AIBOX_ALLOW_INSECURE: \"true\"\n",
                )),
                vec!["AIBOX-DANGER-001"],
            ),
            (
                base(&svc(
                    "x",
                    "x",
                    "    environment:\n      DB_PASSWORD: Zq8-rT3_kLm9Pw2xVb7NcY4s\n",
                )),
                vec!["AIBOX-SECRET-006"],
            ),
            (
                base(&svc(
                    "x",
                    "x",
                    "    environment:\n      DB_PASSWORD: changeme\n",
                )),
                vec!["AIBOX-SECRET-001"],
            ),
            (
                base(&svc(
                    "x",
                    "x",
                    "    environment:\n      DB_PASSWORD: ${DB_PASSWORD}\n",
                )),
                vec!["AIBOX-SECRET-001"],
            ),
            (
                base(&svc(
                    "x",
                    "x",
                    "    environment:\n      - DB_URL=postgres://u:Zq8rT3kLm9Pw2xVb7@db/x\n",
                )),
                vec!["AIBOX-SECRET-006"],
            ),
            (
                base(&svc(
                    "x",
                    "x",
                    "    environment:\n      PUBLIC_URL: ${PUBLIC_URL}\n      OTHER: ${OTHER:-d}\n",
                )),
                vec!["AIBOX-COMPOSE-001"],
            ),
        ];
        for (yaml, want) in cases {
            let out = run(&yaml, "");
            assert_eq!(ids(&out), want, "{yaml}\n{out:#?}");
            for f in &out {
                assert!(!f.evidence.contains("Zq8"), "{}", f.evidence);
            }
        }
    }

    #[test]
    fn interpolated_secrets_are_judged_in_the_env_file_not_here() {
        let yaml = format!(
            "services:\n{}networks:\n  backend:\n    internal: true\n",
            svc(
                "x",
                "x",
                "    networks: [backend]\n    environment:\n      DB_PASSWORD: ${DB_PASSWORD}\n"
            )
        );
        assert!(run(&yaml, "DB_PASSWORD=Zq8-rT3_kLm9Pw2xVb7NcY4s\n").is_empty());
    }

    #[test]
    fn aibox_config_is_found_where_the_container_reads_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("config/gateway")).unwrap();
        std::fs::write(
            dir.path().join("config/gateway/config.yaml"),
            "auth:\n  enabled: true\n",
        )
        .unwrap();
        let yaml = "services:\n  aibox:\n    image: aibox\n    configs:\n      - source: gw\n        target: /etc/aibox/config.yaml\n    volumes:\n      - ./config:/srv/config:ro\nconfigs:\n  gw:\n    content: |\n      auth:\n        issuer: ${ISS}\n";
        let path = dir.path().join("compose.yml");
        let vars: BTreeMap<String, String> =
            [("ISS".to_owned(), "https://id.example.com".to_owned())].into();
        let c = parse(&path, yaml, &vars).unwrap();
        let s = &c.services[0];
        let inline = host_file(&c, s, "/etc/aibox/config.yaml").unwrap();
        assert_eq!(inline.text, "auth:\n  issuer: https://id.example.com\n");
        assert_eq!(inline.line_offset, 11);
        let bound = host_file(&c, s, "/srv/config/gateway/config.yaml").unwrap();
        assert!(bound.text.contains("enabled: true"));
        assert!(host_file(&c, s, "/nowhere.yaml").is_none());
    }

    #[test]
    fn merge_keys_are_applied() {
        let yaml = format!(
            "x-h: &h\n  cap_drop: [ALL]\n  read_only: true\n  security_opt: [\"no-new-privileges:true\"]\n  user: \"1:1\"\nservices:\n  x:\n    <<: *h\n    image: x@sha256:{}\n",
            "e".repeat(64)
        );
        assert!(run(&yaml, "").is_empty());
    }

    #[test]
    fn dockerfiles() {
        let d = "d".repeat(64);
        let cases: Vec<(String, Vec<&str>)> = vec![
            (
                format!(
                    "ARG RUST=rust:1.95@sha256:{d}\nFROM ${{RUST}} AS build\nRUN x\nFROM gcr.io/distroless/static:nonroot@sha256:{d}\nCOPY --from=build /a /a\n"
                ),
                vec![],
            ),
            (
                "FROM rust:1.95 AS build\nFROM scratch\nCOPY --from=build /a /a\nUSER 65532:65532\n".to_string(),
                vec!["AIBOX-IMAGE-001"],
            ),
            (
                format!("FROM debian@sha256:{d}\nUSER root\n"),
                vec!["AIBOX-HARDEN-004"],
            ),
            (
                format!("FROM debian@sha256:{d}\n"),
                vec!["AIBOX-HARDEN-004"],
            ),
        ];
        for (text, want) in cases {
            let mut out = Vec::new();
            check_dockerfile(Path::new("Dockerfile"), &text, &mut out);
            assert_eq!(ids(&out), want, "{text}");
        }
    }

    #[test]
    fn systemd_units() {
        let good = "[Service]\nUser=aibox\nExecStart=/usr/local/bin/aibox serve\nNoNewPrivileges=yes\nProtectSystem=strict\nPrivateTmp=yes\nCapabilityBoundingSet=\n";
        let mut out = Vec::new();
        check_systemd(Path::new("u"), good, &mut out);
        assert!(out.is_empty(), "{out:?}");
        check_systemd(
            Path::new("u"),
            &good
                .replace("ProtectSystem=strict", "ProtectSystem=full")
                .replace("serve", "serve --danger-allow-unauthenticated-public-bind"),
            &mut out,
        );
        assert_eq!(ids(&out), vec!["AIBOX-DANGER-001", "AIBOX-SYSTEMD-001"]);
        assert!(
            out.iter()
                .any(|f| f.evidence.contains("ProtectSystem=strict"))
        );
    }
}
