//! The command-line layer: parse, resolve configuration, run one library call, print.

/// Prints to stdout ignoring write errors: a reader that went away (`pgward info | head`)
/// must not turn into a panic. (SIGPIPE stays ignored, as Rust sets it: with its default
/// action a dropped network connection would kill the process mid-write.)
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

macro_rules! say_raw {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stdout(), $($arg)*);
    }};
}

pub mod args;
pub mod config;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use args::{
    BackupTypeArg, Cli, Command, GlobalArgs, OutputFormat, PitrCommand, RestoreArgs, WalCommand,
};

use crate::archive::push::PushOutcome;
use crate::db::ConnOptions;
use crate::error::{Error, Result};
use crate::pipeline::compress::{Codec, Compression};
use crate::repo::label::BackupType;
use crate::repo::{shell_quote, Repo, StanzaHandle};
use crate::restore::target::{parse_target_time, RecoveryTarget};

/// Exit status of archive-get when a file exists but cannot be used: above 125, so
/// PostgreSQL stops recovery instead of treating it as the end of the archive.
pub const EXIT_ARCHIVE_GET_FATAL: i32 = 126;

pub struct Resolved {
    pub global: GlobalArgs,
    /// What the command line and environment set, before the configuration file: the
    /// commands pgward writes for PostgreSQL repeat only these next to `--config`.
    explicit: GlobalArgs,
}

impl Resolved {
    /// The stanza named by the options, without unlocking it.
    async fn stanza_handle(&self) -> Result<StanzaHandle> {
        let url = self.global.repo.as_deref().ok_or_else(|| {
            Error::config("no repository given")
                .hint("pass --repo DIR, set PGWARD_REPO, or set repo in the configuration file")
        })?;
        let stanza = self.global.stanza.as_deref().ok_or_else(|| {
            Error::config("no stanza given").hint(
                "pass --stanza NAME, set PGWARD_STANZA, or set stanza in the configuration file",
            )
        })?;
        StanzaHandle::new(
            crate::storage::open(url, &self.s3_options()?).await?,
            stanza,
        )
    }

    fn s3_options(&self) -> Result<crate::storage::s3::S3Options> {
        let g = &self.global;
        let uri_style_path = match g.s3_uri_style.as_deref() {
            None | Some("host") => false,
            Some("path") => true,
            Some(other) => {
                return Err(Error::config(format!(
                    "--s3-uri-style {other:?}: expected host or path"
                )))
            }
        };
        Ok(crate::storage::s3::S3Options {
            endpoint: g.s3_endpoint.clone(),
            region: g.s3_region.clone(),
            uri_style_path,
            storage_class: g.s3_storage_class.clone(),
            ca_file: g.s3_ca_file.clone(),
            retry_seconds: g.s3_retry_seconds,
            access_key: g.s3_key.clone(),
            secret_key: g.s3_key_secret.clone(),
        })
    }

    /// The stanza, unlocked when it is encrypted.
    async fn repo(&self) -> Result<Repo> {
        let pass = self.passphrase()?;
        self.stanza_handle().await?.unlock(pass.as_deref()).await
    }

    fn passphrase(&self) -> Result<Option<Vec<u8>>> {
        if let Some(p) = &self.global.cipher_pass {
            return Ok(Some(p.as_bytes().to_vec()));
        }
        match &self.global.cipher_pass_file {
            Some(f) => {
                let text =
                    std::fs::read(f).map_err(|e| Error::io("reading the passphrase file", f, e))?;
                let trimmed = text.strip_suffix(b"\n").unwrap_or(&text).to_vec();
                Ok(Some(trimmed))
            }
            None => Ok(None),
        }
    }

    fn cipher_requested(&self) -> Result<bool> {
        match self.global.cipher.as_deref() {
            None | Some("none") => Ok(false),
            Some("aes-256-gcm") => Ok(true),
            Some(other) => {
                Err(Error::config(format!("unknown cipher {other:?}"))
                    .hint("use aes-256-gcm or none"))
            }
        }
    }

    fn conn(&self) -> ConnOptions {
        ConnOptions {
            host: self.global.pg_host.clone(),
            port: self.global.pg_port,
            user: self.global.pg_user.clone(),
            database: self.global.pg_database.clone(),
        }
    }

    fn retention(&self) -> crate::expire::Retention {
        crate::expire::Retention {
            full: self.global.retain_full,
            diff: self.global.retain_diff,
            full_days: self.global.retain_full_days,
        }
    }

    fn jobs(&self) -> usize {
        self.global
            .jobs
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
    }

    fn compression(&self) -> Result<Compression> {
        let codec: Codec = self
            .global
            .compress
            .as_deref()
            .unwrap_or("zstd")
            .parse()
            .map_err(|e: String| Error::config(e))?;
        Compression::new(codec, self.global.compress_level).map_err(Error::config)
    }

    /// This binary with this configuration, repository and stanza, for commands that
    /// PostgreSQL runs (archive_command, restore_command).
    fn self_command(&self, repo: &Repo) -> String {
        let exe = std::env::current_exe()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| "pgward".into());
        let config = self
            .global
            .config
            .as_ref()
            .map(|c| format!(" --config {}", shell_quote(&c.display().to_string())))
            .unwrap_or_default();
        let pass_file = self
            .explicit
            .cipher_pass_file
            .as_ref()
            .map(|f| {
                format!(
                    " --cipher-pass-file {}",
                    shell_quote(&f.display().to_string())
                )
            })
            .unwrap_or_default();
        let g = &self.explicit;
        let s3: String = [
            ("--s3-endpoint", &g.s3_endpoint),
            ("--s3-region", &g.s3_region),
            ("--s3-uri-style", &g.s3_uri_style),
            ("--s3-storage-class", &g.s3_storage_class),
        ]
        .iter()
        .filter_map(|(flag, v)| v.as_ref().map(|v| format!(" {flag} {}", shell_quote(v))))
        .collect();
        format!(
            "{}{config}{pass_file}{s3} {}",
            shell_quote(&exe),
            repo.cli_options()
        )
    }

    /// Options a background pgward needs to act like this one.
    fn self_args(&self, repo: &Repo) -> Vec<String> {
        let mut args = vec![
            "--repo".to_string(),
            repo.location(),
            "--stanza".to_string(),
            repo.stanza.clone(),
        ];
        if let Some(config) = &self.global.config {
            args.extend(["--config".to_string(), config.display().to_string()]);
        }
        args.extend(["--jobs".to_string(), self.jobs().to_string()]);
        if let Ok(c) = self.compression() {
            args.extend([
                "--compress".to_string(),
                c.codec.to_string(),
                "--compress-level".to_string(),
                c.level.to_string(),
            ]);
        }
        let g = &self.global;
        for (flag, value) in [
            ("--s3-endpoint", &g.s3_endpoint),
            ("--s3-region", &g.s3_region),
            ("--s3-uri-style", &g.s3_uri_style),
            ("--s3-storage-class", &g.s3_storage_class),
            ("--s3-key", &g.s3_key),
            ("--s3-key-secret", &g.s3_key_secret),
        ] {
            if let Some(v) = value {
                args.extend([flag.to_string(), v.clone()]); // secrets move to the environment in spawn_detached
            }
        }
        if let Some(file) = &self.global.cipher_pass_file {
            args.extend(["--cipher-pass-file".to_string(), file.display().to_string()]);
        } else if let Some(pass) = &self.global.cipher_pass {
            args.extend(["--cipher-pass".to_string(), pass.clone()]); // moved to the environment by spawn_detached
        }
        if let Some(level) = &self.global.log_level {
            args.extend(["--log-level".to_string(), level.clone()]);
        }
        args
    }

    fn restore_command(&self, repo: &Repo) -> String {
        format!("{} archive-get %f \"%p\"", self.self_command(repo))
    }

    fn archive_command(&self, repo: &Repo) -> String {
        format!("{} archive-push %p", self.self_command(repo))
    }
}

pub fn resolve(mut global: GlobalArgs) -> Result<Resolved> {
    let explicit = global.clone();
    config::apply_config_file(&mut global)?;
    if global.jobs == Some(0) {
        return Err(Error::config("--jobs must be at least 1"));
    }
    Ok(Resolved { global, explicit })
}

pub async fn run(cli: Cli, resolved: Resolved) -> Result<()> {
    let json = resolved.global.output == OutputFormat::Json;
    match cli.command {
        Command::StanzaCreate => {
            let handle = resolved.stanza_handle().await?;
            let pass = resolved.passphrase()?;
            let repo = if resolved.cipher_requested()? {
                let pass = pass.clone().ok_or_else(|| {
                    Error::config("--cipher aes-256-gcm needs a passphrase")
                        .hint("pass --cipher-pass, PGWARD_CIPHER_PASS or --cipher-pass-file")
                })?;
                if handle.exists().await? && !handle.is_encrypted().await? {
                    return Err(Error::new(
                        crate::error::ErrorKind::Conflict,
                        format!("stanza {:?} exists unencrypted", handle.stanza()),
                    )
                    .hint("encryption is chosen when a stanza is created; create a new stanza"));
                }
                handle.create_key(&pass).await?
            } else {
                handle.unlock(pass.as_deref()).await?
            };
            let client = crate::db::connect(&resolved.conn()).await?;
            let server = crate::db::server_info(&client).await?;
            let (info, created) = repo.stanza_create(&server.identity).await?;
            say!(
                "stanza {:?} {} (system identifier {}, PostgreSQL {}, data checksums {})",
                info.stanza,
                if created {
                    "created"
                } else {
                    "already exists for this cluster"
                },
                info.system_identifier,
                info.pg_major,
                if info.data_checksums { "on" } else { "off" }
            );
        }
        Command::ArchivePush {
            path,
            asynchronous,
            spool_path,
            archive_push_queue_max,
        } => {
            let repo = resolved.repo().await?;
            if asynchronous {
                let spool = crate::archive::spool::Spool::new(&spool_path, &repo.stanza);
                let mut worker = resolved.self_args(&repo);
                worker.extend([
                    "archive-push-worker".to_string(),
                    "--spool-path".to_string(),
                    spool_path.display().to_string(),
                ]);
                crate::archive::spool::push_async(
                    &repo,
                    &path,
                    &spool,
                    archive_push_queue_max,
                    &worker,
                )
                .await?;
                return Ok(());
            }
            match crate::archive::push::archive_push(&repo, &path, resolved.compression()?).await? {
                PushOutcome::Stored { stored_size } => {
                    tracing::debug!(path = %path.display(), stored_size, "archived")
                }
                PushOutcome::AlreadyArchived => {
                    tracing::info!(path = %path.display(), "already archived with identical contents")
                }
            }
        }
        Command::ArchivePushWorker { spool_path } => {
            let repo = resolved.repo().await?;
            let spool = crate::archive::spool::Spool::new(&spool_path, &repo.stanza);
            crate::archive::spool::run_worker(
                &repo,
                &spool,
                resolved.compression()?,
                resolved.jobs(),
            )
            .await?;
        }
        Command::ArchiveGet {
            name,
            dest,
            archive_get_queue_max,
        } => {
            let repo = resolved.repo().await?;
            // A missing stanza must stop recovery, not look like the end of the archive.
            repo.stanza_info().await?;
            let wal = crate::pg::WalFileName::parse(&name).map_err(|e| {
                Error::config(e.to_string()).hint("restore_command must pass %f and \"%p\"")
            })?;
            let prefetch_dir = crate::archive::prefetch::dir_for(&dest);
            let served = archive_get_queue_max > 0
                && matches!(wal, crate::pg::WalFileName::Segment(_))
                && crate::archive::prefetch::take(&prefetch_dir, &wal, &dest)?;
            if !served {
                crate::archive::get::archive_get(&repo, &name, &dest).await?;
            }
            if archive_get_queue_max > 0 && matches!(wal, crate::pg::WalFileName::Segment(_)) {
                let mut args = resolved.self_args(&repo);
                args.extend([
                    "archive-get-prefetch".to_string(),
                    name.clone(),
                    prefetch_dir.display().to_string(),
                    "--count".to_string(),
                    archive_get_queue_max.to_string(),
                ]);
                let exe = std::env::current_exe()
                    .map_err(|e| Error::io("finding", "pgward's own executable", e))?;
                if let Err(e) = crate::archive::spool::spawn_detached(&exe, &args) {
                    tracing::warn!("prefetch not started: {e}");
                }
            }
        }
        Command::ArchiveGetPrefetch { after, dir, count } => {
            let repo = resolved.repo().await?;
            let Ok(crate::pg::WalFileName::Segment(segment)) =
                crate::pg::WalFileName::parse(&after)
            else {
                return Err(Error::config(format!("{after} is not a WAL segment name")));
            };
            crate::archive::prefetch::run(&repo, segment, &dir, count, resolved.jobs()).await?;
        }
        Command::Backup(args) => {
            let repo = resolved.repo().await?;
            let opts = crate::backup::BackupOptions {
                backup_type: match args.backup_type {
                    BackupTypeArg::Full => BackupType::Full,
                    BackupTypeArg::Diff => BackupType::Diff,
                    BackupTypeArg::Incr => BackupType::Incr,
                },
                pgdata: resolved.global.pgdata.clone(),
                compression: resolved.compression()?,
                jobs: resolved.jobs(),
                start_fast: args.start_fast,
                archive_timeout: Duration::from_secs(args.archive_timeout),
                annotations: args.annotations.into_iter().collect(),
                max_chain: args.max_chain,
                pin: args.pin,
            };
            let m = crate::backup::backup(&repo, &resolved.conn(), opts).await?;
            if resolved.retention().is_set() {
                crate::expire::expire(&repo, &resolved.retention(), false).await?;
            }
            if json {
                say!(
                    "{}",
                    serde_json::json!({"label": m.label, "type": m.backup_type, "start_lsn": m.start_lsn, "stop_lsn": m.stop_lsn,
                    "database_size": m.database_size, "stored_size": m.stored_size, "checksum_failures": m.checksum_failures})
                );
            } else {
                say!(
                    "backup {} complete: {} files, database {}, {} stored, WAL {} .. {}",
                    m.label,
                    m.files.len(),
                    crate::info::human_bytes(m.database_size),
                    crate::info::human_bytes(m.stored_size),
                    m.start_lsn,
                    m.stop_lsn
                );
            }
        }
        Command::Restore(args) => {
            let repo = resolved.repo().await?;
            let pgdata = resolved.global.pgdata.clone().ok_or_else(|| {
                Error::config("restore needs a destination")
                    .hint("pass --pgdata DIR (an empty or new directory)")
            })?;
            let opts = restore_options(&resolved, &repo, pgdata, args)?;
            let m = crate::restore::restore(&repo, opts).await?;
            say!(
                "restored backup {} ({} files); start the cluster to recover",
                m.label,
                m.files.len()
            );
        }
        Command::Info => {
            let repo = resolved.repo().await?;
            let report = crate::info::info(&repo).await?;
            if json {
                say!(
                    "{}",
                    serde_json::to_string_pretty(&report).expect("report serializes")
                );
            } else {
                say_raw!("{}", crate::info::render_text(&report));
            }
        }
        Command::Expire { dry_run } => {
            let repo = resolved.repo().await?;
            let retention = resolved.retention();
            if !retention.is_set() {
                return Err(Error::config("expire needs a retention policy")
                    .hint("pass --retain-full N, --retain-diff N or --retain-full-days D (or set them in the configuration file)"));
            }
            let plan = crate::expire::expire(&repo, &retention, dry_run).await?;
            if json {
                say!(
                    "{}",
                    serde_json::to_string_pretty(&plan).expect("plan serializes")
                );
            } else {
                for b in &plan.backups {
                    say!(
                        "{} backup {}: {}",
                        if dry_run { "would expire" } else { "expire" },
                        b.label,
                        b.reason
                    );
                }
                say!(
                    "{} {} archived WAL file(s) before {}",
                    if dry_run { "would remove" } else { "remove" },
                    plan.wal_files.len(),
                    plan.wal_kept_from
                        .map_or("-".to_string(), |l| l.to_string())
                );
            }
        }
        Command::Check { archive_timeout } => {
            let repo = resolved.repo().await?;
            let report = crate::check::check(
                &repo,
                &resolved.conn(),
                Duration::from_secs(archive_timeout),
            )
            .await?;
            if json {
                say!(
                    "{}",
                    serde_json::to_string_pretty(&report).expect("report serializes")
                );
            } else {
                say!("check passed: stanza {:?} matches the cluster, archive_command archives here, and segment {} reached the archive in {:.2}s; lock: {}",
                    report.stanza, report.segment, report.seconds, report.lock);
            }
        }
        Command::Pitr(PitrCommand::Enable) | Command::Pitr(PitrCommand::Disable) => {
            let repo = resolved.repo().await?;
            let pgdata = resolved.global.pgdata.clone();
            let report = if matches!(cli.command, Command::Pitr(PitrCommand::Enable)) {
                crate::pitr::enable(
                    &repo,
                    &resolved.conn(),
                    pgdata.as_deref(),
                    &resolved.archive_command(&repo),
                )
                .await?
            } else {
                crate::pitr::disable(&repo, &resolved.conn(), pgdata.as_deref()).await?
            };
            if json {
                say!(
                    "{}",
                    serde_json::to_string_pretty(&report).expect("report serializes")
                );
            } else {
                for copy in &report.saved_copies {
                    say!("saved a copy of the old configuration: {}", copy.display());
                }
                for (name, old, new) in &report.changes {
                    say!("{name}: {old:?} -> {new:?}");
                }
                say!(
                    "written with {} ({})",
                    report.method,
                    report.config_file.display()
                );
                say!(
                    "{}",
                    if report.restart_needed {
                        "restart PostgreSQL for the change to take effect"
                    } else {
                        "reloaded: in effect now"
                    }
                );
            }
        }
        Command::Pitr(PitrCommand::Status) => {
            let repo = resolved.repo().await?;
            let s = crate::pitr::status(&repo, &resolved.conn()).await?;
            if json {
                say!(
                    "{}",
                    serde_json::to_string_pretty(&s).expect("status serializes")
                );
            } else {
                say!(
                    "archiving: {}",
                    if s.working { "working" } else { "NOT working" }
                );
                say!(
                    "wal_level = {}, archive_mode = {}",
                    s.wal_level,
                    s.archive_mode
                );
                say!(
                    "archive_command = {}{}",
                    s.archive_command,
                    s.archive_command_problem
                        .as_ref()
                        .map(|p| format!("  (problem: {p})"))
                        .unwrap_or_default()
                );
                say!(
                    "archived: {} segment(s), last {} at {}",
                    s.archived_count,
                    s.last_archived_wal.as_deref().unwrap_or("-"),
                    s.last_archived_time.map_or("-".into(), |t| t
                        .format("%Y-%m-%d %H:%M:%S UTC")
                        .to_string())
                );
                say!(
                    "failed: {} time(s), last {} at {}",
                    s.failed_count,
                    s.last_failed_wal.as_deref().unwrap_or("-"),
                    s.last_failed_time.map_or("-".into(), |t| t
                        .format("%Y-%m-%d %H:%M:%S UTC")
                        .to_string())
                );
                say!(
                    "waiting in pg_wal/archive_status: {}; seconds since last archived: {}",
                    s.waiting_segments,
                    s.lag_seconds.map_or("-".into(), |l| format!("{l:.0}"))
                );
                say!(
                    "newest backup: {}",
                    s.newest_backup.as_deref().unwrap_or("none")
                );
            }
        }
        Command::Wal(WalCommand::List) => {
            let entries = crate::wal::list(&resolved.repo().await?).await?;
            if json {
                say!(
                    "{}",
                    serde_json::to_string_pretty(&entries).expect("list serializes")
                );
            } else {
                say_raw!("{}", crate::wal::render_list(&entries));
            }
        }
        Command::Wal(WalCommand::Stats) => {
            let stats = crate::wal::stats(&resolved.repo().await?).await?;
            if json {
                say!(
                    "{}",
                    serde_json::to_string_pretty(&stats).expect("stats serialize")
                );
            } else {
                say_raw!("{}", crate::wal::render_stats(&stats));
            }
        }
        Command::BackupFetch { ref dir, ref label } => {
            let repo = resolved.repo().await?;
            let args = RestoreArgs::for_fetch(if label.eq_ignore_ascii_case("LATEST") {
                None
            } else {
                Some(label.clone())
            });
            let opts = restore_options(&resolved, &repo, dir.clone(), args)?;
            let m = crate::restore::restore(&repo, opts).await?;
            say!("restored backup {} into {}", m.label, dir.display());
        }
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut cmd, "pgward", &mut script);
            let _ = std::io::Write::write_all(&mut std::io::stdout(), &script);
        }
        Command::Rekey {
            ref new_cipher_pass,
        } => {
            let repo = resolved.stanza_handle().await?;
            let old = resolved.passphrase()?.ok_or_else(|| {
                Error::config("rekey needs the current passphrase")
                    .hint("pass --cipher-pass or PGWARD_CIPHER_PASS")
            })?;
            repo.rekey(&old, new_cipher_pass.as_bytes()).await?;
            say!(
                "stanza {:?}: passphrase changed; the old one no longer opens it",
                repo.stanza()
            );
        }
        Command::Pin { ref label } | Command::Unpin { ref label } => {
            let pin = matches!(cli.command, Command::Pin { .. });
            let label = label.clone();
            let repo = resolved.repo().await?;
            repo.set_pinned(&label, pin).await?;
            say!(
                "backup {label} {}",
                if pin {
                    "pinned: expire will keep it and what it builds on"
                } else {
                    "unpinned"
                }
            );
        }
        Command::Verify => {
            let repo = resolved.repo().await?;
            let report = crate::verify::verify(&repo, resolved.jobs()).await?;
            if json {
                say!(
                    "{}",
                    serde_json::to_string_pretty(&report).expect("report serializes")
                );
            } else {
                say!(
                    "checked {} backup(s), {} stored extent(s), {} archived WAL file(s), {} read",
                    report.backups_checked,
                    report.extents_checked,
                    report.wal_files_checked,
                    crate::info::human_bytes(report.bytes_read)
                );
                for p in &report.problems {
                    say!("PROBLEM: {}\n  breaks: {}", p.problem, p.breaks);
                }
            }
            if !report.problems.is_empty() {
                return Err(Error::corrupt(format!(
                    "verify found {} problem(s)",
                    report.problems.len()
                )));
            }
            if !json {
                say!("no problems found");
            }
        }
    }
    Ok(())
}

fn restore_options(
    resolved: &Resolved,
    repo: &Repo,
    pgdata: PathBuf,
    args: RestoreArgs,
) -> Result<crate::restore::RestoreOptions> {
    let target = if let Some(t) = &args.target_time {
        RecoveryTarget::Time(parse_target_time(t)?)
    } else if let Some(x) = args.target_xid {
        RecoveryTarget::Xid(x)
    } else if let Some(l) = &args.target_lsn {
        RecoveryTarget::Lsn(l.parse().map_err(|e: crate::pg::lsn::ParseLsnError| {
            Error::config(format!("--target-lsn: {e}"))
        })?)
    } else if let Some(n) = &args.target_name {
        RecoveryTarget::Name(n.clone())
    } else if args.target.is_some() {
        RecoveryTarget::Immediate
    } else {
        RecoveryTarget::EndOfArchive
    };
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
        let ok =
            tl == "latest" || tl == "current" || tl.parse::<u32>().is_ok() || tl.starts_with("0x");
        if !ok {
            return Err(Error::config(format!(
                "--target-timeline {tl:?}: expected latest, current or a timeline number"
            )));
        }
    }
    Ok(crate::restore::RestoreOptions {
        set: args.set,
        pgdata,
        tablespace_map,
        target,
        target_action: args.target_action,
        target_timeline: args.target_timeline,
        target_exclusive: args.target_exclusive,
        jobs: resolved.jobs(),
        restore_command: resolved.restore_command(repo),
        archive_off: args.archive_mode == "off",
    })
}
