//! The `aibox` binary: a thin layer that parses the command line and wires
//! the library crates together. All behaviour worth testing lives in the
//! libraries; errors here are `anyhow` with the library error as the cause.

mod devkeys;
mod serve;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

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
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::Config {
            command: ConfigCommand::Check { config },
        } => config_check(config),
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
