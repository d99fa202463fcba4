//! The `aibox` binary: a thin layer that parses the command line and wires
//! the library crates together. All behaviour worth testing lives in the
//! libraries; errors here are `anyhow` with the library error as the cause.

mod apikey;
mod audit;
mod bootstrap;
mod devkeys;
mod doctor;
mod egress_cmd;
mod envfile;
mod guardrail_cmd;
mod keys;
mod listen;
mod serve;
mod telemetry;
mod vaultkeys;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// jemalloc instead of glibc malloc: the request path allocates many small
/// buffers on one worker thread and frees them on another, where glibc's
/// arenas spent about 16% of the gateway's CPU (malloc, free, consolidation)
/// at 32 concurrent requests.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// The trust plane of a self-hosted AI stack.
#[derive(Parser)]
#[command(name = "aibox", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (main listener and ops listener).
    Serve(serve::ServeArgs),
    /// Inspect the configuration.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Manage gateway API keys (stored as hashes in the database).
    Apikey {
        /// The config file (for database.url).
        #[arg(long, global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        command: ApikeyCommand,
    },
    /// List and rotate the signing keyrings.
    /// Validate a constitution; evaluate the scanners on a labelled corpus.
    #[command(subcommand)]
    Guardrail(guardrail_cmd::GuardrailCommand),
    /// Host firewall rules against SSRF from tool containers (seed 004 §1):
    /// print, apply or remove the DOCKER-USER / nftables rules.
    Egress(egress_cmd::EgressArgs),
    /// Write strong random values for every secret of the stack into the
    /// env file (mode 0600), keeping real values and replacing placeholders;
    /// prints names only. Idempotent.
    Bootstrap {
        /// The env file.
        #[arg(long, default_value = ".env")]
        env_file: PathBuf,
        /// The gateway config whose routes and service_auth name services
        /// (default: $AIBOX_CONFIG, else deploy/config/gateway/config.yaml if present).
        #[arg(long)]
        config: Option<PathBuf>,
        /// More services that need a SERVICE_<NAME>_CLIENT_SECRET.
        #[arg(long = "service")]
        services: Vec<String>,
    },
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Verify, export and check the tamper-evident audit log.
    Audit {
        /// The config file (for database.url and server.data_dir).
        #[arg(long, global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Check a deployment against the production checklist (exit 1 on a
    /// high-severity finding).
    Doctor(doctor::DoctorArgs),
    /// Work with signed `X-Aibox-Principal` headers.
    Principal {
        #[command(subcommand)]
        command: PrincipalCommand,
    },
}

#[derive(Subcommand)]
enum ApikeyCommand {
    /// Create a key; it is printed once on stdout.
    Create {
        /// The tenant the key acts in.
        #[arg(long)]
        tenant: String,
        /// The user the key acts as.
        #[arg(long)]
        user: String,
        /// Roles, comma-separated.
        #[arg(long, value_delimiter = ',')]
        roles: Vec<String>,
        /// Lifetime, e.g. 30d, 12h (default: no expiry).
        #[arg(long)]
        expires: Option<String>,
    },
    /// List keys (ids, owners, roles, status; never secrets).
    List {
        /// Only this tenant's keys.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Revoke a key by its id.
    Revoke {
        /// The key id (the 16 hex digits after `aibox_`).
        id: String,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Recompute a tenant's chain, envelopes, tree and checkpoints.
    Verify {
        /// The tenant.
        #[arg(long, default_value = "default")]
        tenant: String,
        /// Which signatures to check: `all` (every envelope and checkpoint)
        /// or `head` (the newest checkpoint and each key version's first
        /// and last, at hashing speed; a failure is then pinned by a full
        /// pass). Every hash, root and link is recomputed either way.
        #[arg(long, default_value = "all")]
        signatures: aibox_auditlog::SignatureCheck,
    },
    /// Write a tenant's bundle (rows, envelopes, checkpoints, public keys).
    Export {
        /// The tenant.
        #[arg(long, default_value = "default")]
        tenant: String,
        /// The output file (default: stdout).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Re-create the append-only guards (triggers) after a restore dropped
    /// them; run `aibox audit verify` afterwards.
    RestoreGuards,
    /// Print a tenant's verifier keys (every version), for third parties.
    Keys {
        /// The tenant.
        #[arg(long, default_value = "default")]
        tenant: String,
    },
    /// Check files offline, with only public keys.
    #[command(subcommand)]
    Receipt(ReceiptCommand),
    /// Check an exported bundle offline, with only public keys.
    VerifyBundle {
        /// The bundle file.
        file: PathBuf,
        /// The trusted verifier keys (one per line, or the JSON of `aibox audit keys`).
        #[arg(long)]
        keys: PathBuf,
    },
}

#[derive(Subcommand)]
enum ReceiptCommand {
    /// Verify a receipt (`GET /v1/audit/receipts/{turn}`) offline.
    Verify {
        /// The receipt file.
        file: PathBuf,
        /// The trusted verifier keys (one per line, or the JSON of `aibox audit keys`).
        #[arg(long)]
        keys: PathBuf,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Show key ids and fingerprints of every keyring (never key material).
    List,
    /// Put a new signing key in front of a keyring, keeping the old ones
    /// (for secrets-master, then re-wrap every vault secret; resumable).
    Rotate {
        /// Which keyring.
        which: keys::Which,
        /// The environment file holding the keyring.
        #[arg(long, default_value = ".env")]
        env_file: PathBuf,
        /// The config file naming the database (secrets-master only).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Remove an old SECRETS_MASTER_KEY version once no secret uses it.
    Retire {
        /// Which keyring (only secrets-master needs a check before removal).
        which: RetireWhich,
        /// The key id to remove.
        kid: String,
        /// The environment file holding the keyring.
        #[arg(long, default_value = ".env")]
        env_file: PathBuf,
        /// The config file naming the database.
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

/// Keyrings whose versions can be retired.
#[derive(Clone, Copy, clap::ValueEnum)]
enum RetireWhich {
    /// `SECRETS_MASTER_KEY`.
    SecretsMaster,
}

#[derive(Subcommand)]
enum PrincipalCommand {
    /// Verify a signed principal with AIBOX_PRINCIPAL_KEYS and print its claims.
    Verify {
        /// The compact JWS (the X-Aibox-Principal header value).
        token: String,
        /// The audience (service name) it must be addressed to.
        #[arg(long)]
        audience: String,
        /// Verify as Ed25519 (principal.algorithm: EdDSA) instead of HS256.
        #[arg(long)]
        ed25519: bool,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate a config and print the effective one with secrets redacted.
    Check {
        /// The config file (default: $AIBOX_CONFIG, else deploy/config/gateway/config.yaml if it exists).
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    // The sandbox launcher (hidden, started by aibox itself for sandboxed
    // MCP servers) runs before anything else: no argument parsing, no
    // logging set-up, no threads, so its confinement covers a
    // single-threaded process and its start-up stays cheap.
    if std::env::args_os().nth(1).as_deref()
        == Some(std::ffi::OsStr::new(aibox_sandbox::LAUNCHER_SUBCOMMAND))
    {
        return aibox_sandbox::launch::main();
    }
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::Config {
            command: ConfigCommand::Check { config },
        } => config_check(config),
        Command::Apikey { config, command } => apikey_command(config, command),
        Command::Keys { command } => match command {
            KeysCommand::List => environment().and_then(|env| keys::list(&env)),
            KeysCommand::Rotate {
                which: keys::Which::SecretsMaster,
                env_file,
                config,
            } => keys::check_env_file(&env_file).and_then(|()| vault_keys(config, &env_file, None)),
            KeysCommand::Rotate {
                which, env_file, ..
            } => keys::check_env_file(&env_file).and_then(|()| keys::rotate(which, &env_file)),
            KeysCommand::Retire {
                which: RetireWhich::SecretsMaster,
                kid,
                env_file,
                config,
            } => keys::check_env_file(&env_file)
                .and_then(|()| vault_keys(config, &env_file, Some(&kid))),
        },
        Command::Egress(args) => egress_cmd::run(args),
        Command::Guardrail(cmd) => guardrail_cmd::run(cmd),
        Command::Bootstrap {
            env_file,
            config,
            services,
        } => bootstrap_command(&env_file, config, &services),
        Command::Audit { config, command } => audit_command(config, command),
        Command::Doctor(args) => {
            return doctor::run(args).unwrap_or_else(|e| {
                eprintln!("aibox: error: {e:#}");
                ExitCode::from(2)
            });
        }
        Command::Principal {
            command:
                PrincipalCommand::Verify {
                    token,
                    audience,
                    ed25519,
                },
        } => principal_verify(&token, &audience, ed25519),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("aibox: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Loads `.env` from the working directory into a snapshot of the process
/// environment.
fn environment() -> anyhow::Result<aibox_config::env::Env> {
    let mut env = aibox_config::env::process_env();
    aibox_config::env::merge_dotenv(std::path::Path::new(".env"), &mut env)?;
    Ok(env)
}

fn apikey_command(config: Option<PathBuf>, command: ApikeyCommand) -> anyhow::Result<()> {
    let env = environment()?;
    let cfg = aibox_config::load(config.as_deref(), &env)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        match command {
            ApikeyCommand::Create {
                tenant,
                user,
                roles,
                expires,
            } => apikey::create(&cfg, &tenant, &user, &roles, expires.as_deref()).await,
            ApikeyCommand::List { tenant } => apikey::list(&cfg, tenant.as_deref()).await,
            ApikeyCommand::Revoke { id } => apikey::revoke(&cfg, &id).await,
        }
    })
}

/// Rotates (`retire: None`) or retires a `SECRETS_MASTER_KEY` version, on
/// the database the config names.
fn vault_keys(
    config: Option<PathBuf>,
    env_file: &std::path::Path,
    retire: Option<&str>,
) -> anyhow::Result<()> {
    let process = aibox_config::env::process_env();
    let mut effective = process.clone();
    aibox_config::env::merge_dotenv(env_file, &mut effective)?;
    let cfg = aibox_config::load(config.as_deref(), &effective)?;
    devkeys::ensure(&cfg.server.data_dir, &mut effective)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        match retire {
            None => vaultkeys::rotate(&cfg, &process, &effective, env_file).await,
            Some(kid) => vaultkeys::retire(&cfg, &process, &effective, env_file, kid).await,
        }
    })
}

fn bootstrap_command(
    env_file: &std::path::Path,
    config: Option<PathBuf>,
    services: &[String],
) -> anyhow::Result<()> {
    keys::check_env_file(env_file)?;
    let path = config
        .or_else(|| std::env::var_os(aibox_config::env::AIBOX_CONFIG).map(PathBuf::from))
        .or_else(|| {
            let p = PathBuf::from(aibox_config::DEFAULT_CONFIG_PATH);
            p.exists().then_some(p)
        });
    let yaml = match &path {
        Some(p) => Some(
            std::fs::read_to_string(p)
                .map_err(|e| anyhow::anyhow!("cannot read the config file {}: {e}", p.display()))?,
        ),
        None => None,
    };
    let outcome = bootstrap::run(yaml.as_deref(), env_file, services)?;
    bootstrap::report(env_file, &outcome);
    Ok(())
}

fn audit_command(config: Option<PathBuf>, command: AuditCommand) -> anyhow::Result<()> {
    match command {
        AuditCommand::Receipt(ReceiptCommand::Verify { file, keys }) => {
            return audit::verify_receipt_file(&file, &keys);
        }
        AuditCommand::VerifyBundle { file, keys } => {
            return audit::verify_bundle_file(&file, &keys);
        }
        _ => {}
    }
    let mut env = environment()?;
    let cfg = aibox_config::load(config.as_deref(), &env)?;
    if let AuditCommand::RestoreGuards = command {
        return audit::restore_guards(&cfg);
    }
    // The same keys `aibox serve` uses, including development keys.
    devkeys::ensure(&cfg.server.data_dir, &mut env)?;
    let key = aibox_core::Secret::new(
        env.get(aibox_config::env::AUDIT_SIGNING_KEY)
            .cloned()
            .unwrap_or_default(),
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let log = audit::open(&cfg, &key).await?;
        match command {
            AuditCommand::Verify { tenant, signatures } => {
                audit::verify(&log, &tenant, signatures).await
            }
            AuditCommand::Export { tenant, out } => {
                audit::export(&log, &tenant, out.as_deref()).await
            }
            AuditCommand::Keys { tenant } => {
                let t = aibox_core::TenantId::new(tenant)?;
                println!(
                    "{}",
                    serde_json::to_string_pretty(&log.public_keys(&t).await?)?
                );
                Ok(())
            }
            AuditCommand::Receipt(_)
            | AuditCommand::VerifyBundle { .. }
            | AuditCommand::RestoreGuards => Ok(()),
        }
    })
}

fn principal_verify(token: &str, audience: &str, ed25519: bool) -> anyhow::Result<()> {
    let env = environment()?;
    let ring = aibox_identity::load_keyring(
        aibox_identity::KeyringKind::Principal,
        env.get(aibox_config::env::AIBOX_PRINCIPAL_KEYS)
            .map(String::as_str),
    )?;
    let verifier = if ed25519 {
        aibox_identity::PrincipalVerifier::ed25519(&ring)
    } else {
        aibox_identity::PrincipalVerifier::hmac(&ring)
    };
    let claims = verifier
        .verify(token, audience, std::time::SystemTime::now())
        .map_err(|e| anyhow::anyhow!("{e}; {}", e.operator_hint()))?;
    println!("{}", serde_json::to_string_pretty(&claims)?);
    Ok(())
}

fn config_check(path: Option<PathBuf>) -> anyhow::Result<()> {
    let env = environment()?;
    let cfg = aibox_config::load(path.as_deref(), &env)?;
    let keys = devkeys::describe(&env)?;
    let mut out = String::from("# effective configuration (secrets redacted)\n");
    match &cfg.source {
        Some(p) => out.push_str(&format!("# source: {}\n", p.display())),
        None => out.push_str("# source: built-in defaults (no config file)\n"),
    }
    out.push_str(&serde_yaml_ng::to_string(&cfg)?);
    out.push_str("# keys (values never printed)\n");
    for (name, state) in keys {
        out.push_str(&format!("#   {name}: {state}\n"));
    }
    print!("{out}");
    Ok(())
}
