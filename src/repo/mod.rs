//! The repository format (documented in docs/repository-format.md). Everything about
//! where things live in a repository, and how they are named, is here. Metadata objects
//! are read and written only through `object.rs`.
//!
//! ```text
//! <stanza>/stanza.json                                   cluster identity + format version
//! <stanza>/keyfile.json                                  encrypted stanzas: the wrapped key
//! <stanza>/pitr-previous-settings.json                   settings `pitr enable` replaced
//! <stanza>/archive/<TTTTTTTTLLLLLLLL>/<wal name>-<blake3>[.ext]   segments, .partial, .backup
//! <stanza>/archive/<dir>/<wal name>.claim                 the one content a name may hold
//! <stanza>/archive/<dir>/<wal name>.map                   a segment's block map (blockmap.rs)
//! <stanza>/archive/history/<TTTTTTTT>.history-<blake3>[.ext]
//! <stanza>/backups/<label>.manifest                      written last: a backup exists iff this does
//! <stanza>/backups/<label>.head                          its manifest without file lists, written first
//! <stanza>/backups/<label>.pin                           present while the backup is pinned
//! <stanza>/bundles/<label>-<job>-<seq>.bundle            compressed frames of the backup's files
//! <stanza>/records/last-drill.json, last-verify.json   outcome of the last drill / verify
//! <stanza>/lock/                                         flock files (local), lock objects (S3)
//! <stanza>/lock/holds/<pid>-<random>.hold                what a running restore, drill or verify reads
//! ```

pub mod archive;
pub mod archive_command;
pub mod archive_map;
pub mod blockmap;
pub mod cipher;
pub mod frames;
pub mod holds;
pub mod label;
pub mod lock;
pub mod manifest;
pub mod manifest_head;
pub mod object;
pub mod piece;
pub mod read_plan;
pub mod records;
pub mod stanza;
mod streamed;
mod upgrade;
pub mod wal;
pub mod wal_map;

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::pipeline::encrypt::MasterKey;
use crate::storage::SharedStorage;

/// Version of the layout and file formats this build writes (it reads 1 to this).
pub const FORMAT_VERSION: u32 = 5;

/// Age at which a temporary object of a writer that takes no lock (archive-push, rekey) is
/// a leftover of a killed run that anyone may remove: no such write takes that long, so an
/// older one is not in progress. Younger ones are left alone.
pub const ABANDONED_AFTER: std::time::Duration = std::time::Duration::from_secs(3600);

/// A stanza not yet unlocked: it can read and write only the key file (which is never
/// encrypted) and tell whether the stanza is encrypted. `unlock` is the only way to a
/// `Repo`, so nothing can be written to an encrypted stanza without its key:
///
/// ```compile_fail
/// # async fn f(handle: pgward::repo::StanzaHandle) {
/// handle.storage.put("main/stanza.json", b"{}").await; // private: no way around unlock
/// # }
/// ```
///
/// ```compile_fail
/// # fn f(handle: pgward::repo::StanzaHandle) {
/// let repo = pgward::repo::Repo { storage: todo!(), stanza: "main".into(), sealing: pgward::repo::Sealing::Plain };
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct StanzaHandle {
    storage: SharedStorage,
    stanza: String,
}

/// How a stanza's objects are stored, decided by its key file when it is unlocked.
#[derive(Clone, Debug)]
pub enum Sealing {
    Plain,
    Encrypted(Arc<MasterKey>),
}

/// An unlocked stanza: the handle every command works through. Its storage is private to
/// `repo/`: commands read and write the repository only through the methods here.
#[derive(Clone, Debug)]
pub struct Repo {
    storage: SharedStorage,
    pub stanza: String,
    sealing: Sealing,
}

/// The stanzas of a repository: its top-level directories that hold a `stanza.json`.
pub async fn stanza_names(storage: &SharedStorage) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for dir in storage.list("").await?.dirs {
        let Ok(handle) = StanzaHandle::new(storage.clone(), &dir) else {
            continue; // not a name pgward gives a stanza
        };
        if handle.exists().await? {
            out.push(dir);
        }
    }
    Ok(out)
}

impl StanzaHandle {
    pub fn new(storage: SharedStorage, stanza: &str) -> Result<StanzaHandle> {
        let valid = !stanza.is_empty()
            && stanza.len() <= 64
            && stanza
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
            && !stanza.starts_with('.');
        if !valid {
            return Err(Error::config(format!("invalid stanza name {stanza:?}"))
                .hint("use letters, digits, '-', '_' or '.', for example --stanza main"));
        }
        Ok(StanzaHandle {
            storage,
            stanza: stanza.to_string(),
        })
    }

    pub fn stanza(&self) -> &str {
        &self.stanza
    }

    pub fn key(&self, rest: &str) -> String {
        format!("{}/{rest}", self.stanza)
    }

    /// Whether `stanza.json` exists (whatever it holds).
    pub async fn exists(&self) -> Result<bool> {
        Ok(object::get(&self.storage, &self.key(stanza::FILE))
            .await?
            .is_some())
    }

    fn into_repo(self, sealing: Sealing) -> Repo {
        Repo {
            storage: self.storage,
            stanza: self.stanza,
            sealing,
        }
    }
}

impl Repo {
    pub fn key(&self, rest: &str) -> String {
        format!("{}/{rest}", self.stanza)
    }

    /// The repository, for messages and generated commands (`/var/lib/pgward`, `s3://...`).
    pub fn location(&self) -> String {
        self.storage.location()
    }

    /// The key bundle frames and archived WAL are sealed with; None for a plain stanza.
    pub(crate) fn master_key(&self) -> Option<&MasterKey> {
        match &self.sealing {
            Sealing::Plain => None,
            Sealing::Encrypted(k) => Some(k),
        }
    }

    pub fn is_encrypted(&self) -> bool {
        matches!(self.sealing, Sealing::Encrypted(_))
    }

    /// Whether the repository is a local directory (readers then use more parallelism).
    pub fn is_local(&self) -> bool {
        self.storage.local_root().is_some()
    }

    /// Memory each bundle writer holds for its upload (`Storage::large_writer_memory`).
    pub fn bundle_upload_memory(&self) -> u64 {
        self.storage.large_writer_memory()
    }

    /// The local directory of the repository, if it is one (for permission checks).
    pub fn local_root(&self) -> Option<std::path::PathBuf> {
        self.storage.local_root()
    }

    /// A plain stanza without reading its key file, for unit tests of code that only
    /// needs a handle.
    #[cfg(test)]
    pub(crate) fn plain_for_tests(storage: SharedStorage, stanza: &str) -> Repo {
        Self::for_tests(storage, stanza, Sealing::Plain)
    }

    /// A plain stanza whose stanza.json matches the format-3 fixture's manifest, and that
    /// manifest as of the current format (not saved), for unit tests that need a backup.
    #[cfg(test)]
    pub(crate) async fn fixture_stanza_for_tests(
        storage: SharedStorage,
    ) -> (Repo, manifest::Manifest, stanza::StanzaInfo) {
        let repo = Self::plain_for_tests(storage, "main");
        let bytes = std::fs::read(format!(
            "{}/tests/fixtures/format-v3/20261121-124507F.manifest",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap();
        let mut m = manifest::parse_manifest(&bytes).unwrap();
        m.format_version = FORMAT_VERSION;
        let stanza = stanza::StanzaInfo {
            format_version: FORMAT_VERSION,
            stanza: "main".into(),
            system_identifier: m.system_identifier,
            pg_major: m.pg_major,
            data_checksums: true,
            wal_segment_size: m.wal_segment_size,
            created: m.start_time,
        };
        repo.write_stanza_info(&stanza).await.unwrap();
        (repo, m, stanza)
    }

    /// A stanza with the given sealing, without a key file, for unit tests.
    #[cfg(test)]
    pub(crate) fn for_tests(storage: SharedStorage, stanza: &str, sealing: Sealing) -> Repo {
        Repo {
            storage,
            stanza: stanza.to_string(),
            sealing,
        }
    }

    /// Removes a bundle (expire, and leftovers of interrupted backups).
    pub async fn delete_bundle(&self, bundle: &str) -> Result<()> {
        self.storage
            .delete(&manifest::bundle_key(self, bundle))
            .await
    }

    /// Removes partly written objects of interrupted writers in a stanza directory
    /// (`bundles`, `backups`, an archive directory); see `Storage::remove_incomplete`.
    pub async fn remove_incomplete(
        &self,
        dir: &str,
        older_than: Option<std::time::Duration>,
    ) -> Result<usize> {
        self.storage
            .remove_incomplete(&self.key(dir), older_than)
            .await
    }

    /// Removes an archived file, its block map and its name's claim (expire).
    pub async fn delete_archived(&self, file: &archive::ArchivedFile) -> Result<()> {
        if matches!(file.name, crate::pg::WalFileName::Segment(_)) {
            self.delete_wal_map(&file.name).await?;
        }
        self.storage.delete(&self.archived_file_key(file)).await?;
        self.storage.delete(&self.wal_claim_key(&file.name)).await
    }

    /// Directories of the archive (one per timeline and log id, and `history`).
    pub async fn archive_dirs(&self) -> Result<Vec<String>> {
        Ok(self.storage.list(&self.key("archive")).await?.dirs)
    }

    /// Bytes stored for the stanza's backups (bundles, manifests, pins) and records, from
    /// their listings; the archive's listing gives the rest of what the stanza occupies.
    pub async fn backup_stored_bytes(&self) -> Result<u64> {
        let mut total = 0;
        for dir in ["bundles", "backups", "records"] {
            let listing = self.storage.list(&self.key(dir)).await?;
            total += listing.files.iter().map(|f| f.size).sum::<u64>();
        }
        Ok(total)
    }

    /// Repository URL and stanza as command-line options, for generated commands.
    pub fn cli_options(&self) -> String {
        format!(
            "--repo {} --stanza {}",
            shell_quote(&self.location()),
            shell_quote(&self.stanza)
        )
    }
}

/// Quotes for a POSIX shell when needed.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-+=:,@".contains(&b))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}
