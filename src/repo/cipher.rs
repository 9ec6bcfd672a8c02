//! Encryption of a stanza. `keyfile.json` (never encrypted, but enveloped and checksummed
//! like every metadata object) holds the master key wrapped by the passphrase; every other
//! object of the stanza, and every bundle frame, is encrypted with keys derived from the
//! master key (`pipeline::encrypt`). Unlocking turns a `StanzaHandle` into a `Repo`.

use std::sync::Arc;

use super::object::{self, Contents, Kind};
use tokio::io::AsyncWriteExt;

use super::{Repo, Sealing, StanzaHandle, ABANDONED_AFTER};
use crate::error::{Error, ErrorKind, Result};
use crate::pipeline::encrypt::{crypto_error, KeyFile};
use crate::storage::SharedStorage;

pub(super) const KEY_FILE: &str = "keyfile.json";

/// A key file as read, and whether it was written before envelopes (format 3).
pub(super) struct StoredKeyFile {
    pub file: KeyFile,
    pub legacy: bool,
}

/// Parses stored key-file bytes (an envelope, or format 3's bare JSON).
pub(super) fn parse_key_file(stored: &[u8], what: &str) -> Result<StoredKeyFile> {
    let (json, legacy) = match object::decode(None, Kind::KeyFile, stored, what)? {
        Contents::Checked(p) => (p, false),
        Contents::Legacy(raw) => (raw, true),
    };
    let file = KeyFile::from_json(&json).map_err(|e| e.at(what))?;
    Ok(StoredKeyFile { file, legacy })
}

pub(super) fn key_file_bytes(file: &KeyFile) -> Vec<u8> {
    object::envelope(Kind::KeyFile, &file.to_json())
}

impl StanzaHandle {
    fn key_file_key(&self) -> String {
        self.key(KEY_FILE)
    }

    pub(super) async fn key_file(&self) -> Result<Option<StoredKeyFile>> {
        let key = self.key_file_key();
        match object::get(&self.storage, &key).await? {
            Some(bytes) => parse_key_file(&bytes, &key).map(Some),
            None => Ok(None),
        }
    }

    /// Unlocks the stanza with `passphrase`: the only way to a `Repo`. A clear error when
    /// the stanza is encrypted and the passphrase is missing or wrong.
    pub async fn unlock(self, passphrase: Option<&[u8]>) -> Result<Repo> {
        let key_file = self.key_file().await?;
        self.unlock_with(key_file, passphrase).await
    }

    /// `unlock` with the key file already read (`StanzaHandle::open` reads it together
    /// with `stanza.json`).
    pub(super) async fn unlock_with(
        self,
        key_file: Option<StoredKeyFile>,
        passphrase: Option<&[u8]>,
    ) -> Result<Repo> {
        match (key_file, passphrase) {
            (Some(stored), Some(pass)) => {
                let key = stored
                    .file
                    .unlock(pass)
                    .map_err(|e| e.at(format!("the key of stanza {:?}", self.stanza)))?;
                let legacy = stored.legacy;
                let key_file = self.key_file_key();
                let repo = self.into_repo(Sealing::Encrypted(Arc::new(key)));
                if legacy && repo.stanza_exists().await? {
                    repo.legacy_allowed(&key_file).await?;
                }
                Ok(repo)
            }
            (Some(_), None) => Err(Error::config(format!(
                "stanza {:?} is encrypted and no passphrase was given",
                self.stanza
            ))
            .hint("pass --cipher-pass, set PGWARD_CIPHER_PASS, or give --cipher-pass-file")),
            (None, None) => Ok(self.into_repo(Sealing::Plain)),
            (None, Some(_)) => {
                // A passphrase for a stanza without a key file: either the wrong stanza
                // (the caller says so), or an encrypted stanza whose key file is gone.
                let stanza_file = self.key(super::stanza::FILE);
                if let Some(stored) = object::get(&self.storage, &stanza_file).await? {
                    if stored.starts_with(crate::pipeline::encrypt::MAGIC) {
                        return Err(Error::corrupt(format!(
                            "{} is missing, but {stanza_file} is encrypted: stanza {:?} cannot be unlocked",
                            self.key_file_key(),
                            self.stanza
                        ))
                        .hint("put keyfile.json back from a copy of the repository; without it nothing in the stanza can be read"));
                    }
                }
                Ok(self.into_repo(Sealing::Plain))
            }
        }
    }

    /// Makes a new stanza encrypted (before anything else is written to it), or unlocks
    /// it when it already is.
    pub async fn create_key(self, passphrase: &[u8]) -> Result<Repo> {
        if self.key_file().await?.is_some() {
            return self.unlock(Some(passphrase)).await;
        }
        let (file, key) = KeyFile::create(passphrase).map_err(|e| e.at("a new key"))?;
        self.storage
            .put(&self.key_file_key(), &key_file_bytes(&file))
            .await?;
        Ok(self.into_repo(Sealing::Encrypted(Arc::new(key))))
    }

    /// Re-wraps the master key under a new passphrase; no data is rewritten. The new key
    /// file replaces the old one the way every object is written (`Storage::create`: a
    /// temporary object, synced, renamed over the old one, directory synced), so a rekey
    /// killed at any point leaves one readable key file: the old one until the rename,
    /// the new one after. The temporary file of a killed run wraps the key under a
    /// passphrase that never took effect; the next rekey (or expire) removes it.
    pub async fn rekey(&self, old: &[u8], new: &[u8]) -> Result<()> {
        let Some(stored) = self.key_file().await? else {
            return Err(Error::config(format!(
                "stanza {:?} is not encrypted",
                self.stanza
            )));
        };
        let next = stored
            .file
            .rekey(old, new)
            .map_err(|e| e.at(format!("the key of stanza {:?}", self.stanza)))?;
        remove_abandoned_key_files(&self.storage, &self.stanza).await?;
        let key = self.key_file_key();
        let mut writer = self.storage.create(&key).await?;
        writer
            .write_all(&key_file_bytes(&next))
            .await
            .map_err(|e| Error::io("writing", &key, e))?;
        test_halt_point(&mut writer).await;
        writer.finish().await
    }

    pub async fn is_encrypted(&self) -> Result<bool> {
        Ok(self.key_file().await?.is_some())
    }
}

/// Removes temporary files that killed writers left at the top of the stanza, older than
/// `ABANDONED_AFTER` (a rekey's key file, stanza.json): rekey takes no lock, so a younger
/// one may be a rekey at work.
async fn remove_abandoned_key_files(storage: &SharedStorage, stanza: &str) -> Result<()> {
    let removed = storage
        .remove_incomplete(stanza, Some(ABANDONED_AFTER))
        .await?;
    if removed > 0 {
        tracing::info!(
            removed,
            "removed temporary files that killed runs left beside {KEY_FILE} (the key file of a killed rekey among them never took effect)"
        );
    }
    Ok(())
}

/// Lets tests kill rekey at a known point: with `PGWARD_TEST_REKEY_HALT=FILE` (debug
/// builds only), rekey writes its new key file to the temporary object, creates FILE and
/// waits to be killed before the rename.
async fn test_halt_point(_writer: &mut Box<dyn crate::storage::ObjectWriter>) {
    #[cfg(debug_assertions)]
    if let Some(marker) = std::env::var_os("PGWARD_TEST_REKEY_HALT") {
        let _ = _writer.flush().await;
        let _ = std::fs::write(&marker, b"halted\n");
        loop {
            std::thread::park();
        }
    }
}

impl Repo {
    /// Removes what killed rekeys left beside the key file (expire).
    pub async fn remove_abandoned_key_files(&self) -> Result<()> {
        remove_abandoned_key_files(&self.storage, &self.stanza).await
    }

    /// Checks `keyfile.json` (envelope, fields, and that it wraps the key this stanza was
    /// unlocked with), for `verify`. Ok for a plain stanza without one.
    pub async fn check_key_file(&self) -> Result<()> {
        let key = self.key(KEY_FILE);
        let stored = match object::get(&self.storage, &key).await? {
            None if !self.is_encrypted() => return Ok(()),
            None => {
                return Err(object::damaged(
                    &key,
                    "is missing: nothing can unlock this stanza",
                ))
            }
            Some(b) => parse_key_file(&b, &key)?,
        };
        if stored.legacy {
            self.legacy_allowed(&key).await?;
        }
        match self.master_key() {
            None => Err(object::damaged(
                &key,
                "exists in a stanza that was opened as unencrypted",
            )),
            Some(m) if m.key_id() != stored.file.key_id => Err(object::damaged(
                &key,
                "wraps another key than the one this stanza was unlocked with",
            )),
            Some(_) => Ok(()),
        }
    }
}

/// A failure reading a stored object (decryption or decompression) naming the object.
pub fn stored_read_error(what: impl std::fmt::Display, e: std::io::Error) -> Error {
    match crypto_error(&e) {
        Some(c) => c.at(what),
        None => Error::corrupt(format!("{what} cannot be decompressed")).source(e),
    }
}

/// A decryption failure as an error naming the object.
pub fn decrypt_error(what: impl std::fmt::Display, e: std::io::Error) -> Error {
    match crypto_error(&e) {
        Some(c) => c.at(what),
        None => Error::new(ErrorKind::Io, format!("reading {what}: {e}")),
    }
}
