//! A generated project must pass `cargo fmt --check` whatever it is called.
//!
//! rustfmt sorts `use` lines within a group, so an import of the project's own
//! crate that shares a group with other crates lands in a different place
//! depending on the project name. The matrix generates every template under
//! one fixed name and cannot see that; this test generates each template
//! under names that sort before and after every dependency.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use conveyor_ci::matrix::Matrix;
use conveyor_ci::tools::CargoGenerate;
use conveyor_ci::{repo_root, scratch_dir};

/// Project names that sort before and after every crate the templates use.
const NAMES: [&str; 2] = ["aaa-first-svc", "zzz-last-svc"];

fn generate(
    cargo_generate: &CargoGenerate,
    template: &str,
    name: &str,
    values: &BTreeMap<String, String>,
    into: &Path,
) -> PathBuf {
    cargo_generate
        .generate()
        .template(&repo_root().join("templates").join(template))
        .name(name)
        .destination(into)
        .values(values)
        .run()
        .unwrap_or_else(|error| panic!("{template} {values:?}: {error:#}"));
    into.join(name)
}

/// Every value of every axis (one axis at a time, the rest at their
/// defaults), under each name, is formatted as rustfmt wants it.
#[test]
fn generated_code_is_formatted_for_any_project_name() {
    let matrix = Matrix::load(repo_root()).unwrap();
    let cargo_generate = CargoGenerate::installed(&matrix.cargo_generate[0].version).unwrap();
    let scratch = scratch_dir("names");
    let mut checked = 0;
    for template in &matrix.templates {
        let mut variants: Vec<BTreeMap<String, String>> = vec![BTreeMap::new()];
        for (axis, values) in &template.axes {
            variants.extend(
                values
                    .iter()
                    .map(|value| BTreeMap::from([(axis.clone(), value.clone())])),
            );
        }
        for (index, values) in variants.iter().enumerate() {
            for name in NAMES {
                let into = scratch.path().join(format!("{}-{index}", template.name));
                std::fs::create_dir_all(&into).unwrap();
                let project = generate(&cargo_generate, &template.name, name, values, &into);
                let fmt = Command::new(env!("CARGO"))
                    .args(["fmt", "--check"])
                    .current_dir(&project)
                    .output()
                    .unwrap();
                assert!(
                    fmt.status.success(),
                    "{} {values:?} named {name}: cargo fmt --check failed:\n{}",
                    template.name,
                    String::from_utf8_lossy(&fmt.stdout)
                );
                checked += 1;
            }
        }
    }
    assert!(
        checked >= 2 * matrix.templates.len(),
        "only {checked} projects checked"
    );
}

/// The dependency names of a template's `Cargo.toml`, as library names
/// (`tokio-util` becomes `tokio_util`). Read line by line, since the file
/// holds Liquid and is not TOML until generated.
fn dependency_names(cargo_toml: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut in_dependencies = false;
    for line in cargo_toml.lines() {
        if line.starts_with('[') {
            in_dependencies = matches!(line.trim(), "[dependencies]" | "[dev-dependencies]");
        } else if in_dependencies && let Some((name, _)) = line.split_once(" = ") {
            names.push(name.trim().replace('-', "_"));
        }
    }
    names
}

/// The name check refuses every crate name a template depends on: such a
/// project would not build.
#[test]
fn the_name_check_knows_every_dependency() {
    let hook = std::fs::read_to_string(repo_root().join("chassis/validate-name.rhai")).unwrap();
    let matrix = Matrix::load(repo_root()).unwrap();
    let mut checked = 0;
    for template in &matrix.templates {
        let cargo_toml = repo_root()
            .join("templates")
            .join(&template.name)
            .join("Cargo.toml");
        for name in dependency_names(&std::fs::read_to_string(cargo_toml).unwrap()) {
            assert!(
                hook.contains(&format!("\"{name}\"")),
                "{}: validate-name.rhai does not refuse the project name `{name}`",
                template.name
            );
            checked += 1;
        }
    }
    assert!(checked >= 10, "only {checked} dependencies found");
}

/// A project named after a dependency is refused by the real cargo-generate,
/// with the reason, and leaves nothing behind.
#[test]
fn a_project_named_like_a_dependency_is_refused() {
    let matrix = Matrix::load(repo_root()).unwrap();
    let cargo_generate = CargoGenerate::installed(&matrix.cargo_generate[0].version).unwrap();
    let scratch = scratch_dir("dependency-name");
    let output = cargo_generate
        .generate()
        .template(&repo_root().join("templates/kanal-hot-path"))
        .name("kanal")
        .destination(scratch.path())
        .command()
        .output()
        .expect("cargo generate runs");
    assert!(!output.status.success());
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        said.contains("is also the name of a crate it depends on"),
        "{said}"
    );
    assert!(!scratch.path().join("kanal/src").exists());
}
