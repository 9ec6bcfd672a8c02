//! The WAL archive's layout. A stored file's name carries the checksum of its original
//! content and its codec: `<wal name>-<blake3 hex>[.zst|.lz4|.gz]`, so listing a
//! directory tells what is archived, whether a re-push is identical, and how to verify
//! it, without opening anything. Other names are not archived files: claims (`wal.rs`)
//! and block maps (`<wal name>.map`, `wal_map.rs`).

use super::{Repo, StanzaHandle};
use crate::error::Result;
use crate::pg::{TimelineId, WalFileName};
use crate::pipeline::compress::Codec;
use crate::storage::SharedStorage;

const HISTORY_DIR: &str = "history";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArchivedFile {
    pub name: WalFileName,
    /// BLAKE3 of the original (uncompressed) file.
    pub checksum: String,
    pub codec: Codec,
    pub stored_size: u64,
    /// When it was archived (seconds since the epoch).
    pub archived_at: i64,
}

impl ArchivedFile {
    pub fn file_name(&self) -> String {
        stored_name(&self.name, &self.checksum, self.codec)
    }
}

pub fn stored_name(name: &WalFileName, checksum: &str, codec: Codec) -> String {
    format!("{name}-{checksum}{}", codec.extension())
}

/// Parses `<wal name>-<64 hex>[.ext]`; anything else (sidecars, strays) is None.
pub fn parse_stored_name(stored: &str) -> Option<(WalFileName, String, Codec)> {
    let (name, rest) = stored.split_once('-')?;
    // Checked as bytes first: 64 ASCII digits make byte 64 a char boundary to split at.
    let hex = rest.as_bytes().get(..64)?;
    if !hex
        .iter()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
    {
        return None;
    }
    let (checksum, ext) = rest.split_at(64);
    let codec = Codec::from_extension(ext)?;
    Some((WalFileName::parse(name).ok()?, checksum.to_string(), codec))
}

/// Directory (relative to the stanza's archive) that holds files for `name`.
pub fn archive_subdir(name: &WalFileName) -> String {
    match name.segment() {
        Some(seg) => seg.log_prefix(),
        None => HISTORY_DIR.to_string(),
    }
}

impl Repo {
    pub fn archive_dir_key(&self, subdir: &str) -> String {
        self.key(&format!("archive/{subdir}"))
    }

    pub fn archived_file_key(&self, file: &ArchivedFile) -> String {
        format!(
            "{}/{}",
            self.archive_dir_key(&archive_subdir(&file.name)),
            file.file_name()
        )
    }

    /// Every archived file in one archive directory (see `archive_subdir`).
    pub async fn archived_in(&self, subdir: &str) -> Result<Vec<ArchivedFile>> {
        Ok(parse_listing(
            &self.storage.list(&self.archive_dir_key(subdir)).await?,
        ))
    }

    /// Every stored copy of `name` (normally zero or one).
    pub async fn find_archived(&self, name: &WalFileName) -> Result<Vec<ArchivedFile>> {
        let dir = self.archive_dir_key(&archive_subdir(name));
        let listing = self.storage.list_starting(&dir, &name.to_string()).await?;
        let found = parse_listing(&listing);
        Ok(found.into_iter().filter(|f| &f.name == name).collect())
    }

    /// The stored copies of `name` and, for a segment, of its `.partial` (see
    /// `StanzaHandle::archived_for_get`).
    pub async fn archived_for_get(&self, name: &WalFileName) -> Result<Vec<ArchivedFile>> {
        archived_for_get(&self.storage, &self.stanza, name).await
    }

    /// Everything in the archive, sorted by name (timeline, then position).
    pub async fn list_archive(&self) -> Result<Vec<ArchivedFile>> {
        use futures::stream::{StreamExt, TryStreamExt};
        let top = self.storage.list(&self.key("archive")).await?;
        // A directory holds 256 segments: a large archive is hundreds of listings, each
        // a round trip on object storage. A few at a time.
        let listings: Vec<Vec<ArchivedFile>> = futures::stream::iter(top.dirs)
            .map(|dir| async move {
                let listing = self.storage.list(&self.archive_dir_key(&dir)).await?;
                Ok::<_, crate::error::Error>(parse_listing(&listing))
            })
            .buffered(8)
            .try_collect()
            .await?;
        let mut files: Vec<ArchivedFile> = listings.into_iter().flatten().collect();
        files.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(files)
    }

    /// Timeline history files in the archive, parsed lazily by callers.
    pub async fn history_files(&self) -> Result<Vec<ArchivedFile>> {
        Ok(parse_listing(
            &self
                .storage
                .list(&self.archive_dir_key(HISTORY_DIR))
                .await?,
        ))
    }
}

impl StanzaHandle {
    /// The stored copies of `name` and, for a segment, of its `.partial` (the end of a
    /// timeline left at a promotion), from one listing of the directory both live in.
    /// Names only, nothing sealed: archive-get lists while it unlocks the stanza.
    pub async fn archived_for_get(&self, name: &WalFileName) -> Result<Vec<ArchivedFile>> {
        archived_for_get(&self.storage, &self.stanza, name).await
    }
}

async fn archived_for_get(
    storage: &SharedStorage,
    stanza: &str,
    name: &WalFileName,
) -> Result<Vec<ArchivedFile>> {
    let partial = match name {
        WalFileName::Segment(seg) => Some(WalFileName::Partial(*seg)),
        _ => None,
    };
    let dir = format!("{stanza}/archive/{}", archive_subdir(name));
    // The `.partial` copy's name starts with the segment's too.
    let listing = storage.list_starting(&dir, &name.to_string()).await?;
    Ok(parse_listing(&listing)
        .into_iter()
        .filter(|f| &f.name == name || Some(&f.name) == partial.as_ref())
        .collect())
}

pub(super) fn parse_listing(listing: &crate::storage::Listing) -> Vec<ArchivedFile> {
    listing
        .files
        .iter()
        .filter_map(|f| {
            let (name, checksum, codec) = parse_stored_name(&f.name)?;
            Some(ArchivedFile {
                name,
                checksum,
                codec,
                stored_size: f.size,
                archived_at: f.modified,
            })
        })
        .collect()
}

/// The timeline a history file's name describes, for sorting.
pub fn history_timeline(file: &ArchivedFile) -> Option<TimelineId> {
    match file.name {
        WalFileName::History(t) => Some(t),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_names_round_trip_and_reject_strays() {
        let name = WalFileName::parse("000000010000000000000002.00000028.backup").unwrap();
        let sum = "ab".repeat(32);
        let stored = stored_name(&name, &sum, Codec::Lz4);
        assert_eq!(
            parse_stored_name(&stored),
            Some((name.clone(), sum.clone(), Codec::Lz4))
        );
        assert_eq!(
            parse_stored_name(&stored_name(&name, &sum, Codec::None))
                .unwrap()
                .2,
            Codec::None
        );
        assert_eq!(parse_stored_name(&format!("{name}-{sum}.summary")), None);
        assert_eq!(parse_stored_name("000000010000000000000002"), None);
        // A multi-byte character across the 64th byte of the checksum.
        let torn = format!("000000010000000000000002-{}é.zst", "a".repeat(63));
        assert_eq!(parse_stored_name(&torn), None);
        assert_eq!(
            archive_subdir(&WalFileName::parse("00000003.history").unwrap()),
            "history"
        );
        assert_eq!(
            archive_subdir(&WalFileName::parse("000000030000000A000000FF.partial").unwrap()),
            "000000030000000A"
        );
    }
}
