//! `cargo ci bench` compares every template with bare channel loops, and its
//! document says both are built with the same release profile. This test
//! fails as soon as a template's `[profile.release]` drifts from the bare
//! loops' (`ci/bare-loops/Cargo.toml`).

use conveyor_ci::matrix::Matrix;
use conveyor_ci::repo_root;

/// The lines of the `[profile.release]` table in `manifest`, up to the next
/// blank line. Read as text: template manifests carry Liquid, so they are not
/// TOML until generated.
fn release_profile(manifest: &str) -> Vec<&str> {
    manifest
        .lines()
        .skip_while(|line| *line != "[profile.release]")
        .take_while(|line| !line.trim().is_empty())
        .collect()
}

#[test]
fn every_template_ships_the_bare_loops_release_profile() {
    let read = |path: &str| std::fs::read_to_string(repo_root().join(path)).unwrap();
    let bare = read("ci/bare-loops/Cargo.toml");
    let expected = release_profile(&bare);
    assert!(
        expected.len() > 1,
        "ci/bare-loops/Cargo.toml has no [profile.release] settings"
    );
    let matrix = Matrix::load(repo_root()).unwrap();
    for template in &matrix.templates {
        let path = format!("templates/{}/Cargo.toml", template.name);
        let manifest = read(&path);
        assert_eq!(
            release_profile(&manifest),
            expected,
            "{path}: [profile.release] differs from ci/bare-loops/Cargo.toml"
        );
    }
}
