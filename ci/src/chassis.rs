//! The chassis: files every template carries byte for byte (config,
//! telemetry, shutdown, supervisor, report, test helpers, `.gitignore`, the
//! name check, the generated GitHub workflow).
//!
//! Their one source is `chassis/` at the repository root. cargo-generate
//! cannot share files between sub-templates, and a user who copies one
//! template folder by hand should get all of it, so each template keeps a
//! copy: `cargo ci sync-chassis` writes them, and `tests/chassis.rs` fails
//! when a copy differs from its source.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::checks::files_below;

/// The command that brings every copy in line with the source.
pub const SYNC_COMMAND: &str = "cargo ci sync-chassis";

/// A template whose copy of a chassis file is missing or differs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drift {
    /// The template's folder name.
    pub template: String,
    /// The chassis file, relative to the template.
    pub file: PathBuf,
}

/// The chassis source folder of the repository at `repo`.
pub fn source(repo: &Path) -> PathBuf {
    repo.join("chassis")
}

/// Every chassis file, relative to the chassis folder.
pub fn files(repo: &Path) -> Result<Vec<PathBuf>> {
    files_below(&source(repo))
}

/// The copies in `templates` (folder paths) that differ from the source.
pub fn drift(repo: &Path, templates: &[PathBuf]) -> Result<Vec<Drift>> {
    let mut drift = Vec::new();
    for file in files(repo)? {
        let original = std::fs::read(source(repo).join(&file))?;
        for template in templates {
            if std::fs::read(template.join(&file)).ok().as_ref() != Some(&original) {
                drift.push(Drift {
                    template: folder_name(template),
                    file: file.clone(),
                });
            }
        }
    }
    Ok(drift)
}

/// Copies every chassis file into each of `templates`; returns how many
/// copies changed.
pub fn sync(repo: &Path, templates: &[PathBuf]) -> Result<usize> {
    let stale = drift(repo, templates)?;
    for Drift { template, file } in &stale {
        let target = templates
            .iter()
            .find(|dir| &folder_name(dir) == template)
            .context("template folder")?
            .join(file);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::copy(source(repo).join(file), &target)
            .with_context(|| format!("writing {}", target.display()))?;
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

    #[test]
    fn drift_names_the_template_and_file_and_sync_repairs_it() {
        let repo = scratch_dir("chassis");
        let root = repo.path();
        write(root, "chassis/src/config.rs", "source");
        write(root, "chassis/.gitignore", "/target\n");
        let templates: Vec<PathBuf> = ["a", "b"].iter().map(|t| root.join(t)).collect();
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
}
