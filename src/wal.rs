//! `wal list` and `wal stats`: what the archive holds.

use chrono::{DateTime, TimeZone, Utc};
use serde::Serialize;

use crate::error::Result;
use crate::pg::WalFileName;
use crate::repo::archive_map::{timelines, TimelineArchive};
use crate::repo::Repo;
use crate::units::human_bytes;

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
    })
}

pub fn render_list(entries: &[WalEntry]) -> String {
    let mut s = format!(
        "{:<42} {:<8} {:>8} {:>12} {:>12} {:<5} {}\n",
        "name", "kind", "timeline", "size", "stored", "codec", "archived"
    );
    for e in entries {
        s.push_str(&format!(
            "{:<42} {:<8} {:>8} {:>12} {:>12} {:<5} {}\n",
            e.name,
            e.kind,
            e.timeline,
            e.original_size.map_or("-".into(), human_bytes),
            human_bytes(e.stored_size),
            e.compression,
            e.archived_at.format("%Y-%m-%d %H:%M:%S")
        ));
    }
    s
}

pub fn render_stats(s: &WalStats) -> String {
    let mut out = format!(
        "{} file(s): {} segment(s), {} partial, {} history, {} backup history\n{} of WAL stored in {}{}\n",
        s.files, s.segments, s.partial_segments, s.history_files, s.backup_files,
        human_bytes(s.original_bytes), human_bytes(s.stored_bytes),
        s.compression_ratio.map_or(String::new(), |r| format!(" (compression {r:.1}x)"))
    );
    if let (Some(o), Some(n)) = (&s.oldest, &s.newest) {
        out.push_str(&format!("oldest segment {o}, newest {n}\n"));
    }
    for t in &s.timelines {
        out.push_str(&format!(
            "timeline {}: {} .. {}, {} segment(s), {}\n",
            t.timeline,
            t.first_segment,
            t.last_segment,
            t.segments,
            if t.gaps.is_empty() {
                "no gaps".to_string()
            } else {
                format!("{} gap(s): {:?}", t.gaps.len(), t.gaps)
            }
        ));
    }
    out
}
