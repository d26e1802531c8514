//! Shared helpers for the benchmarks and the load generator.

pub mod backup;
pub mod latency;
pub mod load;
pub mod noise;
pub mod procfs;
pub mod summary;
pub mod vault;
