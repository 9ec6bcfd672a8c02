//! Where the repository lives. One async trait, implemented by the local filesystem
//! (`local.rs`) and by object storage (`object/`, what S3, GCS and Azure share; `s3/`,
//! `gcs.rs`, `azure.rs`: each service's configuration and extras). Keys are relative,
//! '/'-separated paths. A writer's object is invisible under its key until `finish`
//! returns, and dropping an unfinished writer leaves nothing behind under that key.

pub mod azure;
pub mod gcs;
pub mod local;
pub mod object;
pub mod s3;

use std::sync::Arc;

use async_trait::async_trait;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::error::{Error, Result};

pub use local::LocalStorage;

#[derive(Clone, Debug)]
pub struct ObjectInfo {
    /// Name within the listed directory.
    pub name: String,
    pub size: u64,
    /// Seconds since the epoch when the object was written.
    pub modified: i64,
}

#[derive(Clone, Debug, Default)]
pub struct Listing {
    pub files: Vec<ObjectInfo>,
    pub dirs: Vec<String>,
    /// What unfinished writers left in the directory (local temporary files), never
    /// visible as objects; object storage reports none here (`remove_incomplete`).
    pub incomplete: Vec<ObjectInfo>,
}

pub type Reader = Box<dyn AsyncRead + Send + Unpin>;

#[async_trait]
pub trait ObjectWriter: AsyncWrite + Send + Unpin {
    /// Makes the object durable and visible under its key.
    async fn finish(self: Box<Self>) -> Result<()>;

    /// Makes what was written so far durable without making it visible, so that a caller
    /// can wait for the device while it has other work in flight; `finish` after it is
    /// then cheaper. Where nothing is durable before `finish` (object storage), nothing.
    async fn sync(&mut self) -> Result<()> {
        Ok(())
    }

    /// `finish` for an object that is expendable: its content is durable before it
    /// becomes visible, but its name may still be lost in a crash (local storage leaves
    /// it to the directory's next sync instead of syncing the directory now). Only for
    /// objects whose absence is always safe, e.g. a block map (`repo::wal_map`).
    async fn finish_expendable(self: Box<Self>) -> Result<()> {
        self.finish().await
    }
}

#[async_trait]
pub trait Storage: Send + Sync + std::fmt::Debug {
    /// How to name this storage in messages and in generated commands (`/var/lib/pgward`).
    fn location(&self) -> String;

    /// Files and subdirectories directly under `dir`, sorted by name; a missing dir is empty.
    async fn list(&self, dir: &str) -> Result<Listing>;

    /// `list` narrowed to names that start with `start` (no '/'). Object storage asks the
    /// service for just those (S3's prefix), so that looking up one WAL name does not
    /// fetch a directory of 256 segments with their block maps and claims.
    async fn list_starting(&self, dir: &str, start: &str) -> Result<Listing> {
        let mut listing = self.list(dir).await?;
        listing.files.retain(|f| f.name.starts_with(start));
        listing.dirs.retain(|d| d.starts_with(start));
        listing.incomplete.retain(|f| f.name.starts_with(start));
        Ok(listing)
    }

    /// Opens a whole object; `ErrorKind::NotFound` when it is absent.
    async fn read(&self, key: &str) -> Result<Reader>;

    /// Opens `len` bytes starting at `offset`.
    async fn read_range(&self, key: &str, offset: u64, len: u64) -> Result<Reader>;

    /// Starts writing an object that replaces any object under `key` once finished.
    async fn create(&self, key: &str) -> Result<Box<dyn ObjectWriter>>;

    /// Like `create`, for an object that may grow large and is written by one of several
    /// workers at once (a bundle): object storage then buffers less per writer.
    async fn create_large(&self, key: &str) -> Result<Box<dyn ObjectWriter>> {
        self.create(key).await
    }

    /// Removes an object; absent is fine.
    async fn delete(&self, key: &str) -> Result<()>;

    /// Removes what interrupted writers left in `dir` (never visible to readers). With
    /// `older_than`, only what was started that long ago: writers that take no lock
    /// (archive-push) may be at work. Without it, callers hold the stanza's lock.
    async fn remove_incomplete(
        &self,
        dir: &str,
        older_than: Option<std::time::Duration>,
    ) -> Result<usize>;

    /// Creates `key` only if absent (a conditional write): Some(true) created, Some(false)
    /// it exists, None the store cannot do this reliably.
    async fn create_exclusive(&self, _key: &str, _bytes: &[u8]) -> Result<Option<bool>> {
        Ok(None)
    }

    /// Spans of planned reads to fetch ahead of the readers (`repo::read_plan`); 0 reads
    /// each frame when it is needed (local storage, where a read costs no round trip).
    fn read_ahead(&self) -> usize {
        0
    }

    /// Memory one writer of a large object (`create_large`) holds: the parts it buffers
    /// and keeps in flight. Local files are written through the page cache.
    fn large_writer_memory(&self) -> u64 {
        0
    }

    /// A local directory backing this storage, for host-local locks.
    fn local_root(&self) -> Option<std::path::PathBuf> {
        None
    }

    async fn read_all(&self, key: &str) -> Result<Vec<u8>> {
        let mut buf = Vec::new();
        self.read(key)
            .await?
            .read_to_end(&mut buf)
            .await
            .map_err(|e| Error::io("reading", key, e))?;
        Ok(buf)
    }

    async fn put(&self, key: &str, bytes: &[u8]) -> Result<()> {
        let mut writer = self.create(key).await?;
        writer
            .write_all(bytes)
            .await
            .map_err(|e| Error::io("writing", key, e))?;
        writer.finish().await
    }
}

pub type SharedStorage = Arc<dyn Storage>;

/// The options of every kind of repository URL.
#[derive(Clone, Debug, Default)]
pub struct StoreOptions {
    pub s3: s3::S3Options,
    pub gcs: gcs::GcsOptions,
    pub azure: azure::AzureOptions,
}

impl StoreOptions {
    /// What every object store shares, set by the `--s3-*` transport options and
    /// `--repo-read-ahead`.
    fn transport(&self) -> object::Transport {
        self.s3.transport.clone()
    }
}

/// Opens the storage a repository URL names: `s3://bucket/prefix`,
/// `gs://bucket/prefix`, `az://container/prefix` or a local directory.
pub async fn open(repo: &str, options: &StoreOptions) -> Result<SharedStorage> {
    if repo.starts_with("s3://") {
        return Ok(Arc::new(
            s3::S3Storage::open(repo, options.s3.clone()).await?,
        ));
    }
    if repo.starts_with("gs://") {
        return Ok(Arc::new(
            gcs::open(repo, &options.gcs, &options.transport()).await?,
        ));
    }
    if repo.starts_with("az://") {
        return Ok(Arc::new(
            azure::open(repo, &options.azure, &options.transport()).await?,
        ));
    }
    if repo.contains("://") {
        return Err(
            Error::config(format!("repository {repo:?}: unknown kind of URL")).hint(
                "give a local directory (/var/lib/pgward), s3://BUCKET/PREFIX, \
                 gs://BUCKET/PREFIX or az://CONTAINER/PREFIX",
            ),
        );
    }
    Ok(Arc::new(LocalStorage::new(repo)))
}

/// Writes an object from a blocking closure (compression and hashing are CPU work and
/// belong on blocking threads); the object becomes visible only if `produce` succeeds.
pub async fn write_blocking<T: Send + 'static>(
    storage: &dyn Storage,
    key: &str,
    produce: impl FnOnce(&mut dyn std::io::Write) -> Result<T> + Send + 'static,
) -> Result<T> {
    let writer = storage.create(key).await?;
    let key_owned = key.to_string();
    let (writer, out) = tokio::task::spawn_blocking(move || -> Result<_> {
        let mut buffered =
            std::io::BufWriter::with_capacity(1 << 20, tokio_util::io::SyncIoBridge::new(writer));
        let out = produce(&mut buffered)?;
        let bridge = buffered
            .into_inner()
            .map_err(|e| Error::io("writing", &key_owned, e.into_error()))?;
        Ok((bridge.into_inner(), out))
    })
    .await
    .unwrap_or_else(crate::error::task_panicked)?;
    writer.finish().await?;
    Ok(out)
}

/// Opens `len` bytes at `offset` of `key` for reading on a blocking thread. Local
/// repositories read the file directly; others go through the async reader.
pub fn read_range_blocking(
    storage: &SharedStorage,
    handle: &tokio::runtime::Handle,
    key: &str,
    offset: u64,
    len: u64,
) -> Result<Box<dyn std::io::Read + Send>> {
    if let Some(root) = storage.local_root() {
        use std::io::{Read, Seek};
        let path = root.join(key);
        let mut file = std::fs::File::open(&path).map_err(|e| Error::io("opening", &path, e))?;
        file.seek(std::io::SeekFrom::Start(offset))
            .map_err(|e| Error::io("seeking in", &path, e))?;
        return Ok(Box::new(std::io::BufReader::with_capacity(
            256 << 10,
            file.take(len),
        )));
    }
    let reader = handle.block_on(storage.read_range(key, offset, len))?;
    Ok(Box::new(blocking_reader(reader)))
}

/// A blocking `Read` over an object reader; use only on blocking threads.
pub fn blocking_reader(reader: Reader) -> impl std::io::Read + Send {
    tokio_util::io::SyncIoBridge::new(reader)
}
