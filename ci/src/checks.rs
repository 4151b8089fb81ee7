//! Checks that read files rather than run commands: leftover Liquid, the
//! smoke report, chassis drift and the fingerprint used to share builds.

use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;

/// Every file below `dir`, relative to it, sorted; `target/` and `.git/` are skipped.
pub fn files_below(dir: &Path) -> Result<Vec<PathBuf>> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
        for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
            let path = entry?.path();
            let name = path.file_name().unwrap_or_default();
            if path.is_dir() {
                if name != "target" && name != ".git" {
                    walk(root, &path, out)?;
                }
            } else {
                out.push(path.strip_prefix(root)?.to_path_buf());
            }
        }
        Ok(())
    }
    let mut files = Vec::new();
    walk(dir, dir, &mut files)?;
    files.sort();
    Ok(files)
}

/// Lines that still hold Liquid (`{{` or `{%`), as `path:line: text`.
/// GitHub's `${{ }}` expressions are not Liquid and are allowed.
pub fn leftover_liquid(dir: &Path) -> Result<Vec<String>> {
    let mut found = Vec::new();
    for file in files_below(dir)? {
        let Ok(text) = std::fs::read_to_string(dir.join(&file)) else {
            continue; // Not text, so not a template.
        };
        for (number, line) in text.lines().enumerate() {
            if has_liquid(line) {
                found.push(format!(
                    "{}:{}: {}",
                    file.display(),
                    number + 1,
                    line.trim()
                ));
            }
        }
    }
    Ok(found)
}

fn has_liquid(line: &str) -> bool {
    line.contains("{%")
        || line
            .match_indices("{{")
            .any(|(at, _)| !line[..at].ends_with('$'))
}

/// Checks the generated workflow against the `github_ci` option: present with
/// its `${{ }}` expressions intact when asked for, absent otherwise.
pub fn check_workflow(dir: &Path, github_ci: bool) -> Result<()> {
    let workflow = dir.join(".github/workflows/ci.yml");
    if github_ci {
        let text = std::fs::read_to_string(&workflow)
            .context("github_ci=true but no .github/workflows/ci.yml")?;
        ensure!(
            text.contains("${{"),
            "{}: the `${{{{ }}}}` expressions did not survive",
            workflow.display()
        );
    } else {
        ensure!(
            !dir.join(".github").exists(),
            "github_ci=false but .github/ was generated"
        );
    }
    Ok(())
}

/// Checks the smoke run's JSON report: every documented key, and every
/// produced item handled.
pub fn check_smoke_report(stdout: &str, topology: &str, items: u64) -> Result<()> {
    let line = stdout.trim();
    ensure!(
        !line.contains('\n'),
        "stdout holds more than the one-line report:\n{stdout}"
    );
    let report: Value =
        serde_json::from_str(line).with_context(|| format!("the report is not JSON: {line}"))?;
    for key in [
        "topology",
        "produced",
        "handled",
        "failed",
        "abandoned",
        "lost",
        "unaccounted",
        "elapsed_secs",
        "items_per_sec",
        "peak_queue_depth",
        "failed_stages",
        "stall_episodes",
        "drain_timed_out",
    ] {
        ensure!(
            report.get(key).is_some(),
            "the report has no `{key}`: {line}"
        );
    }
    ensure!(
        report["topology"] == topology,
        "topology is {}, expected {topology}",
        report["topology"]
    );
    let count = |key: &str| {
        report[key]
            .as_u64()
            .with_context(|| format!("`{key}` is not a count: {line}"))
    };
    let (produced, handled, failed) = (count("produced")?, count("handled")?, count("failed")?);
    if produced != items || handled != items || failed != 0 {
        bail!(
            "expected {items} produced and handled, 0 failed; got {produced} / {handled} / {failed}"
        );
    }
    ensure!(
        report["unaccounted"] == 0 && count("lost")? == 0 && count("abandoned")? == 0,
        "the report does not balance: {line}"
    );
    Ok(())
}

/// A chassis file whose copies differ between templates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drift {
    /// The chassis file, relative to each template.
    pub file: String,
    /// Template names grouped by identical content; more than one group is drift.
    pub groups: Vec<Vec<String>>,
}

/// Compares each chassis file across `templates` (name and directory).
/// A missing copy counts as its own variant.
pub fn chassis_drift(templates: &[(String, PathBuf)], files: &[String]) -> Vec<Drift> {
    files
        .iter()
        .filter_map(|file| {
            let mut variants: BTreeMap<Option<Vec<u8>>, Vec<String>> = BTreeMap::new();
            for (name, dir) in templates {
                variants
                    .entry(std::fs::read(dir.join(file)).ok())
                    .or_default()
                    .push(name.clone());
            }
            (variants.len() > 1).then(|| Drift {
                file: file.clone(),
                groups: variants.into_values().collect(),
            })
        })
        .collect()
}

/// A hash of every file below `dir` that the build reads: all but `.github/`
/// and Markdown. Two generated projects with the same fingerprint compile the
/// same code and behave identically, so one build serves both.
pub fn build_fingerprint(dir: &Path) -> Result<u64> {
    let mut hasher = DefaultHasher::new();
    for file in files_below(dir)? {
        if file.starts_with(".github") || file.extension().is_some_and(|ext| ext == "md") {
            continue;
        }
        file.hash(&mut hasher);
        std::fs::read(dir.join(&file))?.hash(&mut hasher);
    }
    Ok(hasher.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::ScratchDir;

    fn write(scratch: &ScratchDir, file: &str, text: &str) {
        let path = scratch.path().join(file);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    #[test]
    fn liquid_is_found_but_github_expressions_are_not() {
        assert!(has_liquid("name = \"{{project-name}}\""));
        assert!(has_liquid("{% if batching %}"));
        assert!(has_liquid("ok ${{ github.ref }} then {{ leftover }}"));
        assert!(!has_liquid(
            "group: ${{ github.workflow }}-${{ github.ref }}"
        ));
        assert!(!has_liquid("let set = HashSet::new(); // {}"));
    }

    #[test]
    fn smoke_report_must_account_for_every_item() {
        let good = concat!(
            r#"{"topology":"t","produced":5,"handled":5,"failed":0,"abandoned":0,"lost":0,"#,
            r#""unaccounted":0,"elapsed_secs":0.1,"items_per_sec":50.0,"peak_queue_depth":2,"#,
            r#""failed_stages":0,"stall_episodes":0,"drain_timed_out":false}"#
        );
        check_smoke_report(good, "t", 5).unwrap();
        assert!(check_smoke_report(good, "t", 6).is_err());
        assert!(check_smoke_report(good, "other", 5).is_err());
        let lossy = good.replace(r#""handled":5"#, r#""handled":4"#);
        assert!(check_smoke_report(&lossy, "t", 5).is_err());
        let unbalanced = good.replace(r#""unaccounted":0"#, r#""unaccounted":1"#);
        assert!(check_smoke_report(&unbalanced, "t", 5).is_err());
        let without_balance = good.replace(r#""unaccounted":0,"#, "");
        assert!(check_smoke_report(&without_balance, "t", 5).is_err());
        assert!(check_smoke_report("log line\n{}", "t", 5).is_err());
    }

    #[test]
    fn drift_names_the_file_and_the_diverging_templates() {
        let scratch = ScratchDir::new("drift");
        for template in ["a", "b", "c"] {
            write(&scratch, &format!("{template}/src/config.rs"), "same");
            write(&scratch, &format!("{template}/src/report.rs"), "same");
        }
        write(&scratch, "c/src/report.rs", "changed in one copy");
        let templates: Vec<(String, PathBuf)> = ["a", "b", "c"]
            .iter()
            .map(|t| (t.to_string(), scratch.path().join(t)))
            .collect();
        let files = vec!["src/config.rs".to_owned(), "src/report.rs".to_owned()];

        let drift = chassis_drift(&templates, &files);
        assert_eq!(drift.len(), 1);
        assert_eq!(drift[0].file, "src/report.rs");
        assert!(drift[0].groups.contains(&vec!["c".to_owned()]));
    }

    #[test]
    fn fingerprint_ignores_the_workflow_but_not_the_code() {
        let scratch = ScratchDir::new("fingerprint");
        write(&scratch, "src/main.rs", "fn main() {}");
        let before = build_fingerprint(scratch.path()).unwrap();
        write(&scratch, ".github/workflows/ci.yml", "on: push");
        write(&scratch, "README.md", "Mentions the workflow.");
        assert_eq!(build_fingerprint(scratch.path()).unwrap(), before);
        write(&scratch, "src/main.rs", "fn main() { }");
        assert_ne!(build_fingerprint(scratch.path()).unwrap(), before);
    }
}
