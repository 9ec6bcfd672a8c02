//! `restore` and its WAL-G style form `backup-fetch DIR LABEL`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::{Outcome, Report};
use crate::cli::args::RestoreArgs;
use crate::cli::Resolved;
use crate::error::{Error, Result};
use crate::repo::manifest::Manifest;
use crate::repo::Repo;
use crate::restore::target::{parse_target_timeline, TargetOptions};

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
    let manifest = crate::restore::restore(repo, opts).await?;
    Ok(Outcome::report(Restored {
        manifest,
        fetched_into,
    }))
}

struct Restored {
    manifest: Manifest,
    /// backup-fetch's DIR: it says where, restore says what next.
    fetched_into: Option<PathBuf>,
}

impl Report for Restored {
    fn text(&self) -> String {
        let m = &self.manifest;
        match &self.fetched_into {
            Some(dir) => format!("restored backup {} into {}\n", m.label, dir.display()),
            None => format!(
                "restored backup {} ({} files); start the cluster to recover\n",
                m.label,
                m.files.len()
            ),
        }
    }
}

fn restore_options(
    resolved: &Resolved,
    repo: &Repo,
    pgdata: PathBuf,
    args: RestoreArgs,
) -> Result<crate::restore::RestoreOptions> {
    let target = TargetOptions {
        time: args.target_time.as_deref(),
        xid: args.target_xid,
        lsn: args.target_lsn.as_deref(),
        name: args.target_name.as_deref(),
        immediate: args.target.is_some(),
    }
    .parse()?;
    let mut tablespace_map = BTreeMap::new();
    for (oid, dir) in args.tablespace_map {
        let oid: u32 = oid.parse().map_err(|_| {
            Error::config(format!(
                "--tablespace-map {oid}={dir}: {oid} is not a tablespace OID"
            ))
        })?;
        tablespace_map.insert(oid, PathBuf::from(dir));
    }
    if let Some(tl) = &args.target_timeline {
        parse_target_timeline(tl)?;
    }
    Ok(crate::restore::RestoreOptions {
        set: args.set,
        pgdata,
        tablespace_map,
        target,
        target_action: args.target_action,
        target_timeline: args.target_timeline,
        target_exclusive: args.target_exclusive,
        target_unchecked: args.target_unchecked,
        jobs: resolved.jobs(),
        restore_command: resolved.restore_command(repo),
        archive_off: args.archive_mode == "off",
    })
}
