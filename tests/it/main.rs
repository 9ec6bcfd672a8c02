//! pgward's integration tests: one test binary, real PostgreSQL clusters driven through
//! `harness`, pgward run as the unprivileged user exactly as PostgreSQL would run it.

mod harness;
mod harness_selftest;
mod setup;

mod archive;
mod backup_restore;
mod blockmap;
mod drill;
mod delta;
mod encryption;
mod expire;
mod incremental;
mod metrics;
mod mapped_incr;
mod map_drill;
mod operator;
mod pitr;
mod s3;
mod standby;
mod server_env;
mod tamper;
mod targets;
mod versions;
