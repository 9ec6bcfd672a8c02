//! `wal list|stats`: the WAL archive.

use super::{pretty, Outcome, Report};
use crate::cli::Resolved;
use crate::error::Result;
use crate::wal::{WalEntry, WalStats};

pub async fn list(resolved: &Resolved) -> Result<Outcome> {
    let entries = crate::wal::list(&resolved.repo().await?).await?;
    Ok(Outcome::report(WalList(entries)))
}

pub async fn stats(resolved: &Resolved) -> Result<Outcome> {
    Ok(Outcome::report(
        crate::wal::stats(&resolved.repo().await?).await?,
    ))
}

struct WalList(Vec<WalEntry>);

impl Report for WalList {
    fn text(&self) -> String {
        crate::wal::render_list(&self.0)
    }

    fn json(&self) -> Option<String> {
        pretty(&self.0)
    }
}

impl Report for WalStats {
    fn text(&self) -> String {
        crate::wal::render_stats(self)
    }

    fn json(&self) -> Option<String> {
        pretty(self)
    }
}
