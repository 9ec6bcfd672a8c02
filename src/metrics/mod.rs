//! `metrics`: what monitoring needs to know about a stanza, gathered from small
//! metadata only (stanza.json, manifests, records) and directory listings (the archive,
//! bundles): no bundle or WAL content is read, so a scrape stays cheap on a repository
//! of any size. [`collect`] returns plain data; `exposition.rs` writes it in the
//! Prometheus text format, once for `pgward metrics` and for each scrape of `serve`.
//!
//! What the repository cannot tell is handed in by the caller: where the server's WAL
//! stands ([`crate::db::WalPosition`], for the archive lag) and the state of the local
//! async-push spool.

pub mod exposition;

use chrono::{DateTime, TimeZone, Utc};

use crate::archive::spool::SpoolStatus;
use crate::db::WalPosition;
use crate::error::Result;
use crate::pg::{Lsn, TimelineId, WalFileName};
use crate::repo::archive::ArchivedFile;
use crate::repo::archive_map::{
    recoverable_window, timeline_windows, timelines, RecoverableWindow, TimelineWindow,
};
use crate::repo::label::BackupType;
use crate::repo::records::{DamagedRecord, DrillRecord, VerifyRecord};
use crate::repo::Repo;

/// Everything `metrics` reports about one stanza.
#[derive(Debug)]
pub struct StanzaMetrics {
    pub stanza: String,
    /// Backups whose manifest reads and checks.
    pub backups: usize,
    /// Backups whose manifest is damaged (never restored).
    pub damaged_backups: usize,
    /// The newest backup of each type, in the order full, diff, incr.
    pub newest: Vec<NewestBackup>,
    pub archive: Vec<TimelineMetrics>,
    /// Per timeline: the range point-in-time recovery reaches on it.
    pub windows: Vec<TimelineWindow>,
    /// From the end of the oldest restorable backup to the newest WAL reachable from the
    /// newest one.
    pub window: Option<RecoverableWindow>,
    /// Bundles, manifests, records and archived WAL, from their listings.
    pub stored_bytes: u64,
    pub last_verify: Option<VerifyRecord>,
    pub last_drill: Option<DrillRecord>,
    /// Records that do not read: counted, never the scrape's failure.
    pub damaged_records: Vec<DamagedRecord>,
    /// Present when the server was reachable and is this stanza's cluster.
    pub lag: Option<ArchiveLag>,
    /// archive_command failures the server counted (pg_stat_archiver), when reachable.
    pub archive_command_failures: Option<i64>,
    pub spool: Option<SpoolStatus>,
}

#[derive(Debug)]
pub struct NewestBackup {
    pub backup_type: BackupType,
    pub label: String,
    pub stop_time: DateTime<Utc>,
    pub duration_seconds: f64,
    pub database_size: u64,
    pub stored_size: u64,
}

/// The archive on one timeline.
#[derive(Debug)]
pub struct TimelineMetrics {
    pub timeline: TimelineId,
    pub segments: usize,
    pub gaps: usize,
    pub stored_bytes: u64,
    /// The end of the newest archived segment, and when it was archived.
    pub newest_end: Lsn,
    pub newest_archived: DateTime<Utc>,
}

/// How far archiving trails the server.
#[derive(Debug, PartialEq)]
pub struct ArchiveLag {
    pub timeline: TimelineId,
    /// WAL written but not archived: from the end of the newest archived segment on the
    /// server's timeline to its insert position (the segment being filled included).
    pub bytes: u64,
    /// 0 while only the segment being filled is unarchived; else how long since the
    /// newest archived segment was archived, while complete segments wait.
    pub seconds: f64,
}

/// Gathers a stanza's metrics. `server` is where the server's WAL stands when it could be
/// asked; it is ignored unless it is the stanza's cluster.
pub async fn collect(
    repo: &Repo,
    server: Option<&WalPosition>,
    spool: Option<SpoolStatus>,
    now: DateTime<Utc>,
) -> Result<StanzaMetrics> {
    let stanza = repo.stanza_info().await?;
    let seg_size = stanza.wal_segment_size;
    let loaded = repo.load_backup_headers(Some(&stanza)).await?.backups;
    let manifests = loaded.healthy;
    let archived = repo.list_archive().await?;
    let mut newest: Vec<NewestBackup> = Vec::new();
    for kind in [BackupType::Full, BackupType::Diff, BackupType::Incr] {
        if let Some(m) = manifests.iter().rev().find(|m| m.backup_type == kind) {
            newest.push(NewestBackup {
                backup_type: kind,
                label: m.label.clone(),
                stop_time: m.stop_time,
                duration_seconds: (m.stop_time - m.start_time).num_milliseconds() as f64 / 1000.0,
                database_size: m.database_size,
                stored_size: m.stored_size,
            });
        }
    }
    let archive = archive_metrics(&archived, seg_size);
    let archive_bytes: u64 = archived.iter().map(|f| f.stored_size).sum();
    let server = server.filter(|s| s.system_identifier == stanza.system_identifier);
    let mut damaged_records = Vec::new();
    let last_verify = repo.last_verify_or_damaged(&mut damaged_records).await?;
    let last_drill = repo.last_drill_or_damaged(&mut damaged_records).await?;
    Ok(StanzaMetrics {
        stanza: repo.stanza.clone(),
        backups: manifests.len(),
        damaged_backups: loaded.damaged.len(),
        newest,
        windows: timeline_windows(repo, &manifests, &archived, seg_size).await?,
        window: recoverable_window(&manifests, &archived, seg_size),
        stored_bytes: repo.backup_stored_bytes().await? + archive_bytes,
        last_verify,
        last_drill,
        damaged_records,
        lag: server
            .and_then(|s| s.current)
            .map(|(tl, lsn)| archive_lag(&archive, tl, lsn, seg_size, now)),
        archive_command_failures: server.map(|s| s.archive_failed_count),
        spool,
        archive,
    })
}

fn archive_metrics(archived: &[ArchivedFile], seg_size: u64) -> Vec<TimelineMetrics> {
    timelines(archived, seg_size)
        .into_iter()
        .filter_map(|t| {
            let last = WalFileName::parse(&t.last_segment).ok()?;
            let segment = last.segment()?;
            let archived_at = archived
                .iter()
                .rev()
                .find(|f| f.name == last)
                .map_or(0, |f| f.archived_at);
            Some(TimelineMetrics {
                timeline: t.timeline,
                segments: t.segments,
                gaps: t.gaps.len(),
                stored_bytes: t.stored_size,
                newest_end: Lsn((segment.segno(seg_size) + 1) * seg_size),
                newest_archived: Utc
                    .timestamp_opt(archived_at, 0)
                    .single()
                    .unwrap_or_default(),
            })
        })
        .collect()
}

/// The lag behind a server writing on `timeline` at `current`. A timeline with nothing
/// archived yet counts from the newest archived WAL of the timelines before it (its
/// parent's WAL up to the switch is archived there), or from the start of WAL.
fn archive_lag(
    archive: &[TimelineMetrics],
    timeline: TimelineId,
    current: Lsn,
    seg_size: u64,
    now: DateTime<Utc>,
) -> ArchiveLag {
    let base = archive.iter().find(|t| t.timeline == timeline).or_else(|| {
        archive
            .iter()
            .filter(|t| t.timeline < timeline)
            .max_by_key(|t| t.newest_end)
    });
    let archived_end = base.map_or(Lsn(0), |t| t.newest_end);
    let bytes = current.0.saturating_sub(archived_end.0);
    // Complete segments wait when the insert position is past the segment after the
    // newest archived one.
    let waiting = current.segment_number(seg_size) > archived_end.segment_number(seg_size);
    let seconds = match base {
        Some(t) if waiting => {
            ((now - t.newest_archived).num_milliseconds() as f64 / 1000.0).max(0.0)
        }
        _ => 0.0,
    };
    ArchiveLag {
        timeline,
        bytes,
        seconds,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEG: u64 = 16 << 20;

    fn on_tl1(newest_segno: u64, archived_at: i64) -> Vec<TimelineMetrics> {
        vec![TimelineMetrics {
            timeline: TimelineId(1),
            segments: 3,
            gaps: 0,
            stored_bytes: 0,
            newest_end: Lsn((newest_segno + 1) * SEG),
            newest_archived: Utc.timestamp_opt(archived_at, 0).unwrap(),
        }]
    }

    #[tokio::test]
    async fn a_stanza_without_backups_reports_its_last_verify_and_drill() {
        use crate::repo::records::DrillCheck;
        use crate::repo::stanza::ClusterIdentity;
        let dir = tempfile::tempdir().unwrap();
        let storage = std::sync::Arc::new(crate::storage::LocalStorage::new(dir.path()));
        let repo = Repo::plain_for_tests(storage, "main");
        repo.stanza_create(&ClusterIdentity {
            system_identifier: 42,
            pg_major: 15,
            data_checksums: true,
            wal_segment_size: SEG,
        })
        .await
        .unwrap();
        let at = |s| Utc.timestamp_opt(s, 0).unwrap();
        let drill = DrillRecord {
            time: at(1_800_000_000),
            passed: false,
            backup: "20270115-080000F".into(),
            target: None,
            reached_lsn: None,
            reached_time: None,
            restore_seconds: 12.5,
            recovery_seconds: 3.0,
            wal_replayed_bytes: None,
            checks: vec![DrillCheck {
                name: "pg_amcheck".into(),
                passed: false,
                detail: "invalid page".into(),
            }],
            error: None,
        };
        repo.save_drill(&drill).await.unwrap();
        // A server of another cluster is not this stanza's: no lag from it.
        let elsewhere = WalPosition {
            system_identifier: 43,
            current: Some((TimelineId(1), Lsn(5 * SEG))),
            archive_failed_count: 7,
        };
        let m = collect(&repo, Some(&elsewhere), None, at(1_800_000_100))
            .await
            .unwrap();
        assert_eq!(
            (m.backups, m.damaged_backups, m.stored_bytes > 0),
            (0, 0, true)
        );
        assert!(m.newest.is_empty() && m.archive.is_empty() && m.window.is_none());
        assert_eq!((&m.lag, m.archive_command_failures), (&None, None));
        assert_eq!(m.last_drill, Some(drill));
        assert_eq!(m.last_verify, None);
        let text = exposition::render(&[exposition::Collected::Read(Box::new(m))]);
        for line in [
            "pgward_backups{stanza=\"main\"} 0\n",
            "pgward_drill_last_timestamp_seconds{stanza=\"main\"} 1800000000\n",
            "pgward_drill_last_success{stanza=\"main\"} 0\n",
            "pgward_drill_last_restore_duration_seconds{stanza=\"main\"} 12.5\n",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
        assert!(!text.contains("pgward_verify_"), "{text}");

        // The stanza's own server: its lag and failures count.
        let here = WalPosition {
            system_identifier: 42,
            ..elsewhere
        };
        let m = collect(&repo, Some(&here), None, at(1_800_000_100))
            .await
            .unwrap();
        assert_eq!(m.archive_command_failures, Some(7));
        assert_eq!(m.lag.map(|l| l.bytes), Some(5 * SEG));
    }

    #[test]
    fn lag_counts_bytes_past_the_archive_and_seconds_only_while_segments_wait() {
        let now = Utc.timestamp_opt(1_000, 0).unwrap();
        let archive = on_tl1(4, 900);
        let tl1 = TimelineId(1);
        // Writing inside segment 5, right after the archived 4: nothing complete waits.
        let lag = archive_lag(&archive, tl1, Lsn(5 * SEG + 100), SEG, now);
        assert_eq!((lag.bytes, lag.seconds), (100, 0.0));
        // At the very start of segment 5 (after pg_switch_wal): no lag at all.
        let lag = archive_lag(&archive, tl1, Lsn(5 * SEG), SEG, now);
        assert_eq!((lag.bytes, lag.seconds), (0, 0.0));
        // Segment 5 is complete and not archived: the lag is the time since 4 was.
        let lag = archive_lag(&archive, tl1, Lsn(7 * SEG + 8), SEG, now);
        assert_eq!((lag.bytes, lag.seconds), (2 * SEG + 8, 100.0));
        // A new timeline with nothing archived on it yet counts from its parent's WAL.
        let lag = archive_lag(&archive, TimelineId(2), Lsn(7 * SEG), SEG, now);
        assert_eq!((lag.bytes, lag.seconds), (2 * SEG, 100.0));
        // Nothing archived at all: all WAL waits, for no known time.
        let lag = archive_lag(&[], tl1, Lsn(3 * SEG), SEG, now);
        assert_eq!((lag.bytes, lag.seconds), (3 * SEG, 0.0));
    }
}
