//! `archive-push` (PostgreSQL's archive_command) and its background worker.

use std::path::Path;

use super::Outcome;
use crate::archive::push::PushOutcome;
use crate::archive::spool::{push_async, run_worker, Spool};
use crate::cli::Resolved;
use crate::error::Result;

/// `spool`: with `--async`, the spool root to queue the file in.
pub async fn run(
    resolved: &Resolved,
    path: &Path,
    spool: Option<&Path>,
    queue_max: usize,
) -> Result<Outcome> {
    let (repo, stanza) = resolved
        .stanza_run_by_server(resolved.stanza_handle().await?)
        .await?;
    if let Some(spool_path) = spool {
        let spool = Spool::new(spool_path, &repo.stanza);
        let worker = resolved.background(
            &repo,
            &[
                "archive-push-worker",
                "--spool-path",
                &spool_path.display().to_string(),
            ],
        );
        push_async(&stanza, path, &spool, queue_max, &worker).await?;
        return Ok(Outcome::quiet());
    }
    match crate::archive::push::archive_push(
        &repo,
        Some(&stanza),
        path,
        resolved.compression()?,
        resolved.wal_maps(),
        None,
    )
    .await?
    {
        PushOutcome::Stored { stored_size } => {
            tracing::debug!(path = %path.display(), stored_size, "archived")
        }
        PushOutcome::AlreadyArchived => {
            tracing::info!(path = %path.display(), "already archived with identical contents")
        }
    }
    Ok(Outcome::quiet())
}

pub async fn worker(resolved: &Resolved, spool_path: &Path) -> Result<Outcome> {
    let repo = resolved.repo_run_by_server().await?;
    let spool = Spool::new(spool_path, &repo.stanza);
    run_worker(
        &repo,
        &spool,
        resolved.compression()?,
        resolved.wal_maps(),
        resolved.jobs(),
    )
    .await?;
    Ok(Outcome::quiet())
}
