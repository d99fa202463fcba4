//! Prints precision and recall of every scanner under every profile over
//! the labelled corpus in `corpus/` (against the reference constitution),
//! then every miss and false alarm.
//!
//! Run: `cargo run -p aibox-guardrail --example eval`.

use aibox_guardrail::eval::{self, CORPUS};
use aibox_guardrail::{Constitution, Guardrail, Profile};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let c = Constitution::from_yaml(
        eval::REFERENCE_CONSTITUTION,
        "deploy/config/guardrail/constitution.yaml",
    )?;
    let g = Guardrail::new(&c)?;
    let holdout_only = std::env::args().any(|a| a == "--holdout");
    let corpus = if holdout_only {
        eval::HOLDOUT.to_owned()
    } else {
        CORPUS.join("\n")
    };
    let report = eval::run(&corpus, &g, &Profile::ALL)?;
    println!(
        "{}\n{report}",
        if holdout_only {
            "held-out entries"
        } else {
            "tuning corpus"
        }
    );
    let verbose = std::env::args().any(|a| a == "-v");
    if verbose {
        for e in &report.errors {
            println!(
                "{:<10} {:<16} {:<14} {}",
                e.profile.as_str(),
                e.scanner.as_str(),
                if e.false_positive {
                    "false alarm"
                } else {
                    "miss"
                },
                e.id
            );
        }
    }
    Ok(())
}
