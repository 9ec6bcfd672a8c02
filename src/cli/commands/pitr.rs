//! `pitr enable|disable|status`: WAL archiving into this repository.

use super::{pretty, Outcome, Report};
use crate::cli::Resolved;
use crate::error::Result;
use crate::pitr::{ChangeReport, Status};

pub async fn enable(resolved: &Resolved) -> Result<Outcome> {
    let repo = resolved.repo().await?;
    // Before anything changes: never replace a working archive_command with one that
    // cannot unlock the stanza.
    resolved
        .check_generated_command(&repo, "archive_command")
        .await?;
    let report = crate::pitr::enable(
        &repo,
        &resolved.conn(),
        resolved.global.pgdata.as_deref(),
        &resolved.archive_command(&repo),
    )
    .await?;
    Ok(Outcome::report(report))
}

pub async fn disable(resolved: &Resolved) -> Result<Outcome> {
    let repo = resolved.repo().await?;
    let report =
        crate::pitr::disable(&repo, &resolved.conn(), resolved.global.pgdata.as_deref()).await?;
    Ok(Outcome::report(report))
}

pub async fn status(resolved: &Resolved) -> Result<Outcome> {
    let repo = resolved.repo().await?;
    Ok(Outcome::report(
        crate::pitr::status(&repo, &resolved.conn()).await?,
    ))
}

impl Report for ChangeReport {
    fn text(&self) -> String {
        let mut out = String::new();
        for copy in &self.saved_copies {
            out.push_str(&format!(
                "saved a copy of the old configuration: {}\n",
                copy.display()
            ));
        }
        for (name, old, new) in &self.changes {
            out.push_str(&format!("{name}: {old:?} -> {new:?}\n"));
        }
        out.push_str(&format!(
            "written with {} ({})\n",
            self.method,
            self.config_file.display()
        ));
        out.push_str(if self.restart_needed {
            "restart PostgreSQL for the change to take effect\n"
        } else {
            "reloaded: in effect now\n"
        });
        out
    }

    fn json(&self) -> Option<String> {
        pretty(self)
    }
}

impl Report for Status {
    fn text(&self) -> String {
        let time = |t: Option<chrono::DateTime<chrono::Utc>>| {
            t.map_or("-".into(), |t| {
                t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
            })
        };
        let s = self;
        format!(
            "archiving: {}\n\
             wal_level = {}, archive_mode = {}\n\
             archive_command = {}{}\n\
             archived: {} segment(s), last {} at {}\n\
             failed: {} time(s), last {} at {}\n\
             waiting in pg_wal/archive_status: {}; seconds since last archived: {}\n\
             newest backup: {}\n",
            if s.working { "working" } else { "NOT working" },
            s.wal_level,
            s.archive_mode,
            s.archive_command,
            s.archive_command_problem
                .as_ref()
                .map(|p| format!("  (problem: {p})"))
                .unwrap_or_default(),
            s.archived_count,
            s.last_archived_wal.as_deref().unwrap_or("-"),
            time(s.last_archived_time),
            s.failed_count,
            s.last_failed_wal.as_deref().unwrap_or("-"),
            time(s.last_failed_time),
            s.waiting_segments,
            s.lag_seconds.map_or("-".into(), |l| format!("{l:.0}")),
            s.newest_backup.as_deref().unwrap_or("none")
        )
    }

    fn json(&self) -> Option<String> {
        pretty(self)
    }
}
