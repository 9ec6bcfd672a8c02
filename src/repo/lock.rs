//! Stanza locks. On a local repository the lock is an `flock` on a file inside the
//! repository, so the kernel releases it when the holder dies (kill -9 included) and the
//! next process takes it over without guessing. The file records who holds it.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::PathBuf;

use super::Repo;
use crate::error::{Error, ErrorKind, IoContext, Result};
use crate::storage::local::create_dir_durable;

/// Held while alive; dropping it releases the lock.
#[derive(Debug)]
pub struct StanzaLock {
    _file: File,
    pub path: PathBuf,
}

impl Repo {
    /// Takes the stanza's `purpose` lock (e.g. "backup") or fails at once naming the holder.
    pub fn lock(&self, purpose: &str) -> Result<StanzaLock> {
        let dir = match self.storage.local_root() {
            Some(root) => root.join(&self.stanza).join("lock"),
            // Object storage: a host-local lock, one per repository and stanza.
            None => {
                let id = blake3::hash(self.storage.location().as_bytes()).to_hex();
                std::env::temp_dir().join("pgward-locks").join(format!(
                    "{}-{}",
                    &id[..16],
                    self.stanza
                ))
            }
        };
        create_dir_durable(&dir).at("creating lock directory", &dir)?;
        let path = dir.join(format!("{purpose}.lock"));
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .at("opening lock file", &path)?;
        // SAFETY: flock on a descriptor we own; no memory is involved.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            return Err(Error::new(
                ErrorKind::Locked,
                format!(
                    "stanza {:?} is locked for {purpose} by {}",
                    self.stanza,
                    holder.trim()
                ),
            )
            .hint("another pgward process is running for this stanza; wait for it to finish"));
        }
        let host = hostname::get()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default();
        file.set_len(0).at("writing lock file", &path)?;
        file.rewind().at("writing lock file", &path)?;
        write!(file, "pid {} on host {host}", std::process::id()).at("writing lock file", &path)?;
        Ok(StanzaLock { _file: file, path })
    }
}
