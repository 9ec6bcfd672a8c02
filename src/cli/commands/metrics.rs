//! `metrics`: the Prometheus text of one stanza or of every stanza of the repository.
//! `serve` calls [`exposition`] for each scrape.

use std::time::Duration;

use super::{Outcome, Report};
use crate::archive::spool::Spool;
use crate::cli::args::MetricsArgs;
use crate::cli::Resolved;
use crate::db::WalPosition;
use crate::error::{Error, Result};
use crate::metrics::exposition::{render, Collected};
use crate::repo::{stanza_names, StanzaHandle};

/// How long asking the server for its WAL position may take: a scrape must not hang on
/// a server that does not answer (the lag is then left out).
const SERVER_TIMEOUT: Duration = Duration::from_secs(5);

pub async fn run(resolved: &Resolved, args: &MetricsArgs) -> Result<Outcome> {
    Ok(Outcome::report(MetricsText(
        exposition(resolved, args).await?,
    )))
}

struct MetricsText(String);

impl Report for MetricsText {
    fn text(&self) -> String {
        self.0.clone()
    }
}

/// Collects every stanza asked for and renders them. A stanza that cannot be read is
/// reported as `pgward_up 0` (and logged), so one broken stanza hides no other; only a
/// repository that cannot be listed at all is an error.
pub(super) async fn exposition(resolved: &Resolved, args: &MetricsArgs) -> Result<String> {
    let handles = stanzas(resolved, args).await?;
    let server = server_position(resolved).await;
    let pass = resolved.passphrase()?;
    let mut collected = Vec::with_capacity(handles.len());
    for handle in handles {
        let stanza = handle.stanza().to_string();
        let spool = match Spool::new(&args.spool_path, &stanza).status() {
            Ok(status) => status,
            Err(e) => {
                tracing::warn!(stanza, "metrics: leaving out the spool: {e}");
                None
            }
        };
        let result = async {
            let repo = handle.unlock(pass.as_deref()).await?;
            crate::metrics::collect(&repo, server.as_ref(), spool, chrono::Utc::now()).await
        }
        .await;
        collected.push(match result {
            Ok(m) => Collected::Read(Box::new(m)),
            Err(e) => {
                tracing::warn!(stanza, "metrics: stanza {stanza:?} unreadable: {e}");
                Collected::Unreadable { stanza }
            }
        });
    }
    Ok(render(&collected))
}

/// The stanza the options name, or every stanza of the repository.
async fn stanzas(resolved: &Resolved, args: &MetricsArgs) -> Result<Vec<StanzaHandle>> {
    if !args.all_stanzas && resolved.global.stanza.is_some() {
        return Ok(vec![resolved.stanza_handle().await?]);
    }
    let url = resolved.global.repo.as_deref().ok_or_else(|| {
        Error::config("no repository given")
            .hint("pass --repo DIR, set PGWARD_REPO, or set repo in the configuration file")
    })?;
    let storage = crate::storage::open(url, &resolved.store_options()?).await?;
    stanza_names(&storage)
        .await?
        .iter()
        .map(|name| StanzaHandle::new(storage.clone(), name))
        .collect()
}

/// Where the server's WAL stands, when it answers; why not is logged at debug level
/// (a repository host without a server is normal).
async fn server_position(resolved: &Resolved) -> Option<WalPosition> {
    let conn = resolved.conn();
    let asked = async {
        let client = crate::db::connect(&conn).await?;
        crate::db::wal_position(&client).await
    };
    match tokio::time::timeout(SERVER_TIMEOUT, asked).await {
        Ok(Ok(position)) => Some(position),
        Ok(Err(e)) => {
            tracing::debug!("metrics: no archive lag, the server did not answer: {e}");
            None
        }
        Err(_) => {
            tracing::debug!(
                "metrics: no archive lag, the server did not answer within {}s",
                SERVER_TIMEOUT.as_secs()
            );
            None
        }
    }
}
