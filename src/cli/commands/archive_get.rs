//! `archive-get` (PostgreSQL's restore_command) and its background prefetcher.

use std::path::Path;

use super::Outcome;
use crate::archive::prefetch;
use crate::cli::Resolved;
use crate::error::{Error, Result};
use crate::pg::WalFileName;

pub async fn run(
    resolved: &Resolved,
    name: &str,
    dest: &Path,
    queue_max: usize,
) -> Result<Outcome> {
    let wal = WalFileName::parse(name).map_err(|e| {
        Error::config(e.to_string()).hint("restore_command must pass %f and \"%p\"")
    })?;
    let prefetching = queue_max > 0 && matches!(wal, WalFileName::Segment(_));
    let prefetch_dir = prefetch::dir_for(dest);
    let prefetched = prefetching && prefetch_dir.join(name).exists();
    // Unlocking, the stanza's identity and the archive's listing are independent
    // round trips to the repository: one wait instead of three.
    let handle = resolved.stanza_handle().await?;
    let list = async {
        if prefetched {
            Ok(None)
        } else {
            handle.archived_for_get(&wal).await.map(Some)
        }
    };
    let (opened, listed) = tokio::join!(resolved.stanza_run_by_server(handle.clone()), list);
    // A missing stanza must stop recovery, not look like the end of the archive: its
    // error comes first.
    let (repo, _stanza) = opened?;
    let listed = listed?;
    let served = prefetching && prefetch::take(&prefetch_dir, &wal, dest)?;
    if !served {
        crate::archive::get::archive_get(&repo, &wal, listed, dest).await?;
    }
    if prefetching {
        let background = resolved.background(
            &repo,
            &[
                "archive-get-prefetch",
                name,
                &prefetch_dir.display().to_string(),
                "--count",
                &queue_max.to_string(),
            ],
        );
        let exe = std::env::current_exe()
            .map_err(|e| Error::io("finding", "pgward's own executable", e))?;
        if let Err(e) = crate::archive::spool::spawn_detached(&exe, &background) {
            tracing::warn!("prefetch not started: {e}");
        }
    }
    Ok(Outcome::quiet())
}

pub async fn prefetch(
    resolved: &Resolved,
    after: &str,
    dir: &Path,
    count: usize,
) -> Result<Outcome> {
    let repo = resolved.repo_run_by_server().await?;
    let Ok(WalFileName::Segment(segment)) = WalFileName::parse(after) else {
        return Err(Error::config(format!("{after} is not a WAL segment name")));
    };
    prefetch::run(&repo, segment, dir, count, resolved.jobs()).await?;
    Ok(Outcome::quiet())
}
