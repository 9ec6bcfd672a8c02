//! `drill`: proves a backup restores. Restores it (to a recovery target, or a random
//! point of its window) into a scratch directory, starts it as an unprivileged user
//! with every path to the source cut (`server.rs`), waits until recovery has ended and
//! the copy runs promoted, checks it (`checks.rs`), stops it cleanly, checks its page
//! checksums, removes it, and stores the outcome in the repository (`DrillRecord`,
//! which `info` and `metrics` show).
//!
//! The source cluster is never touched: no connection to it, a different port, a
//! socket directory only the copy uses, archiving off, tablespaces inside the scratch
//! directory. Two phases: [`plan`] refuses what cannot work before anything is written
//! (backup, target, binaries, owner, space); [`Plan::execute`] does the rest.

mod binaries;
mod checks;
pub mod random;
mod scratch;
mod server;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::error::{Error, ErrorKind, Result};
use crate::pg::Lsn;
use crate::repo::holds::HoldGuard;
use crate::repo::manifest::Manifest;
use crate::repo::records::{DrillCheck, DrillRecord};
use crate::repo::Repo;
use crate::restore::ownership::Owner;
use crate::restore::target::{RecoveryTarget, TargetAction};
use crate::restore::RestoreOptions;
use random::RandomTarget;
use scratch::Scratch;
use server::Server;

/// Where a drill recovers to.
#[derive(Clone, Debug)]
pub enum DrillTarget {
    /// Any target `restore` takes (the end of the archive by default).
    Restore(RecoveryTarget),
    /// A random point inside the chosen backup's window; `seed` repeats a draw.
    Random { seed: Option<u64> },
}

pub struct DrillOptions {
    pub set: Option<String>,
    pub target: DrillTarget,
    /// The target as the operator wrote it, for the record (None: the end of the archive).
    pub target_text: Option<String>,
    pub target_timeline: Option<String>,
    pub target_exclusive: bool,
    pub target_unchecked: bool,
    /// Default: a new directory under the system's temporary directory.
    pub scratch: Option<PathBuf>,
    /// The source's data directory: only its owner is read (drills run as root).
    pub source_pgdata: Option<PathBuf>,
    pub run_as: Option<String>,
    pub pg_bin: Option<PathBuf>,
    pub check_sql: Option<PathBuf>,
    pub check_database: String,
    /// A role to connect to the copy as, tried first (the source's `--pg-user`).
    pub db_user: Option<String>,
    pub keep: bool,
    /// How long the scratch server may take to recover.
    pub timeout: Duration,
    pub jobs: usize,
    /// The restore_command of the copy.
    pub restore_command: String,
    /// Secrets the restore_command reads from its environment (a passphrase given only
    /// in the environment or on the command line).
    pub server_env: Vec<(String, String)>,
}

/// What a drill did and found: the stored record and what only the report shows.
#[derive(Debug, Serialize)]
pub struct DrillReport {
    pub stanza: String,
    #[serde(flatten)]
    pub record: DrillRecord,
    pub backup_start_lsn: Lsn,
    pub backup_stop_lsn: Lsn,
    pub backup_stop_time: DateTime<Utc>,
    /// The draw of `--target random`.
    pub random: Option<RandomTarget>,
    pub scratch: PathBuf,
    /// `--keep`: the scratch directory was left (and its server stopped).
    pub kept: bool,
}

/// Everything checked before the drill writes anything.
pub struct Plan {
    backup: Manifest,
    target: RecoveryTarget,
    random: Option<RandomTarget>,
    bin: PathBuf,
    owner: Option<Owner>,
    sql_checks: Vec<String>,
    opts: DrillOptions,
    /// Keeps expire off the backup and its WAL until the drill ends (the scratch
    /// server reads the WAL after the restore is done).
    hold: Option<HoldGuard>,
}

pub async fn plan(repo: &Repo, opts: DrillOptions) -> Result<Plan> {
    let asked = match &opts.target {
        DrillTarget::Restore(t) => t.clone(),
        DrillTarget::Random { .. } => RecoveryTarget::EndOfArchive,
    };
    let (backup, hold) =
        crate::restore::select_backup(repo, opts.set.as_deref(), &asked, "drill").await?;
    match plan_held(repo, opts, backup).await {
        Ok(mut plan) => {
            plan.hold = Some(hold);
            Ok(plan)
        }
        Err(e) => {
            hold.release().await;
            Err(e)
        }
    }
}

async fn plan_held(repo: &Repo, opts: DrillOptions, backup: Manifest) -> Result<Plan> {
    let (target, random) = match opts.target {
        DrillTarget::Restore(ref t) => (t.clone(), None),
        DrillTarget::Random { seed } => {
            let seed = seed.unwrap_or_else(random::new_seed);
            let drawn = random::pick(repo, &backup, opts.target_timeline.as_deref(), seed).await?;
            tracing::info!(seed, lsn = %drawn.lsn, window_start = %drawn.window_start_lsn, window_end = %drawn.window_end_lsn, "random target drawn");
            (RecoveryTarget::Lsn(drawn.lsn), Some(drawn))
        }
    };
    let bin = binaries::find(
        opts.pg_bin.as_deref(),
        backup.pg_major,
        backup.data_checksums,
    )?;
    let owner = scratch::owner(opts.run_as.as_deref(), opts.source_pgdata.as_deref())?;
    let sql_checks = match &opts.check_sql {
        Some(path) => checks::read_sql_checks(path)?,
        None => Vec::new(),
    };
    Ok(Plan {
        backup,
        target,
        random,
        bin,
        owner,
        sql_checks,
        opts,
        hold: None,
    })
}

impl Plan {
    /// Runs the drill. `Err` only when it could not begin (the scratch directory); once
    /// begun, the report says how it went, the record is saved, and a failure comes
    /// back beside the report: a failed check as [`ErrorKind::Corrupt`] (as `verify`'s
    /// problems), anything else with its own kind.
    pub async fn execute(mut self, repo: &Repo) -> Result<(DrillReport, Option<Error>)> {
        let hold = self.hold.take();
        let executed = self.execute_held(repo).await;
        if let Some(hold) = hold {
            hold.release().await;
        }
        executed
    }

    async fn execute_held(self, repo: &Repo) -> Result<(DrillReport, Option<Error>)> {
        let scratch = Scratch::create(
            self.opts.scratch.as_deref(),
            &repo.stanza,
            self.owner,
            &self.backup,
        )?;
        let mut record = DrillRecord {
            time: Utc::now(),
            passed: false,
            backup: self.backup.label.clone(),
            target: self.target_text(),
            reached_lsn: None,
            reached_time: None,
            restore_seconds: 0.0,
            recovery_seconds: 0.0,
            wal_replayed_bytes: None,
            checks: Vec::new(),
            error: None,
        };
        let ran = tokio::select! {
            ran = self.run(repo, &scratch, &mut record) => ran,
            signal = interrupted() => Err(signal),
        };
        // The server is stopped by now: `run` stops it, and dropping `run` stops it too.
        let mut failure = match ran {
            Err(e) => Some(e),
            Ok(()) => record.checks.iter().find(|c| !c.passed).map(|c| {
                Error::new(
                    ErrorKind::Corrupt,
                    format!(
                        "drill of backup {} failed: {}: {}",
                        record.backup,
                        c.name,
                        // A checker's finding often spans lines (pg_amcheck: where, then what).
                        c.detail
                            .lines()
                            .map(str::trim)
                            .filter(|l| !l.is_empty())
                            .take(3)
                            .collect::<Vec<_>>()
                            .join(" ")
                    ),
                )
                .hint("the report lists every check with the checker's own words")
            }),
        };
        record.passed = failure.is_none();
        record.error = failure.as_ref().map(|e| e.to_string());
        record.time = Utc::now();
        if !self.opts.keep {
            if let Err(e) = scratch.remove(Duration::from_secs(30)).await {
                tracing::warn!(dir = %scratch.root.display(), "could not remove the scratch directory: {e}");
                failure.get_or_insert(e);
            }
        }
        if let Err(e) = repo.save_drill(&record).await {
            tracing::warn!("could not store the drill's record: {e}");
            failure.get_or_insert(e);
        }
        let report = DrillReport {
            stanza: repo.stanza.clone(),
            record,
            backup_start_lsn: self.backup.start_lsn,
            backup_stop_lsn: self.backup.stop_lsn,
            backup_stop_time: self.backup.stop_time,
            random: self.random.clone(),
            scratch: scratch.root.clone(),
            kept: self.opts.keep,
        };
        Ok((report, failure))
    }

    fn target_text(&self) -> Option<String> {
        match (&self.random, &self.opts.target_text) {
            (Some(r), _) => Some(format!(
                "--target random --seed {} (--target-lsn {})",
                r.seed, r.lsn
            )),
            (None, t) => t.clone(),
        }
    }

    async fn run(&self, repo: &Repo, scratch: &Scratch, record: &mut DrillRecord) -> Result<()> {
        let opts = &self.opts;
        let began = Instant::now();
        crate::restore::restore(
            repo,
            RestoreOptions {
                set: Some(self.backup.label.clone()),
                pgdata: scratch.data(),
                // Never the original places: those are the source's tablespaces.
                tablespace_map: self
                    .backup
                    .tablespaces
                    .iter()
                    .map(|t| (t.oid, scratch.tablespace(t.oid)))
                    .collect(),
                target: self.target.clone(),
                target_action: (self.target != RecoveryTarget::EndOfArchive)
                    .then_some(TargetAction::Promote),
                target_timeline: opts.target_timeline.clone(),
                target_exclusive: opts.target_exclusive,
                target_unchecked: opts.target_unchecked,
                jobs: opts.jobs,
                restore_command: opts.restore_command.clone(),
                archive_off: true,
                delta: false,
                force: false,
                primary_conninfo: None,
            },
        )
        .await?;
        record.restore_seconds = began.elapsed().as_secs_f64();

        let (mut server, options) = Server::prepare(
            scratch,
            &self.bin,
            self.backup.pg_major,
            opts.db_user.as_deref(),
            opts.server_env.clone(),
        )?;
        let began = Instant::now();
        tracing::info!(port = server.port, socket = %server.socket_dir.display(), "starting the scratch server");
        server.start(&options, opts.timeout).await?;
        let client = server.wait_promoted(began + opts.timeout).await?;
        record.recovery_seconds = began.elapsed().as_secs_f64();
        let row = client
            .query_one(
                "SELECT pg_last_wal_replay_lsn()::text, \
                 extract(epoch FROM pg_last_xact_replay_timestamp())::float8, \
                 current_setting('data_checksums') = 'on'",
                &[],
            )
            .await?;
        let reached: Option<String> = row.get(0);
        let reached_epoch: Option<f64> = row.get(1);
        let data_checksums: bool = row.get(2);
        if let Some(lsn) = reached.as_deref().and_then(|l| l.parse::<Lsn>().ok()) {
            record.wal_replayed_bytes = Some(lsn.0.saturating_sub(self.backup.start_lsn.0));
        }
        record.reached_lsn = reached;
        record.reached_time =
            reached_epoch.and_then(|e| DateTime::from_timestamp_micros((e * 1e6).round() as i64));
        tracing::info!(reached = ?record.reached_lsn, "recovery ended; checking the copy");

        record.checks.push(
            match checks::RelationCheck::for_major(self.backup.pg_major) {
                checks::RelationCheck::PgAmcheck => {
                    checks::amcheck(&self.bin, &server, &scratch.root, opts.jobs).await?
                }
                checks::RelationCheck::BtreeIndexes => checks::btree_indexes(&mut server).await?,
            },
        );
        if !self.sql_checks.is_empty() {
            let checked = match server.connect(&opts.check_database).await {
                Ok(c) => checks::sql_checks(&c, &self.sql_checks).await,
                Err(e) => vec![DrillCheck {
                    name: "sql".into(),
                    passed: false,
                    detail: format!("connecting to database {:?}: {e}", opts.check_database),
                }],
            };
            record.checks.extend(checked);
        }
        drop(client);
        server.stop().await?;
        if data_checksums {
            record
                .checks
                .push(checks::checksums(&self.bin, &server, &scratch.data(), &scratch.root).await?);
        }
        Ok(())
    }
}

/// Resolves when the drill is asked to stop (SIGINT, SIGTERM): the scratch server must
/// not outlive it.
async fn interrupted() -> Error {
    use tokio::signal::unix::{signal, SignalKind};
    let wait = async {
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {},
                    _ = term.recv() => {},
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    };
    wait.await;
    Error::new(ErrorKind::Io, "the drill was interrupted by a signal")
        .hint("its scratch server was stopped and its directory removed (unless --keep)")
}
