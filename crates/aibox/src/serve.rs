//! `aibox serve`: wire the libraries, bind both listeners, run until a
//! signal, drain within the grace period, flush, exit 0.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use aibox_config::Config;
use aibox_gateway::{AppState, SigningKeys};
use aibox_identity::{KeyringKind, load_keyring};
use aibox_limits::Limiter;
use anyhow::{Context as _, bail};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Arguments of `aibox serve`.
#[derive(clap::Args)]
pub struct ServeArgs {
    /// The config file (default: $AIBOX_CONFIG, else deploy/config/gateway/config.yaml if it exists).
    #[arg(long)]
    config: Option<std::path::PathBuf>,
    /// Allow binding a non-loopback address while authentication is off.
    /// Anyone who can reach the address then uses the gateway as tenant
    /// `default`. Never use this outside an isolated test network.
    #[arg(long)]
    danger_allow_unauthenticated_public_bind: bool,
}

/// Raises the soft limit of open file descriptors to the hard limit, as
/// servers commonly do: every connection, upstream connection and database
/// file is a descriptor, and the usual soft default (1024) is reached by a
/// modest burst of clients long before memory or CPU are. The hard limit is
/// the operator's (`LimitNOFILE=` in systemd, `ulimits` in Docker); when
/// accept still runs out, the listener backs off and logs it (listen.rs).
fn raise_nofile_limit() {
    let before = rlimit::getrlimit(rlimit::Resource::NOFILE).map(|(soft, _)| soft);
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(now) => tracing::debug!(
            before = before.unwrap_or(0),
            now,
            "soft RLIMIT_NOFILE raised to the hard limit"
        ),
        Err(e) => tracing::warn!(
            error = %e,
            "cannot raise the soft RLIMIT_NOFILE to the hard limit; a burst of connections \
             may exhaust file descriptors sooner"
        ),
    }
}

/// Runs the server to completion.
pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut env = crate::environment()?;
    let cfg = aibox_config::load(args.config.as_deref(), &env)?;
    let telemetry = crate::telemetry::init(&cfg)?;
    check_exposure(&cfg, args.danger_allow_unauthenticated_public_bind)?;
    raise_nofile_limit();

    create_private_dir(&cfg.server.data_dir)?;
    let dev = crate::devkeys::ensure(&cfg.server.data_dir, &mut env)?;
    if !dev.is_empty() {
        tracing::warn!(
            keys = %dev.join(", "),
            file = %cfg.server.data_dir.join(crate::devkeys::DEV_KEYS_FILE).display(),
            "USING DEVELOPMENT KEYS: generated on this machine and stored beside the data they protect. \
             They are for development only; set real values in the environment or .env before production."
        );
    }

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("aibox")
        .build()
        .context("cannot start the async runtime")?;
    let keys = SigningKeys {
        principal: load_keyring(
            KeyringKind::Principal,
            env.get(aibox_config::env::AIBOX_PRINCIPAL_KEYS)
                .map(String::as_str),
        )?,
        captoken: load_keyring(
            KeyringKind::CapToken,
            env.get(aibox_config::env::AIBOX_CAPTOKEN_KEYS)
                .map(String::as_str),
        )?,
        secrets_master: load_keyring(
            KeyringKind::SecretsMaster,
            env.get(aibox_config::env::SECRETS_MASTER_KEY)
                .map(String::as_str),
        )?,
    };
    let audit_key = aibox_core::Secret::new(
        env.get(aibox_config::env::AUDIT_SIGNING_KEY)
            .cloned()
            .unwrap_or_default(),
    );
    let mcp = aibox_gateway::mcp::prepare(&cfg.server.data_dir, &cfg.egress.policy, &env)?
        .with_redis(cfg.redis_url.clone());
    let constitution = env
        .get(aibox_config::env::AIBOX_CONSTITUTION)
        .map(std::path::PathBuf::from)
        .or_else(|| {
            let p = std::path::PathBuf::from(aibox_config::env::DEFAULT_CONSTITUTION_PATH);
            p.exists().then_some(p)
        });
    let guardrail = Arc::new(aibox_gateway::guard::GuardrailHandle::load(
        constitution.as_deref(),
    )?);
    match guardrail.source() {
        Some(p) => tracing::info!(constitution = %p.display(), "guardrail loaded"),
        None => tracing::info!(
            "guardrail: no constitution file (AIBOX_CONSTITUTION); the built-in standard profile scans every turn"
        ),
    }
    let credentials = Arc::new(EnvCredentials {
        data_dir: cfg.server.data_dir.clone(),
        config: args.config.clone(),
    });
    let creds = credentials.load_from(env)?;
    check_ops_exposure(&cfg, creds.ops_token.is_some())?;
    let result = runtime.block_on(serve(
        cfg,
        keys,
        audit_key,
        mcp,
        guardrail,
        (credentials, creds),
        started,
    ));
    drop(runtime);
    telemetry.shutdown();
    result
}

/// Refuses a non-loopback dashboard without a credential (seed 004 §4).
fn check_dashboard_exposure(cfg: &Config, has_auth: bool) -> anyhow::Result<()> {
    if !cfg.dashboard.listen.ip().is_loopback() && !has_auth {
        bail!(
            "dashboard.listen is {} (not loopback) and neither DASHBOARD_AUTH_TOKEN nor DASHBOARD_PASSWORD \
             nor dashboard.oidc is set, so anyone who can reach it could try to use it; fix: set one of them (aibox bootstrap writes \
             DASHBOARD_AUTH_TOKEN) or configure dashboard.oidc, or bind 127.0.0.1 (dashboard.listen or AIBOX_DASHBOARD_LISTEN)",
            cfg.dashboard.listen
        );
    }
    Ok(())
}

/// The doctor as the dashboard runs it: the deployment directory and `.env`
/// of the working directory, this gateway's config and data directory,
/// offline checks only.
fn doctor_seam(cfg: &Config) -> aibox_gateway::dashboard::DoctorFn {
    let args = crate::doctor::DoctorArgs {
        env_files: Vec::new(),
        config: cfg.source.clone(),
        deploy_dir: std::path::PathBuf::from("deploy"),
        compose: None,
        realm: None,
        data_dir: cfg.server.data_dir.clone(),
        online: false,
        // The host probe starts a launcher process; the dashboard's doctor
        // stays with the offline file checks.
        sandbox: false,
        format: crate::doctor::Format::Json,
    };
    Arc::new(move || crate::doctor::json_report(&args).map_err(|e| format!("{e:#}")))
}

/// The rotatable credentials, read from the environment and `.env` (the
/// environment wins, as at start-up: a variable set in aibox's environment
/// rotates only with a restart, one in `.env` on SIGHUP) and the
/// development keys.
struct EnvCredentials {
    data_dir: std::path::PathBuf,
    /// The config file given at start-up (`None`: the default lookup).
    config: Option<std::path::PathBuf>,
}

impl EnvCredentials {
    fn load_from(
        &self,
        mut env: aibox_config::env::Env,
    ) -> anyhow::Result<aibox_gateway::ops::Credentials> {
        use aibox_config::env as names;
        crate::devkeys::ensure(&self.data_dir, &mut env)?;
        let secret = |name: &str| {
            env.get(name)
                .filter(|v| !v.is_empty())
                .map(|v| aibox_core::Secret::new(v.clone()))
        };
        Ok(aibox_gateway::ops::Credentials {
            principal: load_keyring(
                KeyringKind::Principal,
                env.get(names::AIBOX_PRINCIPAL_KEYS).map(String::as_str),
            )?,
            captoken: load_keyring(
                KeyringKind::CapToken,
                env.get(names::AIBOX_CAPTOKEN_KEYS).map(String::as_str),
            )?,
            ops_token: secret(names::OPS_CONTROLLER_TOKEN),
            dashboard_token: secret(names::DASHBOARD_AUTH_TOKEN),
            dashboard_password: secret(names::DASHBOARD_PASSWORD),
        })
    }
}

impl aibox_gateway::ops::CredentialSource for EnvCredentials {
    fn load(&self) -> Result<aibox_gateway::ops::Credentials, String> {
        crate::environment()
            .and_then(|env| self.load_from(env))
            .map_err(|e| format!("{e:#}"))
    }

    fn load_config(&self) -> Result<Config, String> {
        crate::environment()
            .map_err(|e| format!("{e:#}"))
            .and_then(|env| {
                aibox_config::load(self.config.as_deref(), &env).map_err(|e| e.to_string())
            })
    }
}

/// Refuses configurations that would expose an unauthenticated gateway or
/// the ops listener to the network.
fn check_exposure(cfg: &Config, danger: bool) -> anyhow::Result<()> {
    if !cfg.auth.enabled && !cfg.server.listen.ip().is_loopback() && !danger {
        bail!(
            "server.listen is {} (not loopback) while auth.enabled is false, so anyone who can reach it would use \
             the gateway unauthenticated; fix: bind 127.0.0.1 (server.listen or AIBOX_LISTEN), or enable auth",
            cfg.server.listen
        );
    }
    Ok(())
}

/// Refuses a non-loopback ops listener without `OPS_CONTROLLER_TOKEN`, and
/// warns about one with it (seed 004 §3: never expose it unless behind a
/// VPN or firewall).
fn check_ops_exposure(cfg: &Config, has_token: bool) -> anyhow::Result<()> {
    if cfg.server.ops_listen.ip().is_loopback() {
        return Ok(());
    }
    if !has_token {
        bail!(
            "server.ops_listen is {} (not loopback) and OPS_CONTROLLER_TOKEN is not set; the ops listener must never be \
             exposed unauthenticated (seed 004 §3); fix: bind 127.0.0.1 (server.ops_listen or AIBOX_OPS_LISTEN) and \
             reach it through an SSH tunnel, or set OPS_CONTROLLER_TOKEN",
            cfg.server.ops_listen
        );
    }
    tracing::warn!(
        ops_listen = %cfg.server.ops_listen,
        "the ops listener is not on loopback: every request but /healthz and /readyz needs OPS_CONTROLLER_TOKEN; \
         keep it behind a VPN or firewall (seed 004 §3)"
    );
    Ok(())
}

fn create_private_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create the data directory {}; fix: set server.data_dir (AIBOX_DATA_DIR) to a writable path", dir.display()))
}

/// The listen backlog asked of the kernel, which caps it at
/// `net.core.somaxconn` (4096 on current Linux). A burst of new connections
/// waits there while the accept loop catches up; tokio's default of 1024
/// would make the rest of a burst retry their SYNs a second later.
const LISTEN_BACKLOG: u32 = 4096;

fn bind(addr: SocketAddr, key: &str) -> anyhow::Result<TcpListener> {
    let listen = || -> std::io::Result<TcpListener> {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        // As `TcpListener::bind` does: a restart may rebind at once while
        // the previous process's connections sit in TIME_WAIT.
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        socket.listen(LISTEN_BACKLOG)
    };
    listen().with_context(|| format!("cannot listen on {addr}; fix: free the port or change {key}"))
}

/// With Redis configured, replicas share the identity provider's JWKS
/// (warm-up and fallback), tagged under a key derived from
/// `AUDIT_SIGNING_KEY` so that Redis cannot plant keys.
fn share_jwks(
    cfg: &Config,
    state: &AppState,
    audit_key: &aibox_core::Secret,
) -> anyhow::Result<()> {
    let (Some(url), Some(validator), Some(issuer)) = (
        &cfg.redis_url,
        state.auth.oidc_validator(),
        &cfg.auth.issuer,
    ) else {
        return Ok(());
    };
    let redis = aibox_identity::RedisReplayGuard::connect_lazy(
        url,
        aibox_identity::oidc::JWKS_REDIS_PREFIX,
    )
    .map_err(|e| anyhow::anyhow!("redis_url (AIBOX_REDIS_URL): {}", e.operator_hint()))?;
    let cache = aibox_identity::oidc::SharedJwksCache::new(
        redis,
        audit_key,
        issuer,
        cfg.auth.jwks_url.as_deref(),
    );
    validator.source().share_through(cache);
    Ok(())
}

async fn serve(
    cfg: Config,
    keys: SigningKeys,
    audit_key: aibox_core::Secret,
    mcp: aibox_gateway::mcp::McpPrepared,
    guardrail: Arc<aibox_gateway::guard::GuardrailHandle>,
    (credentials, creds): (Arc<EnvCredentials>, aibox_gateway::ops::Credentials),
    started: Instant,
) -> anyhow::Result<()> {
    let cfg = Arc::new(cfg);
    let store = crate::apikey::open_store(&cfg).await?;
    let limiter = match &cfg.redis_url {
        Some(url) => Limiter::with_redis(cfg.limits.clone(), url, "aibox")
            .await
            .context("cannot connect to Redis for rate limits; fix: start Redis or unset redis_url (AIBOX_REDIS_URL)")?,
        None => Limiter::in_memory(cfg.limits.clone()),
    };
    let service = match &cfg.service_auth {
        None => None,
        Some(sa) => {
            let token_url = match (&sa.token_url, &cfg.auth.issuer) {
                (Some(u), _) => u.clone(),
                (None, Some(issuer)) => aibox_identity::discover_token_endpoint(issuer).await?,
                (None, None) => bail!(
                    "service_auth.token_url is not set and there is no auth.issuer to discover it from"
                ),
            };
            Some(Arc::new(aibox_identity::ClientCredentials::new(
                token_url,
                sa.client_id.clone(),
                sa.client_secret.clone(),
                sa.client_secret_env.clone(),
            )?))
        }
    };
    let router = aibox_router::Router::new(&cfg, service.clone())?;
    let audit = crate::audit::open(&cfg, &audit_key).await?;
    tracing::info!(
        backend = audit.backend(),
        key_version = audit.key_version(),
        "audit log open"
    );
    // Created before the MCP gateway, whose audit sink counts tool calls.
    let metrics = Arc::new(aibox_gateway::Metrics::new());
    let mcp = aibox_gateway::mcp::start(
        mcp,
        &keys,
        audit.clone(),
        store.clone(),
        guardrail.clone(),
        cfg.routes.iter().map(|r| r.audience.clone()).collect(),
        metrics.clone(),
    )
    .await?;
    let mut state = AppState::new(
        cfg.clone(),
        router,
        Arc::new(limiter),
        store.clone(),
        audit,
        &keys,
        service,
        guardrail.clone(),
    )?;
    state.mcp = Some(mcp.clone());
    state.metrics = metrics;
    state.ops_token = arc_swap::ArcSwapOption::from_pointee(creds.ops_token);
    state.ops_public = !cfg.server.ops_listen.ip().is_loopback();
    state
        .dashboard
        .replace(aibox_gateway::dashboard::DashboardAuth::new(
            creds.dashboard_token,
            creds.dashboard_password.as_ref(),
        )?);
    state.credentials = Some(credentials);
    state.doctor = Some(doctor_seam(&cfg));
    share_jwks(&cfg, &state, &audit_key)?;
    let state = Arc::new(state);
    state.auth.preload().await;

    let main_listener = bind(cfg.server.listen, "server.listen (AIBOX_LISTEN)")?;
    let ops_listener = bind(
        cfg.server.ops_listen,
        "server.ops_listen (AIBOX_OPS_LISTEN)",
    )?;
    let main_addr = main_listener.local_addr()?;
    let ops_addr = ops_listener.local_addr()?;
    let dashboard_listener = if cfg.dashboard.enabled {
        check_dashboard_exposure(
            &cfg,
            state.dashboard.current().enabled() || state.sso.is_some(),
        )?;
        Some(bind(
            cfg.dashboard.listen,
            "dashboard.listen (AIBOX_DASHBOARD_LISTEN)",
        )?)
    } else {
        None
    };

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    // Without TCP_NODELAY, small SSE events wait for the client's delayed
    // ACK (Nagle): about 40 ms per event on a reused connection.
    let edge = crate::listen::EdgeTimeouts::from_config(&cfg.server);
    let main_srv = crate::listen::serve(
        main_listener,
        aibox_gateway::main_router(state.clone()),
        true,
        edge,
        stopped(stop_rx.clone()),
    );
    let ops_srv = crate::listen::serve(
        ops_listener,
        aibox_gateway::ops_router(state.clone()),
        false,
        edge,
        stopped(stop_rx.clone()),
    );
    let mut main_task = tokio::spawn(main_srv);
    let mut ops_task = tokio::spawn(ops_srv);
    let mut dashboard_task = match dashboard_listener {
        Some(l) => {
            let addr = l.local_addr()?;
            let srv = crate::listen::serve(
                l,
                aibox_gateway::dashboard::router(state.clone(), addr),
                false,
                edge,
                stopped(stop_rx.clone()),
            );
            if !state.dashboard.current().enabled() && state.sso.is_none() {
                tracing::warn!(
                    "the dashboard has no credential: nobody can log in until DASHBOARD_AUTH_TOKEN or \
                     DASHBOARD_PASSWORD is set (in .env, then SIGHUP)"
                );
            }
            // A separate line, so that scripts matching the listening line
            // of the two core listeners keep working.
            println!("aibox dashboard listening {addr}");
            tracing::info!(dashboard = %addr, "dashboard is serving");
            tokio::spawn(srv)
        }
        None => tokio::spawn(std::future::pending()),
    };

    tracing::info!(
        main = %main_addr,
        ops = %ops_addr,
        upstreams = cfg.upstreams.len(),
        limiter = state.limiter.backend(),
        startup_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        "aibox is serving"
    );
    // SIGHUP re-reads the constitution, the keyrings and the tokens;
    // requests in flight keep theirs.
    {
        let state = state.clone();
        tokio::spawn(async move {
            use tokio::signal::unix::{SignalKind, signal};
            let Ok(mut hup) = signal(SignalKind::hangup()) else {
                return;
            };
            while hup.recv().await.is_some() {
                let _ = aibox_gateway::ops::reload_guardrail(&state, "sighup").await;
                let _ = aibox_gateway::ops::reload_keys(&state, "sighup").await;
            }
        });
    }
    // A machine-readable line for scripts and tests that start aibox on port 0.
    println!("aibox listening main={main_addr} ops={ops_addr}");

    tokio::select! {
        sig = shutdown_signal() => tracing::info!(signal = sig, "shutting down: no new connections; draining in-flight requests and streams"),
        r = &mut main_task => bail!("the main listener stopped unexpectedly: {r:?}"),
        r = &mut ops_task => bail!("the ops listener stopped unexpectedly: {r:?}"),
        r = &mut dashboard_task => bail!("the dashboard listener stopped unexpectedly: {r:?}"),
    }
    let _ = stop_tx.send(true);
    let grace = cfg.server.shutdown_grace;
    let drained = tokio::time::timeout(grace, async {
        let _ = (&mut main_task).await;
        let _ = (&mut ops_task).await;
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            grace_secs = grace.as_secs(),
            "connections still open after server.shutdown_grace_secs; closing them"
        );
        main_task.abort();
        ops_task.abort();
    }
    dashboard_task.abort();
    mcp.shutdown().await;
    // Refused authentications are recorded after their 401s; the ones in
    // flight or held back by the rate limit go in before the log closes.
    if tokio::time::timeout(
        std::time::Duration::from_secs(5),
        state.refusals.flush(&state.audit),
    )
    .await
    .is_err()
    {
        tracing::warn!("the audit log did not take the last refused authentications within 5 s");
    }
    store
        .flush()
        .await
        .context("cannot flush the database at shutdown")?;
    tracing::info!("stopped cleanly");
    Ok(())
}

async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers the process can still be stopped by
        // SIGKILL; wait forever rather than exit at once.
        std::future::pending::<()>().await;
        return "none";
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}
