//! `archive-push` and `archive-get`: PostgreSQL's archive_command and restore_command.

pub mod get;
pub mod prefetch;
pub mod push;
pub mod spool;
