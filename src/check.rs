//! `check`: proves the setup works end to end: the stanza matches the cluster,
//! archiving is on and points at this repository and stanza, and a freshly switched WAL
//! segment arrives in the archive.

use std::time::Duration;

use serde::Serialize;

use crate::db::{self, ConnOptions};
use crate::error::{Error, ErrorKind, Result};
use crate::pg::WalFileName;
use crate::repo::archive_command::command_problem;
use crate::repo::archive_map::wait_for_archived;
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

/// `command_check` judges the server's archive_command beyond its repository and stanza
/// (whether it can unlock the stanza with what it has), before any WAL is switched.
pub async fn check<F>(
    repo: &Repo,
    conn: &ConnOptions,
    timeout: Duration,
    command_check: impl FnOnce(String) -> F,
) -> Result<CheckReport>
where
    F: std::future::Future<Output = Result<()>>,
{
    let stanza = repo.stanza_info().await?;
    warn_if_open_to_others(repo);
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
    command_check(settings.archive_command.clone()).await?;
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
    if let Err(e) = wait_for_archived(repo, vec![segment], timeout).await {
        return Err(match archive_failure(&client, &name).await {
            Some(failure) => Error::new(ErrorKind::Timeout, failure).hint(
                "PostgreSQL's log has the archive_command's error (grep archive-push); \
                 `pgward pitr status` shows the archiver's state",
            ),
            None => e,
        });
    }
    Ok(CheckReport {
        stanza: repo.stanza.clone(),
        system_identifier: stanza.system_identifier.to_string(),
        archive_command: settings.archive_command,
        segment: name,
        seconds: started.elapsed().as_secs_f64(),
        lock: repo.probe_lock_mechanism().await?,
    })
}

/// pgward creates every directory of a local repository 0700, but it leaves a root the
/// operator made, and what earlier versions wrote under the umask: say so when other
/// users can reach the stanza's files (both the root and the stanza directory open).
fn warn_if_open_to_others(repo: &Repo) {
    use std::os::unix::fs::MetadataExt;
    let Some(root) = repo.local_root() else {
        return; // object storage: pgward sets no ACL, the bucket's policy decides
    };
    // The permission bits of a directory that group or others can use, if it is one.
    let open = |dir: &std::path::Path| {
        std::fs::metadata(dir)
            .ok()
            .map(|m| m.mode() & 0o777)
            .filter(|mode| mode & 0o077 != 0)
    };
    let stanza_dir = root.join(&repo.stanza);
    if let (Some(root_mode), Some(stanza_mode)) = (open(&root), open(&stanza_dir)) {
        tracing::warn!(
            "repository {} ({root_mode:o}) and its stanza directory ({stanza_mode:o}) are open \
             to other users, who may read backups and WAL: run `chmod -R go-rwx {}`",
            root.display(),
            root.display()
        );
    }
}

/// What pg_stat_archiver says about `segment` when it did not reach the archive: the
/// archive_command failed on it (PostgreSQL retries it), or failed on an earlier segment
/// it still has to archive first.
async fn archive_failure(client: &tokio_postgres::Client, segment: &str) -> Option<String> {
    let row = client
        .query_one(
            "SELECT failed_count, last_failed_wal, last_failed_time::text, last_archived_wal \
             FROM pg_stat_archiver",
            &[],
        )
        .await
        .ok()?;
    let (failed, last_failed, when, last_archived): (
        i64,
        Option<String>,
        Option<String>,
        Option<String>,
    ) = (row.get(0), row.get(1), row.get(2), row.get(3));
    let last_failed = last_failed?;
    if failed == 0 || last_archived.as_deref() >= Some(last_failed.as_str()) {
        return None; // the failure is older than the last success
    }
    Some(format!(
        "segment {segment} did not reach the archive: PostgreSQL's archive_command fails \
         (last on {last_failed} at {}, {failed} failure(s) since the statistics were reset)",
        when.unwrap_or_default()
    ))
}
