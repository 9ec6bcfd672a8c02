//! `backup`, then `expire` when a retention policy is set.

use std::time::Duration;

use super::{Outcome, Report};
use crate::backup::BackupOptions;
use crate::cli::args::{BackupArgs, BackupTypeArg};
use crate::cli::Resolved;
use crate::error::Result;
use crate::repo::label::BackupType;
use crate::repo::manifest::{Manifest, PackedFiles};
use crate::units::human_bytes;

pub async fn run(resolved: &Resolved, args: BackupArgs) -> Result<Outcome> {
    let repo = resolved.repo().await?;
    let opts = BackupOptions {
        backup_type: match args.backup_type {
            BackupTypeArg::Full => BackupType::Full,
            BackupTypeArg::Diff => BackupType::Diff,
            BackupTypeArg::Incr => BackupType::Incr,
        },
        pgdata: resolved.global.pgdata.clone(),
        compression: resolved.compression()?,
        jobs: resolved.jobs(),
        start_fast: args.start_fast,
        archive_timeout: Duration::from_secs(args.archive_timeout),
        annotations: args.annotations.into_iter().collect(),
        max_chain: args.max_chain,
        pin: args.pin,
        primary: resolved.primary_conn(),
        standby_lag_warning: args.standby_lag_warning.saturating_mul(1 << 20),
        block_map_check: resolved.global.block_map_check.unwrap_or_default(),
    };
    let manifest = crate::backup::backup(&repo, &resolved.conn(), opts).await?;
    let retention = resolved.retention();
    if retention.is_set() {
        crate::expire::expire(&repo, &retention, false).await?;
    }
    Ok(Outcome::report(BackupDone(manifest)))
}

struct BackupDone(Manifest<PackedFiles>);

impl Report for BackupDone {
    fn text(&self) -> String {
        let m = &self.0;
        let mut s = format!(
            "backup {} complete{}: {} files, database {}, {} stored, WAL {} .. {}\n",
            m.label,
            super::describe::taken_on(m.from_standby, m.node.as_deref())
                .map(|t| format!(" ({t})"))
                .unwrap_or_default(),
            m.files.len(),
            human_bytes(m.database_size),
            human_bytes(m.stored_size),
            m.start_lsn,
            m.stop_lsn
        );
        if let Some(reads) = &m.reads {
            s.push_str(&super::describe::reads_line(reads));
        }
        s
    }

    /// One line: a summary, not the manifest.
    fn json(&self) -> Option<String> {
        let m = &self.0;
        Some(
            serde_json::json!({"label": m.label, "type": m.backup_type, "start_lsn": m.start_lsn,
                "stop_lsn": m.stop_lsn, "database_size": m.database_size,
                "stored_size": m.stored_size, "checksum_failures": m.checksum_failures,
                "from_standby": m.from_standby, "node": m.node, "reads": m.reads})
            .to_string()
                + "\n",
        )
    }
}
