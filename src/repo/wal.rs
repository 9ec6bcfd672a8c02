//! The one path for archived WAL. Writing: hash, compress, seal (encrypted stanzas),
//! atomic put. Reading: unseal, decompress, and check the content against the checksum
//! its stored name carries. Commands never touch the stored bytes themselves.
//!
//! One version per name, even when two archive-push runs race: before its data object is
//! written, a WAL name is claimed with a small object, `<wal name>.claim` beside it,
//! holding the checksum of the content it reserves the name for. The claim is created
//! only if absent (`Storage::create_exclusive`: `link()` locally, If-None-Match on object
//! storage; a host-local lock where the store cannot do it), so of two pushes of
//! different content exactly one gets it and the other fails with a conflict. A claim
//! holding our checksum is ours: a concurrent identical push, or one that crashed before
//! its data object was written, which we then write. Archives written before claims
//! existed have data objects without claims: they are compared as before, then claimed.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;

use super::archive::{archive_subdir, ArchivedFile};
use super::cipher::stored_read_error;
use super::frames::naming;
use super::object::Kind;
use super::{Repo, ABANDONED_AFTER};
use crate::error::{Error, ErrorKind, IoContext, Result};
use crate::pg::WalFileName;
use crate::pipeline::hash::HashingReader;
use crate::pipeline::{Compression, CountingWriter};
use crate::storage::{self, ObjectInfo, Reader};

/// Suffix of a WAL name's claim (never parsed as an archived file: it has no checksum).
pub const CLAIM_SUFFIX: &str = ".claim";

/// What `write_wal` stores: a file it reads, or content already read and hashed.
enum WalSource {
    File(PathBuf),
    Bytes(Bytes),
}

#[derive(Debug, PartialEq, Eq)]
pub enum WalPut {
    Stored { stored_size: u64 },
    AlreadyArchived,
}

/// Who holds a WAL name.
#[derive(Debug, PartialEq, Eq)]
enum Claim {
    /// Created by this call.
    Created,
    /// Held for the same content.
    Ours,
    Other(String),
}

impl Repo {
    /// Key of the claim on `name` (see the module comment).
    pub fn wal_claim_key(&self, name: &WalFileName) -> String {
        format!(
            "{}/{name}{CLAIM_SUFFIX}",
            self.archive_dir_key(&archive_subdir(name))
        )
    }

    /// Archives `source`, whose content hashes to `checksum`, under `name`. Idempotent:
    /// the same content already archived is success; different content is a conflict.
    pub async fn put_wal(
        &self,
        name: &WalFileName,
        source: &Path,
        checksum: &str,
        compression: Compression,
    ) -> Result<WalPut> {
        self.put_wal_from(
            name,
            WalSource::File(source.to_path_buf()),
            checksum,
            compression,
        )
        .await
    }

    /// [`Repo::put_wal`] of content already in memory (archive-push reads a segment
    /// once for its checks, its checksum, its upload and its block map).
    pub async fn put_wal_bytes(
        &self,
        name: &WalFileName,
        content: Bytes,
        checksum: &str,
        compression: Compression,
    ) -> Result<WalPut> {
        self.put_wal_from(name, WalSource::Bytes(content), checksum, compression)
            .await
    }

    async fn put_wal_from(
        &self,
        name: &WalFileName,
        source: WalSource,
        checksum: &str,
        compression: Compression,
    ) -> Result<WalPut> {
        // Data objects decide first: archives from before claims have no claim. The one
        // listing also shows what killed pushes left in the directory.
        let dir = self.archive_dir_key(&archive_subdir(name));
        let listing = self.storage.list(&dir).await?;
        let existing: Vec<ArchivedFile> = super::archive::parse_listing(&listing)
            .into_iter()
            .filter(|f| &f.name == name)
            .collect();
        if existing.iter().any(|f| f.checksum != checksum) {
            return Err(already_archived(self, name));
        }
        let present = match self.claim(name, checksum).await? {
            Claim::Other(_) => return Err(already_archived(self, name)),
            Claim::Created => !existing.is_empty(),
            // A push of this content came first; its data object may have appeared since.
            Claim::Ours => !existing.is_empty() || !self.find_archived(name).await?.is_empty(),
        };
        if present {
            return Ok(WalPut::AlreadyArchived);
        }
        let file = ArchivedFile {
            name: name.clone(),
            checksum: checksum.to_string(),
            codec: compression.codec,
            stored_size: 0,
            archived_at: 0,
        };
        let stored_size = self.write_wal(&file, source, compression).await?;
        self.remove_abandoned_pushes(&dir, &listing.incomplete)
            .await;
        Ok(WalPut::Stored { stored_size })
    }

    /// Removes what killed pushes left in archive directory `dir` (`incomplete`, from the
    /// listing the push made anyway), older than `ABANDONED_AFTER`: a push in progress is
    /// never that old. Local repositories list their temporary files; object storage
    /// lists none (its unfinished uploads cost a request of their own, and expire removes
    /// them). Claims are not leftovers: a claim without its data object reserves the
    /// name for its content. The file is stored either way: a failure here is only logged.
    async fn remove_abandoned_pushes(&self, dir: &str, incomplete: &[ObjectInfo]) {
        let cutoff = chrono::Utc::now().timestamp() - ABANDONED_AFTER.as_secs() as i64;
        let mut removed = 0;
        for left in incomplete.iter().filter(|f| f.modified < cutoff) {
            match self.storage.delete(&format!("{dir}/{}", left.name)).await {
                Ok(()) => removed += 1,
                Err(e) => tracing::warn!(dir, "leaving what killed pushes left: {e}"),
            }
        }
        if removed > 0 {
            tracing::info!(
                removed,
                dir,
                "removed archive files that killed archive-push runs left"
            );
        }
    }

    async fn claim(&self, name: &WalFileName, checksum: &str) -> Result<Claim> {
        let key = self.wal_claim_key(name);
        let content = self.claim_bytes(&key, name, checksum)?;
        let holder = |found: String| {
            if found == checksum {
                Claim::Ours
            } else {
                Claim::Other(found)
            }
        };
        // A claim found absent right after a failed create was removed meanwhile (expire):
        // try again.
        for _ in 0..3 {
            match self.storage.create_exclusive(&key, &content).await? {
                Some(true) => return Ok(Claim::Created),
                Some(false) => match self.read_claim(&key, name).await? {
                    Some(found) => return Ok(holder(found)),
                    None => continue,
                },
                None => {
                    // The store would let both creators win: serialise the pushes of
                    // this host instead (as the backup lock does on such stores).
                    let _lock = self.host_claim_lock(name).await?;
                    if let Some(found) = self.read_claim(&key, name).await? {
                        return Ok(holder(found));
                    }
                    self.storage.put(&key, &content).await?;
                    return Ok(Claim::Created);
                }
            }
        }
        Err(Error::new(
            ErrorKind::Conflict,
            format!("the claim {key} keeps appearing and disappearing"),
        )
        .hint("another process is archiving or expiring this WAL file; the push will be retried"))
    }

    /// The checksum a claim holds; None when there is no claim. A claim is a metadata
    /// object (`repo::object`): checksummed, sealed in an encrypted stanza, and it must
    /// name the WAL file its key names.
    async fn read_claim(&self, key: &str, name: &WalFileName) -> Result<Option<String>> {
        let Some(claim) = self.read_object::<ClaimRecord>(key, Kind::Claim).await? else {
            return Ok(None);
        };
        if claim.name != name.to_string() {
            return Err(super::object::damaged(
                key,
                format!(
                    "claims WAL file {}: it was copied from another name",
                    claim.name
                ),
            ));
        }
        if claim.checksum.len() != 64
            || !claim
                .checksum
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return Err(super::object::damaged(
                key,
                "does not hold the 64-digit checksum of the archived file it names",
            ));
        }
        Ok(Some(claim.checksum))
    }

    /// Reads every claim in the archive (`verify`): each must read through the checked
    /// path and hold the checksum of the archived file of its name, if there is one.
    /// Returns (claim key, what is wrong) for each that does not.
    pub async fn check_wal_claims(
        &self,
        archived: &[ArchivedFile],
    ) -> Result<Vec<(String, String)>> {
        let mut problems = Vec::new();
        for dir in self.archive_dirs().await? {
            let dir_key = self.archive_dir_key(&dir);
            for file in self.storage.list(&dir_key).await?.files {
                let Some(name) = file.name.strip_suffix(CLAIM_SUFFIX) else {
                    continue;
                };
                let key = format!("{dir_key}/{}", file.name);
                let Ok(name) = WalFileName::parse(name) else {
                    problems.push((key, "is not named for a WAL file".to_string()));
                    continue;
                };
                match self.read_claim(&key, &name).await {
                    Err(e) => problems.push((key, e.to_string())),
                    Ok(None) => {} // removed meanwhile (expire)
                    Ok(Some(claimed)) => {
                        if let Some(other) = archived
                            .iter()
                            .find(|f| f.name == name && f.checksum != claimed)
                        {
                            problems.push((
                                key,
                                format!(
                                    "reserves {name} for content {claimed}, but the archive holds {}",
                                    other.file_name()
                                ),
                            ));
                        }
                    }
                }
            }
        }
        Ok(problems)
    }

    /// A claim's stored bytes.
    fn claim_bytes(&self, key: &str, name: &WalFileName, checksum: &str) -> Result<Vec<u8>> {
        self.encode_object(
            key,
            Kind::Claim,
            &ClaimRecord {
                name: name.to_string(),
                checksum: checksum.to_string(),
            },
        )
    }

    /// One of a few lock files per host and stanza, chosen by the WAL name, each held
    /// while a claim is checked and written.
    async fn host_claim_lock(&self, name: &WalFileName) -> Result<std::fs::File> {
        let stripe = blake3::hash(name.to_string().as_bytes()).as_bytes()[0] % 16;
        let path: PathBuf = self
            .host_lock_dir()
            .join(format!("wal-claim-{stripe:02}.lock"));
        tokio::task::spawn_blocking(move || -> Result<std::fs::File> {
            use std::os::fd::AsRawFd;
            use std::os::unix::fs::OpenOptionsExt;
            let dir = path.parent().expect("in a directory");
            super::lock::ensure_host_lock_dir(dir)?;
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&path)
                .at("opening lock file", &path)?;
            // SAFETY: flock on a descriptor we own; it waits for the holder to finish.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
                return Err(Error::io("locking", &path, std::io::Error::last_os_error()));
            }
            Ok(file)
        })
        .await
        .unwrap_or_else(crate::error::task_panicked)
    }

    /// Compresses, seals and stores `source` as `file`; returns the stored size.
    async fn write_wal(
        &self,
        file: &ArchivedFile,
        source: WalSource,
        compression: Compression,
    ) -> Result<u64> {
        let key = self.archived_file_key(file);
        let (repo, checksum) = (self.clone(), file.checksum.clone());
        let name = file.name.to_string();
        storage::write_blocking(self.storage.as_ref(), &key, move |out| {
            let mut counting = CountingWriter { inner: out, written: 0 };
            let what = match &source {
                WalSource::File(path) => path.display().to_string(),
                WalSource::Bytes(_) => name,
            };
            let sealed =
                crate::pipeline::seal(repo.master_key(), &mut counting).at("encrypting", &what)?;
            let mut encoder = compression.encoder(sealed).at("compressing", &what)?;
            let changed = match &source {
                WalSource::File(path) => {
                    let mut reader =
                        HashingReader::new(std::fs::File::open(path).at("opening", path)?);
                    std::io::copy(&mut reader, &mut encoder).at("archiving", path)?;
                    reader.finish().0 != checksum
                }
                // Hashed by the caller from these very bytes: they cannot have changed.
                WalSource::Bytes(bytes) => {
                    encoder.write_all(bytes).at("archiving", &what)?;
                    false
                }
            };
            encoder
                .finish()
                .and_then(|sealed| sealed.finish())
                .at("compressing", &what)?;
            if changed {
                return Err(Error::new(
                    ErrorKind::Conflict,
                    format!("{what} changed while it was being archived"),
                )
                .hint("PostgreSQL must not modify a file it hands to archive_command; the push will be retried"));
            }
            Ok(counting.written)
        })
        .await
    }

    /// Opens an archived file; `StoredWal::copy_to` reads it (on a blocking thread).
    pub async fn open_wal(&self, file: &ArchivedFile) -> Result<StoredWal> {
        let reader = self
            .storage
            .read(&self.archived_file_key(file))
            .await
            .map_err(|e| naming(&format!("archived {}", file.file_name()), e))?;
        Ok(StoredWal {
            reader,
            repo: self.clone(),
            file: file.clone(),
        })
    }

    /// A small archived file (a history file) in memory, checked against its checksum.
    pub async fn read_wal(&self, file: &ArchivedFile) -> Result<Vec<u8>> {
        let stored = self.open_wal(file).await?;
        tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            stored.copy_to(&mut out).map(|_| out)
        })
        .await
        .unwrap_or_else(crate::error::task_panicked)
    }

    /// Reads an archived file through and checks it; returns its original size.
    pub async fn check_wal(&self, file: &ArchivedFile) -> Result<u64> {
        let stored = self.open_wal(file).await?;
        tokio::task::spawn_blocking(move || stored.copy_to(&mut std::io::sink()))
            .await
            .unwrap_or_else(crate::error::task_panicked)
    }
}

fn already_archived(repo: &Repo, name: &WalFileName) -> Error {
    Error::new(
        ErrorKind::Conflict,
        format!(
            "WAL file {name} is already archived in stanza {:?} with different contents",
            repo.stanza
        ),
    )
    .hint("two clusters may be archiving into one stanza, or a restored cluster kept the old archive_command; give each cluster its own stanza")
}

/// What a claim holds: the one content (by checksum) its WAL name may have.
#[derive(serde::Serialize, serde::Deserialize)]
struct ClaimRecord {
    name: String,
    checksum: String,
}

/// An archived file opened for reading.
pub struct StoredWal {
    reader: Reader,
    repo: Repo,
    file: ArchivedFile,
}

impl StoredWal {
    /// Writes the original content to `out` and checks it against its checksum. `out`
    /// holds whatever was decoded before a failure: use it only when this returns Ok.
    /// Blocking: call it on a blocking thread.
    pub fn copy_to(self, out: &mut dyn Write) -> Result<u64> {
        let what = format!("archived {}", self.file.file_name());
        let mut decoder = crate::pipeline::unseal(
            self.repo.master_key(),
            storage::blocking_reader(self.reader),
        )
        .and_then(|r| self.file.codec.decoder(r))
        .map_err(|e| stored_read_error(&what, e))?;
        let mut hasher = blake3::Hasher::new();
        let mut buf = vec![0u8; 256 << 10];
        let mut length = 0u64;
        loop {
            let n = match decoder.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(stored_read_error(&what, e)),
            };
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n])
                .map_err(|e| Error::new(ErrorKind::Io, format!("writing out {what}")).source(e))?;
            length += n as u64;
        }
        let found = hasher.finalize().to_hex();
        if found.as_str() != self.file.checksum {
            return Err(Error::corrupt(format!(
                "{what} does not match its checksum (content hashes to {found})"
            )));
        }
        Ok(length)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo(name: &str) -> (Repo, PathBuf) {
        let dir = std::env::temp_dir().join(format!("pgward-wal-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let storage = std::sync::Arc::new(crate::storage::LocalStorage::new(dir.join("repo")));
        std::fs::create_dir_all(&dir).unwrap();
        (Repo::plain_for_tests(storage, "main"), dir)
    }

    fn source(dir: &Path, tag: &str, content: &[u8]) -> (PathBuf, String) {
        let path = dir.join(tag).join("000000010000000000000003");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, content).unwrap();
        (path, blake3::hash(content).to_hex().to_string())
    }

    fn lz4() -> Compression {
        Compression::new(crate::pipeline::compress::Codec::Lz4, None).unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_puts_of_one_name_store_one_version() {
        let (repo, dir) = repo("race");
        let name = WalFileName::parse("000000010000000000000003").unwrap();
        let sources: Vec<_> = (0..6u8)
            .map(|i| source(&dir, &format!("s{i}"), &[i; 50_000]))
            .collect();
        let results = futures::future::join_all(sources.iter().map(|(path, sum)| {
            let repo = repo.clone();
            let name = name.clone();
            async move { repo.put_wal(&name, path, sum, lz4()).await }
        }))
        .await;
        let stored = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(stored, 1, "{results:?}");
        for r in results.iter().filter_map(|r| r.as_ref().err()) {
            assert_eq!(r.kind, ErrorKind::Conflict, "{r}");
        }
        let archived = repo.find_archived(&name).await.unwrap();
        assert_eq!(archived.len(), 1);
        let winner = sources
            .iter()
            .find(|(_, s)| *s == archived[0].checksum)
            .unwrap();
        assert_eq!(
            repo.read_wal(&archived[0]).await.unwrap(),
            std::fs::read(&winner.0).unwrap()
        );

        // Identical content pushed again, concurrently: every push succeeds.
        let again = futures::future::join_all((0..4).map(|_| {
            let (repo, name, winner) = (repo.clone(), name.clone(), winner.clone());
            async move { repo.put_wal(&name, &winner.0, &winner.1, lz4()).await }
        }))
        .await;
        assert!(again
            .iter()
            .all(|r| *r.as_ref().unwrap() == WalPut::AlreadyArchived));
        let _ = std::fs::remove_dir_all(dir);
    }

    /// A store that cannot create exclusively (Garage ignores If-None-Match).
    #[derive(Debug)]
    struct NoConditionalWrites(crate::storage::LocalStorage);

    #[async_trait::async_trait]
    impl crate::storage::Storage for NoConditionalWrites {
        fn location(&self) -> String {
            self.0.location()
        }
        async fn list(&self, dir: &str) -> Result<crate::storage::Listing> {
            self.0.list(dir).await
        }
        async fn read(&self, key: &str) -> Result<Reader> {
            self.0.read(key).await
        }
        async fn read_range(&self, key: &str, offset: u64, len: u64) -> Result<Reader> {
            self.0.read_range(key, offset, len).await
        }
        async fn create(&self, key: &str) -> Result<Box<dyn crate::storage::ObjectWriter>> {
            self.0.create(key).await
        }
        async fn delete(&self, key: &str) -> Result<()> {
            self.0.delete(key).await
        }
        async fn remove_incomplete(
            &self,
            dir: &str,
            older_than: Option<std::time::Duration>,
        ) -> Result<usize> {
            self.0.remove_incomplete(dir, older_than).await
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn without_conditional_writes_a_host_lock_keeps_one_version() {
        let (_, dir) = repo("nocond");
        let storage = NoConditionalWrites(crate::storage::LocalStorage::new(dir.join("repo")));
        let repo = Repo::plain_for_tests(std::sync::Arc::new(storage), "main");
        let name = WalFileName::parse("000000010000000000000003").unwrap();
        let sources: Vec<_> = (0..6u8)
            .map(|i| source(&dir, &format!("s{i}"), &[i; 50_000]))
            .collect();
        let results = futures::future::join_all(sources.iter().map(|(path, sum)| {
            let (repo, name) = (repo.clone(), name.clone());
            async move { repo.put_wal(&name, path, sum, lz4()).await }
        }))
        .await;
        assert_eq!(
            results.iter().filter(|r| r.is_ok()).count(),
            1,
            "{results:?}"
        );
        assert_eq!(repo.find_archived(&name).await.unwrap().len(), 1);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn a_claim_without_data_is_completed_and_unclaimed_archives_are_compared() {
        let (repo, dir) = repo("claims");
        let name = WalFileName::parse("000000010000000000000003").unwrap();
        let (a, a_sum) = source(&dir, "a", b"first content");
        let (b, b_sum) = source(&dir, "b", b"other content");
        // A push that crashed after claiming: the same content completes it...
        let key = repo.wal_claim_key(&name);
        let claim_of_a = repo.claim_bytes(&key, &name, &a_sum).unwrap();
        repo.storage.put(&key, &claim_of_a).await.unwrap();
        let err = repo.put_wal(&name, &b, &b_sum, lz4()).await.unwrap_err();
        assert!(err.to_string().contains("different contents"), "{err}");
        assert!(matches!(
            repo.put_wal(&name, &a, &a_sum, lz4()).await.unwrap(),
            WalPut::Stored { .. }
        ));
        // ...and an archive written before claims is compared, then claimed.
        repo.storage
            .delete(&repo.wal_claim_key(&name))
            .await
            .unwrap();
        let err = repo.put_wal(&name, &b, &b_sum, lz4()).await.unwrap_err();
        assert_eq!(err.kind, ErrorKind::Conflict);
        assert_eq!(
            repo.put_wal(&name, &a, &a_sum, lz4()).await.unwrap(),
            WalPut::AlreadyArchived
        );
        assert_eq!(
            repo.read_claim(&key, &name).await.unwrap(),
            Some(a_sum.clone())
        );
        // A damaged claim is an error, never a guess.
        repo.storage
            .put(&repo.wal_claim_key(&name), b"garbage")
            .await
            .unwrap();
        let err = repo.put_wal(&name, &b, &b_sum, lz4()).await.unwrap_err();
        assert_eq!(err.kind, ErrorKind::Conflict, "data decides first: {err}");
        let stored = repo.find_archived(&name).await.unwrap();
        repo.storage
            .delete(&repo.archived_file_key(&stored[0]))
            .await
            .unwrap();
        let err = repo.put_wal(&name, &a, &a_sum, lz4()).await.unwrap_err();
        assert_eq!(err.kind, ErrorKind::Corrupt, "{err}");
        let _ = std::fs::remove_dir_all(dir);
    }
}
