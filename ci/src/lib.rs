//! The Conveyor matrix: expands `ci/matrix.toml` into template combinations,
//! generates each with the real cargo-generate and tests it.

pub mod bench;
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

/// The environment variable and value that put a generated service's metrics
/// endpoint on a free port, so that runs of the same project at once do not
/// fight over the default one. The variable follows the generated config's
/// rule (package name in SCREAMING_SNAKE_CASE, then the flag); a project
/// generated with `metrics=none` has no such flag and ignores it.
pub fn metrics_on_a_free_port(project_name: &str) -> (String, &'static str) {
    let prefix = project_name.replace('-', "_").to_ascii_uppercase();
    (format!("{prefix}_METRICS_ADDR"), "127.0.0.1:0")
}
