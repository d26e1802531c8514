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

/// The `hsm-vault` command paths that exist, from the binary's own help.
fn command_paths() -> Vec<Vec<String>> {
    use testkit::help::{help, subcommands};
    let mut paths = Vec::new();
    let mut queue: Vec<Vec<String>> = subcommands(&help("hsm-vault", &[]))
        .into_iter()
        .map(|c| vec![c])
        .collect();
    while let Some(path) = queue.pop() {
        let args: Vec<&str> = path.iter().map(String::as_str).collect();
        for sub in subcommands(&help("hsm-vault", &args)) {
            let mut p = path.clone();
            p.push(sub);
            queue.push(p);
        }
        paths.push(path);
    }
    paths
}

/// Whether the words of a code span (after `hsm-vault`, before the first
/// option) name a real command: every word a step down the tree, where
/// `a|b` offers alternatives and a span may stop at a command group.
fn names_real_command(paths: &[Vec<String>], words: &[&str]) -> bool {
    let mut prefixes: Vec<Vec<String>> = vec![Vec::new()];
    for word in words {
        let mut next = Vec::new();
        for prefix in &prefixes {
            for alt in word.split('|') {
                let mut p = prefix.clone();
                p.push(alt.to_owned());
                if !paths.contains(&p) {
                    return false;
                }
                next.push(p);
            }
        }
        prefixes = next;
    }
    true
}

/// Every `hsm-vault ...` command (and every bare `keys ...` or
/// `cluster ...` one) quoted in code spans of the vault's sources, the
/// operations files and the README exists, so no message sends a user
/// to a command that is not there.
#[test]
fn every_command_that_messages_and_docs_name_exists() {
    let paths = command_paths();
    assert!(paths.contains(&vec!["keys".into(), "import-request".into()]));
    let workspace = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap();
    let mut files = vec![workspace.join("README.md")];
    let mut dirs = vec![workspace.join("hsm-vault/src"), workspace.join("ops")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                files.push(path);
            }
        }
    }
    let mut checked = 0;
    let mut wrong = Vec::new();
    for file in &files {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        for (n, line) in text.lines().enumerate() {
            // Code spans are the odd pieces between backticks.
            for span in line.split('`').skip(1).step_by(2) {
                // `a | b` lists alternatives, like `a|b`.
                let span = span.replace(" | ", "|");
                let mut words: Vec<&str> = span.split_whitespace().collect();
                let bare = matches!(words.first(), Some(&("keys" | "cluster")));
                if words.first() == Some(&"hsm-vault") {
                    words.remove(0);
                    if matches!(words.first(), Some(&("--config" | "-c"))) {
                        words.drain(..words.len().min(2));
                    }
                } else if !(bare && words.len() > 1) {
                    continue;
                }
                let words: Vec<&str> = words
                    .into_iter()
                    .take_while(|w| {
                        w.starts_with(|c: char| c.is_ascii_lowercase())
                            && w.bytes()
                                .all(|b| b.is_ascii_lowercase() || b"-|".contains(&b))
                    })
                    .collect();
                if words.is_empty() {
                    continue;
                }
                checked += 1;
                if !names_real_command(&paths, &words) {
                    let shown = file.strip_prefix(workspace).unwrap_or(file);
                    wrong.push(format!("{}:{}: `{span}`", shown.display(), n + 1));
                }
            }
        }
    }
    assert!(checked > 10, "found only {checked} commands to check");
    assert!(
        wrong.is_empty(),
        "these name commands hsm-vault does not have:\n{}",
        wrong.join("\n")
    );
}
