//! `info`: what the repository holds and what it can restore. Built as a plain report
//! struct, which the CLI prints as JSON or text (`cli/commands/info.rs`).

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::error::Result;
use crate::pg::{Lsn, TimelineId};
pub use crate::repo::archive_map::TimelineWindow;
use crate::repo::archive_map::{
    recoverable_window, timeline_windows, timelines, RecoverableWindow, TimelineArchive,
};
use crate::repo::label::BackupType;
use crate::repo::manifest::Manifest;
use crate::repo::records::{DamagedRecord, DrillRecord, VerifyRecord};
use crate::repo::Repo;

#[derive(Debug, Serialize)]
pub struct InfoReport {
    pub stanza: String,
    pub repository: String,
    pub system_identifier: String,
    pub pg_major: u32,
    pub data_checksums: bool,
    pub format_version: u32,
    pub encrypted: bool,
    /// How concurrent backups of the stanza are excluded.
    pub lock: String,
    /// What running restores, drills and verifies read (expire keeps it).
    pub holds: Vec<crate::repo::holds::Hold>,
    pub backups: Vec<BackupSummary>,
    /// Backups whose manifest is damaged (or not theirs): listed, never restored.
    pub damaged_backups: Vec<DamagedBackupSummary>,
    pub archive: Vec<TimelineArchive>,
    pub recoverable_window: Option<RecoverableWindow>,
    /// Per timeline: the range that point-in-time recovery can reach on it.
    pub recoverable_windows: Vec<TimelineWindow>,
    /// The outcome of the stanza's last `pgward drill`, if one ran (and its record reads).
    pub last_drill: Option<DrillRecord>,
    /// The outcome of the stanza's last `pgward verify`, if one ran (and its record reads).
    pub last_verify: Option<VerifyRecord>,
    /// Records that do not read (the last drill's or verify's): reported, never `info`'s
    /// failure.
    pub damaged_records: Vec<DamagedRecord>,
}

#[derive(Debug, Serialize)]
pub struct BackupSummary {
    pub label: String,
    #[serde(rename = "type")]
    pub backup_type: BackupType,
    pub reference: Option<String>,
    /// Every backup a restore of this one reads from, full first.
    pub chain: Vec<String>,
    pub pinned: bool,
    pub timeline: TimelineId,
    pub start_time: DateTime<Utc>,
    pub stop_time: DateTime<Utc>,
    pub start_lsn: Lsn,
    pub stop_lsn: Lsn,
    pub duration_seconds: f64,
    pub database_size: u64,
    pub stored_size: u64,
    pub file_count: usize,
    pub checksum_failures: usize,
    /// What the backup read from the cluster and how (absent for older backups).
    pub reads: Option<crate::repo::manifest::BackupReads>,
    pub annotations: BTreeMap<String, String>,
    /// Taken on a standby in recovery rather than on the primary.
    pub from_standby: bool,
    /// The server it was taken on (`host:port`); none for backups from before pgward
    /// recorded it.
    pub node: Option<String>,
    /// What is wrong around an otherwise readable backup (a damaged pin, a damaged
    /// backup it builds on); empty when nothing is.
    pub problems: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct DamagedBackupSummary {
    pub label: String,
    pub problem: String,
}

pub async fn info(repo: &Repo) -> Result<InfoReport> {
    let stanza = repo.stanza_info().await?;
    // Without file lists: `info` must stay small and fast on a stanza of many backups.
    let headers = repo.load_backup_headers(Some(&stanza)).await?;
    let (loaded, file_counts) = (headers.backups, headers.file_counts);
    let manifests = loaded.healthy;
    let damaged_backups: Vec<DamagedBackupSummary> = loaded
        .damaged
        .into_iter()
        .map(|d| DamagedBackupSummary {
            label: d.label,
            problem: d.error.to_string(),
        })
        .collect();
    let archived = repo.list_archive().await?;
    let pinned = repo.pinned_labels().await?;
    let mut problems: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for label in &pinned {
        if let Err(e) = repo.check_pin(label).await {
            problems
                .entry(label.clone())
                .or_default()
                .push(e.to_string());
        }
    }
    for m in &manifests {
        let chain = crate::repo::manifest::chain(&manifests, &m.label);
        if let Some(missing) = chain.first().and_then(|first| first.reference.as_ref()) {
            problems.entry(m.label.clone()).or_default().push(format!(
                "builds on backup {missing}, which is damaged or missing"
            ));
        }
    }
    let seg_size = stanza.wal_segment_size;
    let mut damaged_records = Vec::new();
    let last_drill = repo.last_drill_or_damaged(&mut damaged_records).await?;
    let last_verify = repo.last_verify_or_damaged(&mut damaged_records).await?;
    Ok(InfoReport {
        stanza: repo.stanza.clone(),
        repository: repo.location(),
        system_identifier: stanza.system_identifier.to_string(),
        pg_major: stanza.pg_major,
        data_checksums: stanza.data_checksums,
        format_version: stanza.format_version,
        encrypted: repo.is_encrypted(),
        lock: repo.lock_mechanism().await?,
        holds: repo.live_holds(false).await?,
        backups: manifests
            .iter()
            .map(|m| summarize(m, &manifests, &pinned, &file_counts, &mut problems))
            .collect(),
        damaged_backups,
        archive: timelines(&archived, seg_size),
        recoverable_window: recoverable_window(&manifests, &archived, seg_size),
        recoverable_windows: timeline_windows(repo, &manifests, &archived, seg_size).await?,
        last_drill,
        last_verify,
        damaged_records,
    })
}

fn summarize(
    m: &Manifest,
    all: &[Manifest],
    pinned: &[String],
    file_counts: &HashMap<String, usize>,
    problems: &mut BTreeMap<String, Vec<String>>,
) -> BackupSummary {
    BackupSummary {
        label: m.label.clone(),
        backup_type: m.backup_type,
        reference: m.reference.clone(),
        chain: crate::repo::manifest::chain(all, &m.label)
            .iter()
            .map(|c| c.label.clone())
            .collect(),
        pinned: pinned.contains(&m.label),
        timeline: m.timeline,
        start_time: m.start_time,
        stop_time: m.stop_time,
        start_lsn: m.start_lsn,
        stop_lsn: m.stop_lsn,
        duration_seconds: (m.stop_time - m.start_time).num_milliseconds() as f64 / 1000.0,
        database_size: m.database_size,
        stored_size: m.stored_size,
        file_count: file_counts.get(&m.label).copied().unwrap_or_default(),
        checksum_failures: m.checksum_failures.iter().map(|f| f.blocks.len()).sum(),
        reads: m.reads.clone(),
        annotations: m.annotations.clone(),
        from_standby: m.from_standby,
        node: m.node.clone(),
        problems: problems.remove(&m.label).unwrap_or_default(),
    }
}
