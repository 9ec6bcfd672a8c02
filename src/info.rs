//! `info`: what the repository holds and what it can restore. Built as a plain report
//! struct (serialized for `--output json`) and rendered as text separately.

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
use crate::units::human_bytes;

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
    pub annotations: BTreeMap<String, String>,
}

pub async fn info(repo: &Repo) -> Result<InfoReport> {
    let stanza = repo.stanza_info().await?;
    let manifests = repo.load_manifests().await?;
    let archived = repo.list_archive().await?;
    let pinned = repo.pinned_labels().await?;
    let seg_size = stanza.wal_segment_size;
    Ok(InfoReport {
        stanza: repo.stanza.clone(),
        repository: repo.storage.location(),
        system_identifier: stanza.system_identifier.to_string(),
        pg_major: stanza.pg_major,
        data_checksums: stanza.data_checksums,
        format_version: stanza.format_version,
        encrypted: repo.key.is_some(),
        lock: repo.lock_mechanism().await?,
        backups: manifests
            .iter()
            .map(|m| summarize(m, &manifests, &pinned))
            .collect(),
        archive: timelines(&archived, seg_size),
        recoverable_window: recoverable_window(&manifests, &archived, seg_size),
        recoverable_windows: timeline_windows(repo, &manifests, &archived, seg_size).await?,
    })
}

fn summarize(m: &Manifest, all: &[Manifest], pinned: &[String]) -> BackupSummary {
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
        annotations: m.annotations.clone(),
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
            let text = crate::archive::get::read_archived(repo, &file).await.ok()?;
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

/// One line per timeline: a bar from the window's start to its end with each backup's
/// type letter where it ends.
fn render_windows(windows: &[TimelineWindow]) -> String {
    const WIDTH: usize = 40;
    let mut s = String::new();
    for w in windows {
        let span = (w.to_lsn.0 - w.from_lsn.0).max(1) as f64;
        let mut bar = vec!['='; WIDTH];
        for (_, letter, stop) in &w.backups {
            let at = (((stop.0 - w.from_lsn.0) as f64 / span) * (WIDTH - 1) as f64) as usize;
            bar[at.min(WIDTH - 1)] = *letter;
        }
        s.push_str(&format!(
            "  timeline {:<3} |{}>  {} ({}) .. {} (archived {})\n",
            w.timeline.to_string(),
            bar.into_iter().collect::<String>(),
            w.from_lsn,
            w.from,
            w.to_lsn,
            w.to_archived_time.format("%Y-%m-%d %H:%M:%S UTC")
        ));
    }
    s
}

pub fn render_text(r: &InfoReport) -> String {
    let mut s = format!(
        "stanza {} (PostgreSQL {}, system identifier {}, data checksums {})\nrepository {} (format {})\n",
        r.stanza, r.pg_major, r.system_identifier, if r.data_checksums { "on" } else { "off" }, r.repository, r.format_version
    );
    s.push_str(&format!(
        "encrypted: {}; lock: {}\n",
        if r.encrypted {
            "yes (aes-256-gcm)"
        } else {
            "no"
        },
        r.lock
    ));
    s.push_str(&format!("\nbackups: {}\n", r.backups.len()));
    for b in &r.backups {
        s.push_str(&format!(
            "  {}  {}{}{}  timeline {}  {} .. {}  {} .. {}  {:.1}s  database {}  stored {}{}\n",
            b.label,
            b.backup_type,
            b.reference
                .as_ref()
                .map(|r| format!(" on {r}"))
                .unwrap_or_default(),
            if b.pinned { " (pinned)" } else { "" },
            b.timeline,
            b.start_time.format("%Y-%m-%d %H:%M:%S"),
            b.stop_time.format("%H:%M:%S UTC"),
            b.start_lsn,
            b.stop_lsn,
            b.duration_seconds,
            human_bytes(b.database_size),
            human_bytes(b.stored_size),
            if b.checksum_failures > 0 {
                format!("  {} page checksum failure(s)", b.checksum_failures)
            } else {
                String::new()
            }
        ));
    }
    s.push_str("\narchive:\n");
    if r.archive.is_empty() {
        s.push_str("  (no WAL archived yet)\n");
    }
    for t in &r.archive {
        s.push_str(&format!(
            "  timeline {}: {} .. {}  {} segment(s), {} stored",
            t.timeline,
            t.first_segment,
            t.last_segment,
            t.segments,
            human_bytes(t.stored_size)
        ));
        if t.partial_segments > 0 {
            s.push_str(&format!(", {} partial", t.partial_segments));
        }
        if t.gaps.is_empty() {
            s.push_str(", no gaps\n");
        } else {
            s.push('\n');
            for (a, b) in &t.gaps {
                s.push_str(&format!("    gap: {a} .. {b} missing\n"));
            }
        }
    }
    if !r.recoverable_windows.is_empty() {
        s.push_str("\nrecoverable per timeline (F/D/I: where each backup ends):\n");
        s.push_str(&render_windows(&r.recoverable_windows));
    }
    match &r.recoverable_window {
        Some(w) => {
            s.push_str(&format!(
            "\nrecoverable window: {} ({}, end of backup {}) .. {} on timeline {} (archived {})\n",
            w.earliest_time.format("%Y-%m-%d %H:%M:%S UTC"), w.earliest_lsn, w.earliest_backup,
            w.latest_lsn, w.latest_timeline, w.latest_archived_time.format("%Y-%m-%d %H:%M:%S UTC")
        ))
        }
        None => s.push_str("\nrecoverable window: none (no backup with its WAL archived)\n"),
    }
    s
}
