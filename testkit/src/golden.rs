//! Golden files: text checked in under a crate's `tests/golden/`, compared
//! byte for byte with what the code produces now. `E2EBK_BLESS=1` rewrites
//! the file instead, to accept an intended change; review the diff.

use std::path::Path;

/// Asserts that `golden` holds exactly `actual` (after rewriting it when
/// `E2EBK_BLESS` is set). `what` names the output in the failure message.
pub fn check(golden: &Path, actual: &str, what: &str) {
    if std::env::var_os("E2EBK_BLESS").is_some() {
        std::fs::create_dir_all(golden.parent().expect("golden dir")).expect("golden dir");
        std::fs::write(golden, actual).expect("write golden");
    }
    let expected = std::fs::read_to_string(golden).unwrap_or_default();
    assert!(
        expected == actual,
        "{what} changed; if intended, rerun with E2EBK_BLESS=1 and review {}",
        golden.display()
    );
}
