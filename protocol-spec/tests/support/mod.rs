//! Helpers shared by the integration tests (not a test target itself).
#![allow(dead_code, clippy::unwrap_used)]

pub mod samples;
pub mod vectors;
