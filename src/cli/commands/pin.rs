//! `pin` and `unpin`: protect a backup from expire, or stop protecting it.

use super::{Outcome, Report};
use crate::cli::Resolved;
use crate::error::Result;

pub async fn run(resolved: &Resolved, label: String, pin: bool) -> Result<Outcome> {
    let repo = resolved.repo().await?;
    repo.set_pinned(&label, pin).await?;
    Ok(Outcome::report(Pinned { label, pin }))
}

struct Pinned {
    label: String,
    pin: bool,
}

impl Report for Pinned {
    fn text(&self) -> String {
        format!(
            "backup {} {}\n",
            self.label,
            if self.pin {
                "pinned: expire will keep it and what it builds on"
            } else {
                "unpinned"
            }
        )
    }
}
