//! Backup manifests. A manifest describes the whole cluster as of its backup: every
//! directory and file, and for each file the extents that hold its bytes and which
//! backup's bundle each extent lives in. Restore needs nothing else, and reads each
//! byte from the one backup that holds it. The manifest is written last, atomically:
//! a backup exists exactly when its manifest does.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::label::{label_time, BackupType};
use super::object::{self, damaged, Contents, Kind};
use super::stanza::StanzaInfo;
use super::streamed::Streamed;
use super::Repo;
use crate::error::{Error, ErrorKind, Result};
use crate::pg::{Lsn, TimelineId};
use crate::pipeline::compress::Compression;

mod packed;
pub use packed::PackedFiles;

/// A backup's manifest. Its file list is a `Vec` unless a command asks for another form
/// (`PackedFiles`: backup holds whole lists of 100,000 files in a third of the memory).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Manifest<F = Vec<FileEntry>> {
    pub format_version: u32,
    pub label: String,
    #[serde(rename = "type")]
    pub backup_type: BackupType,
    /// The backup this one builds on (none for a full).
    pub reference: Option<String>,
    #[serde(with = "super::stanza::u64_string")]
    pub system_identifier: u64,
    pub pg_major: u32,
    pub pg_version_num: u32,
    pub timeline: TimelineId,
    pub start_lsn: Lsn,
    pub stop_lsn: Lsn,
    pub start_time: DateTime<Utc>,
    pub stop_time: DateTime<Utc>,
    pub wal_segment_size: u64,
    pub data_checksums: bool,
    pub from_standby: bool,
    /// The server the backup was taken on: `host:port` as pgward connected (the host may
    /// be a socket directory), with the server's own address when over TCP. None in
    /// backups taken before pgward recorded it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    pub compression: Compression,
    /// As returned by the stop call; restored verbatim.
    pub backup_label: String,
    pub tablespace_map: Option<String>,
    pub tablespaces: Vec<Tablespace>,
    pub annotations: BTreeMap<String, String>,
    pub directories: Vec<DirEntry>,
    pub files: F,
    /// Sum of file sizes (the cluster's size as backed up).
    pub database_size: u64,
    /// Bytes this backup added to the repository (its bundles).
    pub stored_size: u64,
    pub bundles: Vec<String>,
    /// Pages that failed data-checksum verification (path, block numbers).
    pub checksum_failures: Vec<ChecksumFailure>,
    /// What the backup read from the cluster and how it chose (absent before format
    /// additions of issue 12).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reads: Option<BackupReads>,
}

/// How much a backup read from the cluster, and how an incremental chose what to read.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct BackupReads {
    /// Bytes read from the cluster's files (cross-check reads included).
    pub bytes_read: u64,
    /// Relation files whose blocks the WAL block maps chose.
    #[serde(default)]
    pub files_mapped: u64,
    /// Relation files scanned page by page instead, by reason.
    #[serde(default)]
    pub files_scanned: BTreeMap<String, u64>,
    /// Relation files at a path the reference has, created after it started (dropped
    /// and created again under the same name): copied whole, whatever the maps say.
    #[serde(default)]
    pub files_whole: u64,
    /// `--block-map-check` as given, when the maps were used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub map_check: Option<String>,
    /// Unmapped blocks read to check their page LSN.
    #[serde(default)]
    pub map_checked_blocks: u64,
    /// Blocks changed in the range that the maps did not name: a bug in the maps. Each
    /// file named here was scanned page by page instead, so the backup itself is whole.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub map_misses: Vec<ChecksumFailure>,
}

impl BackupReads {
    pub fn add(&mut self, other: BackupReads) {
        self.bytes_read += other.bytes_read;
        self.files_mapped += other.files_mapped;
        self.files_whole += other.files_whole;
        for (why, n) in other.files_scanned {
            *self.files_scanned.entry(why).or_default() += n;
        }
        self.map_checked_blocks += other.map_checked_blocks;
        self.map_misses.extend(other.map_misses);
        if self.map_check.is_none() {
            self.map_check = other.map_check;
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Tablespace {
    pub oid: u32,
    /// Where it lived on the source host.
    pub location: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DirEntry {
    pub path: String,
    pub mode: u32,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct FileEntry {
    /// Relative to the data directory; tablespace files under `pg_tblspc/<oid>/`.
    pub path: String,
    pub size: u64,
    pub mtime: i64,
    pub mode: u32,
    /// BLAKE3 of the whole content, when the backup read it whole as one frame. A file
    /// stored at page level, or in pieces, has none; its frames carry the checksums then.
    pub checksum: Option<Digest>,
    /// Where the bytes are, in file order, covering `0..size` without gaps.
    #[serde(deserialize_with = "exact_vec")]
    pub extents: Vec<Extent>,
}

/// Bytes `offset..offset+length` of the file are bytes `frame_offset..` of the
/// decompressed frame stored at `bundle_offset` (`stored_length` compressed bytes) in
/// `bundle`, written by backup `backup`. The whole frame holds `frame_length` bytes
/// hashing to `frame_checksum`; a frame belongs to one file and its slices appear in
/// file order, so restore reads each frame once, front to back.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Extent {
    pub offset: u64,
    pub length: u64,
    /// The backup and bundle names are shared by every extent that names them (see
    /// [`Name`]).
    #[serde(serialize_with = "as_str", deserialize_with = "interned")]
    pub backup: Name,
    #[serde(serialize_with = "as_str", deserialize_with = "interned")]
    pub bundle: Name,
    pub bundle_offset: u64,
    pub stored_length: u64,
    #[serde(default)]
    pub frame_offset: u64,
    /// Format 1 had no slices: 0 there means "the extent is the whole frame".
    #[serde(default)]
    pub frame_length: u64,
    #[serde(alias = "checksum")]
    pub frame_checksum: Digest,
}

/// A backup's label or a bundle's name in an extent. A manifest of 100,000 files names a
/// handful of backups and bundles 100,000 times each: parsed as one shared string per
/// name (while [`parse_manifest`] runs) rather than a copy per extent.
pub type Name = Arc<str>;

thread_local! {
    /// The names met so far by the manifest being parsed on this thread.
    static NAMES: RefCell<Option<HashSet<Name>>> = const { RefCell::new(None) };
}

fn as_str<S: serde::Serializer>(name: &Name, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(name)
}

fn interned<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Name, D::Error> {
    struct Interned;
    impl serde::de::Visitor<'_> for Interned {
        type Value = Name;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a name")
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> std::result::Result<Name, E> {
            Ok(NAMES.with_borrow_mut(|names| match names {
                Some(names) => match names.get(v) {
                    Some(name) => name.clone(),
                    None => {
                        let name: Name = v.into();
                        names.insert(name.clone());
                        name
                    }
                },
                None => v.into(),
            }))
        }
    }
    d.deserialize_str(Interned)
}

/// A list parsed to its exact length: parsed lists start with room for four, and most
/// files have one extent (three quarters of a large manifest's memory was that room).
fn exact_vec<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> std::result::Result<Vec<T>, D::Error> {
    let mut v = Vec::<T>::deserialize(d)?;
    v.shrink_to_fit();
    Ok(v)
}

/// Runs `parse` with names shared across the manifest it parses.
fn with_shared_names<T>(parse: impl FnOnce() -> T) -> T {
    struct Reset(Option<HashSet<Name>>);
    impl Drop for Reset {
        fn drop(&mut self) {
            NAMES.set(self.0.take());
        }
    }
    let _reset = Reset(NAMES.replace(Some(HashSet::new())));
    parse()
}

/// A BLAKE3 digest, stored as 64 hex digits. Held as its 32 bytes: a manifest holds one
/// or two per file, and as strings they took a third of a large manifest's memory.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Digest(pub [u8; 32]);

impl From<blake3::Hash> for Digest {
    fn from(hash: blake3::Hash) -> Self {
        Digest(*hash.as_bytes())
    }
}

impl std::fmt::Display for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(blake3::Hash::from_bytes(self.0).to_hex().as_str())
    }
}

impl std::fmt::Debug for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

impl Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(blake3::Hash::from_bytes(self.0).to_hex().as_str())
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Hex;
        impl serde::de::Visitor<'_> for Hex {
            type Value = Digest;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a BLAKE3 digest in 64 hex digits")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> std::result::Result<Digest, E> {
                blake3::Hash::from_hex(v)
                    .map(Digest::from)
                    .map_err(|_| E::invalid_value(serde::de::Unexpected::Str(v), &self))
            }
        }
        d.deserialize_str(Hex)
    }
}

impl Extent {
    /// Identifies the stored frame (shared by every slice of it).
    pub fn frame_key(&self) -> (&str, u64) {
        (&*self.bundle, self.bundle_offset)
    }

    /// File offset where the frame's first byte belongs.
    pub fn frame_file_start(&self) -> u64 {
        self.offset - self.frame_offset
    }

    /// The part of this extent that falls within `start..end` of the file, if any.
    pub fn slice(&self, start: u64, end: u64) -> Option<Extent> {
        let s = start.max(self.offset);
        let e = end.min(self.offset + self.length);
        (s < e).then(|| Extent {
            offset: s,
            length: e - s,
            frame_offset: self.frame_offset + (s - self.offset),
            ..self.clone()
        })
    }
}

/// Joins neighbouring slices of one frame that continue each other.
pub fn merge_extents(extents: Vec<Extent>) -> Vec<Extent> {
    let mut out: Vec<Extent> = Vec::with_capacity(extents.len());
    for e in extents {
        if let Some(last) = out.last_mut() {
            if last.frame_key() == e.frame_key()
                && last.offset + last.length == e.offset
                && last.frame_offset + last.length == e.frame_offset
            {
                last.length += e.length;
                continue;
            }
        }
        out.push(e);
    }
    out
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ChecksumFailure {
    pub path: String,
    pub blocks: Vec<u32>,
}

#[derive(Debug)]
pub enum ManifestError {
    Unreadable(serde_json::Error),
    Newer(u32),
}

/// The forms a manifest's file list is held in.
pub trait FileList: serde::de::DeserializeOwned + Serialize + Send + Sync + 'static {
    fn count(&self) -> usize;
    /// The list read from an older format as the current one (see [`upgrade`]).
    fn upgraded(self) -> Self;
}

impl FileList for Vec<FileEntry> {
    fn count(&self) -> usize {
        self.len()
    }

    fn upgraded(mut self) -> Self {
        // Grown by doubling while parsed: up to half of it was room.
        self.shrink_to_fit();
        for file in &mut self {
            upgrade_extents(file);
        }
        self
    }
}

/// Format 1: every extent was a whole frame.
fn upgrade_extents(file: &mut FileEntry) {
    for e in &mut file.extents {
        if e.frame_length == 0 {
            e.frame_length = e.length;
        }
    }
}

/// Parses a manifest of any format this build reads, as the current format.
pub fn parse_manifest(bytes: &[u8]) -> std::result::Result<Manifest, ManifestError> {
    parse_manifest_as(bytes)
}

/// [`parse_manifest`], its file list held as `F`.
fn parse_manifest_as<F: FileList>(bytes: &[u8]) -> std::result::Result<Manifest<F>, ManifestError> {
    let manifest: Manifest<F> =
        with_shared_names(|| serde_json::from_slice(bytes)).map_err(ManifestError::Unreadable)?;
    if manifest.format_version > super::FORMAT_VERSION {
        return Err(ManifestError::Newer(manifest.format_version));
    }
    Ok(upgrade(manifest))
}

/// [`parse_manifest`] from a reader, as the bytes arrive, its file list held as `F`.
fn parse_manifest_from<F: FileList>(
    r: &mut dyn std::io::Read,
) -> std::result::Result<Manifest<F>, ManifestError> {
    let manifest: Manifest<F> =
        with_shared_names(|| super::streamed::json_from(r)).map_err(ManifestError::Unreadable)?;
    if manifest.format_version > super::FORMAT_VERSION {
        return Err(ManifestError::Newer(manifest.format_version));
    }
    Ok(upgrade(manifest))
}

/// Reads older formats as the current one.
fn upgrade<F: FileList>(mut m: Manifest<F>) -> Manifest<F> {
    m.files = m.files.upgraded();
    m
}

/// The backups `label` needs, from its full backup to itself.
pub fn chain<'a>(manifests: &'a [Manifest], label: &str) -> Vec<&'a Manifest> {
    let mut out = Vec::new();
    let mut next = Some(label.to_string());
    while let Some(l) = next {
        let Some(m) = manifests.iter().find(|m| m.label == l) else {
            break;
        };
        next = m.reference.clone();
        out.push(m);
    }
    out.reverse();
    out
}

impl Manifest {
    /// Sorting key: labels order backups by start time.
    pub fn start_epoch(&self) -> i64 {
        label_time(&self.label).unwrap_or(0)
    }
}

pub(super) fn manifest_key(repo: &Repo, label: &str) -> String {
    repo.key(&format!("backups/{label}.manifest"))
}

fn pin_key(repo: &Repo, label: &str) -> String {
    repo.key(&format!("backups/{label}.pin"))
}

pub fn bundle_key(repo: &Repo, bundle: &str) -> String {
    repo.key(&format!("bundles/{bundle}"))
}

/// A backup whose manifest cannot be trusted, and why.
#[derive(Debug)]
pub struct DamagedBackup {
    pub label: String,
    pub error: Error,
}

/// Every backup the stanza lists: those whose manifest reads and checks, oldest first,
/// and those whose manifest does not.
#[derive(Debug, Default)]
pub struct Backups {
    pub healthy: Vec<Manifest>,
    pub damaged: Vec<DamagedBackup>,
}

/// A pin marker names the backup it pins.
#[derive(Serialize, Deserialize)]
struct Pin {
    label: String,
}

/// The label a pin marker names (format 3 stored the bare label).
pub(super) fn pin_label(contents: Contents, key: &str) -> Result<String> {
    Ok(match contents {
        Contents::Checked(p) => object::parse_json::<Pin>(&p, key)?.label,
        Contents::Legacy(raw) => String::from_utf8_lossy(&raw).into_owned(),
    })
}

/// A manifest must be of the stanza's cluster.
pub(super) fn check_cluster<F>(m: &Manifest<F>, stanza: &StanzaInfo, key: &str) -> Result<()> {
    if m.wal_segment_size != stanza.wal_segment_size {
        return Err(damaged(
            key,
            format!(
                "names WAL segment size {}, but stanza.json names {}",
                m.wal_segment_size, stanza.wal_segment_size
            ),
        ));
    }
    if m.system_identifier != stanza.system_identifier || m.pg_major != stanza.pg_major {
        return Err(damaged(
            key,
            format!(
                "is a backup of cluster {} (PostgreSQL {}), but stanza.json names cluster {} (PostgreSQL {})",
                m.system_identifier, m.pg_major, stanza.system_identifier, stanza.pg_major
            ),
        ));
    }
    Ok(())
}

fn no_such_backup(repo: &Repo, label: &str) -> Error {
    Error::new(
        ErrorKind::NotFound,
        format!("backup {label} does not exist in stanza {:?}", repo.stanza),
    )
    .hint("`pgward info` lists the backups")
}

/// A parsed manifest, checked to be the one stored under `label` (at `key`).
fn checked_parse<T>(
    label: &str,
    key: &str,
    parsed: std::result::Result<T, ManifestError>,
    label_of: impl Fn(&T) -> &str,
) -> Result<T> {
    let m = parsed.map_err(|e| match e {
        ManifestError::Unreadable(e) => damaged(key, format!("does not parse: {e}")),
        ManifestError::Newer(v) => Error::config(format!(
            "backup {label} uses repository format {v}, newer than this pgward"
        ))
        .hint("upgrade pgward"),
    })?;
    if label_of(&m) != label {
        return Err(damaged(
            key,
            format!(
                "is the manifest of backup {}, copied over the manifest of backup {label}",
                label_of(&m)
            ),
        ));
    }
    Ok(m)
}

impl Repo {
    /// Labels of every backup that has a manifest, oldest first.
    pub async fn backup_labels(&self) -> Result<Vec<String>> {
        let listing = self.storage.list(&self.key("backups")).await?;
        let mut labels: Vec<String> = listing
            .files
            .iter()
            .filter_map(|f| f.name.strip_suffix(".manifest"))
            .filter(|l| label_time(l).is_some())
            .map(str::to_string)
            .collect();
        labels.sort();
        Ok(labels)
    }

    /// Reads a manifest and checks that it is the one stored under its label (envelope,
    /// parse, label); the cluster is checked by the callers, against `stanza.json`. An
    /// unsealed manifest is parsed as it is read, never held whole (`streamed.rs`).
    pub async fn read_manifest(&self, label: &str) -> Result<Manifest> {
        self.read_manifest_with(label).await
    }

    /// [`Repo::read_manifest`], its file list held as `F`.
    pub async fn read_manifest_with<F: FileList>(&self, label: &str) -> Result<Manifest<F>> {
        let key = manifest_key(self, label);
        let parsed = match self
            .read_streamed(&key, Kind::Manifest, parse_manifest_from::<F>)
            .await?
        {
            None => return Err(no_such_backup(self, label)),
            Some(Streamed::Parsed(parsed)) => parsed,
            Some(Streamed::Whole(contents)) => {
                parse_manifest_as(&self.payload_of(&key, contents).await?)
            }
        };
        checked_parse(label, &key, parsed, |m| &m.label)
    }

    /// Reads the manifest of `label` whole through the checked path, parses it with
    /// `parse`, and checks that it is the one stored under its label. For parsers that
    /// keep little of it (`manifest_head.rs`): the bytes are held only while parsed, and
    /// parsing from memory skips the file list several times faster than from a stream.
    pub(super) async fn read_manifest_as<T: Send + 'static>(
        &self,
        label: &str,
        parse: fn(&mut dyn std::io::Read) -> std::result::Result<T, ManifestError>,
        label_of: impl Fn(&T) -> &str,
    ) -> Result<T> {
        let key = manifest_key(self, label);
        // Streamed as it is read (a manifest of 100,000 files is over 40 MB of JSON), as
        // `backup_compression` reads it.
        let parsed = match self.read_streamed(&key, Kind::Manifest, parse).await? {
            None => return Err(no_such_backup(self, label)),
            Some(Streamed::Parsed(parsed)) => parsed,
            Some(Streamed::Whole(contents)) => {
                parse(&mut &self.payload_of(&key, contents).await?[..])
            }
        };
        checked_parse(label, &key, parsed, label_of)
    }

    /// The compression of backup `label`, read from its manifest as it streams (its file
    /// list skipped, never held), checked like `load_manifest`. Restore needs it for each
    /// older backup of a chain, with the restored backup's own list already in memory.
    pub async fn backup_compression(
        &self,
        label: &str,
        stanza: &StanzaInfo,
    ) -> Result<Compression> {
        /// What of a manifest this reads; the rest is skipped unparsed.
        #[derive(Deserialize)]
        struct Codec {
            format_version: u32,
            label: String,
            #[serde(with = "super::stanza::u64_string")]
            system_identifier: u64,
            pg_major: u32,
            wal_segment_size: u64,
            compression: Compression,
        }
        fn parse(r: &mut dyn std::io::Read) -> std::result::Result<Codec, ManifestError> {
            let c: Codec = super::streamed::json_from(r).map_err(ManifestError::Unreadable)?;
            if c.format_version > super::FORMAT_VERSION {
                return Err(ManifestError::Newer(c.format_version));
            }
            Ok(c)
        }
        let key = manifest_key(self, label);
        let parsed = match self.read_streamed(&key, Kind::Manifest, parse).await? {
            None => return Err(no_such_backup(self, label)),
            Some(Streamed::Parsed(parsed)) => parsed,
            Some(Streamed::Whole(contents)) => {
                parse(&mut &self.payload_of(&key, contents).await?[..])
            }
        };
        let c = checked_parse(label, &key, parsed, |c| &c.label)?;
        // As `check_cluster` checks a whole manifest.
        if c.wal_segment_size != stanza.wal_segment_size {
            return Err(damaged(
                &key,
                format!(
                    "names WAL segment size {}, but stanza.json names {}",
                    c.wal_segment_size, stanza.wal_segment_size
                ),
            ));
        }
        if c.system_identifier != stanza.system_identifier || c.pg_major != stanza.pg_major {
            return Err(damaged(
                &key,
                format!(
                    "is a backup of cluster {} (PostgreSQL {}), but stanza.json names cluster {} (PostgreSQL {})",
                    c.system_identifier, c.pg_major, stanza.system_identifier, stanza.pg_major
                ),
            ));
        }
        Ok(c.compression)
    }

    /// The JSON of a manifest read whole: a legacy one only in a stanza of its format.
    async fn payload_of(&self, key: &str, contents: Contents) -> Result<Vec<u8>> {
        Ok(match contents {
            Contents::Checked(p) => p,
            Contents::Legacy(raw) => {
                self.legacy_allowed(key).await?;
                raw
            }
        })
    }

    /// A manifest, checked against its label and the stanza's cluster.
    pub async fn load_manifest(&self, label: &str) -> Result<Manifest> {
        let stanza = self.stanza_info().await?;
        self.load_manifest_of(label, &stanza).await
    }

    /// `load_manifest` against the stanza info the caller read already.
    pub async fn load_manifest_of(&self, label: &str, stanza: &StanzaInfo) -> Result<Manifest> {
        self.load_manifest_with(label, stanza).await
    }

    /// [`Repo::load_manifest_of`], its file list held as `F`.
    pub async fn load_manifest_with<F: FileList>(
        &self,
        label: &str,
        stanza: &StanzaInfo,
    ) -> Result<Manifest<F>> {
        let m = self.read_manifest_with(label).await?;
        check_cluster(&m, stanza, &manifest_key(self, label))?;
        Ok(m)
    }

    /// Every backup, sorted into those that read and check (against `stanza` when given)
    /// and those that do not. Errors only when the listing itself fails.
    pub async fn load_backups(&self, stanza: Option<&StanzaInfo>) -> Result<Backups> {
        let mut out = Backups::default();
        for label in self.backup_labels().await? {
            let checked = match self.read_manifest(&label).await {
                Ok(m) => match stanza {
                    Some(s) => check_cluster(&m, s, &manifest_key(self, &label)).map(|()| m),
                    None => Ok(m),
                },
                Err(e) => Err(e),
            };
            match checked {
                Ok(m) => out.healthy.push(m),
                Err(error) if error.kind == ErrorKind::Io => return Err(error),
                // Expired between the listing and the read: no longer a backup.
                Err(error) if error.is_not_found() => {}
                Err(error) => out.damaged.push(DamagedBackup { label, error }),
            }
        }
        Ok(out)
    }

    /// Every backup, oldest first; the first damaged manifest is an error.
    pub async fn load_manifests(&self) -> Result<Vec<Manifest>> {
        let stanza = self.stanza_info().await?;
        let backups = self.load_backups(Some(&stanza)).await?;
        match backups.damaged.into_iter().next() {
            Some(d) => Err(d.error),
            None => Ok(backups.healthy),
        }
    }

    /// Writes the backup's header object, then its manifest (streamed: never its whole
    /// JSON in memory) and hands it back: the manifest is the commit point, a header
    /// without one is an unfinished backup's (`manifest_head.rs`).
    pub async fn save_manifest<F: FileList + Clone>(
        &self,
        manifest: Manifest<F>,
    ) -> Result<Manifest<F>> {
        self.save_backup_header(&manifest).await?;
        let key = manifest_key(self, &manifest.label);
        let manifest = Arc::new(manifest);
        self.write_streamed(&key, Kind::Manifest, manifest.clone())
            .await?;
        Ok(Arc::try_unwrap(manifest).unwrap_or_else(|shared| (*shared).clone()))
    }

    /// Removes a backup from the listing (its bundles are removed separately), then its
    /// header object (one left by an interruption is removed by the next backup).
    pub async fn delete_manifest(&self, label: &str) -> Result<()> {
        self.storage.delete(&pin_key(self, label)).await?;
        self.storage.delete(&manifest_key(self, label)).await?;
        self.storage
            .delete(&super::manifest_head::header_key(self, label))
            .await
    }

    /// Pinned backups are never expired: a marker object beside the manifest, so that
    /// pinning never rewrites a manifest.
    pub async fn set_pinned(&self, label: &str, pinned: bool) -> Result<()> {
        self.load_manifest(label).await?;
        let key = pin_key(self, label);
        if pinned {
            self.write_pin(label).await
        } else {
            self.storage.delete(&key).await
        }
    }

    pub(super) async fn write_pin(&self, label: &str) -> Result<()> {
        let pin = Pin {
            label: label.to_string(),
        };
        self.write_object(&pin_key(self, label), Kind::Pin, &pin)
            .await
    }

    /// Backups with a pin marker. A damaged marker still pins (expire keeps too much
    /// rather than too little); `check_pin` tells it is damaged.
    pub async fn pinned_labels(&self) -> Result<Vec<String>> {
        let listing = self.storage.list(&self.key("backups")).await?;
        Ok(listing
            .files
            .iter()
            .filter_map(|f| f.name.strip_suffix(".pin"))
            .map(str::to_string)
            .collect())
    }

    /// Checks a backup's pin marker (envelope, and that it names the backup); absent is fine.
    pub async fn check_pin(&self, label: &str) -> Result<()> {
        let key = pin_key(self, label);
        let Some(contents) = self.read_contents(&key, Kind::Pin).await? else {
            return Ok(());
        };
        if matches!(contents, Contents::Legacy(_)) {
            self.legacy_allowed(&key).await?;
        }
        let named = pin_label(contents, &key)?;
        if named != label {
            return Err(damaged(
                &key,
                format!("names backup {named:?}: it was copied from another backup"),
            ));
        }
        Ok(())
    }

    /// Bundles in the repository that no manifest names: left by interrupted backups.
    pub async fn orphan_bundles(&self) -> Result<Vec<String>> {
        let labels = self.backup_labels().await?;
        let listing = self.storage.list(&self.key("bundles")).await?;
        Ok(listing
            .files
            .into_iter()
            .map(|f| f.name)
            .filter(|name| {
                let label = name.get(..16).unwrap_or("");
                !labels.iter().any(|l| l == label)
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_1_manifest_written_by_pgward_0_1_reads_as_whole_frame_extents() {
        let bytes = include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/format-v1/manifest.json"
        ));
        let m = parse_manifest(bytes).unwrap();
        assert_eq!(m.format_version, 1);
        let control = m
            .files
            .iter()
            .find(|f| f.path == "global/pg_control")
            .unwrap();
        let e = &control.extents[0];
        assert_eq!((e.frame_offset, e.frame_length), (0, control.size));
        assert_eq!(Some(&e.frame_checksum), control.checksum.as_ref());
    }

    #[test]
    fn slices_of_a_frame_keep_their_place_and_merge_back() {
        let e = Extent {
            offset: 0,
            length: 8192 * 4,
            backup: "F".into(),
            bundle: "b".into(),
            bundle_offset: 0,
            stored_length: 10,
            frame_offset: 0,
            frame_length: 8192 * 4,
            frame_checksum: Digest([7; 32]),
        };
        let a = e.slice(0, 8192).unwrap();
        let b = e.slice(8192, 8192 * 3).unwrap();
        assert_eq!((b.offset, b.length, b.frame_offset), (8192, 8192 * 2, 8192));
        assert!(e.slice(8192 * 4, 8192 * 5).is_none());
        assert_eq!(
            merge_extents(vec![a, b]),
            vec![Extent {
                length: 8192 * 3,
                ..e.clone()
            }]
        );
    }

    /// Heap bytes a parsed manifest holds per file of one extent, in a large backup: a
    /// quarter of a KiB (it was over 400 bytes when names and digests were strings).
    const BYTES_PER_FILE: usize = 256;

    #[test]
    fn a_large_manifest_streams_in_and_holds_little_per_file() {
        let bytes = include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/format-v1/manifest.json"
        ));
        let mut m = parse_manifest(bytes).unwrap();
        let template = m.files[1].clone();
        let count = 20_000;
        m.files = (0..count)
            .map(|i| {
                let mut f = template.clone();
                f.path = format!("base/16384/{}", 100_000 + i);
                let e = &mut f.extents[0];
                e.bundle = format!("{}-01-{:04}.bundle", m.label, i / 1000).into();
                e.bundle_offset = i as u64 * 300;
                f
            })
            .collect();
        let mut stored = Vec::new();
        super::super::streamed::write_envelope(Kind::Manifest, &m, &mut stored, "m").unwrap();
        drop(m);

        let (read, peak, held) = crate::test_alloc::measure(|| {
            super::super::streamed::read_envelope(
                Kind::Manifest,
                &stored[..],
                parse_manifest_from::<Vec<FileEntry>>,
                "m",
            )
        });
        let Ok(Streamed::Parsed(Ok(m))) = read else {
            panic!("an enveloped manifest streams")
        };
        assert_eq!(m.files.len(), count);
        assert!(
            held < count * BYTES_PER_FILE,
            "{held} bytes held for {count} files"
        );
        // Never the JSON whole: beyond what it keeps, the parse holds the list it grows
        // (by doubling), well under half the JSON's bytes here; read whole, the JSON
        // alone was more than those bytes.
        assert!(
            peak - held < stored.len() / 2,
            "peak {peak}, held {held}, JSON {}",
            stored.len()
        );
        let names = |f: &FileEntry| (f.extents[0].backup.clone(), f.extents[0].bundle.clone());
        let (first, last) = (names(&m.files[0]), names(&m.files[999]));
        assert!(Arc::ptr_eq(&first.0, &last.0) && Arc::ptr_eq(&first.1, &last.1));
        assert!(Arc::ptr_eq(&first.0, &names(&m.files[count - 1]).0));
    }

    #[test]
    fn newer_formats_are_refused() {
        let bytes = include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/format-v1/manifest.json"
        ));
        let text = String::from_utf8_lossy(bytes).replacen(
            "\"format_version\": 1",
            "\"format_version\": 99",
            1,
        );
        assert!(matches!(
            parse_manifest(text.as_bytes()),
            Err(ManifestError::Newer(99))
        ));
    }
}
