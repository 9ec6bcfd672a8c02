//! pgward's integration tests: one test binary, real PostgreSQL clusters driven through
//! `harness`, pgward run as the unprivileged user exactly as PostgreSQL would run it.

mod harness;
mod harness_selftest;
mod setup;
mod stores;

mod archive;
mod backup_header;
mod backup_restore;
mod blockmap;
mod clouds;
mod delta;
mod drill;
mod encryption;
mod expire;
mod holds;
mod incremental;
mod map_drill;
mod mapped_incr;
mod memory;
mod metrics;
mod operator;
mod pitr;
mod s3;
mod s3_creds;
mod server_env;
mod standby;
mod tamper;
mod targets;
mod versions;
