//! `wal list|stats`: the WAL archive.

use super::{pretty, Outcome, Report};
use crate::cli::Resolved;
use crate::error::Result;
use crate::units::human_bytes;
use crate::wal::{MapsReport, WalEntry, WalStats};

pub async fn list(resolved: &Resolved) -> Result<Outcome> {
    let entries = crate::wal::list(&resolved.repo().await?).await?;
    Ok(Outcome::report(WalList(entries)))
}

pub async fn stats(resolved: &Resolved) -> Result<Outcome> {
    Ok(Outcome::report(
        crate::wal::stats(&resolved.repo().await?).await?,
    ))
}

pub async fn maps(resolved: &Resolved, backfill: bool) -> Result<Outcome> {
    Ok(Outcome::report(
        crate::wal::maps(&resolved.repo().await?, backfill).await?,
    ))
}

impl Report for MapsReport {
    fn text(&self) -> String {
        let mut s = format!(
            "{} segment(s): {} with a block map ({} poisoned), {} damaged, {} without\n",
            self.segments, self.with_maps, self.poisoned, self.damaged, self.missing
        );
        if self.built > 0 {
            s.push_str(&format!(
                "built {} map(s), {} of them poisoned\n",
                self.built, self.built_poisoned
            ));
        }
        for (name, why) in &self.untrusted {
            s.push_str(&format!("{name}: {why}\n"));
        }
        s
    }

    fn json(&self) -> Option<String> {
        pretty(self)
    }
}

struct WalList(Vec<WalEntry>);

impl Report for WalList {
    fn text(&self) -> String {
        render_list(&self.0)
    }

    fn json(&self) -> Option<String> {
        pretty(&self.0)
    }
}

impl Report for WalStats {
    fn text(&self) -> String {
        render_stats(self)
    }

    fn json(&self) -> Option<String> {
        pretty(self)
    }
}

fn render_list(entries: &[WalEntry]) -> String {
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

fn render_stats(s: &WalStats) -> String {
    let mut out = format!(
        "{} file(s): {} segment(s), {} partial, {} history, {} backup history\n{} of WAL stored in {}{}\n",
        s.files, s.segments, s.partial_segments, s.history_files, s.backup_files,
        human_bytes(s.original_bytes), human_bytes(s.stored_bytes),
        s.compression_ratio.map_or(String::new(), |r| format!(" (compression {r:.1}x)"))
    );
    out.push_str(&format!(
        "block maps: {} segment(s) with one, {} without\n",
        s.segments_with_maps, s.segments_without_maps
    ));
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
