//! `aibox guardrail`: validate a constitution, and evaluate the scanners on
//! a labelled corpus (precision and recall per scanner and profile).

use std::path::PathBuf;

use aibox_guardrail::{Constitution, Guardrail, Profile};
use anyhow::Context as _;

/// `aibox guardrail ...`.
#[derive(clap::Subcommand)]
pub enum GuardrailCommand {
    /// Validate a constitution file and print its profile and sizes.
    Check {
        /// The file (default: $AIBOX_CONSTITUTION, else deploy/config/guardrail/constitution.yaml).
        file: Option<PathBuf>,
    },
    /// Print the table of scanners, stages and actions of every profile.
    Profiles,
    /// Print precision and recall of every scanner under every profile on a
    /// labelled JSONL corpus (default: the corpus shipped in the binary).
    Eval {
        /// A corpus file (JSONL: {"id","text","labels":[...],"source"}).
        #[arg(long)]
        corpus: Option<PathBuf>,
        /// Evaluate the held-out entries instead of the tuning corpus.
        #[arg(long)]
        holdout: bool,
        /// The constitution the labels refer to (default: the reference one).
        #[arg(long)]
        constitution: Option<PathBuf>,
    },
}

fn read(path: &std::path::Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

/// Runs a `guardrail` subcommand.
pub fn run(cmd: GuardrailCommand) -> anyhow::Result<()> {
    match cmd {
        GuardrailCommand::Check { file } => {
            let path = file
                .or_else(|| {
                    std::env::var_os(aibox_config::env::AIBOX_CONSTITUTION).map(PathBuf::from)
                })
                .unwrap_or_else(|| PathBuf::from(aibox_config::env::DEFAULT_CONSTITUTION_PATH));
            let c = Constitution::from_yaml(&read(&path)?, &path.display().to_string())?;
            let g = Guardrail::new(&c)?;
            println!(
                "{}: valid; enabled {}, profile {}, {} principle(s), {} tenant override(s)",
                path.display(),
                g.enabled_for(""),
                g.profile_for(""),
                g.principles().len(),
                c.tenants.len()
            );
            Ok(())
        }
        GuardrailCommand::Profiles => {
            print!("{}", aibox_guardrail::profile_table_markdown());
            Ok(())
        }
        GuardrailCommand::Eval {
            corpus,
            holdout,
            constitution,
        } => {
            let text = match (&corpus, holdout) {
                (Some(p), _) => read(p)?,
                (None, true) => aibox_guardrail::eval::HOLDOUT.to_owned(),
                (None, false) => aibox_guardrail::eval::CORPUS.join("\n"),
            };
            let c = match &constitution {
                Some(p) => Constitution::from_yaml(&read(p)?, &p.display().to_string())?,
                None => Constitution::from_yaml(
                    aibox_guardrail::eval::REFERENCE_CONSTITUTION,
                    aibox_config::env::DEFAULT_CONSTITUTION_PATH,
                )?,
            };
            let g = Guardrail::new(&c)?;
            let report = aibox_guardrail::eval::run(
                &text,
                &g,
                &[Profile::Permissive, Profile::Standard, Profile::Strict],
            )?;
            print!("{report}");
            Ok(())
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    /// The README's profile table is the code's, word for word.
    #[test]
    fn readme_profile_table_matches_the_code() {
        let readme = include_str!("../../../README.md");
        assert!(
            readme.contains(&aibox_guardrail::profile_table_markdown()),
            "README.md's profile table differs from `aibox guardrail profiles`; paste its output into the Guardrails section"
        );
    }
}
