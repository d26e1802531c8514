//! The one table of metrics each binary exports, and what is done with it
//! at start-up.
//!
//! Every metric a binary emits is a row of its table ([`MetricDef`]): name,
//! kind, HELP text and every label set it can take. [`register`] gives each
//! row its HELP text and creates every counter at zero, once per label set,
//! so a scrape right after start-up already has the series: `increase()`
//! and `rate()` need a sample before the first event to see it (without
//! one, the first integrity failure or HSM error after a start is a new
//! series that no alert notices).
//!
//! The table is also what the dashboards and alert rules are checked
//! against, and each binary's tests check that its source emits exactly
//! the metrics it lists ([`check_table`]).

use std::collections::BTreeSet;
use std::path::Path;

use metrics::Label;

/// What kind of metric a row is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    Counter,
    Gauge,
    Histogram,
}

/// One row of a binary's metrics table.
#[derive(Debug, Clone)]
pub struct MetricDef {
    pub name: &'static str,
    pub kind: MetricKind,
    pub help: &'static str,
    /// Every label set the metric takes (one empty set for an unlabelled
    /// metric).
    pub series: Vec<Vec<(&'static str, &'static str)>>,
}

impl MetricDef {
    fn new(name: &'static str, kind: MetricKind, help: &'static str) -> Self {
        MetricDef {
            name,
            kind,
            help,
            series: Vec::new(),
        }
    }

    pub fn counter(name: &'static str, help: &'static str) -> Self {
        Self::new(name, MetricKind::Counter, help)
    }

    pub fn gauge(name: &'static str, help: &'static str) -> Self {
        Self::new(name, MetricKind::Gauge, help)
    }

    pub fn histogram(name: &'static str, help: &'static str) -> Self {
        Self::new(name, MetricKind::Histogram, help)
    }

    /// Adds the label sets of every combination of the given values
    /// (`[("op", &["seal", "unseal"])]` adds two). Call it again for label
    /// sets of another shape.
    pub fn labels(mut self, dims: &[(&'static str, &[&'static str])]) -> Self {
        let mut sets: Vec<Vec<(&'static str, &'static str)>> = vec![Vec::new()];
        for (key, values) in dims {
            sets = sets
                .into_iter()
                .flat_map(|set| {
                    values.iter().map(move |v| {
                        let mut s = set.clone();
                        s.push((*key, *v));
                        s
                    })
                })
                .collect();
        }
        self.series.extend(sets);
        self
    }

    /// The label sets, one empty set when none was given.
    pub fn label_sets(&self) -> Vec<Vec<(&'static str, &'static str)>> {
        if self.series.is_empty() {
            vec![Vec::new()]
        } else {
            self.series.clone()
        }
    }
}

/// The `<prefix>_build_info` row: value 1, labelled with the version.
pub fn build_info(name: &'static str, version: &'static str) -> MetricDef {
    MetricDef::gauge(
        name,
        "Always 1; the labels say which build of the binary is running.",
    )
    .labels(&[("version", &[version])])
}

fn labels_of(set: &[(&'static str, &'static str)]) -> Vec<Label> {
    set.iter().map(|(k, v)| Label::new(*k, *v)).collect()
}

/// Gives every row its HELP text and creates its series: counters at zero
/// for every label set, `*_build_info` at 1. Gauges and histograms are left
/// to their first value (a gauge of 0 can be a lie: "is leader", "link up").
/// Call after the recorder is installed.
pub fn register(table: &[MetricDef]) {
    for def in table {
        match def.kind {
            MetricKind::Counter => {
                metrics::describe_counter!(def.name, def.help);
                for set in def.label_sets() {
                    metrics::counter!(def.name, labels_of(&set)).increment(0);
                }
            }
            MetricKind::Gauge => {
                metrics::describe_gauge!(def.name, def.help);
                if def.name.ends_with("_build_info") {
                    for set in def.label_sets() {
                        metrics::gauge!(def.name, labels_of(&set)).set(1.0);
                    }
                }
            }
            MetricKind::Histogram => metrics::describe_histogram!(def.name, def.help),
        }
    }
}

/// Checks a binary's table against its source folder `src`: every metric
/// the source emits is listed and every listed one is emitted (the
/// `*_build_info` row is emitted by [`register`]), each name starts with
/// `prefix`, and each has HELP text. The error says what to fix.
pub fn check_table(table: &[MetricDef], src: &Path, prefix: &str) -> Result<(), String> {
    let emitted = names_in_source(src);
    let listed: BTreeSet<String> = table
        .iter()
        .filter(|d| !d.name.ends_with("_build_info"))
        .map(|d| d.name.to_owned())
        .collect();
    let mut problems = Vec::new();
    for name in emitted.difference(&listed) {
        problems.push(format!("{name} is emitted but not in the table"));
    }
    for name in listed.difference(&emitted) {
        problems.push(format!("{name} is in the table but never emitted"));
    }
    for d in table {
        if !d.name.starts_with(prefix) {
            problems.push(format!("{} does not start with {prefix}", d.name));
        }
        if d.help.trim().len() < 10 {
            problems.push(format!("{} needs HELP text", d.name));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("\n"))
    }
}

/// Metric names emitted by `counter!`, `gauge!` or `histogram!` with a
/// literal name in the `.rs` files under `dir`.
fn names_in_source(dir: &Path) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let text = std::fs::read_to_string(&p).unwrap_or_default();
                for mac in ["counter!(", "gauge!(", "histogram!("] {
                    for piece in text.split(mac).skip(1) {
                        let piece = piece.trim_start();
                        if let Some(rest) = piece.strip_prefix('"') {
                            if let Some(end) = rest.find('"') {
                                names.insert(rest[..end].to_owned());
                            }
                        }
                    }
                }
            }
        }
    }
    names
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn labels_multiply_within_a_call_and_add_across_calls() {
        let d = MetricDef::counter("x_total", "x")
            .labels(&[("a", &["1", "2"]), ("b", &["p", "q"])])
            .labels(&[("a", &["3"])]);
        assert_eq!(d.label_sets().len(), 5);
        assert_eq!(d.label_sets()[4], vec![("a", "3")]);
        assert_eq!(MetricDef::gauge("g", "g").label_sets(), vec![vec![]]);
    }

    #[test]
    fn finds_literal_metric_names() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(
            dir.path().join("sub/a.rs"),
            "metrics::counter!(\"a_total\", \"k\" => \"v\");\nmetrics::gauge!(\n    \"b\").set(1.0);\nmetrics::histogram!(name);",
        )
        .unwrap();
        let names: Vec<String> = names_in_source(dir.path()).into_iter().collect();
        assert_eq!(names, ["a_total", "b"]);
        let table = [
            MetricDef::counter("a_total", "counts a things"),
            MetricDef::gauge("c", "?"),
        ];
        let err = check_table(&table, dir.path(), "a").unwrap_err();
        assert_eq!(
            err.lines().collect::<Vec<_>>(),
            [
                "b is emitted but not in the table",
                "c is in the table but never emitted",
                "c does not start with a",
                "c needs HELP text",
            ]
        );
        let table = [
            MetricDef::counter("a_total", "counts a things"),
            MetricDef::gauge("b", "the b of it"),
        ];
        assert_eq!(check_table(&table, dir.path(), ""), Ok(()));
    }
}
