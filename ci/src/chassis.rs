//! The chassis: files every template carries byte for byte (config,
//! telemetry, shutdown, supervisor, report, test helpers, `.gitignore`, the
//! name check, the generated GitHub workflow), and parts that only some
//! templates carry (`async`: the workload API, the demo workload and the
//! example sources and sinks of the templates whose workers are async).
//!
//! Their one source is `chassis/` at the repository root, and
//! `chassis-<part>/` for each part; `ci/matrix.toml` says which template
//! carries which parts. cargo-generate
//! cannot share files between sub-templates, and a user who copies one
//! template folder by hand should get all of it, so each template keeps a
//! copy: `cargo ci sync-chassis` writes them, and `tests/chassis.rs` fails
//! when a copy differs from its source.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::checks::files_below;

/// The command that brings every copy in line with the source.
pub const SYNC_COMMAND: &str = "cargo ci sync-chassis";

/// A template folder and the chassis parts it carries besides `chassis/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Carrier {
    /// The template's folder.
    pub dir: PathBuf,
    /// Part names, e.g. `async` for `chassis-async/`.
    pub parts: Vec<String>,
}

/// A template whose copy of a chassis file is missing or differs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drift {
    /// The template's folder name.
    pub template: String,
    /// The chassis file, relative to the template.
    pub file: PathBuf,
}

/// The source folder of chassis part `part` (`None`: the part every
/// template carries) in the repository at `repo`.
pub fn source(repo: &Path, part: Option<&str>) -> PathBuf {
    match part {
        None => repo.join("chassis"),
        Some(part) => repo.join(format!("chassis-{part}")),
    }
}

/// Every file of chassis part `part`, relative to its source folder.
pub fn files(repo: &Path, part: Option<&str>) -> Result<Vec<PathBuf>> {
    let folder = source(repo, part);
    files_below(&folder).with_context(|| format!("listing {}", folder.display()))
}

/// Each source folder `carrier` takes files from, with those files.
fn sources_of(repo: &Path, carrier: &Carrier) -> Result<Vec<(PathBuf, Vec<PathBuf>)>> {
    std::iter::once(None)
        .chain(carrier.parts.iter().map(|part| Some(part.as_str())))
        .map(|part| Ok((source(repo, part), files(repo, part)?)))
        .collect()
}

/// The copies in `carriers` that differ from their source.
pub fn drift(repo: &Path, carriers: &[Carrier]) -> Result<Vec<Drift>> {
    Ok(stale_copies(repo, carriers)?
        .into_iter()
        .map(|(drift, _, _)| drift)
        .collect())
}

/// Each stale copy, with the file it should be a copy of and its own path.
fn stale_copies(repo: &Path, carriers: &[Carrier]) -> Result<Vec<(Drift, PathBuf, PathBuf)>> {
    let mut stale = Vec::new();
    for carrier in carriers {
        for (folder, files) in sources_of(repo, carrier)? {
            for file in files {
                let original = folder.join(&file);
                let copy = carrier.dir.join(&file);
                if std::fs::read(&copy).ok() != Some(std::fs::read(&original)?) {
                    let drift = Drift {
                        template: folder_name(&carrier.dir),
                        file,
                    };
                    stale.push((drift, original, copy));
                }
            }
        }
    }
    stale.sort_by(|a, b| (&a.0.template, &a.0.file).cmp(&(&b.0.template, &b.0.file)));
    Ok(stale)
}

/// Copies every chassis file into each of `carriers`; returns how many
/// copies changed.
pub fn sync(repo: &Path, carriers: &[Carrier]) -> Result<usize> {
    let stale = stale_copies(repo, carriers)?;
    for (_, original, copy) in &stale {
        if let Some(parent) = copy.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::copy(original, copy).with_context(|| format!("writing {}", copy.display()))?;
    }
    Ok(stale.len())
}

fn folder_name(dir: &Path) -> String {
    dir.file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scratch_dir;

    fn write(root: &Path, relative: &str, text: &str) {
        let path = root.join(relative);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    fn carriers(root: &Path, parts: &[(&str, &[&str])]) -> Vec<Carrier> {
        parts
            .iter()
            .map(|(name, parts)| Carrier {
                dir: root.join(name),
                parts: parts.iter().map(|p| (*p).to_owned()).collect(),
            })
            .collect()
    }

    #[test]
    fn drift_names_the_template_and_file_and_sync_repairs_it() {
        let repo = scratch_dir("chassis");
        let root = repo.path();
        write(root, "chassis/src/config.rs", "source");
        write(root, "chassis/.gitignore", "/target\n");
        let templates = carriers(root, &[("a", &[]), ("b", &[])]);
        write(root, "a/src/config.rs", "source");
        write(root, "a/.gitignore", "/target\n");
        write(root, "b/src/config.rs", "changed in one copy");

        let found = drift(root, &templates).unwrap();
        let names: Vec<(String, String)> = found
            .iter()
            .map(|d| (d.template.clone(), d.file.display().to_string()))
            .collect();
        assert_eq!(
            names,
            [
                ("b".to_owned(), ".gitignore".to_owned()),
                ("b".to_owned(), "src/config.rs".to_owned())
            ]
        );
        assert_eq!(sync(root, &templates).unwrap(), 2);
        assert!(drift(root, &templates).unwrap().is_empty());
        assert_eq!(
            std::fs::read_to_string(root.join("b/src/config.rs")).unwrap(),
            "source"
        );
    }

    #[test]
    fn a_part_reaches_only_the_templates_that_carry_it() {
        let repo = scratch_dir("chassis-parts");
        let root = repo.path();
        write(root, "chassis/src/config.rs", "all");
        write(root, "chassis-async/src/workload.rs", "async only");
        let templates = carriers(root, &[("a", &["async"]), ("b", &[])]);
        let found: Vec<String> = drift(root, &templates)
            .unwrap()
            .iter()
            .map(|d| format!("{}/{}", d.template, d.file.display()))
            .collect();
        assert_eq!(
            found,
            ["a/src/config.rs", "a/src/workload.rs", "b/src/config.rs"]
        );
        assert_eq!(sync(root, &templates).unwrap(), 3);
        assert!(!root.join("b/src/workload.rs").exists());
        assert!(drift(root, &templates).unwrap().is_empty());
    }
}
