//! What the real `cargo generate` (the oldest release the matrix tests,
//! 0.23.14) does when it refuses input for
//! `templates/mpsc-fan-in`: exit code, message, and what it leaves on disk.
//!
//! These tests pin observed behaviour, so a cargo-generate upgrade (or a change
//! to the template's `validate-name.rhai` pre-hook) that changes any of it fails
//! here and the README's "When cargo-generate refuses your input" section gets
//! revisited. Every test generates into its own scratch directory under the
//! system temp dir, never inside this repository.
//!
//! `--path <repo root> templates/mpsc-fan-in`, the sub-template form that
//! `--git <url> templates/mpsc-fan-in` in the README also uses, makes
//! cargo-generate copy the whole repository, `target/` included, on every run.
//! Only `capacity_one_generates_project_from_repo_root` uses it; all other tests
//! pass the template directory itself, which generates the same project.
//!
//! cargo-generate reports errors through `anyhow`, which appends a stack
//! backtrace when `RUST_BACKTRACE` is set; the child runs without it, as a
//! user's shell usually does, so its output is the plain message.

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};

use conveyor_ci::matrix::Matrix;
use conveyor_ci::tools::{CargoGenerate, Generate};
use conveyor_ci::{repo_root, scratch_dir};

const EXISTING_TARGET: &str = "Target directory already exists, aborting!";
const TEMPLATE: &str = "templates/mpsc-fan-in";
const HOOK_SCRIPT: &str = "validate-name.rhai";
const HOOK_FAILED: &str = "Failed executing script: ";
const STARTS_WITH_DIGIT: &str = "starts with a digit; Rust crate names cannot";
const KEYWORD_OR_BUILTIN: &str = "is a Rust keyword or a built-in crate name";

/// The outcome of one `cargo generate` run.
#[derive(Debug)]
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn assert_exit(&self, expected: i32) {
        assert_eq!(self.code, Some(expected), "unexpected exit: {self:#?}");
    }

    fn assert_stdout_contains(&self, needle: &str) {
        assert!(
            self.stdout.contains(needle),
            "stdout lacks {needle:?}: {self:#?}"
        );
    }

    fn assert_stderr_contains(&self, needle: &str) {
        assert!(
            self.stderr.contains(needle),
            "stderr lacks {needle:?}: {self:#?}"
        );
    }

    fn assert_no_panic_or_backtrace(&self) {
        for output in [&self.stdout, &self.stderr] {
            assert!(
                !output.contains("panicked") && !output.contains("Stack backtrace"),
                "panic or backtrace in output: {self:#?}"
            );
        }
    }
}

/// The oldest release the matrix tests: the one whose behaviour the README
/// documents.
fn cargo_generate() -> CargoGenerate {
    let matrix = Matrix::load(repo_root()).unwrap();
    CargoGenerate::installed(&matrix.cargo_generate[0].version).unwrap()
}

/// Runs `cargo generate` for the mpsc-fan-in template into `destination`,
/// passing the template directory itself as `--path`.
fn generate(destination: &Path, name: &str, extra_args: &[&str]) -> Run {
    let command = cargo_generate()
        .generate()
        .template(&repo_root().join(TEMPLATE));
    run_in(command, destination, name, extra_args)
}

/// Like [`generate`], but in the sub-template form the README documents:
/// `--path <repo root> templates/mpsc-fan-in`. Slow: copies the whole repository.
fn generate_from_repo_root(destination: &Path, name: &str, extra_args: &[&str]) -> Run {
    let command = cargo_generate()
        .generate()
        .from_collection(repo_root(), TEMPLATE);
    run_in(command, destination, name, extra_args)
}

fn run_in(command: Generate, destination: &Path, name: &str, extra_args: &[&str]) -> Run {
    let output = command
        .destination(destination)
        .name(name)
        .args(extra_args)
        .command()
        .current_dir(destination)
        .output()
        .expect("run `cargo generate`");
    Run {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// The sorted names of a directory's entries.
fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|entry| {
            entry
                .expect("directory entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    names
}

/// Every file below `dir` whose name is `file_name`, at any depth.
fn find_files_named(dir: &Path, file_name: &str) -> Vec<PathBuf> {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .map(|entry| entry.expect("directory entry"))
        .filter(|entry| entry.file_type().is_file() && entry.file_name() == OsStr::new(file_name))
        .map(walkdir::DirEntry::into_path)
        .collect()
}

/// The template's pre-hook refused the project name `checked` (the name after
/// any kebab-case rewrite, as the hook sees it) for `reason`. Like a capacity
/// refusal, it comes after the project directory was created, which stays
/// behind empty.
fn assert_refused_by_name_hook(
    run: &Run,
    scratch: &tempfile::TempDir,
    checked: &str,
    reason: &str,
) {
    run.assert_exit(1);
    run.assert_stderr_contains(HOOK_FAILED);
    run.assert_stderr_contains(HOOK_SCRIPT);
    run.assert_stderr_contains(&format!("the project name \"{checked}\" {reason}"));
    run.assert_no_panic_or_backtrace();
    assert_eq!(entries(scratch.path()), [checked], "{run:#?}");
    assert!(
        entries(&scratch.path().join(checked)).is_empty(),
        "leftover project dir {checked:?} is not empty"
    );
}

/// Generates each name (as given, no rewrite happens) with a valid capacity
/// plus `extra_args`, and expects the hook to refuse it for `reason`.
fn assert_names_refused_by_hook(names: &[&str], reason: &str, extra_args: &[&str]) {
    for &name in names {
        let scratch = scratch_dir("hook");
        let run = generate(
            scratch.path(),
            name,
            &[&["-d", "capacity=1"], extra_args].concat(),
        );
        assert!(
            !run.stdout.contains("Renaming"),
            "{name:?} was renamed: {run:#?}"
        );
        assert_refused_by_name_hook(&run, &scratch, name, reason);
    }
}

/// A capacity outside `^[1-9][0-9]{0,5}$` is refused only after the project
/// directory was created, which stays behind empty.
fn assert_capacity_refused_leaving_empty_project_dir(capacity: &str) {
    let scratch = scratch_dir("capacity");
    let run = generate(
        scratch.path(),
        "svc",
        &["-d", &format!("capacity={capacity}")],
    );
    run.assert_exit(1);
    run.assert_stderr_contains(&format!(
        "Sorry, \"{capacity}\" is not a valid value for capacity"
    ));
    run.assert_no_panic_or_backtrace();
    assert_eq!(entries(scratch.path()), ["svc"]);
    assert!(
        entries(&scratch.path().join("svc")).is_empty(),
        "leftover project dir is not empty"
    );
}

/// Guards the template's lower bound: a zero-capacity tokio channel would panic at startup.
#[test]
fn capacity_zero_is_refused_leaving_empty_project_dir() {
    assert_capacity_refused_leaving_empty_project_dir("0");
}

/// Guards that a sign is not accepted as part of the number.
#[test]
fn negative_capacity_is_refused_leaving_empty_project_dir() {
    assert_capacity_refused_leaving_empty_project_dir("-1");
}

/// Guards that text never reaches the generated `default_value`.
#[test]
fn non_numeric_capacity_is_refused_leaving_empty_project_dir() {
    assert_capacity_refused_leaving_empty_project_dir("abc");
}

/// Guards the upper bound the prompt promises (999999).
#[test]
fn seven_digit_capacity_is_refused_leaving_empty_project_dir() {
    assert_capacity_refused_leaving_empty_project_dir("1000000");
}

/// The empty directory a refusal leaves blocks every retry with the same name,
/// `--force` and `--overwrite` included, until the user removes it.
#[test]
fn leftover_project_dir_blocks_retry_until_removed() {
    let scratch = scratch_dir("retry");
    let project = scratch.path().join("svc");
    generate(scratch.path(), "svc", &["-d", "capacity=0"]).assert_exit(1);

    for flags in [&[][..], &["--force"], &["--overwrite"]] {
        let retry = generate(
            scratch.path(),
            "svc",
            &[&["-d", "capacity=1"], flags].concat(),
        );
        retry.assert_exit(1);
        retry.assert_stderr_contains(EXISTING_TARGET);
        retry.assert_no_panic_or_backtrace();
        assert!(
            entries(&project).is_empty(),
            "retry with {flags:?} wrote into the leftover"
        );
    }

    fs::remove_dir(&project).expect("remove the empty leftover");
    generate(scratch.path(), "svc", &["-d", "capacity=1"]).assert_exit(0);
    assert!(project.join("Cargo.toml").is_file());
}

/// Guards that generating over an existing project directory aborts without
/// touching what is already there.
#[test]
fn existing_project_dir_is_refused_and_left_untouched() {
    let scratch = scratch_dir("existing");
    let project = scratch.path().join("svc");
    fs::create_dir(&project).expect("create project dir");
    fs::write(project.join("KEEP.txt"), "mine").expect("write marker");

    let run = generate(scratch.path(), "svc", &["-d", "capacity=1"]);
    run.assert_exit(1);
    run.assert_stderr_contains(EXISTING_TARGET);
    run.assert_no_panic_or_backtrace();
    assert_eq!(entries(scratch.path()), ["svc"]);
    assert_eq!(entries(&project), ["KEEP.txt"]);
    assert_eq!(
        fs::read_to_string(project.join("KEEP.txt")).expect("read marker"),
        "mine"
    );
}

/// The only names refused without `--force` are those that kebab-case to
/// nothing: the project dir then is the destination itself, so the message
/// speaks of an existing target rather than of the name. Nothing is created.
#[test]
fn names_that_reduce_to_nothing_are_refused_as_existing_target() {
    for name in ["", ".", "..", "_", "-"] {
        let scratch = scratch_dir("empty-name");
        let run = generate(scratch.path(), name, &["-d", "capacity=1"]);
        run.assert_exit(1);
        run.assert_stderr_contains(EXISTING_TARGET);
        if !name.is_empty() {
            run.assert_stdout_contains(&format!("Renaming project called `{name}` to ``"));
        }
        run.assert_no_panic_or_backtrace();
        assert!(
            entries(scratch.path()).is_empty(),
            "name {name:?} left something behind"
        );
    }
}

/// With `--force` the name is used as a path, so a slash makes the run fail
/// with a bare I/O error that names neither the name nor a path. Nothing is created.
#[test]
fn slash_in_forced_name_is_refused_with_io_error() {
    let scratch = scratch_dir("forced-slash");
    let run = generate(scratch.path(), "a/b", &["--force", "-d", "capacity=1"]);
    run.assert_exit(1);
    run.assert_stderr_contains("Error: No such file or directory (os error 2)");
    run.assert_no_panic_or_backtrace();
    assert!(entries(scratch.path()).is_empty());
}

/// Guards that names with spaces, slashes, capitals or a trailing dash are
/// silently rewritten to kebab-case (with a notice), not refused.
#[test]
fn unconventional_names_are_rewritten_to_kebab_case() {
    for (given, rewritten) in [
        ("my svc", "my-svc"),
        ("a/b", "a-b"),
        ("MySvc", "my-svc"),
        ("svc-", "svc"),
    ] {
        let scratch = scratch_dir("kebab");
        let run = generate(scratch.path(), given, &["-d", "capacity=1"]);
        run.assert_exit(0);
        run.assert_stdout_contains(&format!(
            "Renaming project called `{given}` to `{rewritten}`"
        ));
        assert_eq!(entries(scratch.path()), [rewritten]);
        let manifest = fs::read_to_string(scratch.path().join(rewritten).join("Cargo.toml"))
            .expect("read manifest");
        assert!(
            manifest.contains(&format!("name = \"{rewritten}\"")),
            "{given:?}: {manifest}"
        );
    }
}

/// Guards that the pre-hook refuses a leading digit, which cargo would only
/// reject later, when building the generated manifest.
#[test]
fn names_starting_with_a_digit_are_refused_by_the_hook() {
    assert_names_refused_by_hook(&["1svc", "9", "1-svc"], STARTS_WITH_DIGIT, &[]);
}

/// Guards that strict (`fn`, `self`), edition-2018 (`async`) and reserved
/// (`abstract`) keywords are refused by the pre-hook.
#[test]
fn keywords_are_refused_by_the_hook() {
    assert_names_refused_by_hook(
        &["fn", "self", "async", "abstract"],
        KEYWORD_OR_BUILTIN,
        &[],
    );
}

/// Guards that the names of the crates every build links or can link
/// implicitly are refused by the pre-hook.
#[test]
fn builtin_crate_names_are_refused_by_the_hook() {
    assert_names_refused_by_hook(&["std", "core", "alloc", "test"], KEYWORD_OR_BUILTIN, &[]);
}

/// `--force` only skips the kebab-case rewrite; the pre-hook still runs and
/// refuses the same names. It checks the snake_case crate name, so a forced
/// `Self` is refused as `self` would be, though the message and the leftover
/// keep the name as typed.
#[test]
fn forced_names_are_still_refused_by_the_hook() {
    assert_names_refused_by_hook(&["1svc"], STARTS_WITH_DIGIT, &["--force"]);
    assert_names_refused_by_hook(&["fn", "std", "Self"], KEYWORD_OR_BUILTIN, &["--force"]);
}

/// Guards that the pre-hook checks the name after cargo-generate's kebab-case
/// rewrite, so a rewrite cannot produce a name the hook would refuse.
#[test]
fn hook_checks_the_name_after_kebab_case_rewrite() {
    for (given, rewritten, reason) in [
        ("_1svc", "1svc", STARTS_WITH_DIGIT),
        ("Self", "self", KEYWORD_OR_BUILTIN),
    ] {
        let scratch = scratch_dir("hook-rewrite");
        let run = generate(scratch.path(), given, &["-d", "capacity=1"]);
        run.assert_stdout_contains(&format!(
            "Renaming project called `{given}` to `{rewritten}`"
        ));
        assert_refused_by_name_hook(&run, &scratch, rewritten, reason);
    }
}

/// The empty directory a name refusal leaves does not block a valid name, but
/// re-running with the refused name reports the leftover, not the name.
#[test]
fn name_refusal_leftover_stays_until_removed() {
    let scratch = scratch_dir("hook-retry");
    let leftover = scratch.path().join("1svc");
    generate(scratch.path(), "1svc", &["-d", "capacity=1"]).assert_exit(1);

    let again = generate(scratch.path(), "1svc", &["-d", "capacity=1"]);
    again.assert_exit(1);
    again.assert_stderr_contains(EXISTING_TARGET);
    assert!(
        !again.stderr.contains(HOOK_FAILED),
        "hook ran over the leftover: {again:#?}"
    );
    again.assert_no_panic_or_backtrace();

    generate(scratch.path(), "svc", &["-d", "capacity=1"]).assert_exit(0);
    assert_eq!(entries(scratch.path()), ["1svc", "svc"]);
    assert!(entries(&leftover).is_empty(), "leftover is not empty");
    assert!(scratch.path().join("svc").join("Cargo.toml").is_file());
}

/// Guards that placeholder values are checked before the pre-hook runs: when
/// both the capacity and the name are invalid, only the capacity is reported.
#[test]
fn invalid_capacity_is_reported_before_invalid_name() {
    let scratch = scratch_dir("capacity-and-name");
    let run = generate(scratch.path(), "1svc", &["-d", "capacity=0"]);
    run.assert_exit(1);
    run.assert_stderr_contains("Sorry, \"0\" is not a valid value for capacity");
    assert!(
        !run.stderr.contains(HOOK_FAILED),
        "hook ran after the capacity refusal: {run:#?}"
    );
    run.assert_no_panic_or_backtrace();
    assert_eq!(entries(scratch.path()), ["1svc"]);
    assert!(entries(&scratch.path().join("1svc")).is_empty());
}

/// Positive control, in the form the README documents (`--path <repo root>
/// templates/mpsc-fan-in`): the smallest valid capacity generates a project, so
/// the refusals above are about the values and not a broken invocation. Also
/// guards that the template's pre-hook script is not copied into the project.
#[test]
fn capacity_one_generates_project_from_repo_root() {
    let scratch = scratch_dir("valid");
    let run = generate_from_repo_root(scratch.path(), "svc", &["-d", "capacity=1"]);
    run.assert_exit(0);
    run.assert_stdout_contains("Done! New project created");
    run.assert_no_panic_or_backtrace();
    assert_eq!(entries(scratch.path()), ["svc"]);
    let project = scratch.path().join("svc");
    assert!(project.join("Cargo.toml").is_file());
    assert_eq!(
        find_files_named(&project, HOOK_SCRIPT),
        Vec::<PathBuf>::new(),
        "hook script copied into the project"
    );
}
