//! `wal list`, `wal stats` and `wal maps`: what the archive holds, and its block maps.

use chrono::{DateTime, TimeZone, Utc};
use serde::Serialize;

use crate::error::Result;
use crate::pg::WalFileName;
use crate::repo::archive_map::{timelines, TimelineArchive};
use crate::repo::Repo;

#[derive(Debug, Serialize)]
pub struct WalEntry {
    pub name: String,
    pub kind: &'static str,
    pub timeline: u32,
    /// Segments have the stanza's segment size; other files' sizes are not recorded.
    pub original_size: Option<u64>,
    pub stored_size: u64,
    pub compression: String,
    pub archived_at: DateTime<Utc>,
}

#[derive(Debug, Serialize)]
pub struct WalStats {
    pub files: usize,
    pub segments: usize,
    pub partial_segments: usize,
    pub history_files: usize,
    pub backup_files: usize,
    pub original_bytes: u64,
    pub stored_bytes: u64,
    /// original / stored, for complete segments.
    pub compression_ratio: Option<f64>,
    pub oldest: Option<String>,
    pub newest: Option<String>,
    pub oldest_archived_at: Option<DateTime<Utc>>,
    pub newest_archived_at: Option<DateTime<Utc>>,
    pub timelines: Vec<TimelineArchive>,
    /// Complete segments with a block map, and without one (from listings).
    pub segments_with_maps: usize,
    pub segments_without_maps: usize,
}

pub async fn list(repo: &Repo) -> Result<Vec<WalEntry>> {
    let stanza = repo.stanza_info().await?;
    Ok(repo
        .list_archive()
        .await?
        .into_iter()
        .map(|f| {
            let (kind, original_size) = match f.name {
                WalFileName::Segment(_) => ("segment", Some(stanza.wal_segment_size)),
                WalFileName::Partial(_) => ("partial", None),
                WalFileName::BackupHistory { .. } => ("backup", None),
                WalFileName::History(_) => ("history", None),
            };
            WalEntry {
                name: f.name.to_string(),
                kind,
                timeline: f.name.timeline().0,
                original_size,
                stored_size: f.stored_size,
                compression: f.codec.to_string(),
                archived_at: Utc
                    .timestamp_opt(f.archived_at, 0)
                    .single()
                    .unwrap_or_default(),
            }
        })
        .collect())
}

pub async fn stats(repo: &Repo) -> Result<WalStats> {
    let stanza = repo.stanza_info().await?;
    let entries = list(repo).await?;
    let archived = repo.list_archive().await?;
    let count = |k: &str| entries.iter().filter(|e| e.kind == k).count();
    let segments: Vec<&WalEntry> = entries.iter().filter(|e| e.kind == "segment").collect();
    let original: u64 = segments.iter().filter_map(|e| e.original_size).sum();
    let stored_segments: u64 = segments.iter().map(|e| e.stored_size).sum();
    let mapped = repo.wal_map_names().await?;
    let with_maps = archived
        .iter()
        .filter(|f| matches!(f.name, WalFileName::Segment(_)) && mapped.contains(&f.name))
        .count();
    Ok(WalStats {
        files: entries.len(),
        segments: segments.len(),
        partial_segments: count("partial"),
        history_files: count("history"),
        backup_files: count("backup"),
        original_bytes: original,
        stored_bytes: entries.iter().map(|e| e.stored_size).sum(),
        compression_ratio: (stored_segments > 0).then(|| original as f64 / stored_segments as f64),
        oldest: segments.first().map(|e| e.name.clone()),
        newest: segments.last().map(|e| e.name.clone()),
        oldest_archived_at: entries.iter().map(|e| e.archived_at).min(),
        newest_archived_at: entries.iter().map(|e| e.archived_at).max(),
        timelines: timelines(&archived, stanza.wal_segment_size),
        segments_with_maps: with_maps,
        segments_without_maps: segments.len() - with_maps,
    })
}

/// What `wal maps` found (and, with `--backfill`, built).
#[derive(Debug, Serialize, Default)]
pub struct MapsReport {
    pub segments: usize,
    pub with_maps: usize,
    pub poisoned: usize,
    pub damaged: usize,
    pub missing: usize,
    pub built: usize,
    pub built_poisoned: usize,
    /// Segment name and why its map is poisoned (or damaged).
    pub untrusted: Vec<(String, String)>,
}

/// Reads every block map; with `backfill`, builds the missing and damaged ones and
/// rebuilds those poisoned only for want of the previous segment, in WAL order.
pub async fn maps(repo: &Repo, backfill: bool) -> Result<MapsReport> {
    let mut report = MapsReport::default();
    let segments: Vec<_> = repo
        .list_archive()
        .await?
        .into_iter()
        .filter(|f| matches!(f.name, WalFileName::Segment(_)))
        .collect();
    report.segments = segments.len();
    for file in &segments {
        let rebuild = match repo.read_wal_map(&file.name).await {
            Ok(Some(map)) => {
                report.with_maps += 1;
                if map.poison.is_poisoned() {
                    report.poisoned += 1;
                    report
                        .untrusted
                        .push((file.name.to_string(), map.poison.reasons().join(", ")));
                }
                crate::repo::wal_map::retry_worthwhile(&map)
            }
            Ok(None) => {
                report.missing += 1;
                true
            }
            Err(e) if e.kind == crate::error::ErrorKind::Corrupt => {
                report.damaged += 1;
                report
                    .untrusted
                    .push((file.name.to_string(), e.to_string()));
                true
            }
            Err(e) => return Err(e),
        };
        if backfill && rebuild {
            let bytes = repo.read_wal(file).await?;
            let map = repo
                .build_wal_map(&file.name, bytes, &file.checksum, None)
                .await?;
            report.built += 1;
            if map.poison.is_poisoned() {
                report.built_poisoned += 1;
            }
        }
    }
    Ok(report)
}
