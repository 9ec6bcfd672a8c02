//! Backup manifests. A manifest describes the whole cluster as of its backup: every
//! directory and file, and for each file the extents that hold its bytes and which
//! backup's bundle each extent lives in. Restore needs nothing else, and reads each
//! byte from the one backup that holds it. The manifest is written last, atomically:
//! a backup exists exactly when its manifest does.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::label::{label_time, BackupType};
use super::Repo;
use crate::error::{Error, ErrorKind, Result};
use crate::pg::{Lsn, TimelineId};
use crate::pipeline::compress::Compression;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Manifest {
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
    pub compression: Compression,
    /// As returned by the stop call; restored verbatim.
    pub backup_label: String,
    pub tablespace_map: Option<String>,
    pub tablespaces: Vec<Tablespace>,
    pub annotations: BTreeMap<String, String>,
    pub directories: Vec<DirEntry>,
    pub files: Vec<FileEntry>,
    /// Sum of file sizes (the cluster's size as backed up).
    pub database_size: u64,
    /// Bytes this backup added to the repository (its bundles).
    pub stored_size: u64,
    pub bundles: Vec<String>,
    /// Pages that failed data-checksum verification (path, block numbers).
    pub checksum_failures: Vec<ChecksumFailure>,
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

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FileEntry {
    /// Relative to the data directory; tablespace files under `pg_tblspc/<oid>/`.
    pub path: String,
    pub size: u64,
    pub mtime: i64,
    pub mode: u32,
    /// BLAKE3 of the whole content.
    pub checksum: String,
    /// Where the bytes are, in file order, covering `0..size` without gaps.
    pub extents: Vec<Extent>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Extent {
    /// Position in the restored file.
    pub offset: u64,
    pub length: u64,
    /// The backup whose bundle holds it.
    pub backup: String,
    pub bundle: String,
    pub bundle_offset: u64,
    pub stored_length: u64,
    /// BLAKE3 of this extent's original bytes.
    pub checksum: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ChecksumFailure {
    pub path: String,
    pub blocks: Vec<u32>,
}

impl Manifest {
    /// Sorting key: labels order backups by start time.
    pub fn start_epoch(&self) -> i64 {
        label_time(&self.label).unwrap_or(0)
    }
}

fn manifest_key(repo: &Repo, label: &str) -> String {
    repo.key(&format!("backups/{label}.manifest"))
}

pub fn bundle_key(repo: &Repo, bundle: &str) -> String {
    repo.key(&format!("bundles/{bundle}"))
}

impl Repo {
    /// Labels of every complete backup, oldest first.
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

    pub async fn load_manifest(&self, label: &str) -> Result<Manifest> {
        let key = manifest_key(self, label);
        let bytes = match self.storage.read_all(&key).await {
            Err(e) if e.is_not_found() => {
                return Err(Error::new(
                    ErrorKind::NotFound,
                    format!("backup {label} does not exist in stanza {:?}", self.stanza),
                )
                .hint("`pgward info` lists the backups"))
            }
            other => other?,
        };
        let manifest: Manifest = serde_json::from_slice(&bytes).map_err(|e| {
            Error::corrupt(format!("manifest of backup {label} ({key}) does not parse")).source(e)
        })?;
        if manifest.format_version > super::FORMAT_VERSION {
            return Err(Error::config(format!(
                "backup {label} uses repository format {}, newer than this pgward",
                manifest.format_version
            ))
            .hint("upgrade pgward"));
        }
        Ok(manifest)
    }

    /// Every complete backup, oldest first.
    pub async fn load_manifests(&self) -> Result<Vec<Manifest>> {
        let mut out = Vec::new();
        for label in self.backup_labels().await? {
            out.push(self.load_manifest(&label).await?);
        }
        Ok(out)
    }

    pub async fn save_manifest(&self, manifest: &Manifest) -> Result<()> {
        let json = serde_json::to_vec(manifest).expect("manifest serializes");
        self.storage
            .put(&manifest_key(self, &manifest.label), &json)
            .await
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
