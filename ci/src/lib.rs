//! The Conveyor matrix: expands `ci/matrix.toml` into template combinations,
//! generates each with the real cargo-generate and tests it.

pub mod checks;
pub mod matrix;
pub mod runner;
pub mod tools;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

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
pub struct ScratchDir {
    path: PathBuf,
}

impl ScratchDir {
    /// Creates `conveyor-<label>-<pid>-<n>` under the system temp dir.
    pub fn new(label: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let unique = NEXT.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("conveyor-{label}-{}-{unique}", std::process::id()));
        // Only a killed earlier run with the same process id can have left this.
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        Self { path }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}
