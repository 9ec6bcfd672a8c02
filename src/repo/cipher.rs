//! Encryption of a stanza. `keyfile.json` (never encrypted itself) holds the master key
//! wrapped by the passphrase; every other object of the stanza, and every bundle frame,
//! is encrypted with keys derived from the master key (`pipeline::encrypt`).

use std::sync::Arc;

use super::Repo;
use crate::error::{Error, ErrorKind, Result};
use crate::pipeline::encrypt::{crypto_error, KeyFile};

const KEY_FILE: &str = "keyfile.json";

impl Repo {
    fn key_file_key(&self) -> String {
        self.key(KEY_FILE)
    }

    async fn key_file(&self) -> Result<Option<KeyFile>> {
        match self.storage.read_all(&self.key_file_key()).await {
            Ok(bytes) => KeyFile::from_json(&bytes)
                .map(Some)
                .map_err(|e| e.at(self.key_file_key())),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Unlocks an encrypted stanza with `passphrase`; a clear error when one is missing
    /// or wrong, or given for a stanza that is not encrypted.
    pub async fn unlock(mut self, passphrase: Option<&[u8]>) -> Result<Repo> {
        match (self.key_file().await?, passphrase) {
            (Some(file), Some(pass)) => {
                let key = file
                    .unlock(pass)
                    .map_err(|e| e.at(format!("the key of stanza {:?}", self.stanza)))?;
                self.key = Some(Arc::new(key));
                Ok(self)
            }
            (Some(_), None) => Err(Error::config(format!(
                "stanza {:?} is encrypted and no passphrase was given",
                self.stanza
            ))
            .hint("pass --cipher-pass, set PGWARD_CIPHER_PASS, or give --cipher-pass-file")),
            (None, _) => Ok(self),
        }
    }

    /// Makes a new stanza encrypted (before anything else is written to it).
    pub async fn create_key(&mut self, passphrase: &[u8]) -> Result<()> {
        if self.key_file().await?.is_some() {
            return self
                .clone()
                .unlock(Some(passphrase))
                .await
                .map(|r| self.key = r.key);
        }
        let (file, key) = KeyFile::create(passphrase).map_err(|e| e.at("a new key"))?;
        self.storage
            .put(&self.key_file_key(), &file.to_json())
            .await?;
        self.key = Some(Arc::new(key));
        Ok(())
    }

    /// Re-wraps the master key under a new passphrase; no data is rewritten.
    pub async fn rekey(&self, old: &[u8], new: &[u8]) -> Result<()> {
        let Some(file) = self.key_file().await? else {
            return Err(Error::config(format!(
                "stanza {:?} is not encrypted",
                self.stanza
            )));
        };
        let next = file
            .rekey(old, new)
            .map_err(|e| e.at(format!("the key of stanza {:?}", self.stanza)))?;
        self.storage
            .put(&self.key_file_key(), &next.to_json())
            .await
    }

    pub async fn is_encrypted(&self) -> Result<bool> {
        Ok(self.key_file().await?.is_some())
    }

    /// Writes a small whole object (stanza info, manifest, marker), encrypted if the stanza is.
    pub async fn put_object(&self, key: &str, bytes: &[u8]) -> Result<()> {
        match &self.key {
            None => self.storage.put(key, bytes).await,
            Some(master) => {
                let mut sealed = crate::pipeline::seal(Some(master), Vec::new())
                    .map_err(|e| Error::io("encrypting", key, e))?;
                std::io::Write::write_all(&mut sealed, bytes)
                    .map_err(|e| Error::io("encrypting", key, e))?;
                let out = sealed
                    .finish()
                    .map_err(|e| Error::io("encrypting", key, e))?;
                self.storage.put(key, &out).await
            }
        }
    }

    /// Reads a small whole object written by `put_object`.
    pub async fn get_object(&self, key: &str) -> Result<Vec<u8>> {
        let stored = self.storage.read_all(key).await?;
        match &self.key {
            None => Ok(stored),
            Some(master) => {
                let mut out = Vec::new();
                crate::pipeline::unseal(Some(master), &stored[..])
                    .and_then(|mut r| std::io::Read::read_to_end(&mut r, &mut out))
                    .map_err(|e| decrypt_error(key, e))?;
                Ok(out)
            }
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
