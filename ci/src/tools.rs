//! The tools the matrix needs beyond Rust itself.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, ensure};

/// The installed cargo-generate version, if any.
fn cargo_generate_version() -> Option<String> {
    let output = Command::new("cargo")
        .args(["generate", "--version"])
        .output()
        .ok()?;
    // Prints e.g. "cargo generate-generate 0.23.14".
    let text = String::from_utf8(output.stdout).ok()?;
    output
        .status
        .success()
        .then(|| text.split_whitespace().last().map(str::to_owned))
        .flatten()
}

/// Installs cargo-generate `version` with `--locked` unless exactly that
/// version is already installed. Takes about five minutes on two cores.
pub fn ensure_cargo_generate(version: &str) -> Result<()> {
    let installed = cargo_generate_version();
    if installed.as_deref() == Some(version) {
        return Ok(());
    }
    match &installed {
        Some(other) => eprintln!(
            "cargo-generate {other} is installed; the matrix needs {version}. Installing it."
        ),
        None => eprintln!("cargo-generate is not installed. Installing {version} (a few minutes)."),
    }
    let status = Command::new("cargo")
        .args([
            "install",
            "--locked",
            "cargo-generate",
            "--version",
            version,
        ])
        .status()
        .context("running cargo install")?;
    ensure!(
        status.success(),
        "cargo install cargo-generate {version} failed"
    );
    let now = cargo_generate_version();
    ensure!(
        now.as_deref() == Some(version),
        "after installing, cargo generate reports {now:?}"
    );
    Ok(())
}

/// The `cargo generate` command that makes project `name` from
/// `templates/<template>` inside `destination`, with `-d key=value` for each
/// of `values`. `--path` names the template folder itself: naming the
/// repository root would make cargo-generate copy the whole checkout,
/// `target/` included.
pub fn generate_command(
    repo: &Path,
    template: &str,
    name: &str,
    destination: &Path,
    values: &BTreeMap<String, String>,
) -> Command {
    let mut command = Command::new("cargo");
    command
        .arg("generate")
        .arg("--path")
        .arg(repo.join("templates").join(template))
        .arg(format!("--name={name}"))
        .arg("--destination")
        .arg(destination)
        .args(["--silent", "--vcs", "none"])
        .env_remove("RUST_BACKTRACE");
    for (key, value) in values {
        command.arg("-d").arg(format!("{key}={value}"));
    }
    command
}
