//! Manifests read for reports (`info`, `metrics`): everything but the file and directory
//! lists, which are most of a manifest's bytes (hundreds of KiB per backup of a large
//! cluster). Each manifest is still read whole through the checked path (envelope
//! checksum, label, cluster), but its lists are skipped by the JSON parser instead of
//! being built, so a hundred backups parse in a fraction of the time and take a few KiB
//! each. The envelope's checksum still proves the bytes are those pgward wrote; the
//! skipped lists are checked as JSON, their fields only by the readers that use them
//! (restore, verify). What this returns must never be restored from: its `files` are
//! empty.
//!
//! Backup header objects (format 5): `backups/<label>.head` holds the same head, written
//! before the manifest, so that `backup` chooses its reference by reading a few KiB per
//! backup instead of every manifest whole. The manifest stays the commit point: a header
//! without a manifest is an unfinished backup (removed like its bundles), a manifest
//! without a header (older stanzas, a header lost) is read whole instead. Only `backup`
//! trusts headers, and only to choose: the reference's own manifest is then read whole
//! and must agree. Reports, expire and restore read the manifests, so that a damaged
//! manifest is named there; `verify` checks that each header matches its manifest.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use serde::de::{IgnoredAny, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use super::label::BackupType;
use super::manifest::{
    check_cluster, manifest_key, BackupReads, Backups, ChecksumFailure, DamagedBackup, Manifest,
    ManifestError, Tablespace,
};
use super::object::{damaged, Contents, Kind};
use super::stanza::StanzaInfo;
use super::Repo;
use crate::error::{Error, ErrorKind, Result};
use crate::pg::{Lsn, TimelineId};
use crate::pipeline::compress::Compression;

/// Every backup of the stanza as `load_backups` sorts them, read without file lists.
#[derive(Debug, Default)]
pub struct BackupHeaders {
    /// The healthy manifests have empty `files` and `directories`.
    pub backups: Backups,
    /// How many files each healthy backup lists, by label.
    pub file_counts: HashMap<String, usize>,
}

/// A manifest's fields but its lists; the lists are skipped (`files` only counted).
/// Kept field for field with [`Manifest`] (a test compares them).
#[derive(Deserialize)]
struct Head {
    format_version: u32,
    label: String,
    #[serde(rename = "type")]
    backup_type: BackupType,
    reference: Option<String>,
    #[serde(with = "super::stanza::u64_string")]
    system_identifier: u64,
    pg_major: u32,
    pg_version_num: u32,
    timeline: TimelineId,
    start_lsn: Lsn,
    stop_lsn: Lsn,
    start_time: DateTime<Utc>,
    stop_time: DateTime<Utc>,
    wal_segment_size: u64,
    data_checksums: bool,
    from_standby: bool,
    #[serde(default)]
    node: Option<String>,
    compression: Compression,
    backup_label: String,
    tablespace_map: Option<String>,
    tablespaces: Vec<Tablespace>,
    annotations: BTreeMap<String, String>,
    #[serde(rename = "directories")]
    _directories: IgnoredAny,
    #[serde(rename = "files", deserialize_with = "count_elements")]
    file_count: usize,
    database_size: u64,
    stored_size: u64,
    bundles: Vec<String>,
    checksum_failures: Vec<ChecksumFailure>,
    #[serde(default)]
    reads: Option<BackupReads>,
}

/// The length of a JSON array whose elements are skipped unparsed.
fn count_elements<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<usize, D::Error> {
    struct Count;
    impl<'de> Visitor<'de> for Count {
        type Value = usize;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a list")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<usize, A::Error> {
            let mut n = 0;
            while seq.next_element::<IgnoredAny>()?.is_some() {
                n += 1;
            }
            Ok(n)
        }
    }
    d.deserialize_seq(Count)
}

/// A manifest without its lists, and how many files it lists.
fn parse_head(
    stored: &mut dyn std::io::Read,
) -> std::result::Result<(Manifest, usize), ManifestError> {
    let h: Head = super::streamed::json_from(stored).map_err(ManifestError::Unreadable)?;
    if h.format_version > super::FORMAT_VERSION {
        return Err(ManifestError::Newer(h.format_version));
    }
    let manifest = Manifest {
        format_version: h.format_version,
        label: h.label,
        backup_type: h.backup_type,
        reference: h.reference,
        system_identifier: h.system_identifier,
        pg_major: h.pg_major,
        pg_version_num: h.pg_version_num,
        timeline: h.timeline,
        start_lsn: h.start_lsn,
        stop_lsn: h.stop_lsn,
        start_time: h.start_time,
        stop_time: h.stop_time,
        wal_segment_size: h.wal_segment_size,
        data_checksums: h.data_checksums,
        from_standby: h.from_standby,
        node: h.node,
        compression: h.compression,
        backup_label: h.backup_label,
        tablespace_map: h.tablespace_map,
        tablespaces: h.tablespaces,
        annotations: h.annotations,
        directories: Vec::new(),
        files: Vec::new(),
        database_size: h.database_size,
        stored_size: h.stored_size,
        bundles: h.bundles,
        checksum_failures: h.checksum_failures,
        reads: h.reads,
    };
    Ok((manifest, h.file_count))
}

/// Reads of backup heads in flight at once on object storage (a round trip each). A
/// read from a manifest holds the whole manifest until its head is parsed (tens of MB
/// for 100,000 files), so local repositories, where a read costs no round trip, read
/// one at a time.
pub const HEADERS_AT_ONCE: usize = 2;

impl Repo {
    fn head_reads_at_once(&self) -> usize {
        match self.storage.local_root() {
            Some(_) => 1,
            None => HEADERS_AT_ONCE,
        }
    }
}

impl Repo {
    /// One backup's manifest without its lists, checked like `load_manifest`.
    pub async fn load_backup_header(&self, label: &str, stanza: &StanzaInfo) -> Result<Manifest> {
        let (m, _) = self
            .read_manifest_as(label, parse_head, |(m, _)| &m.label)
            .await?;
        check_cluster(&m, stanza, &manifest_key(self, label))?;
        Ok(m)
    }

    /// Like `load_backups`, without file lists (see the module comment).
    pub async fn load_backup_headers(&self, stanza: Option<&StanzaInfo>) -> Result<BackupHeaders> {
        use futures::stream::StreamExt;
        let mut out = BackupHeaders::default();
        // A round trip each on object storage: a few at once, in label order. Each read
        // streams its manifest, but sealed ones (encrypted stanzas) are held whole until
        // their head is parsed, hence few.
        let mut reads = futures::stream::iter(self.backup_labels().await?)
            .map(|label| async move {
                let read = self
                    .read_manifest_as(&label, parse_head, |(m, _)| &m.label)
                    .await;
                (label, read)
            })
            .buffered(self.head_reads_at_once());
        while let Some((label, read)) = reads.next().await {
            let checked = match read {
                Ok((m, files)) => match stanza {
                    Some(s) => {
                        check_cluster(&m, s, &manifest_key(self, &label)).map(|()| (m, files))
                    }
                    None => Ok((m, files)),
                },
                Err(e) => Err(e),
            };
            match checked {
                Ok((m, files)) => {
                    out.file_counts.insert(m.label.clone(), files);
                    out.backups.healthy.push(m);
                }
                Err(error) if error.kind == ErrorKind::Io => return Err(error),
                // Expired between the listing and the read: no longer a backup.
                Err(error) if error.is_not_found() => {}
                Err(error) => out.backups.damaged.push(DamagedBackup { label, error }),
            }
        }
        Ok(out)
    }
}

/// The payload of a backup header object: how many files the manifest lists, and the
/// manifest with empty lists.
#[derive(Serialize, Deserialize)]
struct HeaderObject {
    file_count: usize,
    manifest: Manifest,
}

/// Suffix of a backup header object in `backups/`.
pub const HEADER_SUFFIX: &str = ".head";

pub(super) fn header_key(repo: &Repo, label: &str) -> String {
    repo.key(&format!("backups/{label}{HEADER_SUFFIX}"))
}

/// The manifest without its lists (what a header object holds). Every field is named,
/// so that a new manifest field cannot be left out of headers unnoticed.
pub fn head_of<F>(m: &Manifest<F>) -> Manifest {
    Manifest {
        format_version: m.format_version,
        label: m.label.clone(),
        backup_type: m.backup_type,
        reference: m.reference.clone(),
        system_identifier: m.system_identifier,
        pg_major: m.pg_major,
        pg_version_num: m.pg_version_num,
        timeline: m.timeline,
        start_lsn: m.start_lsn,
        stop_lsn: m.stop_lsn,
        start_time: m.start_time,
        stop_time: m.stop_time,
        wal_segment_size: m.wal_segment_size,
        data_checksums: m.data_checksums,
        from_standby: m.from_standby,
        node: m.node.clone(),
        compression: m.compression,
        backup_label: m.backup_label.clone(),
        tablespace_map: m.tablespace_map.clone(),
        tablespaces: m.tablespaces.clone(),
        annotations: m.annotations.clone(),
        directories: Vec::new(),
        files: Vec::new(),
        database_size: m.database_size,
        stored_size: m.stored_size,
        bundles: m.bundles.clone(),
        checksum_failures: m.checksum_failures.clone(),
        reads: m.reads.clone(),
    }
}

/// Whether two heads say the same (compared as the JSON they are stored as).
pub fn same_head(a: &Manifest, b: &Manifest) -> bool {
    serde_json::to_value(a).ok() == serde_json::to_value(b).ok()
}

fn parse_header_object(bytes: &[u8]) -> std::result::Result<(Manifest, usize), ManifestError> {
    let h: HeaderObject = serde_json::from_slice(bytes).map_err(ManifestError::Unreadable)?;
    if h.manifest.format_version > super::FORMAT_VERSION {
        return Err(ManifestError::Newer(h.manifest.format_version));
    }
    Ok((h.manifest, h.file_count))
}

impl Repo {
    /// Writes the header object of a backup whose manifest is about to be written.
    pub(super) async fn save_backup_header<F: super::manifest::FileList>(
        &self,
        manifest: &Manifest<F>,
    ) -> Result<()> {
        let header = HeaderObject {
            file_count: manifest.files.count(),
            manifest: head_of(manifest),
        };
        self.write_object(
            &header_key(self, &manifest.label),
            Kind::BackupHeader,
            &header,
        )
        .await
    }

    /// A backup's header object, checked (envelope, parse, label); Ok(None) when there
    /// is none. The cluster is checked by the callers.
    pub async fn read_backup_header(&self, label: &str) -> Result<Option<(Manifest, usize)>> {
        let key = header_key(self, label);
        let payload = match self.read_contents(&key, Kind::BackupHeader).await? {
            None => return Ok(None),
            // Headers came with envelopes: one without is damage.
            Some(Contents::Legacy(_)) => return Err(damaged(&key, "has no envelope")),
            Some(Contents::Checked(p)) => p,
        };
        let (m, files) = parse_header_object(&payload).map_err(|e| match e {
            ManifestError::Unreadable(e) => damaged(&key, format!("does not parse: {e}")),
            ManifestError::Newer(v) => Error::config(format!(
                "backup {label} uses repository format {v}, newer than this pgward"
            ))
            .hint("upgrade pgward"),
        })?;
        if m.label != label {
            return Err(damaged(
                &key,
                format!(
                    "is the header of backup {}, copied over the header of backup {label}",
                    m.label
                ),
            ));
        }
        Ok(Some((m, files)))
    }

    /// Every backup as its header object says (its manifest's head where it has none, or
    /// a damaged one): what `backup` chooses its reference from, at a few KiB per backup.
    /// A damaged manifest is not noticed here (its header may be intact): the caller
    /// reads the one manifest it builds on whole (see the module comment).
    pub async fn load_backup_header_objects(&self, stanza: &StanzaInfo) -> Result<BackupHeaders> {
        let listing = self.storage.list(&self.key("backups")).await?;
        let with_header: std::collections::HashSet<&str> = listing
            .files
            .iter()
            .filter_map(|f| f.name.strip_suffix(HEADER_SUFFIX))
            .collect();
        let mut labels: Vec<&str> = listing
            .files
            .iter()
            .filter_map(|f| f.name.strip_suffix(".manifest"))
            .filter(|l| super::label::label_time(l).is_some())
            .collect();
        labels.sort_unstable();
        let mut out = BackupHeaders::default();
        // Header objects are a few KiB: several in flight; a backup without one falls
        // back to its manifest, and those reads stay as few as `load_backup_headers`'s.
        use futures::stream::StreamExt;
        let fallback = tokio::sync::Semaphore::new(self.head_reads_at_once());
        let with_header = &with_header;
        let fallback = &fallback;
        let mut reads = futures::stream::iter(labels)
            .map(|label| async move {
                let mut read = None;
                if with_header.contains(label) {
                    match self.read_backup_header(label).await {
                        Ok(found) => read = found,
                        Err(e) if e.kind == ErrorKind::Corrupt => {
                            tracing::warn!("{e}; reading the manifest of backup {label} instead")
                        }
                        // Not damage (an outage, a newer format): the command stops.
                        Err(e) => return (label, Err(e)),
                    }
                }
                let checked = match read {
                    Some(head) => Ok(head),
                    None => {
                        let _turn = fallback.acquire().await;
                        self.read_manifest_as(label, parse_head, |(m, _)| &m.label)
                            .await
                    }
                }
                .and_then(|(m, files)| {
                    check_cluster(&m, stanza, &manifest_key(self, label)).map(|()| (m, files))
                });
                (label, Ok(checked))
            })
            .buffered(8);
        while let Some((label, checked)) = reads.next().await {
            match checked? {
                Ok((m, files)) => {
                    out.file_counts.insert(m.label.clone(), files);
                    out.backups.healthy.push(m);
                }
                Err(error) if error.kind == ErrorKind::Io => return Err(error),
                Err(error) if error.is_not_found() => {}
                Err(error) => out.backups.damaged.push(DamagedBackup {
                    label: label.to_string(),
                    error,
                }),
            }
        }
        Ok(out)
    }

    /// Checks a backup's header object against its manifest (read whole): absent is fine
    /// (backups of older formats), different is damage.
    pub async fn check_backup_header(&self, manifest: &Manifest) -> Result<()> {
        let Some((head, files)) = self.read_backup_header(&manifest.label).await? else {
            return Ok(());
        };
        if files != manifest.files.len() || !same_head(&head, &head_of(manifest)) {
            return Err(damaged(
                &header_key(self, &manifest.label),
                format!(
                    "does not match the manifest of backup {} (backups that build on it may have chosen it from wrong facts)",
                    manifest.label
                ),
            ));
        }
        Ok(())
    }

    /// Removes header objects whose manifest does not exist: written by backups that did
    /// not finish (or left by an interrupted expire). Safe only under the backup lock.
    pub async fn remove_orphan_headers(&self) -> Result<usize> {
        let listing = self.storage.list(&self.key("backups")).await?;
        let manifests: std::collections::HashSet<&str> = listing
            .files
            .iter()
            .filter_map(|f| f.name.strip_suffix(".manifest"))
            .collect();
        let mut removed = 0;
        for f in &listing.files {
            if let Some(label) = f.name.strip_suffix(HEADER_SUFFIX) {
                if !manifests.contains(label) {
                    self.storage.delete(&header_key(self, label)).await?;
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_is_the_manifest_without_its_lists() {
        for fixture in [
            "format-v1/manifest.json",
            "format-v3/20261121-124507F.manifest",
        ] {
            let path = format!("{}/tests/fixtures/{fixture}", env!("CARGO_MANIFEST_DIR"));
            let bytes = std::fs::read(&path).unwrap();
            let full = super::super::manifest::parse_manifest(&bytes).unwrap();
            let (head, files) = parse_head(&mut &bytes[..]).unwrap();
            assert_eq!(files, full.files.len(), "{fixture}");
            assert!(files > 0 && !full.directories.is_empty(), "{fixture}");
            let mut expected = serde_json::to_value(&full).unwrap();
            expected["files"] = serde_json::json!([]);
            expected["directories"] = serde_json::json!([]);
            assert_eq!(serde_json::to_value(&head).unwrap(), expected, "{fixture}");
            assert_eq!(
                serde_json::to_value(head_of(&full)).unwrap(),
                expected,
                "{fixture}"
            );
        }
    }

    /// Header objects: written before the manifest, removed with it (or as leftovers of
    /// an unfinished backup), read for choosing, compared with the manifest by verify.
    #[tokio::test]
    async fn headers_are_written_first_removed_with_their_backup_and_checked_against_it() {
        use crate::storage::{LocalStorage, SharedStorage};
        let dir = tempfile::tempdir().unwrap();
        let storage: SharedStorage = std::sync::Arc::new(LocalStorage::new(dir.path()));
        let (repo, m, stanza) = Repo::fixture_stanza_for_tests(storage).await;
        let label = m.label.clone();
        let backups = dir.path().join("main/backups");
        let header = backups.join(format!("{label}{HEADER_SUFFIX}"));
        let manifest = backups.join(format!("{label}.manifest"));

        repo.save_manifest(m.clone()).await.unwrap();
        let (head, files) = repo.read_backup_header(&label).await.unwrap().unwrap();
        assert_eq!(files, m.files.len());
        assert!(same_head(&head, &head_of(&m)));
        repo.check_backup_header(&m).await.unwrap();
        let index = repo.load_backup_header_objects(&stanza).await.unwrap();
        assert_eq!(index.file_counts[&label], m.files.len());

        // A header that says something else than its manifest is damage.
        let mut other = m.clone();
        other.stop_lsn = crate::pg::Lsn(other.stop_lsn.0 + 8);
        repo.save_backup_header(&other).await.unwrap();
        let e = repo.check_backup_header(&m).await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::Corrupt);
        assert!(e.message.contains("does not match the manifest"), "{e}");
        // One copied from another backup names it; a damaged one is read around.
        let mut renamed = m.clone();
        renamed.label = "20261121-130000I".into();
        repo.save_backup_header(&renamed).await.unwrap();
        std::fs::rename(
            backups.join(format!("20261121-130000I{HEADER_SUFFIX}")),
            &header,
        )
        .unwrap();
        let e = repo.read_backup_header(&label).await.unwrap_err();
        assert!(e.message.contains("copied over the header"), "{e}");
        let index = repo.load_backup_header_objects(&stanza).await.unwrap();
        assert_eq!(index.backups.healthy[0].label, label);
        assert!(same_head(&index.backups.healthy[0], &head_of(&m)));

        // Without its manifest a header is an unfinished backup's: not listed, removed.
        std::fs::remove_file(&manifest).unwrap();
        let index = repo.load_backup_header_objects(&stanza).await.unwrap();
        assert!(index.backups.healthy.is_empty() && index.backups.damaged.is_empty());
        assert_eq!(repo.remove_orphan_headers().await.unwrap(), 1);
        assert!(!header.exists());

        repo.save_manifest(m.clone()).await.unwrap();
        assert_eq!(repo.remove_orphan_headers().await.unwrap(), 0);
        repo.delete_manifest(&label).await.unwrap();
        assert!(!header.exists() && !manifest.exists());
    }
}
