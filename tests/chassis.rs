//! The chassis (config, telemetry, shutdown, supervisor, report, test
//! helpers, `.gitignore`, the name check, the generated workflow) has one
//! source, `chassis/`, and a copy in every template. These tests fail as soon
//! as a copy drifts from the source.

use conveyor_ci::chassis::{self, SYNC_COMMAND};
use conveyor_ci::matrix::Matrix;
use conveyor_ci::repo_root;

/// Every template carries every chassis file exactly as `chassis/` has it.
/// Edit the file in `chassis/`, then run the sync command.
#[test]
fn every_template_carries_the_chassis_unchanged() {
    let matrix = Matrix::load(repo_root()).unwrap();
    let carriers = matrix.chassis_carriers(repo_root());
    assert!(
        chassis::files(repo_root(), None).unwrap().len() >= 8,
        "the chassis source folder is missing or nearly empty"
    );
    let drift = chassis::drift(repo_root(), &carriers).unwrap();
    let listing: Vec<String> = drift
        .iter()
        .map(|d| format!("  templates/{}/{}", d.template, d.file.display()))
        .collect();
    assert!(
        drift.is_empty(),
        "these copies differ from chassis/ (edit chassis/, then run `{SYNC_COMMAND}`):\n{}",
        listing.join("\n")
    );
}

/// The top-level `cargo-generate.toml` offers exactly the templates the matrix tests.
#[test]
fn sub_templates_match_the_matrix() {
    let text = std::fs::read_to_string(repo_root().join("cargo-generate.toml")).unwrap();
    let root: toml::Table = toml::from_str(&text).unwrap();
    let mut offered: Vec<String> = root["template"]["sub_templates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|path| {
            path.as_str()
                .unwrap()
                .trim_start_matches("templates/")
                .to_owned()
        })
        .collect();
    let matrix = Matrix::load(repo_root()).unwrap();
    let mut tested: Vec<String> = matrix.templates.iter().map(|t| t.name.clone()).collect();
    offered.sort();
    tested.sort();
    assert_eq!(offered, tested);
}

/// Each template folder under `templates/` is in the matrix.
#[test]
fn every_template_folder_is_in_the_matrix() {
    let matrix = Matrix::load(repo_root()).unwrap();
    for entry in std::fs::read_dir(repo_root().join("templates")).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        assert!(
            matrix.template(&name).is_ok(),
            "templates/{name} is not in ci/matrix.toml"
        );
    }
}
