//! Where block maps live and how one is made for an archived segment: `<wal name>.map`
//! beside the segment (and its claim) in its archive directory, a `Kind::BlockMap`
//! metadata object (envelope, sealed in encrypted stanzas). The codec is `blockmap.rs`.
//!
//! Building needs the head of a record straddling in from the previous segment: it is
//! read from the directory the segment came from (pg_wal, the push spool) when the
//! previous segment is still there, else from the archive (a GET on object storage,
//! paid only when the segment starts inside a record). Without it the map is poisoned
//! (`head_missing`); `wal maps --backfill` rebuilds it once the predecessor is archived.

use std::collections::BTreeSet;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use super::archive::archive_subdir;
use super::blockmap::{BlockMap, Poison};
use super::object::{damaged, Contents, Kind};
use super::Repo;
use crate::error::Result;
use crate::pg::wal::read_segment;
use crate::pg::WalFileName;

/// Suffix of a segment's block map.
pub const MAP_SUFFIX: &str = ".map";

/// How much of a local predecessor is read first: records longer than this that
/// straddle in make the whole segment be read.
const LOCAL_TAIL: u64 = 1 << 20;

impl Repo {
    pub fn wal_map_key(&self, name: &WalFileName) -> String {
        format!(
            "{}/{name}{MAP_SUFFIX}",
            self.archive_dir_key(&archive_subdir(name))
        )
    }

    pub async fn put_wal_map(&self, name: &WalFileName, map: &BlockMap) -> Result<()> {
        self.write_payload(&self.wal_map_key(name), Kind::BlockMap, &map.encode())
            .await
    }

    /// A segment's map, checked; Ok(None) when it has none.
    pub async fn read_wal_map(&self, name: &WalFileName) -> Result<Option<BlockMap>> {
        let key = self.wal_map_key(name);
        match self.read_contents(&key, Kind::BlockMap).await? {
            None => Ok(None),
            Some(Contents::Legacy(_)) => Err(damaged(&key, "has no envelope")),
            Some(Contents::Checked(payload)) => BlockMap::decode(&payload)
                .map(Some)
                .map_err(|e| damaged(&key, e)),
        }
    }

    pub async fn delete_wal_map(&self, name: &WalFileName) -> Result<()> {
        self.storage.delete(&self.wal_map_key(name)).await
    }

    /// Segments that have a map (from listings only: nothing is opened).
    pub async fn wal_map_names(&self) -> Result<BTreeSet<WalFileName>> {
        let mut out = BTreeSet::new();
        for dir in self.archive_dirs().await? {
            for f in self.storage.list(&self.archive_dir_key(&dir)).await?.files {
                if let Some(name) = f.name.strip_suffix(MAP_SUFFIX) {
                    if let Ok(name) = WalFileName::parse(name) {
                        out.insert(name);
                    }
                }
            }
        }
        Ok(out)
    }

    /// Builds and stores the map of segment `name` (content `segment`, BLAKE3
    /// `checksum`); see [`Repo::make_wal_map`].
    pub async fn build_wal_map(
        &self,
        name: &WalFileName,
        segment: Vec<u8>,
        checksum: &str,
        local_dir: Option<&Path>,
    ) -> Result<BlockMap> {
        let map = self
            .make_wal_map(name, segment.into(), checksum, local_dir)
            .await?;
        self.put_wal_map(name, &map).await?;
        Ok(map)
    }

    /// The map of segment `name` (content `segment`, BLAKE3 `checksum`). `local_dir` is
    /// where the segment came from, to look for its predecessor before the archive.
    /// Never fails for bad WAL: the map says so. The segment is parsed once: the head
    /// of a straddling record is fetched first when the first page says there is one.
    pub async fn make_wal_map(
        &self,
        name: &WalFileName,
        segment: bytes::Bytes,
        checksum: &str,
        local_dir: Option<&Path>,
    ) -> Result<BlockMap> {
        let Some(seg) = name.segment() else {
            return Err(crate::error::Error::config(format!(
                "{name} is not a WAL segment: only segments have block maps"
            )));
        };
        let mut sum = [0u8; 32];
        if let Ok(h) = blake3::Hash::from_hex(checksum) {
            sum = *h.as_bytes();
        }
        let stanza = self.stanza_info().await?;
        let size = stanza.wal_segment_size;
        let identity = (
            stanza.system_identifier,
            stanza.pg_major,
            seg.timeline.0,
            seg.start_lsn(size),
        );
        let parse = |before: Option<Vec<u8>>| {
            let segment = segment.clone();
            async move {
                tokio::task::spawn_blocking(move || read_segment(&segment, before.as_deref()))
                    .await
                    // A reader panic is a parse error too (read_segment of nothing).
                    .unwrap_or_else(|_| read_segment(&[], None))
            }
        };
        // xlp_info of the first page: XLP_FIRST_IS_CONTRECORD.
        let straddles = segment.get(2..4).is_some_and(|i| i[0] & 1 != 0);
        let mut read = None;
        if straddles && seg.segno(size) > 0 {
            let previous =
                crate::pg::WalSegment::from_segno(seg.timeline, seg.segno(size) - 1, size);
            let previous_name = WalFileName::Segment(previous);
            let whole_head = |r: &std::result::Result<crate::pg::wal::SegmentRecords, _>| matches!(r, Ok(r) if r.head_missing.is_none());
            if let Some(dir) = local_dir {
                let path = dir.join(previous_name.to_string());
                for tail in [Some(LOCAL_TAIL), None] {
                    if let Some(before) = local_tail(&path, tail, size) {
                        let again = parse(Some(before)).await;
                        if whole_head(&again) {
                            read = Some(again);
                            break;
                        }
                    }
                }
            }
            if read.is_none() {
                if let Some(file) = self.find_archived(&previous_name).await?.first() {
                    match self.read_wal(file).await {
                        Ok(before) => read = Some(parse(Some(before)).await),
                        Err(e) => tracing::debug!(%name, "reading the previous segment: {e}"),
                    }
                }
            }
        }
        let read = match read {
            Some(read) => read,
            None => parse(None).await,
        };
        if let Err(e) = &read {
            tracing::debug!(%name, "block map poisoned: {e}");
        }
        let map = BlockMap::build(read, identity, sum);
        if map.poison.is_poisoned() {
            tracing::debug!(%name, reasons = ?map.poison.reasons(), "block map poisoned");
        }
        Ok(map)
    }
}

/// The last `tail` bytes (page-aligned; all when None) of a local segment file, if it
/// is there and whole.
fn local_tail(path: &Path, tail: Option<u64>, size: u64) -> Option<Vec<u8>> {
    let mut file = std::fs::File::open(path).ok()?;
    if file.metadata().ok()?.len() != size {
        return None;
    }
    let take = tail.unwrap_or(size).min(size);
    file.seek(SeekFrom::Start(size - take)).ok()?;
    let mut out = Vec::with_capacity(take as usize);
    file.take(take).read_to_end(&mut out).ok()?;
    (out.len() as u64 == take).then_some(out)
}

/// Whether a map's poison means its segment should be rebuilt once more WAL is there.
pub fn retry_worthwhile(map: &BlockMap) -> bool {
    map.poison.0 == Poison::HEAD_MISSING
}
