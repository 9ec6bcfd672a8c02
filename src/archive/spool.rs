//! Asynchronous archive-push. The foreground `archive-push --async` validates the file,
//! copies it durably into a local spool and returns, so PostgreSQL's archiver is never
//! held up by a slow repository. A background worker (one per spool, guarded by a lock)
//! pushes spooled files in parallel and deletes each only after the repository has it.
//!
//! Safety rules: success is reported only for WAL that is durably in the spool (fsynced
//! file and directory) or in the repository; the spool is bounded by
//! `--archive-push-queue-max`, and past it archive-push *fails*, so PostgreSQL keeps the
//! segment and retries: nothing is ever dropped.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{Error, ErrorKind, IoContext, Result};
use crate::pipeline::Compression;
use crate::repo::Repo;
use crate::storage::local::{create_dir_durable, sync_dir, try_flock};

use super::push::{archive_push, parse_pushed_name, validate};

pub struct Spool {
    pub dir: PathBuf,
}

impl Spool {
    /// The push spool of a stanza under `root` (`--spool-path`).
    pub fn new(root: &Path, stanza: &str) -> Spool {
        Spool {
            dir: root.join(stanza).join("push"),
        }
    }

    fn queued(&self) -> Result<Vec<PathBuf>> {
        let mut out = Vec::new();
        match std::fs::read_dir(&self.dir) {
            Ok(entries) => {
                for e in entries {
                    let e = e.at("listing", &self.dir)?;
                    let name = e.file_name().to_string_lossy().into_owned();
                    if !name.ends_with(".pgward-tmp")
                        && !name.starts_with('.')
                        && crate::pg::WalFileName::parse(&name).is_ok()
                    {
                        out.push(e.path());
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("listing", &self.dir, e)),
        }
        // History files first: a new timeline's segments are useless without them.
        out.sort_by_key(|p| (!p.to_string_lossy().ends_with(".history"), p.clone()));
        Ok(out)
    }

    fn lock_path(&self) -> PathBuf {
        self.dir.join(".worker.lock")
    }

    fn error_path(&self) -> PathBuf {
        self.dir.join(".last-error")
    }
}

/// Foreground: validate, spool durably, make sure a worker runs.
pub async fn push_async(
    repo: &Repo,
    path: &Path,
    spool: &Spool,
    queue_max: usize,
    worker: &Background,
) -> Result<()> {
    let name = parse_pushed_name(path)?;
    let stanza = repo.stanza_info().await?;
    let checksum = validate(path, &name, &stanza).await?;
    create_dir_durable(&spool.dir).at("creating spool", &spool.dir)?;
    let target = spool.dir.join(name.to_string());
    if target.exists() {
        if super::push::checksum_file(&target)? == checksum {
            ensure_worker(spool, worker)?;
            return Ok(());
        }
        return Err(Error::new(
            ErrorKind::Conflict,
            format!(
                "{name} is already queued in {} with different contents",
                spool.dir.display()
            ),
        )
        .hint("two clusters may share one spool; give each its own --spool-path or stanza"));
    }
    let queued = spool.queued()?.len();
    if queued >= queue_max {
        let last = std::fs::read_to_string(spool.error_path()).unwrap_or_default();
        ensure_worker(spool, worker)?;
        return Err(Error::new(ErrorKind::Io, format!("the archive-push queue is full ({queued} file(s) waiting in {}); PostgreSQL will retry {name}", spool.dir.display()))
            .hint(if last.is_empty() { "the repository is slower than WAL is written; raise --archive-push-queue-max or --jobs".to_string() } else { format!("the background push keeps failing: {}", last.trim()) }));
    }
    let temp = spool.dir.join(format!("{name}.pgward-tmp"));
    std::fs::copy(path, &temp).at("spooling", path)?;
    std::fs::File::open(&temp)
        .and_then(|f| f.sync_all())
        .at("syncing", &temp)?;
    std::fs::rename(&temp, &target).at("spooling", &target)?;
    sync_dir(&spool.dir).at("syncing", &spool.dir)?;
    ensure_worker(spool, worker)
}

/// Starts the background worker unless one holds the spool's lock.
fn ensure_worker(spool: &Spool, worker: &Background) -> Result<()> {
    if lock_is_held(&spool.lock_path())? {
        return Ok(());
    }
    let exe =
        std::env::current_exe().map_err(|e| Error::io("finding", "pgward's own executable", e))?;
    spawn_detached(&exe, worker)
}

/// A background pgward: its arguments, and what it gets through its environment
/// (secrets: a command line is world-readable).
#[derive(Debug, Default)]
pub struct Background {
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
}

pub fn spawn_detached(exe: &Path, background: &Background) -> Result<()> {
    use std::os::unix::process::CommandExt;
    let mut command = std::process::Command::new(exe);
    command.envs(background.env.iter().map(|(k, v)| (k, v)));
    command
        .args(&background.args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .process_group(0)
        .spawn()
        .map(drop)
        .map_err(|e| Error::io("starting a background", exe, e))
}

fn lock_is_held(path: &Path) -> Result<bool> {
    // Taking it to look releases it again at once (the file is dropped).
    Ok(matches!(try_flock(path), Ok(Err(_))))
}

/// Background: push everything spooled, in parallel, until the spool stays empty.
pub async fn run_worker(
    repo: &Repo,
    spool: &Spool,
    compression: Compression,
    jobs: usize,
) -> Result<()> {
    let lock_path = spool.lock_path();
    create_dir_durable(&spool.dir).at("creating spool", &spool.dir)?;
    let Ok(_lock) = try_flock(&lock_path)? else {
        return Ok(()); // another worker is on it
    };
    let mut idle_since = std::time::Instant::now();
    let mut backoff = Duration::from_millis(100);
    loop {
        let queued = spool.queued()?;
        if queued.is_empty() {
            if idle_since.elapsed() > Duration::from_secs(3) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        let results = futures::future::join_all(
            queued
                .iter()
                .take(jobs.max(1))
                .map(|path| async move { (path, archive_push(repo, path, compression).await) }),
        )
        .await;
        let mut failed = false;
        for (path, result) in results {
            match result {
                Ok(_) => {
                    std::fs::remove_file(path).at("removing spooled", path)?;
                    let _ = std::fs::remove_file(spool.error_path());
                }
                Err(e) => {
                    failed = true;
                    tracing::warn!(file = %path.display(), "background push failed: {e}");
                    let _ = std::fs::write(
                        spool.error_path(),
                        format!(
                            "{}: {e}\n",
                            chrono::Utc::now().format("%Y-%m-%d %H:%M:%S UTC")
                        ),
                    );
                }
            }
        }
        sync_dir(&spool.dir).at("syncing", &spool.dir)?;
        if failed {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(10));
        } else {
            backoff = Duration::from_millis(100);
        }
        idle_since = std::time::Instant::now();
    }
}
