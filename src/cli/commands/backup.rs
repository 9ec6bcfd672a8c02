//! `backup`, then `expire` when a retention policy is set.

use std::time::Duration;

use super::{Outcome, Report};
use crate::backup::BackupOptions;
use crate::cli::args::{BackupArgs, BackupTypeArg};
use crate::cli::Resolved;
use crate::error::Result;
use crate::repo::label::BackupType;
use crate::repo::manifest::BackupReads;
use crate::repo::manifest::Manifest;
use crate::units::human_bytes;

/// What a backup read and, for an incremental, how the block maps chose (one line, or
/// more when the maps missed blocks).
pub fn reads_line(r: &BackupReads) -> String {
    let mut s = format!("read {} from the cluster", human_bytes(r.bytes_read));
    let scanned: u64 = r.files_scanned.values().sum();
    if r.files_mapped + scanned > 0 {
        s.push_str(&format!(
            "; relation files: {} from block maps, {} scanned",
            r.files_mapped, scanned
        ));
        if scanned > 0 {
            let why: Vec<String> = r
                .files_scanned
                .iter()
                .map(|(why, n)| format!("{n}: {why}"))
                .collect();
            s.push_str(&format!(" ({})", why.join("; ")));
        }
        if let Some(check) = &r.map_check {
            s.push_str(&format!(
                "; --block-map-check {check}: {} block(s) checked",
                r.map_checked_blocks
            ));
        }
    }
    s.push('\n');
    for miss in &r.map_misses {
        let shown = &miss.blocks[..miss.blocks.len().min(8)];
        s.push_str(&format!(
            "BLOCK MAP MISS: {} block(s) of {} changed but were not in the maps, e.g. {shown:?} (the file was scanned instead; please report this bug)\n",
            miss.blocks.len(), miss.path
        ));
    }
    s
}

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
        block_map_check: resolved.global.block_map_check.unwrap_or_default(),
    };
    let manifest = crate::backup::backup(&repo, &resolved.conn(), opts).await?;
    let retention = resolved.retention();
    if retention.is_set() {
        crate::expire::expire(&repo, &retention, false).await?;
    }
    Ok(Outcome::report(BackupDone(manifest)))
}

struct BackupDone(Manifest);

impl Report for BackupDone {
    fn text(&self) -> String {
        let m = &self.0;
        let mut s = format!(
            "backup {} complete: {} files, database {}, {} stored, WAL {} .. {}\n",
            m.label,
            m.files.len(),
            human_bytes(m.database_size),
            human_bytes(m.stored_size),
            m.start_lsn,
            m.stop_lsn
        );
        if let Some(reads) = &m.reads {
            s.push_str(&reads_line(reads));
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
                "reads": m.reads})
            .to_string()
                + "\n",
        )
    }
}
