//! `check`: the stanza matches the cluster and a switched WAL segment reaches the archive.

use std::time::Duration;

use super::{pretty, Outcome, Report};
use crate::check::CheckReport;
use crate::cli::Resolved;
use crate::error::Result;

pub async fn run(resolved: &Resolved, archive_timeout: u64) -> Result<Outcome> {
    let repo = resolved.repo().await?;
    let report = crate::check::check(
        &repo,
        &resolved.conn(),
        Duration::from_secs(archive_timeout),
        |command| resolved.check_archive_command(&repo, command),
    )
    .await?;
    Ok(Outcome::report(report))
}

impl Report for CheckReport {
    fn text(&self) -> String {
        format!(
            "check passed: stanza {:?} matches the cluster, archive_command archives here, and segment {} reached the archive in {:.2}s; lock: {}\n",
            self.stanza, self.segment, self.seconds, self.lock
        )
    }

    fn json(&self) -> Option<String> {
        pretty(self)
    }
}
