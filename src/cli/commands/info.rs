//! `info`: backups, the archive and the recoverable window.

use super::{pretty, Outcome, Report};
use crate::cli::Resolved;
use crate::error::Result;
use crate::info::{InfoReport, TimelineWindow};
use crate::units::human_bytes;

pub async fn run(resolved: &Resolved) -> Result<Outcome> {
    let repo = resolved.repo().await?;
    Ok(Outcome::report(crate::info::info(&repo).await?))
}

impl Report for InfoReport {
    fn text(&self) -> String {
        render_text(self)
    }

    fn json(&self) -> Option<String> {
        pretty(self)
    }
}

fn render_text(r: &InfoReport) -> String {
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
    for h in &r.holds {
        let what = if h.scope.every_backup {
            "every backup".to_string()
        } else {
            h.scope.backups.join(", ")
        };
        s.push_str(&format!("held by {}: {what}\n", h.holder));
    }
    s.push_str(&format!("\nbackups: {}\n", r.backups.len()));
    for b in &r.backups {
        s.push_str(&format!(
            "  {}  {}{}{}  timeline {}  {} .. {}  {} .. {}  {:.1}s  database {}  stored {}{}{}\n",
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
            super::describe::taken_on(b.from_standby, b.node.as_deref())
                .map(|t| format!("  {t}"))
                .unwrap_or_default(),
            if b.checksum_failures > 0 {
                format!("  {} page checksum failure(s)", b.checksum_failures)
            } else {
                String::new()
            }
        ));
        for p in &b.problems {
            s.push_str(&format!("    PROBLEM: {p}\n"));
        }
        if let Some(reads) = &b.reads {
            for line in super::describe::reads_line(reads).lines() {
                s.push_str(&format!("    {line}\n"));
            }
        }
    }
    if !r.damaged_backups.is_empty() {
        s.push_str(&format!(
            "\ndamaged backups (cannot be restored; `pgward verify` says what else they break): {}\n",
            r.damaged_backups.len()
        ));
        for d in &r.damaged_backups {
            s.push_str(&format!("  {}  DAMAGED: {}\n", d.label, d.problem));
        }
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
    s.push_str(&render_last_drill(r.last_drill.as_ref()));
    s.push_str(&render_last_verify(r.last_verify.as_ref()));
    for d in &r.damaged_records {
        s.push_str(&format!(
            "  DAMAGED record (the next run replaces it): {}\n",
            d.problem
        ));
    }
    s
}

fn render_last_drill(drill: Option<&crate::repo::records::DrillRecord>) -> String {
    let Some(d) = drill else {
        return "\nlast drill: none (`pgward drill` proves a backup restores)\n".into();
    };
    let mut s = format!(
        "\nlast drill: {} {} backup {}{}",
        d.time.format("%Y-%m-%d %H:%M:%S UTC"),
        if d.passed { "passed" } else { "FAILED" },
        d.backup,
        d.reached_lsn
            .as_ref()
            .map(|l| format!(", reached {l}"))
            .unwrap_or_default()
    );
    let failed: Vec<&str> = d
        .checks
        .iter()
        .filter(|c| !c.passed)
        .map(|c| c.name.as_str())
        .collect();
    if !d.checks.is_empty() {
        s.push_str(&format!(
            ", {} check(s){}",
            d.checks.len(),
            if failed.is_empty() {
                String::new()
            } else {
                format!(", failed: {}", failed.join(", "))
            }
        ));
    }
    s.push('\n');
    if let Some(e) = &d.error {
        s.push_str(&format!("  error: {e}\n"));
    }
    s
}

fn render_last_verify(verify: Option<&crate::repo::records::VerifyRecord>) -> String {
    let Some(v) = verify else {
        return "last verify: none (`pgward verify` reads back every stored byte)\n".into();
    };
    format!(
        "last verify: {} {}, {} backup(s) and {} WAL file(s) in {:.1} s{}\n",
        v.time.format("%Y-%m-%d %H:%M:%S UTC"),
        if v.passed { "passed" } else { "FAILED" },
        v.backups,
        v.wal_segments,
        v.seconds,
        if v.passed {
            String::new()
        } else {
            format!(
                ", {} problem(s): run `pgward verify` to see them",
                v.problems
            )
        }
    )
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
