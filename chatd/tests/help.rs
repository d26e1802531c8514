//! `chatd --help` and every subcommand's help: exit 0, teach (examples,
//! signals, exit status), and match the golden file.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[test]
fn help_of_every_command_exits_0_and_matches_its_golden_file() {
    testkit::help::check_golden(
        "chatd",
        &["Examples:", "Exit status", "SIGTERM", "accounts invite"],
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/chatd-help.txt"),
    );
}

#[test]
fn usage_errors_exit_2() {
    let out = std::process::Command::new(testkit::bin("chatd"))
        .args(["accounts", "revoke"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}
