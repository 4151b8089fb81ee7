//! The Conveyor matrix: expands `ci/matrix.toml` into template combinations,
//! generates each with the real cargo-generate and tests it.

pub mod checks;
pub mod matrix;
pub mod runner;
pub mod tools;

use std::path::{Path, PathBuf};

/// The repository root (where `cargo-generate.toml` and `templates/` live).
pub fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Where generated projects, their shared target directory and the logs go
/// unless `--work-dir` says otherwise. Outside the repository on purpose:
/// cargo would otherwise treat the projects as members of this workspace.
pub fn default_work_dir() -> PathBuf {
    std::env::temp_dir().join("conveyor-matrix")
}
