//! `restore` and its WAL-G style form `backup-fetch DIR LABEL`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::{Outcome, Report};
use crate::cli::args::{RestoreArgs, RestoreType};
use crate::cli::Resolved;
use crate::error::{Error, Result};
use crate::repo::manifest::Manifest;
use crate::repo::Repo;
use crate::restore::delta::DeltaStats;
use crate::restore::target::RecoveryTarget;
use crate::units::human_bytes;

pub async fn run(resolved: &Resolved, args: RestoreArgs) -> Result<Outcome> {
    let repo = resolved.repo().await?;
    let pgdata = resolved.global.pgdata.clone().ok_or_else(|| {
        Error::config("restore needs a destination")
            .hint("pass --pgdata DIR (an empty or new directory)")
    })?;
    let opts = restore_options(resolved, &repo, pgdata, args)?;
    restore_reported(resolved, &repo, opts, None).await
}

/// A restore with defaults (recovery to the end of the archive) of LABEL or LATEST.
pub async fn fetch(resolved: &Resolved, dir: PathBuf, label: &str) -> Result<Outcome> {
    let repo = resolved.repo().await?;
    let set = (!label.eq_ignore_ascii_case("LATEST")).then(|| label.to_string());
    let opts = restore_options(resolved, &repo, dir.clone(), RestoreArgs::for_fetch(set))?;
    restore_reported(resolved, &repo, opts, Some(dir)).await
}

/// Both forms, once their options are resolved: the generated restore_command checked
/// against what the server will have, then the restore.
async fn restore_reported(
    resolved: &Resolved,
    repo: &Repo,
    opts: crate::restore::RestoreOptions,
    fetched_into: Option<PathBuf>,
) -> Result<Outcome> {
    resolved
        .check_generated_command(repo, "restore_command")
        .await?;
    let standby = opts.primary_conninfo.is_some();
    let restored = crate::restore::restore(repo, opts).await?;
    Ok(Outcome::report(Restored {
        manifest: restored.manifest,
        files: restored.files,
        delta: restored.delta,
        standby,
        fetched_into,
    }))
}

struct Restored {
    manifest: Manifest,
    files: usize,
    delta: Option<DeltaStats>,
    standby: bool,
    /// backup-fetch's DIR: it says where, restore says what next.
    fetched_into: Option<PathBuf>,
}

impl Report for Restored {
    fn text(&self) -> String {
        let m = &self.manifest;
        let mut out = match &self.fetched_into {
            Some(dir) => format!("restored backup {} into {}\n", m.label, dir.display()),
            None => format!(
                "restored backup {} ({} files){}; start the cluster to {}\n",
                m.label,
                self.files,
                if self.delta.is_some() {
                    " by delta"
                } else {
                    ""
                },
                if self.standby {
                    "follow the primary"
                } else {
                    "recover"
                }
            ),
        };
        if let Some(d) = &self.delta {
            out.push_str(&format!(
                "delta: {} files kept, {} rewritten, {} removed; read {}, wrote {}, fetched {}, removed {}\n",
                d.files_kept,
                d.files_rewritten,
                d.files_removed,
                human_bytes(d.read),
                human_bytes(d.written),
                human_bytes(d.fetched),
                human_bytes(d.removed)
            ));
        }
        out
    }

    fn json(&self) -> Option<String> {
        super::pretty(&serde_json::json!({
            "label": self.manifest.label,
            "files": self.files,
            "type": if self.standby { "standby" } else { "recovery" },
            "delta": self.delta,
        }))
    }
}

fn restore_options(
    resolved: &Resolved,
    repo: &Repo,
    pgdata: PathBuf,
    args: RestoreArgs,
) -> Result<crate::restore::RestoreOptions> {
    let target = args.recovery.target(args.target.is_some())?;
    let mut tablespace_map = BTreeMap::new();
    for (oid, dir) in args.tablespace_map {
        let oid: u32 = oid.parse().map_err(|_| {
            Error::config(format!(
                "--tablespace-map {oid}={dir}: {oid} is not a tablespace OID"
            ))
        })?;
        tablespace_map.insert(oid, PathBuf::from(dir));
    }
    if args.restore_type == RestoreType::Standby
        && (target != RecoveryTarget::EndOfArchive || args.target_action.is_some())
    {
        return Err(Error::config(
            "--type standby follows its primary: it takes no recovery target or target action",
        )
        .hint("restore to a target with --type recovery, or drop the --target-* options"));
    }
    Ok(crate::restore::RestoreOptions {
        set: args.set,
        pgdata,
        tablespace_map,
        target,
        target_action: args.target_action,
        target_timeline: args.recovery.target_timeline,
        target_exclusive: args.recovery.target_exclusive,
        target_unchecked: args.recovery.target_unchecked,
        jobs: resolved.jobs(),
        restore_command: resolved.restore_command(repo),
        archive_off: args.archive_mode == "off",
        delta: args.delta,
        force: args.force,
        primary_conninfo: match args.restore_type {
            RestoreType::Standby => args.primary_conninfo,
            RestoreType::Recovery => None,
        },
    })
}
