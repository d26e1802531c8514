//! chatd (being written).
