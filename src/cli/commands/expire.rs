//! `expire`: remove backups and WAL outside the retention policy.

use super::{pretty, Outcome, Report};
use crate::cli::Resolved;
use crate::error::{Error, Result};
use crate::expire::ExpirePlan;

pub async fn run(resolved: &Resolved, dry_run: bool) -> Result<Outcome> {
    let repo = resolved.repo().await?;
    let retention = resolved.retention();
    if !retention.is_set() {
        return Err(Error::config("expire needs a retention policy")
            .hint("pass --retain-full N, --retain-diff N or --retain-full-days D (or set them in the configuration file)"));
    }
    let plan = crate::expire::expire(&repo, &retention, dry_run).await?;
    Ok(Outcome::report(Expired { plan, dry_run }))
}

struct Expired {
    plan: ExpirePlan,
    dry_run: bool,
}

impl Report for Expired {
    fn text(&self) -> String {
        let (expire, remove) = if self.dry_run {
            ("would expire", "would remove")
        } else {
            ("expire", "remove")
        };
        let mut out = String::new();
        for d in &self.plan.damaged_backups {
            out.push_str(&format!(
                "keep backup {} (damaged manifest){}\n",
                d.label,
                if d.keeps.is_empty() {
                    String::new()
                } else {
                    format!(" and with it {}", d.keeps.join(", "))
                }
            ));
        }
        for h in &self.plan.held_backups {
            out.push_str(&format!(
                "keep backup {} while {} reads it (else: {})\n",
                h.label,
                crate::expire::describe(&h.held_by),
                h.reason
            ));
        }
        for b in &self.plan.backups {
            out.push_str(&format!("{expire} backup {}: {}\n", b.label, b.reason));
        }
        out.push_str(&format!(
            "{remove} {} archived WAL file(s) before {}\n",
            self.plan.wal_files.len(),
            self.plan
                .wal_kept_from
                .map_or("-".to_string(), |l| l.to_string())
        ));
        if !self.plan.wal_held_by.is_empty() {
            out.push_str(&format!(
                "keep archived WAL from {} while {} reads it\n",
                self.plan
                    .wal_kept_from
                    .map_or("-".to_string(), |l| l.to_string()),
                crate::expire::describe(&self.plan.wal_held_by)
            ));
        }
        out
    }

    fn json(&self) -> Option<String> {
        pretty(&self.plan)
    }
}
