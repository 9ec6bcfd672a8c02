//! Manifests read for reports (`info`, `metrics`): everything but the file and directory
//! lists, which are most of a manifest's bytes (hundreds of KiB per backup of a large
//! cluster). Each manifest is still read whole through the checked path (envelope
//! checksum, label, cluster), but its lists are skipped by the JSON parser instead of
//! being built, so a hundred backups parse in a fraction of the time and take a few KiB
//! each. The envelope's checksum still proves the bytes are those pgward wrote; the
//! skipped lists are checked as JSON, their fields only by the readers that use them
//! (restore, verify). What this returns must never be restored from: its `files` are
//! empty.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use serde::de::{IgnoredAny, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};

use super::label::BackupType;
use super::manifest::{
    check_cluster, manifest_key, BackupReads, Backups, ChecksumFailure, DamagedBackup, Manifest,
    ManifestError, Tablespace,
};
use super::stanza::StanzaInfo;
use super::Repo;
use crate::error::{ErrorKind, Result};
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
fn parse_head(bytes: &[u8]) -> std::result::Result<(Manifest, usize), ManifestError> {
    let h: Head = serde_json::from_slice(bytes).map_err(ManifestError::Unreadable)?;
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
        let mut out = BackupHeaders::default();
        for label in self.backup_labels().await? {
            let checked = match self
                .read_manifest_as(&label, parse_head, |(m, _)| &m.label)
                .await
            {
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
            let (head, files) = parse_head(&bytes).unwrap();
            assert_eq!(files, full.files.len(), "{fixture}");
            assert!(files > 0 && !full.directories.is_empty(), "{fixture}");
            let mut expected = serde_json::to_value(&full).unwrap();
            expected["files"] = serde_json::json!([]);
            expected["directories"] = serde_json::json!([]);
            assert_eq!(serde_json::to_value(&head).unwrap(), expected, "{fixture}");
        }
    }
}
