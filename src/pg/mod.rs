//! PostgreSQL's on-disk formats. No I/O here: every function takes bytes or strings and
//! is tested against files that real servers wrote (`tests/fixtures/`).

pub mod lsn;
pub mod walname;

pub use lsn::{Lsn, TimelineId};
pub use walname::{WalFileName, WalSegment};
