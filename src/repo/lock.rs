//! Stanza locks: two backups (or a backup and an expire) of one stanza never run at once.
//!
//! - Local repository: an `flock` on a file inside it; the kernel releases it when the
//!   holder dies (kill -9 included), so the next process takes over without guessing.
//! - Object storage with conditional writes: an object created with If-None-Match,
//!   naming its holder and refreshed by a heartbeat. A holder that died is recognised (its
//!   pid is gone on this host, or its heartbeat is older than `STALE_AFTER`) and replaced.
//! - Object storage without them (Garage ignores If-None-Match): a host-local `flock`;
//!   `info` and `check` say that only this host is protected.
//!
//! Lock objects are enveloped (and sealed in encrypted stanzas) like every metadata object.
//!
//! The lock guards work, never data: the manifests stay the only truth, so a lock lost
//! in a crash costs at most a wait, never a repository.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::object::{self, Contents, Kind};
use super::Repo;
use crate::error::{Error, ErrorKind, IoContext, Result};
use crate::storage::local::{create_dir_owned, ensure_private_dir, repository_owner, try_flock};
use crate::storage::SharedStorage;

pub(super) const HEARTBEAT: Duration = Duration::from_secs(30);
/// A holder silent this long is taken for dead (locks here, holds in `holds.rs`).
pub(super) const STALE_AFTER: Duration = Duration::from_secs(300);
const LOCAL: &str = "flock in the repository";

/// Held while alive; call `release` when done (a crash leaves it to be taken over).
#[derive(Debug)]
pub struct StanzaLock {
    _file: Option<File>,
    object: Option<Heartbeat>,
}

impl StanzaLock {
    pub async fn release(mut self) {
        if let Some(object) = self.object.take() {
            object.release().await;
        }
    }
}

/// An object on object storage that says its holder lives (a stanza lock, a hold):
/// written again with the time every [`HEARTBEAT`], removed on release. A holder that
/// dies stops writing it, and others take it for dead after [`STALE_AFTER`].
#[derive(Debug)]
pub(super) struct Heartbeat {
    storage: SharedStorage,
    key: String,
    task: tokio::task::JoinHandle<()>,
}

impl Heartbeat {
    /// Starts refreshing `key` (already written) with what `encode` makes of the time.
    pub(super) fn start(
        repo: &Repo,
        key: String,
        encode: impl Fn(&Repo, &str, chrono::DateTime<chrono::Utc>) -> Result<Vec<u8>> + Send + 'static,
    ) -> Heartbeat {
        let (beating, beat_key) = (repo.clone(), key.clone());
        let task = tokio::spawn(async move {
            loop {
                tokio::time::sleep(HEARTBEAT).await;
                if let Ok(bytes) = encode(&beating, &beat_key, chrono::Utc::now()) {
                    if let Err(e) = beating.storage.put(&beat_key, &bytes).await {
                        tracing::warn!("could not refresh {beat_key}: {e}");
                    }
                }
            }
        });
        Heartbeat {
            storage: repo.storage.clone(),
            key,
            task,
        }
    }

    pub(super) async fn release(self) {
        self.task.abort();
        if let Err(e) = self.storage.delete(&self.key).await {
            tracing::warn!("could not remove {}: {e}", self.key);
        }
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Holder {
    pid: u32,
    host: String,
    purpose: String,
    heartbeat: chrono::DateTime<chrono::Utc>,
}

pub(super) fn host() -> String {
    hostname::get()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn locked(repo: &Repo, purpose: &str, holder: &str) -> Error {
    Error::new(
        ErrorKind::Locked,
        format!(
            "stanza {:?} is locked for {purpose} by {holder}",
            repo.stanza
        ),
    )
    .hint("another pgward process is running for this stanza; wait for it to finish")
}

impl Repo {
    /// Takes the stanza's `purpose` lock (e.g. "backup") or fails at once naming the holder.
    pub async fn lock(&self, purpose: &str) -> Result<StanzaLock> {
        if let Some(root) = self.storage.local_root() {
            let dir = root.join(&self.stanza).join("lock");
            return self.flock(dir, purpose, repository_owner(&root));
        }
        let key = self.key(&format!("lock/{purpose}.lock"));
        let what = purpose.to_string();
        let holder = move |repo: &Repo, key: &str, now| {
            repo.encode_object(
                key,
                Kind::Lock,
                &Holder {
                    pid: std::process::id(),
                    host: host(),
                    purpose: what.clone(),
                    heartbeat: now,
                },
            )
        };
        for _ in 0..2 {
            match self
                .storage
                .create_exclusive(&key, &holder(self, &key, chrono::Utc::now())?)
                .await?
            {
                None => {
                    let dir = self.host_lock_dir();
                    ensure_host_lock_dir(&dir)?;
                    return self.flock(dir, purpose, None);
                }
                Some(true) => {
                    return Ok(StanzaLock {
                        _file: None,
                        object: Some(Heartbeat::start(self, key, holder)),
                    });
                }
                Some(false) => {
                    let current = self.lock_holder(&key).await;
                    let Some(current) = current else { continue }; // released meanwhile
                    let dead_here = current.host == host() && !pid_alive(current.pid);
                    let silent = chrono::Utc::now() - current.heartbeat
                        > chrono::Duration::from_std(STALE_AFTER).expect("small");
                    if dead_here || silent {
                        tracing::warn!(pid = current.pid, host = %current.host, "taking over a lock its holder left behind");
                        self.storage.delete(&key).await?;
                        continue;
                    }
                    return Err(locked(
                        self,
                        purpose,
                        &format!("pid {} on host {}", current.pid, current.host),
                    ));
                }
            }
        }
        Err(locked(
            self,
            purpose,
            "another process (the lock changed hands while pgward looked)",
        ))
    }

    /// Who holds a lock object; None when it is gone or unreadable. Lock objects of
    /// format 3 (bare JSON) are read too: one left by a crash must still be taken over.
    async fn lock_holder(&self, key: &str) -> Option<Holder> {
        let stored = object::get(&self.storage, key).await.ok()??;
        let json = match object::decode(self.master_key(), Kind::Lock, &stored, key).ok()? {
            Contents::Checked(p) | Contents::Legacy(p) => p,
        };
        serde_json::from_slice(&json).ok()
    }

    /// How this stanza is protected from concurrent backups, for `info`: read-only, so
    /// on object storage it names both possibilities (a backup finds out which applies
    /// when it takes the lock; `check` tests it with [`Repo::probe_lock_mechanism`]).
    pub async fn lock_mechanism(&self) -> Result<String> {
        if self.storage.local_root().is_some() {
            return Ok(LOCAL.into());
        }
        Ok(
            "lock object created with a conditional write, or host-local only if the store \
            ignores conditional writes (`pgward check` tests which)"
                .into(),
        )
    }

    /// How this stanza is protected, tested: on object storage it creates (and removes)
    /// a probe object, so only `check`, which proves the setup works, calls it.
    pub async fn probe_lock_mechanism(&self) -> Result<String> {
        if self.storage.local_root().is_some() {
            return Ok(LOCAL.into());
        }
        let probe = self.key("lock/.probe");
        let _ = self.storage.delete(&probe).await;
        let bytes = self.encode_object(&probe, Kind::Lock, &"probe")?;
        Ok(match self.storage.create_exclusive(&probe, &bytes).await? {
            None => "host-local only: the store ignores conditional writes, so backups started on other hosts are not excluded".into(),
            Some(_) => {
                let _ = self.storage.delete(&probe).await;
                "lock object created with a conditional write".into()
            }
        })
    }

    /// `$TMPDIR/pgward-locks-<uid>/<repository>-<stanza>`: one tree per user, because a
    /// directory private to one user cannot be shared (a root-run `info` must not leave
    /// a root-owned directory that stops the `postgres` archiver).
    pub(super) fn host_lock_dir(&self) -> PathBuf {
        let id = blake3::hash(self.storage.location().as_bytes()).to_hex();
        // SAFETY: geteuid has no preconditions and cannot fail.
        let me = unsafe { libc::geteuid() };
        std::env::temp_dir()
            .join(format!("pgward-locks-{me}"))
            .join(format!("{}-{}", &id[..16], self.stanza))
    }

    /// `owner`: who the directory and file belong to when made by root (in a local
    /// repository, its owner's, as everything else pgward writes there).
    fn flock(&self, dir: PathBuf, purpose: &str, owner: Option<(u32, u32)>) -> Result<StanzaLock> {
        create_dir_owned(&dir, owner).at("creating lock directory", &dir)?;
        let path = dir.join(format!("{purpose}.lock"));
        let mut file = match try_flock(&path)? {
            Ok(file) => file,
            Err(mut held) => {
                let mut holder = String::new();
                let _ = held.read_to_string(&mut holder);
                return Err(locked(self, purpose, holder.trim()));
            }
        };
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::fchown(&file, Some(uid), Some(gid))
                .at("giving to the repository's owner", &path)?;
        }
        file.set_len(0).at("writing lock file", &path)?;
        file.rewind().at("writing lock file", &path)?;
        write!(file, "pid {} on host {}", std::process::id(), host())
            .at("writing lock file", &path)?;
        Ok(StanzaLock {
            _file: Some(file),
            object: None,
        })
    }
}

/// Creates the host-local lock directory (`$TMPDIR/pgward-locks-<uid>/<repository>-<stanza>`)
/// private to pgward's user, or refuses it, and its parent, when another user owns them
/// or can write in them: in a shared temporary directory anyone may have made them first,
/// to hold the lock files (and so every backup of the stanza) or plant links in them.
pub(super) fn ensure_host_lock_dir(dir: &Path) -> Result<()> {
    let what = "host-local lock directory";
    let hint = |e: Error| {
        e.hint(
            "remove it (pgward creates it, mode 0700, for its own user), or run pgward with \
             TMPDIR naming a directory only its user can write: the lock lives in \
             $TMPDIR/pgward-locks-<uid>",
        )
    };
    if let Some(parent) = dir.parent() {
        ensure_private_dir(parent, what).map_err(hint)?;
    }
    ensure_private_dir(dir, what).map_err(hint)
}

pub(super) fn pid_alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe {
        libc::kill(pid as i32, 0) == 0
            || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    use super::*;

    #[tokio::test]
    async fn run_as_root_the_lock_of_a_local_repository_takes_its_owner() {
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            return; // only root can give files away
        }
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("repo");
        std::fs::create_dir(&root).unwrap();
        std::os::unix::fs::chown(&root, Some(4321), Some(4322)).unwrap();
        let storage = std::sync::Arc::new(crate::storage::LocalStorage::new(&root));
        let repo = Repo::plain_for_tests(storage, "main");
        let lock = repo.lock("backup").await.unwrap();
        for path in ["main", "main/lock", "main/lock/backup.lock"] {
            let meta = std::fs::metadata(root.join(path)).unwrap();
            assert_eq!((meta.uid(), meta.gid()), (4321, 4322), "{path}");
        }
        lock.release().await;
    }

    #[test]
    fn a_host_lock_directory_of_another_user_or_open_to_others_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp
            .path()
            .join("pgward-locks-0")
            .join("0123456789abcdef-main");
        ensure_host_lock_dir(&dir).unwrap();
        for d in [&dir, dir.parent().unwrap()] {
            assert_eq!(std::fs::metadata(d).unwrap().mode() & 0o777, 0o700);
        }
        ensure_host_lock_dir(&dir).unwrap(); // ours: taken again

        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = ensure_host_lock_dir(&dir).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Config);
        assert!(e.message.contains("writable by group or others"), "{e}");
        assert!(e.hint.as_deref().unwrap().contains("TMPDIR"), "{e:?}");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();

        let parent = dir.parent().unwrap();
        std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o1777)).unwrap();
        let e = ensure_host_lock_dir(&dir).unwrap_err();
        assert!(e.message.contains("pgward-locks-0 is writable"), "{e}");
        std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o700)).unwrap();

        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } == 0 {
            std::os::unix::fs::chown(&dir, Some(4321), None).unwrap();
            let e = ensure_host_lock_dir(&dir).unwrap_err();
            assert!(e.message.contains("is owned by uid 4321"), "{e}");
        }
        let link = tmp.path().join("pgward-locks-0").join("link-main");
        std::os::unix::fs::symlink(tmp.path(), &link).unwrap();
        let e = ensure_host_lock_dir(&link).unwrap_err();
        assert!(e.message.contains("symbolic link"), "{e}");
    }
}
