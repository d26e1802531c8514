//! Shared by the golden-vector tests: reads and (when blessing) writes the
//! checked-in `vectors/*.txt` files.
//!
//! Format: `# comment` lines, blank lines, and `name = hex` lines. Run with
//! `E2EBK_BLESS=1` to rewrite a file after an intended wire change; the diff
//! is then the review signal.

use std::collections::BTreeMap;
use std::path::PathBuf;

pub fn vectors_path(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("vectors")
        .join(file)
}

pub fn load(file: &str) -> BTreeMap<String, Vec<u8>> {
    let path = vectors_path(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read {}: {e} (run with E2EBK_BLESS=1 to create it)",
            path.display()
        )
    });
    let mut out = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, value) = line
            .split_once(" = ")
            .unwrap_or_else(|| panic!("{}:{}: expected `name = hex`", path.display(), n + 1));
        let bytes = hex::decode(value.trim())
            .unwrap_or_else(|_| panic!("{}:{}: bad hex", path.display(), n + 1));
        assert!(
            out.insert(name.to_owned(), bytes).is_none(),
            "duplicate {name}"
        );
    }
    out
}

/// Compares `actual` with the checked-in file, or rewrites the file when
/// `E2EBK_BLESS=1`. Fails listing every mismatch.
pub fn check(file: &str, header: &str, actual: &[(String, Vec<u8>)]) {
    if std::env::var_os("E2EBK_BLESS").is_some() {
        let mut text = String::new();
        for line in header.lines() {
            text.push_str("# ");
            text.push_str(line);
            text.push('\n');
        }
        text.push('\n');
        for (name, bytes) in actual {
            text.push_str(&format!("{name} = {}\n", hex::encode(bytes)));
        }
        std::fs::write(vectors_path(file), text).expect("write vectors");
        return;
    }
    let expected = load(file);
    let mut problems = Vec::new();
    for (name, bytes) in actual {
        match expected.get(name) {
            None => problems.push(format!("{name}: not in {file}")),
            Some(e) if e != bytes => problems.push(format!(
                "{name}: wire bytes changed\n  golden: {}\n  now:    {}",
                hex::encode(e),
                hex::encode(bytes)
            )),
            Some(_) => {}
        }
    }
    for name in expected.keys() {
        if !actual.iter().any(|(n, _)| n == name) {
            problems.push(format!("{name}: in {file} but no longer produced"));
        }
    }
    assert!(
        problems.is_empty(),
        "golden vectors in {file} differ (if intended, rerun with E2EBK_BLESS=1 and review the diff):\n{}",
        problems.join("\n")
    );
}
