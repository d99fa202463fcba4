//! `aibox egress`: the host firewall half of seed 004 §1 (SSRF egress
//! blocks). Generates, installs and removes the rules that drop traffic from
//! the tool containers' subnet to internal ranges while DNS stays open; the
//! rules themselves and their planning live in `aibox_egress::rules`, the
//! commands in `aibox_egress::firewall`.
//!
//! `aibox egress rules` (or `aibox egress --dry-run`) prints the iptables,
//! ip6tables and nftables rules; `apply` installs them (iptables by default,
//! `--backend nftables` for a table of its own) and `remove` removes exactly
//! what aibox added.

use std::fmt::Write as _;
use std::io::Write as _;

use aibox_egress::firewall::{Backend, Firewall, FirewallError, Plan, SystemRunner};
use aibox_egress::rules::{self, Subnets};

/// Arguments of `aibox egress`.
#[derive(clap::Args, Debug)]
pub struct EgressArgs {
    #[command(subcommand)]
    command: Option<EgressCommand>,
    /// The tool containers' subnet (repeatable; IPv4 and IPv6), e.g.
    /// 172.18.0.0/16.
    #[arg(long = "subnet", value_name = "CIDR", global = true)]
    subnets: Vec<String>,
    /// Take the subnets from this Docker network (`docker network inspect`).
    #[arg(long, value_name = "NAME", global = true)]
    docker_network: Option<String>,
    /// iptables (chain DOCKER-USER; the default of apply) or nftables (table
    /// inet aibox_egress). `rules` prints both and `remove` cleans both when
    /// not given.
    #[arg(long, value_enum, global = true)]
    backend: Option<BackendArg>,
    /// Print what would be done instead of doing it.
    #[arg(long, global = true)]
    dry_run: bool,
}

#[derive(clap::Subcommand, Debug)]
enum EgressCommand {
    /// Print the rules for the subnets (the default).
    Rules,
    /// Install the rules; a re-apply replaces them and adds nothing (root).
    Apply,
    /// Remove every rule aibox added, and the DOCKER-USER chain if aibox
    /// created it (root).
    Remove,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum BackendArg {
    Iptables,
    Nftables,
}

impl From<BackendArg> for Backend {
    fn from(b: BackendArg) -> Self {
        match b {
            BackendArg::Iptables => Backend::Iptables,
            BackendArg::Nftables => Backend::Nftables,
        }
    }
}

/// Runs `aibox egress`.
pub fn run(args: EgressArgs) -> anyhow::Result<()> {
    let fw = Firewall::new(SystemRunner);
    match args.command.unwrap_or(EgressCommand::Rules) {
        EgressCommand::Rules => {
            let subnets = subnets(&fw, &args.subnets, args.docker_network.as_deref())?;
            let backend = args.backend.map(Backend::from);
            let mut out = String::new();
            if backend != Some(Backend::Nftables) {
                out.push_str(&rules::iptables_commands(&subnets));
            }
            if backend.is_none() {
                out.push('\n');
            }
            if backend != Some(Backend::Iptables) {
                let _ = writeln!(
                    out,
                    "# nftables: nft -f - <<'EOF' (replaces table inet {} in one transaction)",
                    rules::NFT_TABLE
                );
                out.push_str(&rules::nft_script(&subnets));
                out.push_str("# EOF\n");
            }
            emit(&out)
        }
        EgressCommand::Apply => {
            let subnets = subnets(&fw, &args.subnets, args.docker_network.as_deref())?;
            let backend = args.backend.map_or(Backend::Iptables, Backend::from);
            let plan = fw.plan_apply(backend, &subnets)?;
            execute(&fw, &plan, args.dry_run)
        }
        EgressCommand::Remove => {
            let backends = match args.backend {
                Some(b) => vec![Backend::from(b)],
                None => vec![Backend::Iptables, Backend::Nftables],
            };
            let explicit = args.backend.is_some();
            for backend in backends {
                match fw.plan_remove(backend) {
                    Ok(plan) => execute(&fw, &plan, args.dry_run)?,
                    // Without --backend, a firewall tool that is not
                    // installed cannot hold rules of ours.
                    Err(FirewallError::NotInstalled { program, .. }) if !explicit => {
                        emit(&format!(
                            "aibox egress: {program} not installed; no {} rules to remove\n",
                            backend.name()
                        ))?;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            Ok(())
        }
    }
}

fn subnets(
    fw: &Firewall<SystemRunner>,
    given: &[String],
    docker_network: Option<&str>,
) -> anyhow::Result<Subnets> {
    let mut all = given.to_vec();
    if let Some(network) = docker_network {
        all.extend(fw.docker_subnets(network)?);
    }
    Ok(Subnets::parse(&all)?)
}

fn execute(fw: &Firewall<SystemRunner>, plan: &Plan, dry_run: bool) -> anyhow::Result<()> {
    let mut out = String::new();
    for line in &plan.unchanged {
        let _ = writeln!(out, "aibox egress: {line}");
    }
    if dry_run {
        for step in &plan.steps {
            let _ = write!(out, "{step}");
        }
        return emit(&out);
    }
    fw.run(plan)?;
    for step in &plan.steps {
        let _ = writeln!(out, "aibox egress: {}", step.summary);
    }
    emit(&out)
}

/// Writes to stdout; a closed pipe (`| head`) ends the output quietly
/// instead of panicking as `print!` would.
fn emit(text: &str) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}
