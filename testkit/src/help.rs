//! Golden `--help` checks for the project's binaries: every command's help
//! exits 0 and the whole text is compared with a file under `tests/golden/`
//! ([`crate::golden`]: rerun with `E2EBK_BLESS=1` to accept an intended
//! change, then review the diff).

use std::path::Path;
use std::process::Command;

/// `binary ARGS... --help`, asserting exit 0.
pub fn help(binary: &str, args: &[&str]) -> String {
    let out = Command::new(crate::bin(binary))
        .args(args)
        .arg("--help")
        .env_remove("COLUMNS")
        .output()
        .expect("run --help");
    assert!(
        out.status.success(),
        "{binary} {args:?} --help exits {:?}",
        out.status.code()
    );
    String::from_utf8(out.stdout).expect("help is UTF-8")
}

/// The subcommands listed under `Commands:` in a help text (without `help`).
pub fn subcommands(text: &str) -> Vec<String> {
    text.lines()
        .skip_while(|l| l.trim() != "Commands:")
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter(|l| l.starts_with("  ") && !l.starts_with("   "))
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .filter(|c| c != "help")
        .collect()
}

/// Walks every (sub)command of `binary`, checks the top level teaches
/// (`must_contain`), and compares the concatenated help with `golden`.
pub fn check_golden(binary: &str, must_contain: &[&str], golden: &Path) {
    let top = help(binary, &[]);
    for needle in must_contain {
        assert!(top.contains(needle), "{binary} --help lacks {needle:?}");
    }
    let mut all = format!("$ {binary} --help\n{top}");
    let mut queue: Vec<Vec<String>> = subcommands(&top).into_iter().map(|c| vec![c]).collect();
    let mut seen = 0;
    while let Some(path) = queue.first().cloned() {
        queue.remove(0);
        seen += 1;
        let args: Vec<&str> = path.iter().map(String::as_str).collect();
        let text = help(binary, &args);
        all.push_str(&format!("\n$ {binary} {} --help\n{text}", args.join(" ")));
        for sub in subcommands(&text) {
            let mut p = path.clone();
            p.push(sub);
            queue.push(p);
        }
    }
    assert!(seen > 0, "{binary} --help lists no commands");
    crate::golden::check(golden, &all, &format!("{binary} --help"));
}
