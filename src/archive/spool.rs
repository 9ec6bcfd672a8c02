//! Asynchronous archive-push. The foreground `archive-push --async` validates the file,
//! copies it durably into a local spool and returns, so PostgreSQL's archiver is never
//! held up by a slow repository. A background worker (one per spool, guarded by a lock)
//! pushes spooled files in parallel and deletes each only after the repository has it.
//!
//! Safety rules: success is reported only for WAL that is durably in the spool (fsynced
//! file and directory) or in the repository; the spool is bounded by
//! `--archive-push-queue-max`, and past it archive-push *fails*, so PostgreSQL keeps the
//! segment and retries: nothing is ever dropped.
//!
//! The spool may live under a shared directory (`--spool-path /tmp/...`): its stanza and
//! push directories must be pgward's own and closed to others (`ensure_private_dir`),
//! and its files are opened without following links, so nobody else can make pgward
//! write through a link planted there.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{Error, ErrorKind, IoContext, Result};
use crate::pipeline::Compression;
use crate::repo::stanza::StanzaInfo;
use crate::repo::{Repo, ABANDONED_AFTER};
use crate::storage::local::{
    create_dir_durable, ensure_private_dir, open_nofollow, refuse_open_parent,
    replace_private_file, sync_dir, try_flock,
};

use super::push::{archive_push, parse_pushed_name, validate, PushedTails};

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

    /// Creates the spool (0700) or checks that the existing one is closed to others.
    fn prepare(&self) -> Result<()> {
        let stanza_dir = self.dir.parent().expect("spool dirs are root/stanza/push");
        let root = stanza_dir
            .parent()
            .expect("spool dirs are root/stanza/push");
        create_dir_durable(root).at("creating spool", root)?;
        refuse_open_parent(root, "spool path")?;
        ensure_private_dir(stanza_dir, "spool directory")?;
        ensure_private_dir(&self.dir, "spool directory")
    }

    /// Removes what killed foreground pushes left (`<name>.pgward-tmp`) once it is
    /// `ABANDONED_AFTER` old: younger ones may be a push at work (it takes no lock).
    /// PostgreSQL's retry of the name usually replaces it first; this is for names it
    /// never retried (archive_command changed, the cluster gone).
    fn remove_abandoned(&self) -> Result<usize> {
        let cutoff = std::time::SystemTime::now() - ABANDONED_AFTER;
        let mut removed = 0;
        for e in std::fs::read_dir(&self.dir).at("listing", &self.dir)? {
            let e = e.at("listing", &self.dir)?;
            // DirEntry::metadata does not follow links: a planted link is removed, never
            // what it points to.
            let old = e
                .metadata()
                .is_ok_and(|m| !m.is_dir() && m.modified().is_ok_and(|t| t < cutoff));
            if old && e.file_name().to_string_lossy().ends_with(".pgward-tmp") {
                match std::fs::remove_file(e.path()) {
                    Ok(()) => removed += 1,
                    Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                    Err(err) => return Err(Error::io("removing", e.path(), err)),
                }
            }
        }
        Ok(removed)
    }

    /// What the worker last failed with, if anything.
    fn last_error(&self) -> String {
        let mut text = String::new();
        if let Ok(mut file) = open_nofollow(&self.error_path()) {
            let _ = file.read_to_string(&mut text);
        }
        text
    }

    fn record_error(&self, message: &str) -> Result<()> {
        let path = self.error_path();
        replace_private_file(&path)?
            .write_all(message.as_bytes())
            .at("writing", &path)
    }

    fn queued(&self) -> Result<Vec<PathBuf>> {
        let mut out = Vec::new();
        match std::fs::read_dir(&self.dir) {
            Ok(entries) => {
                for e in entries {
                    let e = e.at("listing", &self.dir)?;
                    let name = e.file_name().to_string_lossy().into_owned();
                    // Only what push_async spooled: regular files, never links.
                    let regular = e.file_type().is_ok_and(|t| t.is_file());
                    if regular
                        && !name.ends_with(".pgward-tmp")
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

    /// Counts one failed background push in `.push-failures` (a decimal number, kept
    /// for monitoring: `metrics` reports it as a counter; its mtime is the last failure).
    /// Only the worker holding the spool's lock writes it.
    fn count_failure(&self) -> Result<()> {
        let path = self.failures_path();
        let count = read_count(&path) + 1;
        replace_private_file(&path)?
            .write_all(count.to_string().as_bytes())
            .at("writing", &path)
    }

    /// Files waiting and background pushes failed, for monitoring; None when the stanza
    /// has no spool here (it archives synchronously, or spools elsewhere).
    pub fn status(&self) -> Result<Option<SpoolStatus>> {
        if !self.dir.is_dir() {
            return Ok(None);
        }
        let failures = self.failures_path();
        let last_failure = std::fs::symlink_metadata(&failures)
            .and_then(|m| m.modified())
            .ok()
            .map(chrono::DateTime::<chrono::Utc>::from);
        Ok(Some(SpoolStatus {
            queued: self.queued()?.len(),
            push_failures: read_count(&failures),
            last_failure,
        }))
    }

    fn failures_path(&self) -> PathBuf {
        self.dir.join(".push-failures")
    }

    fn lock_path(&self) -> PathBuf {
        self.dir.join(".worker.lock")
    }

    fn error_path(&self) -> PathBuf {
        self.dir.join(".last-error")
    }
}

/// What `metrics` reports of an asynchronous archive-push spool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpoolStatus {
    /// WAL files waiting to be pushed.
    pub queued: usize,
    /// Background pushes that failed (each retry counts), since the spool was made.
    pub push_failures: u64,
    pub last_failure: Option<chrono::DateTime<chrono::Utc>>,
}

/// The number in a counter file; a missing or unreadable one counts as 0.
fn read_count(path: &Path) -> u64 {
    let mut text = String::new();
    if let Ok(mut file) = open_nofollow(path) {
        let _ = file.read_to_string(&mut text);
    }
    text.trim().parse().unwrap_or(0)
}

/// Foreground: validate (against `stanza`, read while unlocking), spool durably, make
/// sure a worker runs.
pub async fn push_async(
    stanza: &StanzaInfo,
    path: &Path,
    spool: &Spool,
    queue_max: usize,
    worker: &Background,
) -> Result<()> {
    let name = parse_pushed_name(path)?;
    let checksum = validate(path, &name, stanza).await?;
    spool.prepare()?;
    let target = spool.dir.join(name.to_string());
    let queued_already = match std::fs::symlink_metadata(&target) {
        Ok(meta) if meta.is_file() => true,
        Ok(_) => {
            return Err(Error::config(format!(
                "{} is not a regular file: pgward spools only files it wrote",
                target.display()
            ))
            .hint("someone else may have planted it; remove it"))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(Error::io("inspecting", &target, e)),
    };
    if queued_already {
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
        let last = spool.last_error();
        ensure_worker(spool, worker)?;
        return Err(Error::new(ErrorKind::Io, format!("the archive-push queue is full ({queued} file(s) waiting in {}); PostgreSQL will retry {name}", spool.dir.display()))
            .hint(if last.is_empty() { "the repository is slower than WAL is written; raise --archive-push-queue-max or --jobs".to_string() } else { format!("the background push keeps failing: {}", last.trim()) }));
    }
    let temp = spool.dir.join(format!("{name}.pgward-tmp"));
    let mut spooled = replace_private_file(&temp)?;
    let mut source = std::fs::File::open(path).at("opening", path)?;
    std::io::copy(&mut source, &mut spooled).at("spooling", path)?;
    spooled.sync_all().at("syncing", &temp)?;
    drop(spooled);
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
    Ok(try_flock(path)?.is_err())
}

/// Background: push everything spooled, in parallel, until the spool stays empty.
pub async fn run_worker(
    repo: &Repo,
    spool: &Spool,
    compression: Compression,
    block_maps: bool,
    jobs: usize,
) -> Result<()> {
    let lock_path = spool.lock_path();
    spool.prepare()?;
    let Ok(_lock) = try_flock(&lock_path)? else {
        return Ok(()); // another worker is on it
    };
    match spool.remove_abandoned() {
        Ok(0) => {}
        Ok(removed) => tracing::info!(removed, "removed spool files that killed pushes left"),
        Err(e) => tracing::warn!("leaving what killed pushes left in the spool: {e}"),
    }
    let mut idle_since = std::time::Instant::now();
    let mut backoff = Duration::from_millis(100);
    let tails = &PushedTails::default();
    loop {
        let queued = spool.queued()?;
        if queued.is_empty() {
            if idle_since.elapsed() > Duration::from_secs(3) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        let results =
            futures::future::join_all(queued.iter().take(jobs.max(1)).map(|path| async move {
                (
                    path,
                    archive_push(repo, None, path, compression, block_maps, Some(tails)).await,
                )
            }))
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
                    let _ = spool.record_error(&format!(
                        "{}: {e}\n",
                        chrono::Utc::now().format("%Y-%m-%d %H:%M:%S UTC")
                    ));
                    if let Err(e) = spool.count_failure() {
                        tracing::warn!("counting the failed push: {e}");
                    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_worker_removes_spool_files_killed_pushes_left_and_spares_pushes_in_progress() {
        let tmp = tempfile::tempdir().unwrap();
        let spool = Spool::new(tmp.path(), "main");
        spool.prepare().unwrap();
        let plant = |name: &str, age: Duration| {
            let path = spool.dir.join(name);
            std::fs::File::create(&path)
                .unwrap()
                .set_modified(std::time::SystemTime::now() - age)
                .unwrap();
            path
        };
        let abandoned = plant(
            "000000010000000000000001.pgward-tmp",
            Duration::from_secs(7200),
        );
        let in_progress = plant(
            "000000010000000000000002.pgward-tmp",
            Duration::from_secs(5),
        );
        let queued = plant("000000010000000000000003", Duration::from_secs(7200));
        assert_eq!(spool.remove_abandoned().unwrap(), 1);
        assert!(!abandoned.exists());
        assert!(in_progress.exists(), "a push may still be writing it");
        assert!(queued.exists(), "spooled WAL is never a leftover");
    }

    #[test]
    fn status_counts_queued_files_and_failed_pushes() {
        let tmp = tempfile::tempdir().unwrap();
        let spool = Spool::new(tmp.path(), "main");
        assert_eq!(spool.status().unwrap(), None, "no spool, no status");
        spool.prepare().unwrap();
        std::fs::write(spool.dir.join("000000010000000000000003"), b"wal").unwrap();
        std::fs::write(spool.dir.join("000000010000000000000004.pgward-tmp"), b"").unwrap();
        let status = spool.status().unwrap().unwrap();
        assert_eq!((status.queued, status.push_failures), (1, 0));
        assert_eq!(status.last_failure, None);
        spool.count_failure().unwrap();
        spool.count_failure().unwrap();
        let status = spool.status().unwrap().unwrap();
        assert_eq!(status.push_failures, 2);
        assert!(status.last_failure.is_some());
        // A failure counter is never mistaken for queued WAL.
        assert_eq!(status.queued, 1);
    }
}
