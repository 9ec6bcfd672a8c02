//! pgward: PostgreSQL backup and point-in-time recovery.
//!
//! The library holds everything; `main.rs` is a thin command-line layer over it.

pub mod pg;
