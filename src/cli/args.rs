//! Command-line definitions: the subcommands and their own options. The global options
//! (flags, environment, configuration file) are defined once in `options.rs`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

pub use super::options::GlobalArgs;
use crate::restore::target::TargetAction;

#[derive(Parser, Debug)]
#[command(
    name = "pgward",
    version,
    about = "PostgreSQL backup and point-in-time recovery",
    after_help = "Example:\n  pgward --repo /var/lib/pgward --stanza main stanza-create\n  pgward --repo /var/lib/pgward --stanza main backup\n  pgward --repo /var/lib/pgward --stanza main restore --pgdata /srv/pg/restored --target-time '2026-11-21 12:00:00+00'"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    #[default]
    Text,
    Json,
}

/// `--log-level`: how much pgward logs (to stderr).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum LogLevel {
    Error,
    Warn,
    #[default]
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    /// The level as a `tracing` filter directive names it.
    pub fn directive(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }
}

/// Whether archive-push builds a block map of each segment (`repo::blockmap`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum WalMaps {
    /// No maps: incrementals scan the pages of changed files for WAL archived meanwhile.
    Off,
    /// The default: a map costs a push a few percent (it is built and synced while the
    /// segment is compressed and stored).
    #[default]
    On,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Record the cluster in the repository (idempotent)
    #[command(
        after_help = "Examples:\n  pgward --repo /var/lib/pgward --stanza main stanza-create\n  pgward --repo s3://bucket/pgward --stanza main stanza-create --cipher aes-256-gcm --cipher-pass-file /etc/pgward/pass"
    )]
    StanzaCreate,
    /// Archive a WAL file: archive_command = 'pgward --repo R --stanza S archive-push %p'
    #[command(
        after_help = "Examples (postgresql.conf):\n  archive_command = 'pgward --repo /var/lib/pgward --stanza main archive-push %p'\n  archive_command = 'pgward --repo s3://bucket/pgward --stanza main archive-push --async --spool-path /var/spool/pgward %p'"
    )]
    #[command(alias = "wal-push")]
    ArchivePush {
        /// Path of the WAL file (%p)
        path: PathBuf,
        /// Return once the file is durably in the local spool; a background worker pushes
        /// spooled files in parallel
        #[arg(long = "async")]
        asynchronous: bool,
        /// Local spool directory for --async
        #[arg(long, env = "PGWARD_SPOOL_PATH", default_value = "/var/spool/pgward")]
        spool_path: PathBuf,
        /// With --async: past this many queued files archive-push fails (PostgreSQL keeps
        /// the WAL and retries); nothing is ever dropped
        #[arg(long, default_value_t = 64)]
        archive_push_queue_max: usize,
    },
    /// Background worker of `archive-push --async` (started automatically)
    #[command(hide = true)]
    ArchivePushWorker {
        #[arg(long)]
        spool_path: PathBuf,
    },
    /// Background prefetcher of archive-get (started automatically)
    #[command(hide = true)]
    ArchiveGetPrefetch {
        after: String,
        dir: PathBuf,
        #[arg(long)]
        count: usize,
    },
    /// Fetch a WAL file: restore_command = 'pgward --repo R --stanza S archive-get %f "%p"'.
    /// Exit 0: written; 1: not in the archive; 126: unusable (recovery must stop)
    #[command(
        after_help = "Example (written by `pgward restore`):\n  restore_command = 'pgward --repo /var/lib/pgward --stanza main archive-get %f \"%p\"'"
    )]
    #[command(alias = "wal-fetch")]
    ArchiveGet {
        /// WAL file name (%f)
        name: String,
        /// Destination path (%p)
        dest: PathBuf,
        /// Segments to prefetch in parallel after the one asked for, into
        /// pg_wal/pgward-prefetch (0: no prefetch)
        #[arg(long, default_value_t = 8)]
        archive_get_queue_max: usize,
    },
    /// Take a backup of the running cluster
    #[command(
        after_help = "Examples:\n  pgward backup                       # full\n  pgward backup --type incr --jobs 4  # pages changed since the last backup\n  pgward backup --type diff --annotation ticket=OPS-12 --pin"
    )]
    #[command(alias = "backup-push")]
    Backup(BackupArgs),
    /// Restore a backup into an empty directory (or with --delta over the cluster's own), with optional point-in-time target
    #[command(arg = restore_pgdata())]
    #[command(
        after_help = "Examples:\n  pgward restore --pgdata /srv/pg/new\n  pgward restore --pgdata /srv/pg/new --target-time '2026-11-21 12:00:00+00' --target-action promote\n  pgward restore --pgdata /srv/pg/new --set 20261121-010000F --target immediate --tablespace-map 16390=/srv/ts1\n  pgward restore --pgdata /srv/pg/main --delta --type standby --primary-conninfo 'host=primary user=replicator'\n\nThe restore_command written for the restored cluster repeats --config and\n--cipher-pass-file, never a passphrase or S3 key: restore refuses (exit 3) when the\nstanza's passphrase came only from --cipher-pass or PGWARD_CIPHER_PASS."
    )]
    Restore(RestoreArgs),
    /// Prove a backup restores: restore, recover and check a copy, never touching the source
    ///
    /// Restores the backup into a scratch directory, starts it beside the source (another
    /// port, no TCP, a socket directory of its own, archiving off), waits until recovery
    /// has ended, runs pg_amcheck --heapallindexed (13: amcheck's bt_index_check), the SQL
    /// checks and, after a clean stop, pg_checksums; then removes it. The outcome is stored in the repository; `info`
    /// shows the last drill
    #[command(
        after_help = "Examples:\n  pgward drill                                   # the newest backup, to the end of the archive\n  pgward drill --target random                   # a random point of its recoverable window\n  pgward drill --set 20261121-010000F --target-time '2026-11-21 12:00:00+00'\n  pgward drill --check-sql /etc/pgward/checks.sql --check-database app\n  pgward --output json drill --scratch /srv/scratch/drill --keep\n\nRun as root, the scratch cluster belongs to --run-as USER, or to the owner of the\nsource's data directory (--pgdata). A failed check exits 5, like verify, with the\nchecker's own words; the scratch directory is removed then too unless --keep."
    )]
    Drill(DrillArgs),
    /// Show backups, the archive and the recoverable window
    #[command(
        after_help = "Examples:\n  pgward info\n  pgward --output json info | jq '.recoverable_window'"
    )]
    #[command(alias = "backup-list")]
    Info,
    /// Re-read every stored file and check checksums and WAL continuity
    #[command(
        after_help = "Example:\n  pgward verify --jobs 4   # exit 5 and a list of problems, each with what it breaks"
    )]
    Verify,
    /// Remove backups and WAL outside the retention policy (--retain-full, --retain-diff, --retain-full-days)
    #[command(
        after_help = "Examples:\n  pgward expire --retain-full 2 --dry-run\n  pgward expire --retain-full-days 14 --retain-diff 7"
    )]
    Expire {
        /// Show what would be removed without removing anything
        #[arg(long)]
        dry_run: bool,
    },
    /// Confirm the setup works: stanza, archive settings, and a WAL switch reaching the archive
    #[command(after_help = "Example:\n  pgward check --archive-timeout 30")]
    Check {
        /// Seconds to wait for the switched segment to be archived
        #[arg(long, default_value_t = 60)]
        archive_timeout: u64,
    },
    /// Turn WAL archiving into this repository on or off, or show its state
    #[command(
        subcommand,
        after_help = "Examples:\n  pgward pitr enable   # then restart PostgreSQL\n  pgward --output json pitr status"
    )]
    Pitr(PitrCommand),
    /// The WAL archive: list files or show totals
    #[command(
        subcommand,
        after_help = "Examples:\n  pgward wal list\n  pgward --output json wal stats"
    )]
    Wal(WalCommand),
    /// Restore a backup into DIR (WAL-G style): LABEL or LATEST
    #[command(after_help = "Example:\n  pgward backup-fetch /srv/pg/new LATEST")]
    BackupFetch {
        dir: PathBuf,
        /// A backup label, or LATEST
        label: String,
    },
    /// Print shell completions: bash, zsh or fish
    #[command(after_help = "Example:\n  pgward completions bash > /etc/bash_completion.d/pgward")]
    Completions { shell: clap_complete::Shell },
    /// Change the passphrase of an encrypted stanza (re-wraps its key; no data is rewritten)
    #[command(
        after_help = "Example:\n  PGWARD_CIPHER_PASS=old pgward rekey --new-cipher-pass new"
    )]
    Rekey {
        /// The new passphrase
        #[arg(long, env = "PGWARD_NEW_CIPHER_PASS", hide_env_values = true)]
        new_cipher_pass: String,
    },
    /// Print Prometheus metrics of the stanza, or of every stanza of the repository
    /// without --stanza (for node_exporter's textfile collector). Reads only metadata and
    /// listings; asks the server (--pg-host, --pg-port) for the archive lag when it answers
    #[command(
        after_help = "Examples:\n  pgward --repo /var/lib/pgward metrics > /var/lib/node_exporter/pgward.prom.tmp \\\n    && mv /var/lib/node_exporter/pgward.prom.tmp /var/lib/node_exporter/pgward.prom\n  pgward --repo /var/lib/pgward --stanza main metrics | promtool check metrics"
    )]
    Metrics(MetricsArgs),
    /// Serve the metrics of `pgward metrics` over HTTP on /metrics (computed on each
    /// scrape, cached for a few seconds); stops cleanly on SIGTERM
    #[command(
        after_help = "Example:\n  pgward --repo /var/lib/pgward serve --listen 127.0.0.1:9187"
    )]
    Serve {
        /// Address and port to listen on
        #[arg(long, value_name = "ADDR:PORT")]
        listen: std::net::SocketAddr,
        #[command(flatten)]
        metrics: MetricsArgs,
    },
    /// Protect a backup (and what it builds on) from expire
    #[command(after_help = "Example:\n  pgward pin 20261121-010000F")]
    Pin { label: String },
    /// Remove the protection of `pin`
    Unpin { label: String },
}

#[derive(Subcommand, Debug)]
pub enum PitrCommand {
    /// Set wal_level, archive_mode and archive_command (copies of the old files are kept).
    /// Refuses, changing nothing, when the archive_command could not unlock the stanza with
    /// what PostgreSQL has: its own arguments (--cipher-pass-file) and the configuration file
    Enable,
    /// Put back the settings `pitr enable` replaced
    Disable,
    /// Archiving state: settings, last archived and failed segments, backlog, newest backup
    Status,
}

#[derive(Subcommand, Debug)]
pub enum WalCommand {
    /// Every archived file with timeline, sizes and time
    List,
    /// Totals, compression ratio, oldest and newest, gaps
    Stats,
    /// Block maps of archived segments: present, poisoned, missing
    Maps {
        /// Build the maps of segments archived without one (before this feature, or
        /// when the previous segment was not yet archived)
        #[arg(long)]
        backfill: bool,
    },
}

#[derive(Args, Clone, Debug)]
pub struct MetricsArgs {
    /// Every stanza of the repository, even when --stanza or the configuration file
    /// names one [default: every stanza when none is named]
    #[arg(long)]
    pub all_stanzas: bool,
    /// The archive-push --async spool to report on (queue depth, failed pushes)
    #[arg(long, env = "PGWARD_SPOOL_PATH", default_value = "/var/spool/pgward")]
    pub spool_path: PathBuf,
}

#[derive(Args, Debug)]
pub struct BackupArgs {
    /// full; diff (changes since the last full); incr (changes since the last backup).
    /// With nothing to build on, diff and incr take a full backup and say so
    #[arg(long = "type", value_enum, default_value = "full")]
    pub backup_type: BackupTypeArg,
    /// Take a full backup once the chain has this many dependent backups
    #[arg(long)]
    pub max_chain: Option<usize>,
    /// Never expire this backup (see `pin`/`unpin`)
    #[arg(long)]
    pub pin: bool,
    /// Ask for an immediate checkpoint instead of waiting for the next one
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub start_fast: bool,
    /// Seconds to wait for the backup's WAL to reach the archive (and, from a standby, for
    /// its replay to pass the end of the backup an incremental builds on)
    #[arg(long, default_value_t = 60)]
    pub archive_timeout: u64,
    /// Backing up a standby with --primary-host/--primary-port: warn when its replay is
    /// more than this many MiB behind the primary when the backup stops
    #[arg(long, default_value_t = 1024, value_name = "MIB")]
    pub standby_lag_warning: u64,
    /// Attach KEY=VALUE to the backup (repeatable)
    #[arg(long = "annotation", value_parser = parse_key_value)]
    pub annotations: Vec<(String, String)>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum BackupTypeArg {
    Full,
    Diff,
    Incr,
}

/// The recovery target options `restore` and `drill` share (each adds its own `--target`
/// to the same group: at most one target).
#[derive(Args, Debug, Default)]
pub struct RecoveryTargetArgs {
    /// Recover until this time, with its UTC offset: '2026-11-21 12:00:00+00'. Refused
    /// outside the archive's reach (see --target-unchecked)
    #[arg(long, group = "recovery_target")]
    pub target_time: Option<String>,
    /// Recover until this transaction id (not checked against the archive: that needs
    /// reading the WAL)
    #[arg(long, group = "recovery_target")]
    pub target_xid: Option<u64>,
    /// Recover until this WAL position, e.g. 0/3000060. Refused outside the archive's
    /// reach (see --target-unchecked)
    #[arg(long, group = "recovery_target")]
    pub target_lsn: Option<String>,
    /// Recover until this named restore point (pg_create_restore_point); at most 63
    /// bytes, no control characters, quotes or backslashes. Not looked up in the WAL
    #[arg(long, group = "recovery_target")]
    pub target_name: Option<String>,
    /// Timeline to recover along: latest (the newest one whose history files follow the
    /// backup's), current (the backup's) or a number [default: latest]
    #[arg(long)]
    pub target_timeline: Option<String>,
    /// Stop just before the target instead of just after it
    #[arg(long)]
    pub target_exclusive: bool,
    /// Restore even when --target-time or --target-lsn lies outside what the archive can
    /// reach now (from the backup's end to the end of the gap-free WAL on the target
    /// timeline, or the time that WAL was archived): for WAL that will be archived before
    /// recovery needs it. Syntax is still checked
    #[arg(long)]
    pub target_unchecked: bool,
}

impl RecoveryTargetArgs {
    /// The target these options name (`immediate`: `--target immediate` was given),
    /// with `--target-timeline`'s syntax checked.
    pub fn target(
        &self,
        immediate: bool,
    ) -> crate::error::Result<crate::restore::target::RecoveryTarget> {
        if let Some(tl) = &self.target_timeline {
            crate::restore::target::parse_target_timeline(tl)?;
        }
        crate::restore::target::TargetOptions {
            time: self.target_time.as_deref(),
            xid: self.target_xid,
            lsn: self.target_lsn.as_deref(),
            name: self.target_name.as_deref(),
            immediate,
        }
        .parse()
    }
}

#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// Backup label to restore [default: the newest that ends before the target]
    #[arg(long)]
    pub set: Option<String>,
    /// Restore a tablespace elsewhere: OID=DIR (repeatable)
    #[arg(long = "tablespace-map", value_parser = parse_key_value)]
    pub tablespace_map: Vec<(String, String)>,
    /// 'immediate': stop as soon as the backup is consistent
    #[arg(long, group = "recovery_target", value_parser = ["immediate"])]
    pub target: Option<String>,
    /// What the server does at the target [default: PostgreSQL's, pause]
    #[arg(long, value_enum)]
    pub target_action: Option<TargetAction>,
    #[command(flatten)]
    pub recovery: RecoveryTargetArgs,
    /// Archive mode of the restored cluster: 'preserve' keeps the source's archive_command, 'off' disables archiving
    #[arg(long, default_value = "preserve", value_parser = ["preserve", "off"])]
    pub archive_mode: String,
    /// Restore into an existing data directory of the same cluster (stopped): files that
    /// match the backup are kept, differing blocks rewritten in place, files the backup
    /// does not have removed. Every file's content is compared, whatever its mtime
    #[arg(long)]
    pub delta: bool,
    /// With --delta: restore over a data directory of another cluster (another system
    /// identifier), or one whose pg_control cannot be read
    #[arg(long, requires = "delta")]
    pub force: bool,
    /// recovery: recover and (by default) promote; standby: follow a primary
    /// (standby.signal and primary_conninfo, as pg_basebackup -R writes them)
    #[arg(long = "type", value_enum, default_value = "recovery")]
    pub restore_type: RestoreType,
    /// The primary a --type standby follows, a libpq connection string
    /// ('host=primary user=replicator')
    #[arg(long, required_if_eq("restore_type", "standby"))]
    pub primary_conninfo: Option<String>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum RestoreType {
    #[default]
    Recovery,
    Standby,
}

#[derive(Args, Debug)]
pub struct DrillArgs {
    /// Backup label to restore [default: the newest that ends before the target]
    #[arg(long)]
    pub set: Option<String>,
    /// Restore into this new or empty directory [default: a new one under the system's
    /// temporary directory]. Its file system must hold the backup's size
    #[arg(long, value_name = "DIR")]
    pub scratch: Option<PathBuf>,
    /// 'immediate': stop as soon as the backup is consistent; 'random': a random point
    /// inside the backup's recoverable window (the seed is reported)
    #[arg(long, group = "recovery_target", value_parser = ["immediate", "random"])]
    pub target: Option<String>,
    /// With --target random: repeat the draw of an earlier drill
    #[arg(long, requires = "target")]
    pub seed: Option<u64>,
    #[command(flatten)]
    pub recovery: RecoveryTargetArgs,
    /// Directory of pg_ctl, pg_amcheck (14 and later) and pg_checksums of the backup's major version
    /// [default: the packagers' places, pg_config --bindir, PATH]
    #[arg(long, value_name = "DIR")]
    pub pg_bin: Option<PathBuf>,
    /// Run as root: the operating system user the scratch server runs as [default: the
    /// owner of the source's data directory]
    #[arg(long, value_name = "USER")]
    pub run_as: Option<String>,
    /// SQL checks, ';'-separated; each statement must return true
    #[arg(long, value_name = "FILE")]
    pub check_sql: Option<PathBuf>,
    /// Database the SQL checks run in
    #[arg(long, value_name = "DB", default_value = "postgres")]
    pub check_database: String,
    /// Leave the scratch directory (its server stopped) for inspection
    #[arg(long)]
    pub keep: bool,
    /// Seconds the scratch server may take to start and recover
    #[arg(long, value_name = "SECONDS", default_value_t = 3600)]
    pub timeout: u64,
}

/// `restore --pgdata`: the global option under the same id, so the value still lands in
/// [`GlobalArgs::pgdata`] (and PGDATA or the configuration file can still give it), but
/// described as what it is to restore, the destination, and listed first among
/// restore's own options rather than with the options that describe a running cluster.
fn restore_pgdata() -> clap::Arg {
    clap::Arg::new("pgdata")
        .long("pgdata")
        .global(true)
        .env("PGDATA")
        .value_name("DIR")
        .value_parser(clap::value_parser!(PathBuf))
        .display_order(0)
        .help(
            "Where to restore to: a new or empty directory, or with --delta the cluster's \
             own data directory (required; the configuration file's pgdata also sets it)",
        )
}

fn parse_key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

impl RestoreArgs {
    /// `backup-fetch DIR LABEL`: a restore with defaults (recovery to the end of the archive).
    pub fn for_fetch(set: Option<String>) -> RestoreArgs {
        RestoreArgs {
            set,
            tablespace_map: Vec::new(),
            target: None,
            target_action: None,
            recovery: RecoveryTargetArgs::default(),
            archive_mode: "preserve".into(),
            delta: false,
            force: false,
            restore_type: RestoreType::Recovery,
            primary_conninfo: None,
        }
    }
}
