//! `verify`: re-read every stored file; problems are printed, then fail the command.

use super::{pretty, Outcome, Report};
use crate::cli::Resolved;
use crate::error::{Error, Result};
use crate::units::human_bytes;
use crate::verify::VerifyReport;

pub async fn run(resolved: &Resolved) -> Result<Outcome> {
    let repo = resolved.repo().await?;
    let report = crate::verify::verify(&repo, resolved.jobs()).await?;
    let failure = (!report.problems.is_empty())
        .then(|| Error::corrupt(format!("verify found {} problem(s)", report.problems.len())));
    Ok(Outcome::report(report).then_fail(failure))
}

impl Report for VerifyReport {
    fn text(&self) -> String {
        let mut out = format!(
            "checked {} backup(s), {} stored extent(s), {} archived WAL file(s), {} read\n",
            self.backups_checked,
            self.extents_checked,
            self.wal_files_checked,
            human_bytes(self.bytes_read)
        );
        for p in &self.problems {
            out.push_str(&format!("PROBLEM: {}\n  breaks: {}\n", p.problem, p.breaks));
        }
        if self.problems.is_empty() {
            out.push_str("no problems found\n");
        }
        out
    }

    fn json(&self) -> Option<String> {
        pretty(self)
    }
}
