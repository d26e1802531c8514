//! The key ceremony's files are carried between replicas by people, so
//! their text is a wire format: fixed inputs must give exactly the text in
//! `tests/golden/`, that text must parse back to the same values, and
//! damaged copies must be refused. The fingerprint line pins the hash
//! (SHA-256) and its formatting too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use hsm_vault::hsm::{ImportRequest, WrappedMasterKey};
use hsm_vault::Error;

fn golden(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name)
}

/// `len` bytes that look like key material and never change.
fn fixed_bytes(len: usize, mul: usize, add: usize) -> Vec<u8> {
    (0..len).map(|i| ((i * mul + add) % 256) as u8).collect()
}

/// A 3072-bit modulus-shaped value (top byte set, odd) and e = 65537: what
/// `check_key` accepts, with no token needed to make it.
fn fixed_request() -> ImportRequest {
    let mut modulus = fixed_bytes(384, 167, 89);
    modulus[0] = 0xd1;
    modulus[383] |= 1;
    ImportRequest {
        token_label: "replica-2".into(),
        modulus,
        exponent: vec![1, 0, 1],
    }
}

fn fixed_wrapped() -> WrappedMasterKey {
    WrappedMasterKey {
        fingerprint: fixed_request().fingerprint(),
        wrapped: fixed_bytes(384, 59, 3),
    }
}

fn read_golden(name: &str) -> String {
    std::fs::read_to_string(golden(name)).expect("golden file")
}

fn assert_refused<T: std::fmt::Debug>(what: &str, r: Result<T, Error>) {
    match r {
        Err(Error::Ceremony(_)) => {}
        other => panic!("{what}: expected a ceremony error, got {other:?}"),
    }
}

#[test]
fn import_request_text_matches_its_golden_file() {
    testkit::golden::check(
        &golden("import-request.txt"),
        &fixed_request().to_text(),
        "ImportRequest::to_text",
    );
}

#[test]
fn wrapped_master_key_text_matches_its_golden_file() {
    testkit::golden::check(
        &golden("wrapped-master-key.txt"),
        &fixed_wrapped().to_text(),
        "WrappedMasterKey::to_text",
    );
}

#[test]
fn golden_files_parse_back_to_the_fixed_values() {
    let req = ImportRequest::from_text(&read_golden("import-request.txt")).unwrap();
    assert_eq!(req, fixed_request());
    let wrapped = WrappedMasterKey::from_text(&read_golden("wrapped-master-key.txt")).unwrap();
    assert_eq!(wrapped, fixed_wrapped());
}

#[test]
fn damaged_import_requests_are_refused() {
    let good = read_golden("import-request.txt");
    let lines: Vec<&str> = good.lines().collect();
    let with_line = |i: usize, line: &str| {
        let mut l = lines.clone();
        l[i] = line;
        l.join("\n") + "\n"
    };
    let fingerprint = lines[2].strip_prefix("fingerprint: ").unwrap();
    let modulus = lines[3].strip_prefix("modulus: ").unwrap();
    // One hex digit of the fingerprint changed.
    let flipped = if fingerprint.starts_with('0') {
        "1"
    } else {
        "0"
    };
    let damaged = [
        (
            "fingerprint of another key",
            with_line(2, &format!("fingerprint: {flipped}{}", &fingerprint[1..])),
        ),
        (
            "modulus one byte short",
            with_line(3, &format!("modulus: {}", &modulus[2..])),
        ),
        ("even modulus", {
            let mut m = modulus.to_owned();
            m.replace_range(m.len() - 1.., "0");
            with_line(3, &format!("modulus: {m}"))
        }),
        ("exponent 1", with_line(4, "exponent: 01")),
        ("modulus not hex", with_line(3, "modulus: zz")),
        (
            "unknown version",
            with_line(0, "E2EBK-KEY-IMPORT-REQUEST v2"),
        ),
        ("empty token label", with_line(1, "token-label: ")),
        ("missing exponent line", lines[..4].join("\n") + "\n"),
        ("trailing garbage", format!("{good}extra: 1\n")),
        ("fields out of order", {
            let mut l = lines.clone();
            l.swap(3, 4);
            l.join("\n") + "\n"
        }),
        (
            "a wrapped key instead",
            read_golden("wrapped-master-key.txt"),
        ),
    ];
    for (what, text) in damaged {
        assert_refused(what, ImportRequest::from_text(&text));
    }
}

#[test]
fn damaged_wrapped_keys_are_refused() {
    let good = read_golden("wrapped-master-key.txt");
    let lines: Vec<&str> = good.lines().collect();
    let with_line = |i: usize, line: &str| {
        let mut l = lines.clone();
        l[i] = line;
        l.join("\n") + "\n"
    };
    let wrapped = lines[2].strip_prefix("wrapped: ").unwrap();
    let damaged = [
        (
            "fingerprint in upper case",
            with_line(
                1,
                &lines[1]
                    .to_uppercase()
                    .replacen("FINGERPRINT", "fingerprint", 1),
            ),
        ),
        (
            "fingerprint one group short",
            with_line(1, &lines[1][..lines[1].len() - 5]),
        ),
        (
            "wrapped key of odd length",
            with_line(2, &format!("wrapped: {}", &wrapped[1..])),
        ),
        (
            "wrapped key too short",
            with_line(2, &format!("wrapped: {}", &wrapped[..64])),
        ),
        (
            "unknown version",
            with_line(0, "E2EBK-WRAPPED-MASTER-KEY v2"),
        ),
        ("missing wrapped line", lines[..2].join("\n") + "\n"),
        ("trailing garbage", format!("{good}wrapped: 00\n")),
        ("a request instead", read_golden("import-request.txt")),
    ];
    for (what, text) in damaged {
        assert_refused(what, WrappedMasterKey::from_text(&text));
    }
}
