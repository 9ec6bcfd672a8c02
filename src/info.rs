//! `info`: what the repository holds and what it can restore. Built as a plain report
//! struct (serialized for `--output json`) and rendered as text separately.

use std::collections::BTreeMap;

use chrono::{DateTime, TimeZone, Utc};
use serde::Serialize;

use crate::error::Result;
use crate::pg::{Lsn, TimelineId, WalFileName, WalSegment};
use crate::repo::archive::ArchivedFile;
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

#[derive(Debug, Serialize)]
pub struct TimelineArchive {
    pub timeline: TimelineId,
    pub first_segment: String,
    pub last_segment: String,
    pub segments: usize,
    pub partial_segments: usize,
    /// Missing ranges `[first, last]` between the first and last segment.
    pub gaps: Vec<(String, String)>,
    pub stored_size: u64,
}

#[derive(Debug, Serialize)]
pub struct RecoverableWindow {
    /// The earliest consistent point: the end of the oldest restorable backup.
    pub earliest_time: DateTime<Utc>,
    pub earliest_lsn: Lsn,
    pub earliest_backup: String,
    /// The end of the newest WAL reachable without a gap from that backup.
    pub latest_lsn: Lsn,
    pub latest_timeline: TimelineId,
    /// When that WAL was archived: recovery can reach at least this time.
    pub latest_archived_time: DateTime<Utc>,
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
        recoverable_window: window(&manifests, &archived, seg_size),
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

/// Segment numbers of complete segments archived on `timeline`, ascending.
pub fn segments_on(archived: &[ArchivedFile], timeline: TimelineId, seg_size: u64) -> Vec<u64> {
    let mut v: Vec<u64> = archived
        .iter()
        .filter_map(|f| match f.name {
            WalFileName::Segment(s) if s.timeline == timeline => Some(s.segno(seg_size)),
            _ => None,
        })
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

pub fn timelines(archived: &[ArchivedFile], seg_size: u64) -> Vec<TimelineArchive> {
    let mut tls: Vec<TimelineId> = archived
        .iter()
        .filter(|f| f.name.segment().is_some())
        .map(|f| f.name.timeline())
        .collect();
    tls.sort();
    tls.dedup();
    tls.into_iter()
        .filter_map(|tl| {
            let segs = segments_on(archived, tl, seg_size);
            let name = |n: u64| WalSegment::from_segno(tl, n, seg_size).to_string();
            let gaps = segs
                .windows(2)
                .filter(|w| w[1] > w[0] + 1)
                .map(|w| (name(w[0] + 1), name(w[1] - 1)))
                .collect();
            Some(TimelineArchive {
                timeline: tl,
                first_segment: name(*segs.first()?),
                last_segment: name(*segs.last()?),
                segments: segs.len(),
                partial_segments: archived
                    .iter()
                    .filter(|f| matches!(f.name, WalFileName::Partial(s) if s.timeline == tl))
                    .count(),
                gaps,
                stored_size: archived
                    .iter()
                    .filter(|f| f.name.segment().is_some() && f.name.timeline() == tl)
                    .map(|f| f.stored_size)
                    .sum(),
            })
        })
        .collect()
}

/// Last segment number of the gap-free run starting at `from` on `timeline`, if `from` is there.
pub fn contiguous_end(segs: &[u64], from: u64) -> Option<u64> {
    let start = segs.binary_search(&from).ok()?;
    let mut end = from;
    for &s in &segs[start + 1..] {
        if s != end + 1 {
            break;
        }
        end = s;
    }
    Some(end)
}

fn window(
    manifests: &[Manifest],
    archived: &[ArchivedFile],
    seg_size: u64,
) -> Option<RecoverableWindow> {
    let restorable = |m: &&Manifest| {
        let segs = segments_on(archived, m.timeline, seg_size);
        let needed_end = m.stop_lsn.prev_segment_number(seg_size);
        contiguous_end(&segs, m.start_lsn.segment_number(seg_size))
            .is_some_and(|end| end >= needed_end)
    };
    let oldest = manifests.iter().find(restorable)?;
    let newest = manifests.iter().rev().find(restorable)?;
    let segs = segments_on(archived, newest.timeline, seg_size);
    let end = contiguous_end(&segs, newest.start_lsn.segment_number(seg_size))?;
    let last = WalSegment::from_segno(newest.timeline, end, seg_size);
    let archived_at = archived
        .iter()
        .find(|f| f.name == WalFileName::Segment(last))
        .map_or(0, |f| f.archived_at);
    Some(RecoverableWindow {
        earliest_time: oldest.stop_time,
        earliest_lsn: oldest.stop_lsn,
        earliest_backup: oldest.label.clone(),
        latest_lsn: Lsn((end + 1) * seg_size),
        latest_timeline: newest.timeline,
        latest_archived_time: Utc
            .timestamp_opt(archived_at, 0)
            .single()
            .unwrap_or_default(),
    })
}

/// The end of the gap-free WAL on `timeline` from segment `from`, and when it was archived.
fn run_end(
    archived: &[ArchivedFile],
    timeline: TimelineId,
    from: u64,
    seg_size: u64,
) -> Option<(Lsn, DateTime<Utc>)> {
    let end = contiguous_end(&segments_on(archived, timeline, seg_size), from)?;
    let last = WalFileName::Segment(WalSegment::from_segno(timeline, end, seg_size));
    let at = archived
        .iter()
        .find(|f| f.name == last)
        .map_or(0, |f| f.archived_at);
    Some((
        Lsn((end + 1) * seg_size),
        Utc.timestamp_opt(at, 0).single().unwrap_or_default(),
    ))
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

pub fn human_bytes(n: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < units.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
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
