//! Holds: a running `restore`, `drill` or `verify` names the backups (each with its whole
//! chain) and the archived WAL it reads, and `expire` keeps them while the reader lives.
//! Readers take no stanza lock: backups go on while a restore runs.
//!
//! - Local repository: a file per reader in `<stanza>/lock/holds/`, `flock`ed while the
//!   reader lives. It is written under a temporary name and renamed locked, so a hold is
//!   never seen unlocked while its reader lives; the kernel releases the `flock` when the
//!   reader dies (kill -9 included), and the next `expire` removes the file at once.
//! - Object storage: an object per reader, refreshed by a heartbeat and removed when the
//!   reader ends. A reader that died is recognised as `lock.rs` recognises a dead lock
//!   holder: its pid is gone on this host, or its heartbeat is older than [`STALE_AFTER`].
//!   Each reader writes its own key, so no conditional write is needed (Garage too).
//!
//! Holds are enveloped (sealed in encrypted stanzas) like every metadata object.
//!
//! # Why a live reader never loses a bundle, and never restores wrong
//!
//! Expire (under the stanza's backup lock) lists holds and plans (held backups stay),
//! deletes the planned manifests (the commit point), lists holds *again*, and deletes the
//! bundles (and WAL) of removed backups that no hold names. A reader writes its hold
//! *before* it reads the manifests of the backups it chose, and fails if one is gone. For
//! a backup B that expire removes and a reader that chose it, either
//! - the hold was listed by expire's first listing: B is not removed at all; or
//! - the reader loaded B's manifests before expire deleted them: its hold was written
//!   before that, so before expire's second listing, which sees it (listings are strongly
//!   consistent, on a file system as on S3) and keeps B's bundles (and the WAL the hold
//!   names); a backup's `remove_orphans` skips held bundles too
//!   ([`Repo::unheld_orphan_bundles`]); or
//! - the reader read after expire deleted them: it finds a manifest missing and stops
//!   with "backup B was expired while this restore started; run it again".
//!
//! A restore also checks, after loading the backup it restores, that the rest of its
//! chain is still listed. In the one interleaving left (expire planned before the hold
//! and deletes a chain member's manifest after that check, before the restore reads
//! that manifest's codec) the restore stops naming the backup it cannot read. So at
//! worst a reader fails cleanly: every stored byte is checked on every read, so a missing
//! or changed object is an error, never a silently wrong restore. Bundles kept for a hold
//! whose manifest is gone are orphans once the hold ends; the next backup removes them.
//!
//! A hold whose reader is alive but silent for [`STALE_AFTER`] (object storage: a
//! partitioned host) is treated as dead: that reader then fails on its next read.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::lock::{host, pid_alive, Heartbeat, STALE_AFTER};
use super::manifest::Manifest;
use super::object::{self, Contents, Kind};
use super::stanza::StanzaInfo;
use super::Repo;
use crate::error::{Error, ErrorKind, IoContext, Result};
use crate::pg::Lsn;
use crate::storage::local::{create_dir_owned, repository_owner};

const DIR: &str = "lock/holds";
const SUFFIX: &str = ".hold";
const TEMP_SUFFIX: &str = ".hold.pgward-tmp";
/// A temporary hold file older than this was left by a reader killed while taking it
/// (taking one takes microseconds); younger ones may be being taken.
const TEMP_ABANDONED_AFTER: std::time::Duration = std::time::Duration::from_secs(60);

/// What a reader reads, as its hold names it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct HoldScope {
    /// Backups read, each with every backup it builds on.
    pub backups: Vec<String>,
    /// Every backup of the stanza (verify).
    #[serde(default)]
    pub every_backup: bool,
    /// Archived WAL from this position on, of every timeline; None: no WAL.
    pub wal_from: Option<Lsn>,
}

impl HoldScope {
    /// Every backup and every archived WAL file (what `verify` reads).
    pub fn everything() -> HoldScope {
        HoldScope {
            backups: Vec::new(),
            every_backup: true,
            wal_from: Some(Lsn(0)),
        }
    }

    pub fn holds_backup(&self, label: &str) -> bool {
        self.every_backup || self.backups.iter().any(|b| b == label)
    }
}

/// A hold as stored: who holds what.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Hold {
    #[serde(flatten)]
    pub holder: Holder,
    pub heartbeat: DateTime<Utc>,
    #[serde(flatten)]
    pub scope: HoldScope,
}

/// Who holds: what `expire` and `info` name.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Holder {
    pub command: String,
    pub pid: u32,
    pub host: String,
    pub started: DateTime<Utc>,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (pid {} on host {}, started {})",
            self.command,
            self.pid,
            self.host,
            self.started.format("%Y-%m-%d %H:%M:%S UTC")
        )
    }
}

impl Hold {
    /// Whether its reader is gone, on object storage (a local hold's `flock` tells that):
    /// its pid no longer runs on this host, or its heartbeat stopped `STALE_AFTER` ago.
    fn is_dead(&self, now: DateTime<Utc>, this_host: &str, alive: impl Fn(u32) -> bool) -> bool {
        let silent =
            now - self.heartbeat > chrono::Duration::from_std(STALE_AFTER).expect("small duration");
        silent || (self.holder.host == this_host && !alive(self.holder.pid))
    }
}

/// Held while the reader lives; `release` when done. Dropped without it, a local hold
/// is removed at once and an object-storage one is left to be recognised as dead.
#[derive(Debug)]
pub struct HoldGuard {
    local: Option<(File, PathBuf)>,
    object: Option<Heartbeat>,
}

impl HoldGuard {
    fn none() -> HoldGuard {
        HoldGuard {
            local: None,
            object: None,
        }
    }

    pub async fn release(mut self) {
        if let Some(object) = self.object.take() {
            object.release().await;
        }
        // The local file goes in drop.
    }
}

impl Drop for HoldGuard {
    fn drop(&mut self) {
        // Unlinked while still locked: an expire never sees it unlocked.
        if let Some((file, path)) = self.local.take() {
            let _ = std::fs::remove_file(&path);
            drop(file);
        }
    }
}

/// Random enough that two readers (of any host) never pick one name.
fn unique_name() -> String {
    let mut bytes = [0u8; 8];
    let _ = getrandom::fill(&mut bytes);
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{}-{hex}", std::process::id())
}

impl Repo {
    /// Takes a hold naming `scope` for `command`. Never fails: a reader that cannot write
    /// its hold (a read-only repository, a stanza that does not exist) goes on without
    /// one, warned that an expire may remove what it reads (it would then fail cleanly).
    pub async fn hold(&self, command: &str, scope: HoldScope) -> HoldGuard {
        match self.try_hold(command, scope).await {
            Ok(guard) => guard,
            Err(e) => {
                tracing::warn!(
                    "could not record what this {command} reads ({e}): an expire running \
                     meanwhile may remove it, and this {command} would then fail"
                );
                HoldGuard::none()
            }
        }
    }

    async fn try_hold(&self, command: &str, scope: HoldScope) -> Result<HoldGuard> {
        let now = Utc::now();
        let hold = Hold {
            holder: Holder {
                command: command.to_string(),
                pid: std::process::id(),
                host: host(),
                started: now,
            },
            heartbeat: now,
            scope,
        };
        let name = unique_name();
        let key = self.key(&format!("{DIR}/{name}{SUFFIX}"));
        if let Some(root) = self.storage.local_root() {
            if !root.join(&self.stanza).is_dir() {
                return Ok(HoldGuard::none()); // no stanza: nothing to hold, and nothing to create
            }
            let bytes = self.encode_object(&key, Kind::Lock, &hold)?;
            let dir = root.join(&self.stanza).join(DIR);
            let path = take_local(&dir, &name, &bytes, repository_owner(&root))?;
            return Ok(HoldGuard {
                local: Some(path),
                object: None,
            });
        }
        self.storage
            .put(&key, &self.encode_object(&key, Kind::Lock, &hold)?)
            .await?;
        let encode = move |repo: &Repo, key: &str, now| {
            let hold = Hold {
                heartbeat: now,
                ..hold.clone()
            };
            repo.encode_object(key, Kind::Lock, &hold)
        };
        Ok(HoldGuard {
            local: None,
            object: Some(Heartbeat::start(self, key, encode)),
        })
    }

    /// The holds of live readers. With `tidy` (expire, under the stanza's lock) the holds
    /// of dead readers are removed; without it (info) nothing is written.
    pub async fn live_holds(&self, tidy: bool) -> Result<Vec<Hold>> {
        if let Some(root) = self.storage.local_root() {
            let dir = root.join(&self.stanza).join(DIR);
            let mut out = Vec::new();
            for (path, bytes) in live_local(&dir, tidy)? {
                out.push(self.decode_hold(&path.display().to_string(), bytes));
            }
            return Ok(out);
        }
        let listing = self.storage.list(&self.key(DIR)).await?;
        let (now, here) = (Utc::now(), host());
        let mut out = Vec::new();
        for file in listing.files.iter().filter(|f| f.name.ends_with(SUFFIX)) {
            let key = self.key(&format!("{DIR}/{}", file.name));
            let Some(stored) = object::get(&self.storage, &key).await? else {
                continue; // released meanwhile
            };
            let hold = self.decode_hold(&key, stored);
            if hold.is_dead(now, &here, pid_alive) {
                if tidy {
                    tracing::info!(holder = %hold.holder, "removing the hold of a reader that is gone");
                    self.storage.delete(&key).await?;
                }
                continue;
            }
            out.push(hold);
        }
        Ok(out)
    }

    /// A hold that does not read holds everything: expire keeps too much rather than too
    /// little (a live local hold is always written whole before it can be seen).
    fn decode_hold(&self, what: &str, stored: Vec<u8>) -> Hold {
        let decoded =
            object::decode_owned(self.master_key(), Kind::Lock, stored, what).and_then(|c| {
                let (Contents::Checked(json) | Contents::Legacy(json)) = c;
                serde_json::from_slice::<Hold>(&json)
                    .map_err(|e| Error::corrupt(format!("{what}: {e}")))
            });
        decoded.unwrap_or_else(|e| {
            tracing::warn!(
                "hold {what} cannot be read ({e}): expire keeps everything while it is there"
            );
            Hold {
                holder: Holder {
                    command: format!("unreadable hold {what}"),
                    pid: 0,
                    host: String::new(),
                    started: Utc::now(),
                },
                heartbeat: Utc::now(),
                scope: HoldScope::everything(),
            }
        })
    }

    /// The reader's side: holds `chain` (the backup to read last, after every backup it
    /// builds on) and the WAL from `wal_from` for `command`, then reads the backup's
    /// manifest and checks that the rest of the chain is still listed. A backup an expire
    /// removed before the hold was seen is named (see the module comment).
    pub async fn hold_and_load(
        &self,
        command: &str,
        chain: &[String],
        wal_from: Lsn,
        stanza: &StanzaInfo,
    ) -> Result<(Manifest, HoldGuard)> {
        let scope = HoldScope {
            backups: chain.to_vec(),
            every_backup: false,
            wal_from: Some(wal_from),
        };
        let hold = self.hold(command, scope).await;
        match self.load_held(command, chain, stanza).await {
            Ok(manifest) => Ok((manifest, hold)),
            Err(e) => {
                hold.release().await;
                Err(e)
            }
        }
    }

    async fn load_held(
        &self,
        command: &str,
        chain: &[String],
        stanza: &StanzaInfo,
    ) -> Result<Manifest> {
        let expired = |gone: &str| {
            Error::new(
                ErrorKind::NotFound,
                format!("backup {gone} was expired while this {command} started"),
            )
            .hint(format!(
                "run the {command} again; `pgward info` lists the backups that remain"
            ))
        };
        let label = chain.last().expect("a chain ends with the backup read");
        let manifest = match self.load_manifest_of(label, stanza).await {
            Err(e) if e.is_not_found() => return Err(expired(label)),
            other => other?,
        };
        let listed = self.backup_labels().await?;
        if let Some(gone) = chain.iter().find(|b| !listed.contains(b)) {
            return Err(expired(gone));
        }
        Ok(manifest)
    }

    /// [`Repo::orphan_bundles`] less those a live hold names: bundles that expire kept
    /// for a reader after removing their manifest (see the module comment). Under the
    /// stanza's lock, as removing orphans is.
    pub async fn unheld_orphan_bundles(&self) -> Result<Vec<String>> {
        let holds = self.live_holds(true).await?;
        Ok(self
            .orphan_bundles()
            .await?
            .into_iter()
            .filter(|bundle| {
                let label = bundle.get(..16).unwrap_or("");
                !holds.iter().any(|h| h.scope.holds_backup(label))
            })
            .collect())
    }
}

/// Creates `<dir>/<name>.hold` holding `bytes`, `flock`ed: written and locked under a
/// temporary name, then renamed, so that it is never seen unlocked while its reader lives.
fn take_local(
    dir: &Path,
    name: &str,
    bytes: &[u8],
    owner: Option<(u32, u32)>,
) -> Result<(File, PathBuf)> {
    create_dir_owned(dir, owner).at("creating hold directory", dir)?;
    let temp = dir.join(format!("{name}{TEMP_SUFFIX}"));
    let path = dir.join(format!("{name}{SUFFIX}"));
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&temp)
        .at("creating hold", &temp)?;
    if !try_lock(&file) {
        return Err(Error::io("locking", &temp, std::io::Error::last_os_error()));
    }
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::fchown(&file, Some(uid), Some(gid))
            .at("giving to the repository's owner", &temp)?;
    }
    file.write_all(bytes).at("writing hold", &temp)?;
    // No fsync: a hold matters only while its reader lives, and a crash ends the reader.
    std::fs::rename(&temp, &path).at("renaming hold", &temp)?;
    Ok((file, path))
}

fn try_lock(file: &File) -> bool {
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a descriptor we own; no memory is involved.
    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

/// The contents of the locked (live) hold files in `dir`; with `tidy`, unlocked ones
/// (their reader died) are removed, and temporary files abandoned by a reader killed
/// while taking its hold.
fn live_local(dir: &Path, tidy: bool) -> Result<Vec<(PathBuf, Vec<u8>)>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io("listing", dir, e)),
    };
    let mut live = Vec::new();
    let mut names: Vec<String> = Vec::new();
    for entry in entries {
        names.push(
            entry
                .at("listing", dir)?
                .file_name()
                .to_string_lossy()
                .into_owned(),
        );
    }
    names.sort();
    for name in names {
        let path = dir.join(&name);
        let temp = name.ends_with(TEMP_SUFFIX);
        if !temp && !name.ends_with(SUFFIX) {
            continue;
        }
        let mut file = match OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue, // released
            Err(e) => return Err(Error::io("opening hold", &path, e)),
        };
        if try_lock(&file) {
            // Nobody holds it: its reader is gone (or it is a temporary file, see below).
            let abandoned = !temp
                || file.metadata().is_ok_and(|m| {
                    let age = Utc::now().timestamp() - m.mtime();
                    age > TEMP_ABANDONED_AFTER.as_secs() as i64
                });
            if tidy && abandoned {
                tracing::info!(path = %path.display(), "removing the hold of a reader that is gone");
                match std::fs::remove_file(&path) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        return Err(Error::io("removing", &path, e))
                    }
                    _ => {}
                }
            }
            continue;
        }
        if temp {
            continue; // being taken: seen under its final name once written
        }
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).at("reading hold", &path)?;
        live.push((path, bytes));
    }
    Ok(live)
}

/// The oldest WAL position any hold reads from.
pub fn held_wal_from(holds: &[Hold]) -> Option<Lsn> {
    holds.iter().filter_map(|h| h.scope.wal_from).min()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::LocalStorage;

    fn hold(host: &str, pid: u32, heartbeat: DateTime<Utc>) -> Hold {
        Hold {
            holder: Holder {
                command: "restore".into(),
                pid,
                host: host.into(),
                started: heartbeat,
            },
            heartbeat,
            scope: HoldScope::default(),
        }
    }

    #[test]
    fn an_object_hold_is_dead_when_its_pid_is_gone_here_or_its_heartbeat_is_stale() {
        let now = Utc::now();
        let stale = chrono::Duration::from_std(STALE_AFTER).unwrap();
        let alive = |_| true;
        let gone = |_| false;
        // Fresh, and its process runs: live.
        assert!(!hold("here", 7, now).is_dead(now, "here", alive));
        // Its process is gone on this host: dead at once, whatever the heartbeat.
        assert!(hold("here", 7, now).is_dead(now, "here", gone));
        // On another host, a pid says nothing: live until the heartbeat goes stale.
        assert!(!hold("there", 7, now).is_dead(now, "here", gone));
        let just_fresh = now - stale + chrono::Duration::seconds(1);
        assert!(!hold("there", 7, just_fresh).is_dead(now, "here", gone));
        let silent = now - stale - chrono::Duration::seconds(1);
        assert!(hold("there", 7, silent).is_dead(now, "here", alive));
        // The heartbeat comes often enough that a live reader never looks stale.
        assert!(super::super::lock::HEARTBEAT * 3 < STALE_AFTER);
    }

    #[tokio::test]
    async fn a_local_hold_is_live_while_held_and_gone_once_its_holder_is() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("main")).unwrap();
        let storage = std::sync::Arc::new(LocalStorage::new(tmp.path()));
        let repo = Repo::plain_for_tests(storage, "main");
        let scope = HoldScope {
            backups: vec!["20261101-000000F".into()],
            every_backup: false,
            wal_from: Some(Lsn(1 << 24)),
        };
        let guard = repo.hold("restore", scope.clone()).await;
        let holds = repo.live_holds(true).await.unwrap();
        assert_eq!(holds.len(), 1);
        assert_eq!(holds[0].scope, scope);
        assert_eq!(holds[0].holder.pid, std::process::id());
        assert!(holds[0].scope.holds_backup("20261101-000000F"));
        assert!(!holds[0].scope.holds_backup("20261102-000000F"));

        // A holder killed leaves its file unlocked: not live, and removed when tidying.
        let (_, path) = guard.local.as_ref().unwrap();
        let copy = path.with_file_name("dead-0000.hold");
        std::fs::copy(path, &copy).unwrap();
        assert_eq!(repo.live_holds(false).await.unwrap().len(), 1);
        assert!(copy.exists(), "info never removes");
        assert_eq!(repo.live_holds(true).await.unwrap().len(), 1);
        assert!(!copy.exists(), "expire removes a dead hold");

        guard.release().await;
        assert!(repo.live_holds(true).await.unwrap().is_empty());
        let dir = tmp.path().join("main/lock/holds");
        assert_eq!(std::fs::read_dir(dir).unwrap().count(), 0);
    }

    #[tokio::test]
    async fn a_backup_leaves_the_orphan_bundles_of_a_held_backup_alone() {
        let tmp = tempfile::tempdir().unwrap();
        let bundles = tmp.path().join("main/bundles");
        std::fs::create_dir_all(&bundles).unwrap();
        std::fs::create_dir_all(tmp.path().join("main/backups")).unwrap();
        let (held, free) = ("20261101-000000F", "20261102-000000F");
        for label in [held, free] {
            std::fs::write(bundles.join(format!("{label}-0-0.bundle")), b"x").unwrap();
        }
        let storage = std::sync::Arc::new(LocalStorage::new(tmp.path()));
        let repo = Repo::plain_for_tests(storage, "main");
        // Expire removed both manifests; a restore that read them still holds one.
        let scope = HoldScope {
            backups: vec![held.into()],
            ..Default::default()
        };
        let guard = repo.hold("restore", scope).await;
        let mut orphans = repo.orphan_bundles().await.unwrap();
        orphans.sort();
        assert_eq!(orphans.len(), 2);
        assert_eq!(
            repo.unheld_orphan_bundles().await.unwrap(),
            [format!("{free}-0-0.bundle")]
        );
        guard.release().await;
        assert_eq!(repo.unheld_orphan_bundles().await.unwrap().len(), 2);
    }

    /// A backup removed between a restore's choice and its hold: the restore stops,
    /// naming it, and leaves no hold behind.
    #[tokio::test]
    async fn a_backup_expired_before_its_hold_was_written_is_named_and_nothing_is_held() {
        let tmp = tempfile::tempdir().unwrap();
        let storage = std::sync::Arc::new(LocalStorage::new(tmp.path()));
        let (repo, m, stanza) = Repo::fixture_stanza_for_tests(storage).await;
        let label = m.label.clone();
        repo.save_manifest(m.clone()).await.unwrap();

        let (loaded, hold) = repo
            .hold_and_load(
                "restore",
                std::slice::from_ref(&label),
                m.start_lsn,
                &stanza,
            )
            .await
            .unwrap();
        assert_eq!(loaded.label, label);
        assert_eq!(repo.live_holds(false).await.unwrap().len(), 1);
        hold.release().await;

        // A chain member no longer listed (expired after the choice) is named.
        let older = "20261120-000000F".to_string();
        let e = repo
            .hold_and_load(
                "drill",
                &[older.clone(), label.clone()],
                m.start_lsn,
                &stanza,
            )
            .await
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::NotFound);
        assert_eq!(
            e.message,
            format!("backup {older} was expired while this drill started")
        );

        repo.delete_manifest(&label).await.unwrap();
        let e = repo
            .hold_and_load(
                "restore",
                std::slice::from_ref(&label),
                m.start_lsn,
                &stanza,
            )
            .await
            .unwrap_err();
        assert_eq!(
            e.message,
            format!("backup {label} was expired while this restore started")
        );
        assert!(
            e.hint.as_deref().unwrap().contains("run the restore again"),
            "{e:?}"
        );
        assert!(repo.live_holds(false).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_reader_of_a_stanza_that_does_not_exist_creates_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let storage = std::sync::Arc::new(LocalStorage::new(tmp.path()));
        let repo = Repo::plain_for_tests(storage, "typo");
        let guard = repo.hold("verify", HoldScope::everything()).await;
        assert!(!tmp.path().join("typo").exists());
        guard.release().await;
    }
}
