//! `hsm-vault --help` and every subcommand's help: exit 0, teach (examples,
//! exit status, where the PIN comes from), and match the golden file.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[test]
fn help_of_every_command_exits_0_and_matches_its_golden_file() {
    testkit::help::check_golden(
        "hsm-vault",
        &["Examples:", "Exit status", "PIN", "cluster add-learner"],
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/hsm-vault-help.txt"),
    );
}

#[test]
fn usage_errors_exit_2() {
    let out = std::process::Command::new(testkit::bin("hsm-vault"))
        .args(["cluster", "promote"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}
