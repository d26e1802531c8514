//! Shared by the golden-vector tests: reads and (when blessing) writes the
//! checked-in `vectors/*.txt` files and their `vectors/*.json` twins.
//!
//! Text format: `# comment` lines, blank lines, and `name = hex` lines.
//! JSON format (SPEC.md 13): one object,
//! `{"format": "e2ebk-vectors/1", "file": "<stem>.txt", "description":
//! [lines], "vectors": [{"name": ..., "hex": ...}, ...]}`, with the vectors
//! in the text file's order. Both are written from the same data by
//! [`check`], and [`check`] fails when either on disk differs, so they
//! cannot drift apart. Run with `E2EBK_BLESS=1` to rewrite both after an
//! intended wire change; the diff is then the review signal.

use std::collections::BTreeMap;
use std::path::PathBuf;

/// The JSON twins' `format` value; a change of the JSON layout changes it.
pub const JSON_FORMAT: &str = "e2ebk-vectors/1";

pub fn vectors_path(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("vectors")
        .join(file)
}

fn json_name(file: &str) -> String {
    match file.strip_suffix(".txt") {
        Some(stem) => format!("{stem}.json"),
        None => format!("{file}.json"),
    }
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

/// The JSON twin of a vector file, exactly as it is checked in. Written
/// by hand so that the key order and layout do not depend on serde_json's
/// features (another crate in the build may turn on `preserve_order`).
fn to_json(file: &str, header: &str, actual: &[(String, Vec<u8>)]) -> String {
    let quote = |s: &str| serde_json::to_string(s).expect("a string serialises");
    let description: Vec<String> = header
        .lines()
        .map(|l| format!("    {}", quote(l)))
        .collect();
    let vectors: Vec<String> = actual
        .iter()
        .map(|(name, bytes)| {
            format!(
                "    {{\"name\": {}, \"hex\": \"{}\"}}",
                quote(name),
                hex::encode(bytes)
            )
        })
        .collect();
    format!(
        "{{\n  \"format\": {},\n  \"file\": {},\n  \"description\": [\n{}\n  ],\n  \"vectors\": [\n{}\n  ]\n}}\n",
        quote(JSON_FORMAT),
        quote(file),
        description.join(",\n"),
        vectors.join(",\n")
    )
}

/// Compares `actual` with the checked-in file and its JSON twin, or
/// rewrites both when `E2EBK_BLESS=1`. Fails listing every mismatch.
pub fn check(file: &str, header: &str, actual: &[(String, Vec<u8>)]) {
    let json = to_json(file, header, actual);
    // What a Kotlin, Swift or TypeScript loader sees must be the same data.
    let parsed: serde_json::Value = serde_json::from_str(&json).expect("the JSON twin parses");
    assert_eq!(parsed["format"], JSON_FORMAT);
    let listed = parsed["vectors"].as_array().expect("a vectors array");
    assert_eq!(listed.len(), actual.len());
    for (entry, (name, bytes)) in listed.iter().zip(actual) {
        assert_eq!(entry["name"], name.as_str());
        assert_eq!(entry["hex"], hex::encode(bytes));
    }
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
        std::fs::write(vectors_path(&json_name(file)), json).expect("write JSON vectors");
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
    let json_file = json_name(file);
    match std::fs::read_to_string(vectors_path(&json_file)) {
        Ok(on_disk) if on_disk == json => {}
        Ok(_) => problems.push(format!("{json_file} differs from {file}'s data")),
        Err(e) => problems.push(format!("cannot read {json_file}: {e}")),
    }
    assert!(
        problems.is_empty(),
        "golden vectors in {file} differ (if intended, rerun with E2EBK_BLESS=1 and review the diff):\n{}",
        problems.join("\n")
    );
}
