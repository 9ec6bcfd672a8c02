//! pgward: PostgreSQL backup and point-in-time recovery.
//!
//! The library holds everything; `main.rs` is a thin command-line layer over it.

pub mod archive;
pub mod backup;
pub mod check;
pub mod cli;
pub mod db;
pub mod drill;
pub mod error;
pub mod expire;
pub mod info;
pub mod memory;
pub mod metrics;
pub mod pg;
pub mod pipeline;
pub mod pitr;
pub mod progress;
pub mod repo;
pub mod restore;
pub mod storage;
pub mod units;
pub mod verify;
pub mod wal;
pub mod workers;

#[cfg(test)]
mod parsers_never_panic;
#[cfg(test)]
mod test_alloc;
#[cfg(test)]
mod test_rng;
