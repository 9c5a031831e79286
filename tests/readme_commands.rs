//! Acceptance h, the part a test can hold: the README's set-up section has the build+run and the test
//! command, and `.ci/run` runs that very test command (so CI proves what the README promises).

use std::fs;
use std::path::Path;

fn read(rel: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Lines inside fenced code blocks of the README's "## Set up" section.
fn setup_commands(readme: &str) -> Vec<String> {
    let section = readme
        .split("\n## ")
        .find(|s| s.trim_start().to_lowercase().starts_with("set up"))
        .expect("README.md has no \"## Set up\" section");
    let mut in_fence = false;
    let mut commands = Vec::new();
    for line in section.lines() {
        if line.trim_start().starts_with("```") {
            in_fence = !in_fence;
        } else if in_fence && !line.trim().is_empty() {
            commands.push(line.trim().to_string());
        }
    }
    commands
}

/// The command as a root script runs it: CI is root already and may have no sudo.
fn without_sudo(cmd: &str) -> &str {
    cmd.strip_prefix("sudo ").unwrap_or(cmd).trim()
}

#[test]
fn readme_has_the_two_setup_commands() {
    let commands = setup_commands(&read("README.md"));
    let bin = Path::new(env!("CARGO_BIN_EXE_cnibridge"))
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert!(
        commands.iter().any(|c| c.contains("cargo build --release")
            && c.contains(&format!("./target/release/{bin} serve"))),
        "no build+run command (cargo build --release … ./target/release/{bin} serve) in: {commands:?}"
    );
    let tests: Vec<&String> = commands
        .iter()
        .filter(|c| c.contains("cargo test"))
        .collect();
    assert_eq!(
        tests.len(),
        1,
        "expected exactly one test command in the Set up section: {commands:?}"
    );
    assert!(
        without_sudo(tests[0]).contains("--all-features")
            && without_sudo(tests[0]).contains("--all-targets"),
        "the test command must run every test: {}",
        tests[0]
    );
}

#[test]
fn ci_runs_the_readme_test_command() {
    let commands = setup_commands(&read("README.md"));
    let test_cmd = commands
        .iter()
        .find(|c| c.contains("cargo test"))
        .map(|c| without_sudo(c))
        .expect("no cargo test command in the README's Set up section");
    let ci = read(".ci/run");
    assert!(
        ci.lines().any(|l| l.trim() == test_cmd),
        ".ci/run does not run the README's test command `{test_cmd}` as a line of its own"
    );
    assert!(
        ci.starts_with("#!/usr/bin/env bash") || ci.starts_with("#!/bin/bash"),
        ".ci/run is not a bash script"
    );
    assert!(
        ci.contains("set -euo pipefail"),
        ".ci/run must stop at the first failing step"
    );
    for step in [
        "cargo fmt --all -- --check",
        "cargo clippy --all-targets --all-features -- -D warnings",
    ] {
        assert!(
            ci.lines().any(|l| l.trim() == step),
            ".ci/run does not run `{step}`"
        );
    }
}
