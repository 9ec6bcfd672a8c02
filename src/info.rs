//! `info`: what the repository holds and what it can restore. Built as a plain report
//! struct, which the CLI prints as JSON or text (`cli/commands/info.rs`).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::error::Result;
use crate::pg::{Lsn, TimelineId, WalFileName};
use crate::repo::archive::ArchivedFile;
use crate::repo::archive_map::{
    recoverable_window, run_end, timelines, RecoverableWindow, TimelineArchive,
};
use crate::repo::label::BackupType;
use crate::repo::manifest::Manifest;
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
    pub backups: Vec<BackupSummary>,
    /// Backups whose manifest is damaged (or not theirs): listed, never restored.
    pub damaged_backups: Vec<DamagedBackupSummary>,
    pub archive: Vec<TimelineArchive>,
    pub recoverable_window: Option<RecoverableWindow>,
    /// Per timeline: the range that point-in-time recovery can reach on it.
    pub recoverable_windows: Vec<TimelineWindow>,
}

#[derive(Debug, Serialize)]
pub struct TimelineWindow {
    pub timeline: TimelineId,
    pub from_lsn: Lsn,
    /// Where the window starts: the end of a backup, or the switch from the parent timeline.
    pub from: String,
    pub from_time: Option<DateTime<Utc>>,
    pub to_lsn: Lsn,
    pub to_archived_time: DateTime<Utc>,
    /// Backups on this timeline inside the window: (label, type letter, stop LSN).
    pub backups: Vec<(String, char, Lsn)>,
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
    let loaded = repo.load_backups(Some(&stanza)).await?;
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
    Ok(InfoReport {
        stanza: repo.stanza.clone(),
        repository: repo.location(),
        system_identifier: stanza.system_identifier.to_string(),
        pg_major: stanza.pg_major,
        data_checksums: stanza.data_checksums,
        format_version: stanza.format_version,
        encrypted: repo.is_encrypted(),
        lock: repo.lock_mechanism().await?,
        backups: manifests
            .iter()
            .map(|m| summarize(m, &manifests, &pinned, &mut problems))
            .collect(),
        damaged_backups,
        archive: timelines(&archived, seg_size),
        recoverable_window: recoverable_window(&manifests, &archived, seg_size),
        recoverable_windows: timeline_windows(repo, &manifests, &archived, seg_size).await?,
    })
}

fn summarize(
    m: &Manifest,
    all: &[Manifest],
    pinned: &[String],
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
        file_count: m.files.len(),
        checksum_failures: m.checksum_failures.iter().map(|f| f.blocks.len()).sum(),
        reads: m.reads.clone(),
        annotations: m.annotations.clone(),
        problems: problems.remove(&m.label).unwrap_or_default(),
    }
}

async fn timeline_windows(
    repo: &Repo,
    manifests: &[Manifest],
    archived: &[ArchivedFile],
    seg_size: u64,
) -> Result<Vec<TimelineWindow>> {
    let mut timelines: Vec<TimelineId> = archived
        .iter()
        .filter(|f| f.name.segment().is_some())
        .map(|f| f.name.timeline())
        .collect();
    timelines.sort();
    timelines.dedup();
    let mut out: Vec<TimelineWindow> = Vec::new();
    for tl in timelines {
        let on_tl: Vec<&Manifest> = manifests.iter().filter(|m| m.timeline == tl).collect();
        let from_backup = on_tl.iter().find_map(|m| {
            let (to, at) = run_end(archived, tl, m.start_lsn.segment_number(seg_size), seg_size)?;
            (to > m.stop_lsn).then(|| {
                (
                    m.stop_lsn,
                    format!("end of backup {}", m.label),
                    Some(m.stop_time),
                    to,
                    at,
                )
            })
        });
        // Without a backup of its own, a timeline is reachable from its parent's window.
        let from_parent = || async {
            let file = repo
                .find_archived(&WalFileName::History(tl))
                .await
                .ok()?
                .into_iter()
                .next()?;
            let text = repo.read_wal(&file).await.ok()?;
            let entry = crate::pg::history::parse_history(&String::from_utf8_lossy(&text))
                .ok()?
                .pop()?;
            let parent = out.iter().find(|w| {
                w.timeline == entry.timeline
                    && w.from_lsn <= entry.switch_point
                    && entry.switch_point <= w.to_lsn
            })?;
            let (to, at) = run_end(
                archived,
                tl,
                entry.switch_point.segment_number(seg_size),
                seg_size,
            )?;
            Some((
                entry.switch_point,
                format!("switch from timeline {}", parent.timeline),
                None,
                to,
                at,
            ))
        };
        let found = match from_backup {
            Some(f) => Some(f),
            None => from_parent().await,
        };
        if let Some((from_lsn, from, from_time, to_lsn, to_archived_time)) = found {
            let backups = on_tl
                .iter()
                .filter(|m| m.stop_lsn >= from_lsn && m.stop_lsn <= to_lsn)
                .map(|m| (m.label.clone(), m.backup_type.letter(), m.stop_lsn))
                .collect();
            out.push(TimelineWindow {
                timeline: tl,
                from_lsn,
                from,
                from_time,
                to_lsn,
                to_archived_time,
                backups,
            });
        }
    }
    Ok(out)
}
