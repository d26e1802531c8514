//! Streaming encrypted backups (being written).
