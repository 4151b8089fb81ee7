//! One workload, any topology: a user's `src/workload.rs` moves between the
//! templates with async workers unchanged. This test writes a workload that
//! is not the demo (`tests/fixtures/portable_workload.rs`: its own item
//! type, source, flags and state) into one generated project, copies that
//! project's file into each of the others, and in every project runs the
//! library's tests (the fixture's own among them), the pipeline tests and
//! the real binary.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use conveyor_ci::matrix::{Matrix, Template};
use conveyor_ci::tools::CargoGenerate;
use conveyor_ci::{default_work_dir, metrics_on_a_free_port, repo_root, scratch_dir};

/// The chassis part that carries the shared workload API.
const ASYNC_PART: &str = "async";

/// Each template with the shared workload API, once per worker kind where it
/// has a choice of them (the API is the same for both).
fn projects_to_build(matrix: &Matrix) -> Vec<(&Template, BTreeMap<String, String>)> {
    let mut projects = Vec::new();
    for template in &matrix.templates {
        if !template.chassis_parts.iter().any(|part| part == ASYNC_PART) {
            continue;
        }
        match template.axes.get("worker_kind") {
            Some(kinds) => projects.extend(kinds.iter().map(|kind| {
                (
                    template,
                    BTreeMap::from([("worker_kind".to_owned(), kind.clone())]),
                )
            })),
            None => projects.push((template, BTreeMap::new())),
        }
    }
    projects
}

fn cargo(project: &Path, args: &[&str]) {
    let output = Command::new(env!("CARGO"))
        .args(args)
        .current_dir(project)
        // Shared with the matrix, so the dependencies are built once.
        .env("CARGO_TARGET_DIR", default_work_dir().join("target"))
        .output()
        .expect("cargo runs");
    assert!(
        output.status.success(),
        "cargo {args:?} failed in {}:\n{}\n{}",
        project.display(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Runs the project's binary with the fixture's flags and checks its report
/// and the summary its `close` wrote.
fn run_binary(name: &str, scratch: &Path) {
    let summary = scratch.join(format!("{name}-summary.json"));
    let binary: PathBuf = default_work_dir().join("target/debug").join(name);
    let (metrics_var, metrics_addr) = metrics_on_a_free_port(name);
    let output = Command::new(&binary)
        .env(metrics_var, metrics_addr)
        .args([
            "--sensors",
            "3",
            "--readings",
            "500",
            "--report",
            "json",
            "--progress-secs",
            "0",
        ])
        .arg("--summary")
        .arg(&summary)
        .output()
        .unwrap_or_else(|error| panic!("{} does not start: {error}", binary.display()));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{name}: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).expect("a JSON report");
    // Per sensor: 500 readings; 10 garbled (seq 49, 99, ...: rejected); 10
    // overheated (seq 39, 79, ... but not 199 and 399, garbled: failed).
    assert_eq!(report["produced"], 1500, "{name}: {report}");
    assert_eq!(report["rejected"], 3 * 10, "{name}: {report}");
    assert_eq!(report["failed"], 3 * 10 + 3 * 10, "{name}: {report}");
    assert_eq!(report["handled"], 1500 - 60, "{name}: {report}");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&summary).expect("close wrote the summary"))
            .unwrap();
    assert_eq!(summary["2"]["count"], 500 - 10 - 10, "{name}: {summary}");
}

#[test]
fn one_workload_file_runs_in_every_template_with_async_workers() {
    let matrix = Matrix::load(repo_root()).unwrap();
    let cargo_generate = CargoGenerate::installed(&matrix.cargo_generate[0].version).unwrap();
    let scratch = scratch_dir("portable");
    let projects = projects_to_build(&matrix);
    assert!(
        projects.len() >= 3,
        "the templates with async workers are missing"
    );

    let mut workload_file = repo_root().join("tests/fixtures/portable_workload.rs");
    for (index, (template, values)) in projects.iter().enumerate() {
        let name = format!("portable-{index}-{}", template.name);
        cargo_generate
            .generate()
            .template(&repo_root().join("templates").join(&template.name))
            .name(&name)
            .destination(scratch.path())
            .values(values)
            .run()
            .unwrap_or_else(|error| panic!("{name}: {error:#}"));
        let project = scratch.path().join(&name);
        let target = project.join("src/workload.rs");
        std::fs::copy(&workload_file, &target).unwrap();
        // The next project gets this project's copy, not the fixture.
        workload_file = target;

        cargo(
            &project,
            &[
                "test",
                "--lib",
                "--test",
                "workload_api",
                "--test",
                "pipeline",
            ],
        );
        cargo(&project, &["build", "--bin", &name]);
        run_binary(&name, scratch.path());
    }
}
