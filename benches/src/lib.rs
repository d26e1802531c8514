//! Shared helpers for the benchmarks and the load generator.

pub mod backup;
