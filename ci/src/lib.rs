//! The Conveyor matrix: expands `ci/matrix.toml` into template combinations,
//! generates each with the real cargo-generate and tests it.

pub mod chassis;
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

/// A fresh directory under the system temp dir for one test, unique even when
/// several test binaries run at once, and removed when dropped.
pub fn scratch_dir(label: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("conveyor-{label}-"))
        .tempdir()
        .unwrap_or_else(|e| panic!("creating a scratch directory for {label}: {e}"))
}
