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
    let output = cargo_generate
        .generate()
        .template(&repo_root().join("templates").join(template))
        .name(name)
        .destination(into)
        .values(values)
        .command()
        .output()
        .expect("cargo generate runs");
    assert!(
        output.status.success(),
        "{template} {values:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
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
