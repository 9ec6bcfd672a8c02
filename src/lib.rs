//! pgward: PostgreSQL backup and point-in-time recovery.
//!
//! The library holds everything; `main.rs` is a thin command-line layer over it.

pub mod pg;
pub mod error;
pub mod pipeline;
pub mod storage;
pub mod repo;
pub mod db;
pub mod archive;
pub mod backup;
pub mod restore;
pub mod info;
pub mod verify;
pub mod cli;
