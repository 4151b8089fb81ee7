//! The chassis (config, telemetry, shutdown, report, main) is one design
//! carried by every template. These tests fail as soon as one copy drifts.

use std::path::PathBuf;

use conveyor_ci::checks::chassis_drift;
use conveyor_ci::matrix::Matrix;
use conveyor_ci::repo_root;

/// Every chassis file listed in `ci/matrix.toml` is byte-identical in every
/// template. To change the chassis, change every copy in the same commit.
#[test]
fn chassis_files_are_identical_across_templates() {
    let matrix = Matrix::load(repo_root()).unwrap();
    let templates: Vec<(String, PathBuf)> = matrix
        .templates
        .iter()
        .map(|t| (t.name.clone(), repo_root().join("templates").join(&t.name)))
        .collect();
    for (name, dir) in &templates {
        for file in &matrix.chassis {
            assert!(
                dir.join(file).is_file(),
                "{name} has no chassis file {file}"
            );
        }
    }
    let drift = chassis_drift(&templates, &matrix.chassis);
    assert!(drift.is_empty(), "chassis copies differ: {drift:#?}");
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
