//! Backups taken from a standby in recovery. PostgreSQL runs the non-exclusive start and
//! stop calls on a standby (13 and later), and the files are copied from the standby's
//! data directory; what differs from a primary lives here:
//!
//! - A standby cannot switch WAL: the segment holding the stop LSN reaches the archive
//!   only once the primary (whose archive_command, or an `archive_mode = always`
//!   standby's, archives it) finishes it. Given the primary's connection (`--primary-host`,
//!   `--primary-port`), pgward checks it is this cluster's primary before starting (a
//!   mistake fails early) and switches WAL there once the standby's stop returns,
//!   connecting again then (a backup can outlast an idle connection). The switch only
//!   makes the wait short: if it fails, pgward warns and waits as without the primary, up
//!   to `--archive-timeout`, and then names the missing segment and the remedies.
//! - The stop LSN is where the standby's replay was (its minimum recovery point), not the
//!   primary's position: a standby far behind the primary makes an old backup, which
//!   pgward says when it can measure it.
//! - An incremental or differential takes every page whose LSN is below its reference's
//!   start from the reference. That is sound only if this node has replayed everything
//!   the reference saw: a standby behind the node where the reference was taken still has
//!   old versions of pages the reference holds newer ones of, and the restore would mix
//!   them. So pgward waits for replay to pass the reference's stop LSN before starting.
//! - A standby can be promoted, or follow a new timeline, during the backup. PostgreSQL's
//!   stop call refuses a promotion ("the standby was promoted during online backup");
//!   pgward refuses a timeline change too (its WAL wait and reference check are for one
//!   timeline). Either way no manifest is written, and the bundles copied so far are left
//!   for the next backup to remove, as after any interrupted backup.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio_postgres::Client;

use super::BackupOptions;
use crate::db::{self, BackupStop, ConnOptions, ServerInfo};
use crate::error::{Error, ErrorKind, Result};
use crate::pg::backup_label::BackupLabel;
use crate::pg::{Lsn, TimelineId, WalSegment};
use crate::repo::archive_map::wait_until_archived;
use crate::repo::manifest::Manifest;
use crate::repo::Repo;

/// What a backup of a standby needs beyond a primary's.
pub struct Standby {
    /// The standby, for messages (`host:port`).
    node: String,
    server: ServerInfo,
    primary: Option<Primary>,
    /// Warn when replay is this many bytes behind the primary at the stop.
    lag_warning: u64,
    /// Bounds the wait for replay and the wait for WAL (`--archive-timeout`).
    timeout: Duration,
    /// WAL was switched on the primary after the stop (for the timeout's message).
    switched: AtomicBool,
}

struct Primary {
    conn: ConnOptions,
    node: String,
}

impl Standby {
    /// None when the server is not in recovery (a primary given then is not needed, and
    /// said so). Otherwise connects to the primary, if given, and checks that it is this
    /// cluster's primary: the same system identifier, and not in recovery itself.
    pub async fn connect(
        server: &ServerInfo,
        node: &str,
        opts: &BackupOptions,
    ) -> Result<Option<Standby>> {
        let primary = opts.primary.as_ref();
        if !server.in_recovery {
            if let Some(p) = primary {
                tracing::warn!(
                    "{node} is not a standby: not connecting to the primary given ({})",
                    p.describe()
                );
            }
            return Ok(None);
        }
        let primary = match primary {
            None => None,
            Some(conn) => Some(Primary::connect(conn, server).await?.0),
        };
        tracing::info!(
            primary = primary.as_ref().map(|p| p.node.as_str()),
            "{node} is a standby: backing up from it"
        );
        Ok(Some(Standby {
            node: node.to_string(),
            server: server.clone(),
            primary,
            lag_warning: opts.standby_lag_warning,
            timeout: opts.archive_timeout,
            switched: AtomicBool::new(false),
        }))
    }

    /// Waits until the standby has replayed past the end of `reference` (see the module
    /// comment), at most `--archive-timeout`.
    pub async fn wait_for_replay(&self, client: &Client, reference: &Manifest) -> Result<()> {
        let timeout = self.timeout;
        let deadline = Instant::now() + timeout;
        let mut told = false;
        loop {
            let replayed = replay_lsn(client).await?;
            if replayed >= reference.stop_lsn {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Error::new(
                    ErrorKind::Timeout,
                    format!(
                        "standby {} has replayed WAL up to {replayed}, but the backup it would build on, {}, ends at {}; it did not catch up within {}s",
                        self.node, reference.label, reference.stop_lsn, timeout.as_secs()
                    ),
                )
                .hint("an incremental or differential backup from a standby needs the standby to have replayed past its reference's end: check its replication (pg_stat_replication on the primary, pg_stat_wal_receiver on the standby) and whether replay is paused, or take --type full"));
            }
            if !told {
                tracing::info!(
                    %replayed,
                    reference = %reference.label,
                    "waiting for the standby to replay past {}, where its reference backup ends",
                    reference.stop_lsn
                );
                told = true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The stop call, with a promotion during the backup (which PostgreSQL refuses)
    /// reported as such.
    pub async fn stop(&self, client: &Client) -> Result<BackupStop> {
        match db::backup_stop(client, self.server.version_num).await {
            Ok(stop) => Ok(stop),
            Err(e) => {
                let promoted =
                    e.message.contains("promoted") || !in_recovery(client).await.unwrap_or(true);
                Err(if promoted {
                    self.promoted(&e.message)
                } else {
                    e
                })
            }
        }
    }

    fn promoted(&self, detail: &str) -> Error {
        Error::new(
            ErrorKind::Database,
            format!(
                "standby {} was promoted during the backup, which is therefore not usable ({detail})",
                self.node
            ),
        )
        .hint("nothing was recorded; take the backup again, from the new primary or from a standby that follows it")
    }

    /// After the stop: checks the standby is still a standby on the timeline the backup
    /// started on, and the one its reference was chosen for (`reference_timeline`); with
    /// the primary known, measures the lag and has the primary finish the segment holding
    /// the stop LSN; then waits for `segments` to be archived.
    pub async fn finish(
        &self,
        client: &Client,
        repo: &Repo,
        stop: &BackupStop,
        label: &BackupLabel,
        reference_timeline: Option<TimelineId>,
        segments: Vec<WalSegment>,
    ) -> Result<()> {
        self.check_still_following(client, label, reference_timeline)
            .await?;
        if let Some(primary) = &self.primary {
            match primary
                .finish_segment(stop.lsn, &self.node, self.lag_warning, &self.server)
                .await
            {
                Ok(()) => self.switched.store(true, Ordering::Relaxed),
                Err(e) => tracing::warn!(
                    "could not switch WAL on the primary {}: {e}; waiting for the segment holding the stop LSN {} to be archived anyway",
                    primary.node,
                    stop.lsn
                ),
            }
        }
        self.wait_for_archived(repo, segments, stop.lsn).await
    }

    async fn check_still_following(
        &self,
        client: &Client,
        label: &BackupLabel,
        reference_timeline: Option<TimelineId>,
    ) -> Result<()> {
        let row = client
            .query_one(
                "SELECT pg_is_in_recovery(), (SELECT min_recovery_end_timeline FROM pg_control_recovery())",
                &[],
            )
            .await?;
        if !row.get::<_, bool>(0) {
            return Err(self.promoted("it was no longer in recovery when the backup stopped"));
        }
        let stop_timeline = TimelineId(row.get::<_, i32>(1) as u32);
        let start_timeline = label.start_timeline;
        let moved = if stop_timeline.0 != 0 && stop_timeline != start_timeline {
            Some(stop_timeline)
        } else {
            reference_timeline.filter(|t| *t != start_timeline)
        };
        if let Some(other) = moved {
            return Err(Error::new(
                ErrorKind::Database,
                format!(
                    "standby {} changed timelines during the backup (it started on timeline {start_timeline}, and was on timeline {other} too), which is therefore not usable",
                    self.node
                ),
            )
            .hint("nothing was recorded; a standby follows a new timeline after a failover: take the backup again once it has settled on the new timeline"));
        }
        Ok(())
    }

    /// Waits for `segments`; a timeout says which segment is missing, that the backup
    /// came from a standby, and what finishes that segment.
    async fn wait_for_archived(
        &self,
        repo: &Repo,
        segments: Vec<WalSegment>,
        stop_lsn: Lsn,
    ) -> Result<()> {
        let timeout = self.timeout;
        let missing = wait_until_archived(repo, segments, timeout).await?;
        let Some(first) = missing.first() else {
            return Ok(());
        };
        let more = match missing.len() - 1 {
            0 => String::new(),
            n => format!(" (and {n} more)"),
        };
        let waited = timeout.as_secs();
        let switched = self.switched.load(Ordering::Relaxed);
        let (message, hint) = match self.primary.as_ref().filter(|_| switched) {
            None => (
                format!(
                    "WAL segment {first}{more} did not reach the archive within {waited}s; this backup was taken from standby {}, which cannot switch WAL, so the segment holding its stop LSN {stop_lsn} is archived only when the primary finishes it{}",
                    self.node,
                    match &self.primary {
                        Some(p) => format!(" (switching WAL on the primary {} failed, see the warning above)", p.node),
                        None => String::new(),
                    }
                ),
                "give the primary's connection (--primary-host/--primary-port), on which pgward then switches WAL; or set archive_timeout on the primary so that it finishes segments by itself (and --archive-timeout longer than that); with archive_mode = always on the standby, it archives the segment once the primary has finished it",
            ),
            Some(p) => (
                format!(
                    "WAL segment {first}{more} did not reach the archive within {waited}s, though pgward switched WAL on the primary {} after the backup of standby {} stopped at {stop_lsn}",
                    p.node, self.node
                ),
                "check that the primary's archive_command runs `pgward archive-push %p` for this repository and stanza (or the standby's, with archive_mode = always); the server log and `pgward pitr status` show archiving failures",
            ),
        };
        Err(Error::new(ErrorKind::Timeout, message).hint(hint))
    }
}

impl Primary {
    /// Connects, and checks it is the standby's primary: same cluster, not in recovery.
    async fn connect(conn: &ConnOptions, standby: &ServerInfo) -> Result<(Primary, Client)> {
        let client = db::connect(conn).await?;
        let node = db::node_address(&client, conn).await?;
        let info = db::server_info(&client).await?;
        let standby_id = standby.identity.system_identifier;
        if info.identity.system_identifier != standby_id {
            return Err(Error::new(
                ErrorKind::Conflict,
                format!(
                    "the primary given ({node}) is cluster {}, but the standby backed up is cluster {standby_id}",
                    info.identity.system_identifier
                ),
            )
            .hint("--primary-host/--primary-port must name the primary the standby replicates from"));
        }
        if info.in_recovery {
            return Err(Error::config(format!(
                "the primary given ({node}) is in recovery too: pgward cannot switch WAL there"
            ))
            .hint(
                "--primary-host/--primary-port must name the primary itself, not another standby",
            ));
        }
        let primary = Primary {
            conn: conn.clone(),
            node,
        };
        Ok((primary, client))
    }

    /// Checks the primary is at or past the standby's stop LSN (it is the primary the
    /// standby follows), warns about a large lag, and switches WAL unless the segment
    /// holding the stop LSN is finished already.
    async fn finish_segment(
        &self,
        stop_lsn: Lsn,
        standby: &str,
        lag_warning: u64,
        server: &ServerInfo,
    ) -> Result<()> {
        let segment_size = server.identity.wal_segment_size;
        let (_, client) = Primary::connect(&self.conn, server).await?;
        let current = db::parse_lsn(
            &client
                .query_one("SELECT pg_current_wal_lsn()::text", &[])
                .await?
                .get::<_, String>(0),
        )?;
        if current < stop_lsn {
            return Err(Error::new(
                ErrorKind::Conflict,
                format!(
                    "the primary given ({}) is at WAL position {current}, before the backup's stop LSN {stop_lsn} on standby {standby}: it is not the primary the standby replicates from",
                    self.node
                ),
            )
            .hint("--primary-host/--primary-port must name the primary the standby replicates from (after a failover, the new primary)"));
        }
        let lag = current.0 - stop_lsn.0;
        if lag > lag_warning {
            tracing::warn!(
                "standby {standby} was {} MiB behind the primary when the backup stopped: the backup ends at the standby's replay position {stop_lsn}, not at the primary's {current}",
                lag >> 20
            );
        }
        if current.segment_number(segment_size) <= stop_lsn.prev_segment_number(segment_size) {
            let switched: String = client
                .query_one("SELECT pg_switch_wal()::text", &[])
                .await?
                .get(0);
            tracing::info!(primary = %self.node, %switched, "switched WAL on the primary");
        }
        Ok(())
    }
}

async fn in_recovery(client: &Client) -> Result<bool> {
    Ok(client
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await?
        .get(0))
}

async fn replay_lsn(client: &Client) -> Result<Lsn> {
    let lsn: Option<String> = client
        .query_one("SELECT pg_last_wal_replay_lsn()::text", &[])
        .await?
        .get(0);
    // Null only when the server is not in recovery any more: then nothing lags.
    lsn.map_or(Ok(Lsn(u64::MAX)), |l| db::parse_lsn(&l))
}
