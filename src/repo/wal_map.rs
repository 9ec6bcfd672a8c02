//! Where block maps live and how one is made for an archived segment: `<wal name>.map`
//! beside the segment (and its claim) in its archive directory, a `Kind::BlockMap`
//! metadata object (envelope, sealed in encrypted stanzas). The codec is `blockmap.rs`.
//!
//! Building needs the head of a record straddling in from the previous segment: it is
//! taken from the tail of the predecessor the caller still holds (the async push worker
//! keeps those of what it pushed), or read from the directory the segment came from
//! (pg_wal, the push spool) when the previous segment is still there, else from the
//! archive (a GET on object storage, paid only when the segment starts inside a record).
//! The first segment of a timeline has no predecessor of its own: a promotion copies the
//! switch segment's head to the new timeline, the segment before stays the parent's, so
//! that one is looked for, as the timeline's history file names it. Without it the map is
//! poisoned (`head_missing`); `wal maps --backfill` rebuilds it once the predecessor is
//! archived.

use std::collections::BTreeSet;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use super::archive::archive_subdir;
use super::blockmap::{BlockMap, Poison};
use super::object::{damaged, Contents, Kind};
use super::stanza::StanzaInfo;
use super::Repo;
use crate::error::Result;
use crate::pg::WalFileName;

/// Suffix of a segment's block map.
pub const MAP_SUFFIX: &str = ".map";

/// How much of the predecessor is given to the reader first (its records are all
/// decoded: context costs as much as content): a record straddling in from further back
/// (over 64 KiB: rare) makes the whole predecessor be read.
pub const PREDECESSOR_TAIL: u64 = 64 << 10;

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

    /// Writes the map of segment `name` durably but invisibly, while the segment is
    /// still being stored; see [`PreparedWalMap`].
    pub async fn prepare_wal_map(
        &self,
        name: &WalFileName,
        map: &BlockMap,
    ) -> Result<PreparedWalMap> {
        use tokio::io::AsyncWriteExt;
        let key = self.wal_map_key(name);
        let bytes = self.encode_payload(&key, Kind::BlockMap, &map.encode())?;
        let mut writer = self.storage.create(&key).await?;
        writer
            .write_all(&bytes)
            .await
            .map_err(|e| crate::error::Error::io("writing", &key, e))?;
        writer.sync().await?;
        Ok(PreparedWalMap { writer })
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
            .make_wal_map(name, segment.into(), checksum, local_dir, None)
            .await?;
        self.put_wal_map(name, &map).await?;
        Ok(map)
    }

    /// The map of segment `name` (content `segment`, BLAKE3 `checksum`). `local_dir` is
    /// where the segment came from, to look for its predecessor before the archive;
    /// `known_tail`, the predecessor's last bytes when the caller holds them (the async
    /// push worker keeps those of what it pushed: it deletes the files).
    /// Never fails for bad WAL: the map says so. The segment is parsed once: the head
    /// of a straddling record is fetched first when the first page says there is one.
    pub async fn make_wal_map(
        &self,
        name: &WalFileName,
        segment: bytes::Bytes,
        checksum: &str,
        local_dir: Option<&Path>,
        known_tail: Option<bytes::Bytes>,
    ) -> Result<BlockMap> {
        let stanza = self.stanza_info().await?;
        self.make_wal_map_of(&stanza, name, segment, checksum, local_dir, known_tail)
            .await
    }

    /// [`Repo::make_wal_map`] with the stanza's identity read already (archive-push
    /// reads it once, with the unlock).
    pub async fn make_wal_map_of(
        &self,
        stanza: &StanzaInfo,
        name: &WalFileName,
        segment: bytes::Bytes,
        checksum: &str,
        local_dir: Option<&Path>,
        known_tail: Option<bytes::Bytes>,
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
                tokio::task::spawn_blocking(move || {
                    BlockMap::of_segment(&segment, before.as_deref(), identity, sum)
                })
                .await
                // A reader panic is a parse error too.
                .unwrap_or_else(|_| {
                    (
                        BlockMap::poisoned(
                            (identity.0, identity.1, identity.2),
                            identity.3,
                            sum,
                            Poison::PARSE_ERROR,
                        ),
                        false,
                    )
                })
            }
        };
        // xlp_info of the first page: XLP_FIRST_IS_CONTRECORD.
        let straddles = segment.get(2..4).is_some_and(|i| i[0] & 1 != 0);
        let mut map = None;
        if straddles && seg.segno(size) > 0 {
            // Its own timeline's segment before it, or, for the first segment of a
            // timeline (a promotion's copy of the switch segment), the parent's.
            let mut previous = Some(crate::pg::WalSegment::from_segno(
                seg.timeline,
                seg.segno(size) - 1,
                size,
            ));
            let mut known_tail = known_tail;
            while let Some(before) = previous.take() {
                let previous_name = WalFileName::Segment(before);
                if let Some(tail) = known_tail.take() {
                    let (again, whole_head) = parse(Some(tail.to_vec())).await;
                    map = whole_head.then_some(again);
                }
                if let (None, Some(dir)) = (&map, local_dir) {
                    let path = dir.join(previous_name.to_string());
                    for tail in [Some(PREDECESSOR_TAIL), None] {
                        if let Some(before) = local_tail(&path, tail, size) {
                            let (again, whole_head) = parse(Some(before)).await;
                            if whole_head {
                                map = Some(again);
                                break;
                            }
                        }
                    }
                }
                if map.is_none() {
                    if let Some(file) = self.find_archived(&previous_name).await?.first() {
                        match self.read_wal(file).await {
                            Ok(before) => {
                                let tail = before.len().saturating_sub(PREDECESSOR_TAIL as usize);
                                let (again, whole_head) =
                                    parse(Some(before[tail..].to_vec())).await;
                                map = Some(match whole_head {
                                    true => again,
                                    false => parse(Some(before)).await.0,
                                });
                            }
                            Err(e) => tracing::debug!(%name, "reading the previous segment: {e}"),
                        }
                    }
                }
                if map.is_none() && before.timeline == seg.timeline {
                    previous = self.parent_predecessor(seg, size, local_dir).await;
                }
            }
        }
        let map = match map {
            Some(map) => map,
            None => parse(None).await.0,
        };
        if map.poison.is_poisoned() {
            tracing::debug!(%name, reasons = ?map.poison.reasons(), "block map poisoned");
        }
        Ok(map)
    }
}

impl Repo {
    /// The segment before `seg` on `seg`'s history when that is on an older timeline:
    /// `seg` is then the first of its timeline, which began at or after `seg`'s start
    /// (PostgreSQL copies the switch segment's head to the new timeline, the segments
    /// before stay the parent's). Read from the timeline's history file, in `local_dir`
    /// (pg_wal keeps it) or the archive; None when it names no such parent, or cannot be
    /// read (the map is then poisoned, as before).
    async fn parent_predecessor(
        &self,
        seg: crate::pg::WalSegment,
        size: u64,
        local_dir: Option<&Path>,
    ) -> Option<crate::pg::WalSegment> {
        if seg.timeline.0 <= 1 {
            return None;
        }
        let name = WalFileName::History(seg.timeline);
        let local = local_dir.and_then(|dir| std::fs::read(dir.join(name.to_string())).ok());
        let bytes = match local {
            Some(bytes) => bytes,
            None => {
                let file = self.find_archived(&name).await.ok()?.into_iter().next()?;
                self.read_wal(&file).await.ok()?
            }
        };
        let history = crate::pg::history::parse_history(&String::from_utf8_lossy(&bytes)).ok()?;
        let last_byte = crate::pg::Lsn(seg.start_lsn(size).0.checked_sub(1)?);
        let parent = history
            .iter()
            .find(|e| last_byte < e.switch_point)
            .map(|e| e.timeline)?;
        (parent != seg.timeline)
            .then(|| crate::pg::WalSegment::from_segno(parent, seg.segno(size) - 1, size))
    }
}

/// A segment's map whose content is durable but not yet visible. Archive-push makes
/// it while the segment is being stored, so that the device's wait for the map overlaps
/// the segment's compression, and publishes it only once the segment is stored: a map is
/// never visible before its segment is durable. Publishing leaves the map's name to the
/// archive directory's next sync (the next push's), not a sync of its own: a crash may
/// lose the map of the last segments pushed, never anything else, and a segment without
/// a map is safe (incrementals fall back to a page scan; `wal maps --backfill` rebuilds
/// it). Dropped unpublished, it leaves nothing under its key.
pub struct PreparedWalMap {
    writer: Box<dyn crate::storage::ObjectWriter>,
}

impl PreparedWalMap {
    /// Makes the map visible; call only once its segment is durably archived.
    pub async fn publish(self) -> Result<()> {
        self.writer.finish_expendable().await
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::lsn::Lsn;

    /// The first segment of a timeline (a promotion copied the switch segment's head to
    /// it) takes the head of a record straddling in from the parent timeline's segment
    /// before it, as the history file names it, in the directory it came from or in the
    /// archive: its map is whole, not "previous segment missing".
    #[tokio::test]
    async fn the_first_segment_of_a_timeline_takes_its_head_from_the_parent_timeline() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/wal/pg15/seg");
        let mut names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        names.sort();
        let segments: Vec<Vec<u8>> = names
            .iter()
            .map(|p| zstd::decode_all(std::fs::File::open(p).unwrap()).unwrap())
            .collect();
        // A segment whose first page says a record straddles in, and the one before it.
        let i = (1..segments.len())
            .find(|&i| segments[i][2] & 1 != 0)
            .expect("the fixture has a record across a segment boundary");
        let size = segments[i].len() as u64; // 1 MiB segments
        let h = crate::pg::wal::page::parse_long_page_header(&segments[i]).unwrap();
        let first = crate::pg::WalSegment::from_segno(
            crate::pg::TimelineId(2),
            h.page_address.segment_number(size),
            size,
        );
        let parent = crate::pg::WalSegment::from_segno(
            crate::pg::TimelineId(1),
            first.segno(size) - 1,
            size,
        );
        let history = format!(
            "1\t{}\tno recovery target specified\n",
            Lsn(h.page_address.0 + 8192)
        );

        for parent_in_archive in [false, true] {
            let tmp = tempfile::tempdir().unwrap();
            let storage = std::sync::Arc::new(crate::storage::LocalStorage::new(tmp.path()));
            let repo = Repo::plain_for_tests(storage, "main");
            repo.write_stanza_info(&crate::repo::stanza::StanzaInfo {
                format_version: crate::repo::FORMAT_VERSION,
                stanza: "main".into(),
                system_identifier: h.system_identifier,
                pg_major: 15,
                data_checksums: true,
                wal_segment_size: size,
                created: chrono::Utc::now(),
            })
            .await
            .unwrap();
            let pg_wal = tmp.path().join("pg_wal");
            std::fs::create_dir_all(&pg_wal).unwrap();
            let history_name = WalFileName::History(crate::pg::TimelineId(2));
            let parent_name = WalFileName::Segment(parent);
            if parent_in_archive {
                let none = crate::pipeline::compress::Compression::new(
                    crate::pipeline::compress::Codec::None,
                    None,
                )
                .unwrap();
                for (name, bytes) in [
                    (&parent_name, segments[i - 1].clone()),
                    (&history_name, history.clone().into_bytes()),
                ] {
                    let sum = blake3::hash(&bytes).to_hex().to_string();
                    repo.put_wal_bytes(name, bytes.into(), &sum, none)
                        .await
                        .unwrap();
                }
            } else {
                std::fs::write(pg_wal.join(parent_name.to_string()), &segments[i - 1]).unwrap();
                std::fs::write(pg_wal.join(history_name.to_string()), &history).unwrap();
            }
            let name = WalFileName::Segment(first);
            let map = repo
                .make_wal_map(&name, segments[i].clone().into(), "00", Some(&pg_wal), None)
                .await
                .unwrap();
            assert!(
                !map.poison.is_poisoned(),
                "parent in archive: {parent_in_archive}: {:?}",
                map.poison.reasons()
            );
            // Without the history file the parent is unknown: poisoned, as before.
            if !parent_in_archive {
                std::fs::remove_file(pg_wal.join(history_name.to_string())).unwrap();
                let map = repo
                    .make_wal_map(&name, segments[i].clone().into(), "00", Some(&pg_wal), None)
                    .await
                    .unwrap();
                assert_eq!(map.poison.0, Poison::HEAD_MISSING);
            }
        }
    }

    /// Archive-push writes a segment's map while the segment is stored: nobody sees it
    /// before it is published (after the segment), and a push that ends without
    /// publishing it (a conflict, an error) leaves nothing behind.
    #[tokio::test]
    async fn a_prepared_map_is_invisible_until_published() {
        let tmp = tempfile::tempdir().unwrap();
        let storage = std::sync::Arc::new(crate::storage::LocalStorage::new(tmp.path()));
        let repo = Repo::plain_for_tests(storage, "main");
        let name = WalFileName::parse("000000010000000000000003").unwrap();
        let map = BlockMap::poisoned((1, 15, 1), Lsn(3 << 24), [7; 32], Poison::HEAD_MISSING);

        let dropped = repo.prepare_wal_map(&name, &map).await.unwrap();
        drop(dropped);
        let prepared = repo.prepare_wal_map(&name, &map).await.unwrap();
        assert_eq!(repo.read_wal_map(&name).await.unwrap(), None);
        assert!(repo.wal_map_names().await.unwrap().is_empty());
        prepared.publish().await.unwrap();
        assert_eq!(repo.read_wal_map(&name).await.unwrap(), Some(map));
        let dir = tmp.path().join(repo.wal_map_key(&name));
        let leftovers: Vec<_> = std::fs::read_dir(dir.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| {
                n.to_string_lossy()
                    .ends_with(crate::storage::local::TEMP_SUFFIX)
            })
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }
}
