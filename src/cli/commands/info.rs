//! `info`: backups, the archive and the recoverable window.

use super::{pretty, Outcome, Report};
use crate::cli::Resolved;
use crate::error::Result;
use crate::info::InfoReport;

pub async fn run(resolved: &Resolved) -> Result<Outcome> {
    let repo = resolved.repo().await?;
    Ok(Outcome::report(crate::info::info(&repo).await?))
}

impl Report for InfoReport {
    fn text(&self) -> String {
        crate::info::render_text(self)
    }

    fn json(&self) -> Option<String> {
        pretty(self)
    }
}
