//! PostgreSQL's on-disk formats. No I/O here: every function takes bytes or strings and
//! is tested against files that real servers wrote (`tests/fixtures/`).

pub mod backup_label;
pub mod control;
pub mod datadir;
pub mod history;
pub mod lsn;
pub mod page;
pub mod wal;
pub mod walname;

pub use lsn::{Lsn, TimelineId};
pub use walname::{WalFileName, WalSegment};
