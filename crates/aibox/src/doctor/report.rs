//! Rendering findings: text for people, JSON for scripts, SARIF 2.1.0 for
//! code-scanning services. All three carry the same facts: id, severity,
//! evidence, location and fix.

use std::path::Path;

use serde_json::{Value, json};

use super::model::{ALL_RULES, Finding, Rule, Severity};

/// Counts per severity.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// High.
    pub high: usize,
    /// Medium.
    pub medium: usize,
    /// Low.
    pub low: usize,
    /// Info.
    pub info: usize,
}

impl Summary {
    /// Counts `findings`.
    pub fn of(findings: &[Finding]) -> Self {
        let mut s = Self::default();
        for f in findings {
            match f.severity() {
                Severity::High => s.high += 1,
                Severity::Medium => s.medium += 1,
                Severity::Low => s.low += 1,
                Severity::Info => s.info += 1,
            }
        }
        s
    }

    /// Whether the doctor fails (exit status 1).
    pub fn failed(&self) -> bool {
        self.high > 0
    }
}

/// The human report.
pub fn text(findings: &[Finding]) -> String {
    let s = Summary::of(findings);
    let mut out = String::new();
    for f in findings {
        out.push_str(&format!(
            "{:<6}  {}  {}\n",
            f.severity().as_str().to_ascii_uppercase(),
            f.rule.id,
            f.rule.title
        ));
        if let Some(l) = &f.location {
            out.push_str(&format!("        where: {l}\n"));
        }
        out.push_str(&format!("        found: {}\n", f.evidence));
        out.push_str(&format!("        fix:   {}\n\n", f.fix));
    }
    out.push_str(&format!(
        "aibox doctor: {} high, {} medium, {} low, {} info: {}\n",
        s.high,
        s.medium,
        s.low,
        s.info,
        if s.failed() {
            "FAIL (fix every high finding before production)"
        } else {
            "no high-severity finding"
        }
    ));
    out
}

fn finding_json(f: &Finding) -> Value {
    json!({
        "id": f.rule.id,
        "severity": f.severity().as_str(),
        "title": f.rule.title,
        "evidence": f.evidence,
        "location": f.location.as_ref().map(|l| json!({
            "file": l.file.display().to_string(),
            "line": l.line,
        })),
        "fix": f.fix,
        "help": f.rule.help,
    })
}

/// The JSON report: `{"tool", "version", "findings": [...], "summary"}`.
pub fn json(findings: &[Finding]) -> Value {
    let s = Summary::of(findings);
    json!({
        "tool": "aibox doctor",
        "version": env!("CARGO_PKG_VERSION"),
        "findings": findings.iter().map(finding_json).collect::<Vec<_>>(),
        "summary": {
            "high": s.high,
            "medium": s.medium,
            "low": s.low,
            "info": s.info,
            "total": findings.len(),
            "failed": s.failed(),
            "exit_status": i32::from(s.failed()),
        },
    })
}

/// A path as a SARIF artifact URI: relative paths as relative references
/// with `/` separators, absolute ones as `file://` URIs; everything but
/// unreserved characters and `/` percent-encoded.
pub fn path_uri(p: &Path) -> String {
    let s = p.to_string_lossy().replace('\\', "/");
    let s = s.strip_prefix("./").unwrap_or(&s);
    let mut enc = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'/') {
            enc.push(char::from(b));
        } else {
            enc.push_str(&format!("%{b:02X}"));
        }
    }
    if p.is_absolute() {
        format!("file://{enc}")
    } else {
        enc
    }
}

fn rule_json(r: &Rule) -> Value {
    json!({
        "id": r.id,
        "name": r.name,
        "shortDescription": {"text": r.title},
        "fullDescription": {"text": r.help},
        "help": {"text": r.help},
        "defaultConfiguration": {"level": r.severity.sarif_level()},
        "properties": {
            "tags": ["security", "configuration"],
            "security-severity": r.severity.security_severity(),
            "severity": r.severity.as_str(),
        },
    })
}

/// The SARIF 2.1.0 log: one run, every rule, one result per finding.
pub fn sarif(findings: &[Finding]) -> Value {
    let rules: Vec<Value> = ALL_RULES.iter().map(|r| rule_json(r)).collect();
    let results: Vec<Value> = findings
        .iter()
        .map(|f| {
            let index = ALL_RULES
                .iter()
                .position(|r| r.id == f.rule.id)
                .unwrap_or(0);
            let mut result = json!({
                "ruleId": f.rule.id,
                "ruleIndex": index,
                "level": f.severity().sarif_level(),
                "message": {"text": format!("{} Fix: {}", f.evidence, f.fix)},
                "properties": {
                    "severity": f.severity().as_str(),
                    "fix": f.fix,
                },
            });
            if let Some(l) = &f.location {
                let mut physical = json!({"artifactLocation": {"uri": path_uri(&l.file)}});
                if let Some(line) = l.line.filter(|n| *n > 0) {
                    physical["region"] = json!({"startLine": line});
                }
                result["locations"] = json!([{"physicalLocation": physical}]);
            }
            result
        })
        .collect();
    json!({
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {
                "name": "aibox doctor",
                "version": env!("CARGO_PKG_VERSION"),
                "semanticVersion": env!("CARGO_PKG_VERSION"),
                "rules": rules,
            }},
            "invocations": [{"executionSuccessful": true}],
            "results": results,
        }],
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::doctor::model::{self, Location};

    fn sample() -> Vec<Finding> {
        vec![
            Finding::new(
                &model::AUTH_DISABLED,
                Some(Location::new(Path::new("deploy/config.yaml"), Some(3))),
                "auth.enabled is 'false'",
                "set it",
            ),
            Finding::new(
                &model::DOCTOR_SKIPPED,
                None,
                "no compose file",
                "pass --compose",
            ),
        ]
    }

    #[test]
    fn text_and_json_carry_the_same_facts() {
        let f = sample();
        let t = text(&f);
        assert!(t.contains("HIGH    AIBOX-AUTH-001"));
        assert!(t.contains("where: deploy/config.yaml:3"));
        assert!(t.contains("1 high, 0 medium, 0 low, 1 info: FAIL"));
        let j = json(&f);
        assert_eq!(j["summary"]["high"], 1);
        assert_eq!(j["summary"]["exit_status"], 1);
        assert_eq!(j["findings"][0]["location"]["line"], 3);
        assert!(j["findings"][1]["location"].is_null());
        assert_eq!(json(&[])["summary"]["failed"], false);
    }

    #[test]
    fn sarif_has_rules_results_and_locations() {
        let s = sarif(&sample());
        let run = &s["runs"][0];
        assert_eq!(s["version"], "2.1.0");
        let rules = run["tool"]["driver"]["rules"].as_array().unwrap();
        assert_eq!(rules.len(), ALL_RULES.len());
        let r0 = &run["results"][0];
        let idx = usize::try_from(r0["ruleIndex"].as_u64().unwrap()).unwrap();
        assert_eq!(rules[idx]["id"], "AIBOX-AUTH-001");
        assert_eq!(r0["level"], "error");
        assert_eq!(
            r0["locations"][0]["physicalLocation"]["artifactLocation"]["uri"],
            "deploy/config.yaml"
        );
        assert_eq!(
            r0["locations"][0]["physicalLocation"]["region"]["startLine"],
            3
        );
        assert!(run["results"][1].get("locations").is_none());
    }

    #[test]
    fn uris_are_encoded() {
        assert_eq!(path_uri(Path::new("./a b/.env")), "a%20b/.env");
        assert_eq!(path_uri(Path::new("/tmp/x:y")), "file:///tmp/x%3Ay");
    }
}
