//! Installing and removing the `aibox egress` rules: the thin IO layer
//! around [`crate::rules`].
//!
//! Every command goes through a [`Runner`], so the sequence is testable
//! without root; [`SystemRunner`] runs the real tools. The iptables backend
//! reads the filter table with `iptables-save -t filter` and changes it with
//! one `iptables-restore --noflush` transaction per family (all rules or
//! none); the nftables backend loads one `nft -f` script that replaces the
//! table `inet aibox_egress` atomically, and removes that table.
//!
//! Errors name the fix: a missing tool names its Debian package, a refused
//! permission says to run as root.

use std::io::Write as _;
use std::process::{Command, Stdio};

use ipnet::IpNet;

use crate::rules::{
    self, Family, NFT_TABLE, SubnetError, Subnets, nft_has_table, nft_same, nft_script, nft_table,
    parse_save, plan_apply, plan_remove,
};

/// Why installing or removing the rules failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FirewallError {
    /// A tool is missing.
    #[error("{program} is not installed (or not on PATH); install it: apt-get install {package}")]
    NotInstalled {
        /// The tool.
        program: String,
        /// The Debian/Ubuntu package that provides it.
        package: &'static str,
    },
    /// The kernel refused: not root.
    #[error(
        "{program} was refused permission ({detail}); run `aibox egress` as root (sudo) or with CAP_NET_ADMIN"
    )]
    NotPermitted {
        /// The tool.
        program: String,
        /// Its message.
        detail: String,
    },
    /// A tool failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        /// The command line.
        command: String,
        /// Its exit status.
        status: String,
        /// Its error output.
        stderr: String,
    },
    /// A bad subnet.
    #[error(transparent)]
    Subnet(#[from] SubnetError),
    /// `docker` is not available.
    #[error(
        "docker is not installed or not on PATH, so --docker-network {network} cannot be looked up; pass the subnet with --subnet CIDR"
    )]
    DockerMissing {
        /// The network asked for.
        network: String,
    },
    /// `docker network inspect` failed or gave nothing usable.
    #[error("docker network {network}: {cause}")]
    Docker {
        /// The network.
        network: String,
        /// What went wrong and what to do.
        cause: String,
    },
}

/// Runs a program and returns its standard output.
pub trait Runner {
    /// Runs `program args`, feeding `stdin` when given. A non-zero exit is
    /// an error.
    fn run(
        &self,
        program: &str,
        args: &[&str],
        stdin: Option<&str>,
    ) -> Result<String, FirewallError>;
}

/// Runs the real programs.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemRunner;

fn package_of(program: &str) -> &'static str {
    match program {
        "nft" => "nftables",
        "docker" => "docker.io (or Docker Engine)",
        _ => "iptables",
    }
}

impl Runner for SystemRunner {
    fn run(
        &self,
        program: &str,
        args: &[&str],
        stdin: Option<&str>,
    ) -> Result<String, FirewallError> {
        let command = format!("{program} {}", args.join(" "));
        let mut child = Command::new(program)
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => FirewallError::NotInstalled {
                    program: program.to_owned(),
                    package: package_of(program),
                },
                std::io::ErrorKind::PermissionDenied => FirewallError::NotPermitted {
                    program: program.to_owned(),
                    detail: e.to_string(),
                },
                _ => FirewallError::Failed {
                    command: command.clone(),
                    status: "did not start".into(),
                    stderr: e.to_string(),
                },
            })?;
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            // A failed write shows up as the program's own error below.
            let _ = pipe.write_all(input.as_bytes());
        }
        let out = child
            .wait_with_output()
            .map_err(|e| FirewallError::Failed {
                command: command.clone(),
                status: "did not finish".into(),
                stderr: e.to_string(),
            })?;
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        if !out.status.success() {
            let lower = stderr.to_ascii_lowercase();
            if lower.contains("permission denied")
                || lower.contains("operation not permitted")
                || lower.contains("must be root")
            {
                return Err(FirewallError::NotPermitted {
                    program: program.to_owned(),
                    detail: stderr,
                });
            }
            return Err(FirewallError::Failed {
                command,
                status: out.status.to_string(),
                stderr,
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// Which firewall to program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// `iptables` and `ip6tables`, chain `DOCKER-USER` (the seed's).
    Iptables,
    /// `nft`, table `inet aibox_egress`.
    Nftables,
}

impl Backend {
    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::Iptables => "iptables",
            Self::Nftables => "nftables",
        }
    }
}

/// One command `apply` or `remove` runs (or, with `--dry-run`, would run).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// The program.
    pub program: &'static str,
    /// Its arguments.
    pub args: Vec<&'static str>,
    /// Its standard input.
    pub stdin: Option<String>,
    /// What it does, for the operator.
    pub summary: String,
}

impl std::fmt::Display for Step {
    /// As a shell command with a here-document, runnable by hand.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "# {}", self.summary)?;
        let line = std::iter::once(self.program)
            .chain(self.args.iter().copied())
            .collect::<Vec<_>>()
            .join(" ");
        match &self.stdin {
            None => writeln!(f, "{line}"),
            Some(input) => write!(f, "{line} <<'EOF'\n{input}EOF\n"),
        }
    }
}

/// What `plan_*` found: the steps to run, or why none are needed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    /// The commands, in order.
    pub steps: Vec<Step>,
    /// One line per family or table where nothing needs doing.
    pub unchanged: Vec<String>,
}

/// Installs and removes the rules through a [`Runner`].
#[derive(Debug, Clone)]
pub struct Firewall<R> {
    runner: R,
}

impl<R: Runner> Firewall<R> {
    /// A firewall driven by `runner`.
    pub fn new(runner: R) -> Self {
        Self { runner }
    }

    fn families(subnets: &Subnets) -> Vec<Family> {
        let mut out = Vec::new();
        if !subnets.v4().is_empty() {
            out.push(Family::V4);
        }
        if !subnets.v6().is_empty() {
            out.push(Family::V6);
        }
        out
    }

    /// Reads the current rules and plans `apply`. The iptables backend
    /// touches only the families it has subnets for.
    pub fn plan_apply(&self, backend: Backend, subnets: &Subnets) -> Result<Plan, FirewallError> {
        let mut plan = Plan::default();
        match backend {
            Backend::Iptables => {
                for family in Self::families(subnets) {
                    let saved =
                        parse_save(&self.runner.run(family.save(), &["-t", "filter"], None)?);
                    let p = plan_apply(family, &saved, subnets);
                    let nets = subnets.of(family).join(", ");
                    match p.restore_input {
                        None => plan.unchanged.push(format!(
                            "{}: the aibox-egress rules for {nets} are in place; nothing changed",
                            family.iptables()
                        )),
                        Some(input) => plan.steps.push(Step {
                            program: family.restore(),
                            args: vec!["--noflush"],
                            stdin: Some(input),
                            summary: format!(
                                "{}: install {} rules for {nets}{}{}",
                                family.iptables(),
                                p.installs,
                                if p.creates_chain {
                                    format!(
                                        " (create {} and jump to it from FORWARD)",
                                        rules::CHAIN
                                    )
                                } else {
                                    String::new()
                                },
                                if p.replaces > 0 {
                                    format!(", replacing {} earlier ones", p.replaces)
                                } else {
                                    String::new()
                                }
                            ),
                        }),
                    }
                }
            }
            Backend::Nftables => {
                let tables = self.runner.run("nft", &["list", "tables"], None)?;
                let wanted = nft_table(subnets);
                if nft_has_table(&tables) {
                    let current =
                        self.runner
                            .run("nft", &["list", "table", "inet", NFT_TABLE], None)?;
                    if nft_same(&current, &wanted) {
                        plan.unchanged.push(format!(
                            "nftables: table inet {NFT_TABLE} is in place; nothing changed"
                        ));
                        return Ok(plan);
                    }
                }
                plan.steps.push(Step {
                    program: "nft",
                    args: vec!["-f", "-"],
                    stdin: Some(nft_script(subnets)),
                    summary: format!(
                        "nftables: install table inet {NFT_TABLE} for {}",
                        [subnets.of(Family::V4), subnets.of(Family::V6)]
                            .concat()
                            .join(", ")
                    ),
                });
            }
        }
        Ok(plan)
    }

    /// Reads the current rules and plans `remove`: every aibox-egress rule
    /// of both families, or the aibox table.
    pub fn plan_remove(&self, backend: Backend) -> Result<Plan, FirewallError> {
        let mut plan = Plan::default();
        match backend {
            Backend::Iptables => {
                for family in [Family::V4, Family::V6] {
                    let saved =
                        parse_save(&self.runner.run(family.save(), &["-t", "filter"], None)?);
                    let p = plan_remove(&saved);
                    match p.restore_input {
                        None => plan
                            .unchanged
                            .push(format!("{}: no aibox-egress rules", family.iptables())),
                        Some(input) => plan.steps.push(Step {
                            program: family.restore(),
                            args: vec!["--noflush"],
                            stdin: Some(input),
                            summary: format!(
                                "{}: remove {} aibox-egress rules{}",
                                family.iptables(),
                                p.removes,
                                if p.deletes_chain {
                                    format!(" and the {} chain aibox created", rules::CHAIN)
                                } else {
                                    String::new()
                                }
                            ),
                        }),
                    }
                }
            }
            Backend::Nftables => {
                let tables = self.runner.run("nft", &["list", "tables"], None)?;
                if nft_has_table(&tables) {
                    plan.steps.push(Step {
                        program: "nft",
                        args: vec!["delete", "table", "inet", NFT_TABLE],
                        stdin: None,
                        summary: format!("nftables: delete table inet {NFT_TABLE}"),
                    });
                } else {
                    plan.unchanged
                        .push(format!("nftables: no table inet {NFT_TABLE}"));
                }
            }
        }
        Ok(plan)
    }

    /// Runs the steps of a plan, in order; the first failure stops.
    pub fn run(&self, plan: &Plan) -> Result<(), FirewallError> {
        for step in &plan.steps {
            self.runner
                .run(step.program, &step.args, step.stdin.as_deref())?;
        }
        Ok(())
    }

    /// The subnets of a Docker network (`docker network inspect`).
    pub fn docker_subnets(&self, network: &str) -> Result<Vec<String>, FirewallError> {
        let out = self
            .runner
            .run(
                "docker",
                &["network", "inspect", "--format", "{{json .IPAM.Config}}", network],
                None,
            )
            .map_err(|e| match e {
                FirewallError::NotInstalled { .. } => FirewallError::DockerMissing {
                    network: network.to_owned(),
                },
                FirewallError::Failed { stderr, .. } => FirewallError::Docker {
                    network: network.to_owned(),
                    cause: format!(
                        "docker network inspect failed: {stderr}; list the networks with `docker network ls`"
                    ),
                },
                other => other,
            })?;
        parse_docker_ipam(network, &out)
    }
}

/// Reads the subnets from `docker network inspect --format '{{json
/// .IPAM.Config}}'` output.
pub fn parse_docker_ipam(network: &str, out: &str) -> Result<Vec<String>, FirewallError> {
    let fail = |cause: &str| FirewallError::Docker {
        network: network.to_owned(),
        cause: cause.to_owned(),
    };
    let value: serde_json::Value = serde_json::from_str(out.trim()).map_err(|_| {
        fail("docker network inspect gave no IPAM configuration; pass --subnet CIDR")
    })?;
    let subnets: Vec<String> = value
        .as_array()
        .map(|configs| {
            configs
                .iter()
                .filter_map(|c| c.get("Subnet").and_then(|s| s.as_str()))
                .filter(|s| s.parse::<IpNet>().is_ok())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    if subnets.is_empty() {
        return Err(fail("the network has no IPAM subnet; pass --subnet CIDR"));
    }
    Ok(subnets)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use std::cell::RefCell;
    use std::collections::HashMap;

    use super::*;

    /// Answers from a table keyed by the command line; records every call.
    #[derive(Default)]
    struct FakeRunner {
        answers: HashMap<String, Result<String, FirewallError>>,
        calls: RefCell<Vec<(String, Option<String>)>>,
    }

    impl FakeRunner {
        fn answer(mut self, cmd: &str, out: Result<&str, FirewallError>) -> Self {
            self.answers.insert(cmd.to_owned(), out.map(str::to_owned));
            self
        }
    }

    impl Runner for FakeRunner {
        fn run(
            &self,
            program: &str,
            args: &[&str],
            stdin: Option<&str>,
        ) -> Result<String, FirewallError> {
            let cmd = format!("{program} {}", args.join(" "));
            self.calls
                .borrow_mut()
                .push((cmd.clone(), stdin.map(str::to_owned)));
            self.answers
                .get(&cmd)
                .cloned()
                .unwrap_or_else(|| Ok(String::new()))
        }
    }

    const EMPTY_FILTER: &str =
        "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n";

    #[test]
    fn apply_touches_only_families_with_subnets() {
        let fw = Firewall::new(
            FakeRunner::default().answer("iptables-save -t filter", Ok(EMPTY_FILTER)),
        );
        let subnets = Subnets::parse(&["10.77.0.0/24"]).unwrap();
        let plan = fw.plan_apply(Backend::Iptables, &subnets).unwrap();
        assert_eq!(plan.steps.len(), 1);
        assert_eq!(plan.steps[0].program, "iptables-restore");
        assert!(
            plan.steps[0].summary.contains("create DOCKER-USER"),
            "{}",
            plan.steps[0].summary
        );
        let calls = fw.runner.calls.borrow();
        assert_eq!(calls.len(), 1, "{calls:?}");
    }

    #[test]
    fn missing_tools_and_docker() {
        let fw = Firewall::new(
            FakeRunner::default()
                .answer(
                    "nft list tables",
                    Err(FirewallError::NotInstalled {
                        program: "nft".into(),
                        package: "nftables",
                    }),
                )
                .answer(
                    "docker network inspect --format {{json .IPAM.Config}} ai",
                    Err(FirewallError::NotInstalled {
                        program: "docker".into(),
                        package: "docker.io",
                    }),
                )
                .answer(
                    "docker network inspect --format {{json .IPAM.Config}} gone",
                    Err(FirewallError::Failed {
                        command: "docker ...".into(),
                        status: "exit status: 1".into(),
                        stderr: "Error: No such network: gone".into(),
                    }),
                ),
        );
        let e = fw.plan_remove(Backend::Nftables).unwrap_err().to_string();
        assert!(e.contains("apt-get install nftables"), "{e}");
        let e = fw.docker_subnets("ai").unwrap_err().to_string();
        assert!(e.contains("--subnet CIDR"), "{e}");
        let e = fw.docker_subnets("gone").unwrap_err().to_string();
        assert!(
            e.contains("No such network") && e.contains("docker network ls"),
            "{e}"
        );
    }

    #[test]
    fn docker_ipam() {
        let out =
            r#"[{"Subnet":"172.18.0.0/16","Gateway":"172.18.0.1"},{"Subnet":"fd00:18::/64"}]"#;
        assert_eq!(
            parse_docker_ipam("n", out).unwrap(),
            vec!["172.18.0.0/16".to_owned(), "fd00:18::/64".to_owned()]
        );
        assert!(parse_docker_ipam("n", "[]").is_err());
        assert!(parse_docker_ipam("n", "null").is_err());
    }

    #[test]
    fn nftables_apply_is_a_noop_when_in_place() {
        let subnets = Subnets::parse(&["10.77.0.0/24"]).unwrap();
        let fw = Firewall::new(
            FakeRunner::default()
                .answer(
                    "nft list tables",
                    Ok("table ip filter\ntable inet aibox_egress\n"),
                )
                .answer("nft list table inet aibox_egress", Ok(&nft_table(&subnets))),
        );
        let plan = fw.plan_apply(Backend::Nftables, &subnets).unwrap();
        assert!(plan.steps.is_empty());
        assert_eq!(plan.unchanged.len(), 1);
        let other = Subnets::parse(&["10.78.0.0/24"]).unwrap();
        let plan = fw.plan_apply(Backend::Nftables, &other).unwrap();
        assert_eq!(plan.steps.len(), 1);
        assert_eq!(plan.steps[0].args, vec!["-f", "-"]);
    }

    #[test]
    fn step_prints_as_a_shell_command() {
        let s = Step {
            program: "iptables-restore",
            args: vec!["--noflush"],
            stdin: Some("*filter\nCOMMIT\n".into()),
            summary: "iptables: x".into(),
        };
        assert_eq!(
            s.to_string(),
            "# iptables: x\niptables-restore --noflush <<'EOF'\n*filter\nCOMMIT\nEOF\n"
        );
    }
}
