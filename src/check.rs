//! `check`: proves the setup works end to end: the stanza matches the cluster,
//! archiving is on and points at this repository and stanza, and a freshly switched WAL
//! segment arrives in the archive.

use std::time::Duration;

use serde::Serialize;

use crate::db::{self, ConnOptions};
use crate::error::{Error, ErrorKind, Result};
use crate::pg::WalFileName;
use crate::repo::stanza::check_same_cluster;
use crate::repo::Repo;

#[derive(Debug, Serialize)]
pub struct CheckReport {
    pub stanza: String,
    pub system_identifier: String,
    pub archive_command: String,
    pub segment: String,
    pub seconds: f64,
    pub lock: String,
}

pub async fn check(repo: &Repo, conn: &ConnOptions, timeout: Duration) -> Result<CheckReport> {
    let stanza = repo.stanza_info().await?;
    let client = db::connect(conn).await?;
    let server = db::server_info(&client).await?;
    check_same_cluster(&stanza, &server.identity)?;
    let settings = db::archive_settings(&client).await?;
    if settings.archive_mode == "off" {
        return Err(
            Error::config("archiving is off on this cluster (archive_mode = off)")
                .hint("run `pgward pitr enable` and restart PostgreSQL, or set archive_mode = on"),
        );
    }
    if let Some(problem) = command_problem(&settings.archive_command, repo) {
        return Err(Error::config(format!(
            "archive_command {:?} {problem}",
            settings.archive_command
        ))
        .hint(format!(
            "set archive_command = 'pgward {} archive-push %p' (`pgward pitr enable` does it)",
            repo.cli_options()
        )));
    }
    if server.in_recovery {
        return Err(Error::config(
            "the cluster is a standby: it cannot switch WAL; run check on the primary",
        ));
    }
    let started = std::time::Instant::now();
    // Write a record first so that the switch is never a no-op.
    let row = client
        .query_one("SELECT pg_walfile_name(pg_create_restore_point('pgward check')), pg_walfile_name(pg_switch_wal())", &[])
        .await?;
    let name: String = row.get(1);
    let segment = match WalFileName::parse(&name) {
        Ok(WalFileName::Segment(s)) => s,
        _ => {
            return Err(Error::new(
                ErrorKind::Database,
                format!("server returned an unexpected WAL file name {name:?}"),
            ))
        }
    };
    crate::backup::wait_wal::wait_for_archived(repo, vec![segment], timeout).await?;
    Ok(CheckReport {
        stanza: repo.stanza.clone(),
        system_identifier: stanza.system_identifier.to_string(),
        archive_command: settings.archive_command,
        segment: name,
        seconds: started.elapsed().as_secs_f64(),
        lock: repo.lock_mechanism().await?,
    })
}

/// What is wrong with an archive_command for this repository and stanza, if anything.
pub fn command_problem(command: &str, repo: &Repo) -> Option<String> {
    let words: Vec<&str> = command
        .split_whitespace()
        .map(|w| w.trim_matches('\'').trim_matches('"'))
        .collect();
    if command.trim().is_empty() || command.trim() == "(disabled)" {
        return Some("is empty".into());
    }
    if !words
        .iter()
        .any(|w| *w == "archive-push" || *w == "wal-push")
    {
        return Some("does not run pgward archive-push".into());
    }
    let value_after = |flag: &str| {
        words
            .windows(2)
            .find(|w| w[0] == flag)
            .map(|w| w[1].to_string())
            .or_else(|| {
                words
                    .iter()
                    .find_map(|w| w.strip_prefix(&format!("{flag}=")).map(str::to_string))
            })
    };
    let location = repo.location();
    match value_after("--repo") {
        Some(r) if r.trim_end_matches('/') == location.trim_end_matches('/') => {}
        Some(r) => return Some(format!("archives into repository {r}, not {location}")),
        None => {}
    }
    match value_after("--stanza") {
        Some(s) if s == repo.stanza => None,
        Some(s) => Some(format!("archives into stanza {s:?}, not {:?}", repo.stanza)),
        None => None,
    }
}
