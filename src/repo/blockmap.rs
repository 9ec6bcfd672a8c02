//! Block maps: per archived segment, which relation blocks its records change (issue 12).
//!
//! A map covers exactly the records that *end* in its segment, `[start, end)` (`end` is
//! where the record after the last one starts, so consecutive maps chain). It is built
//! from `pg::wal::read_segment` by [`BlockMap::build`], stored as a metadata object
//! (`Kind::BlockMap`, binary payload, layout below and in docs/repository-format.md),
//! and merged over an LSN range by [`BlockMap::then`] for incrementals built from WAL.
//!
//! A map that cannot be trusted says so: its `poison` flags are set and its file list is
//! empty; a reader then falls back to a page scan for the range it covers.
//!
//! Payload, version 1 (integers little-endian; `varint` is unsigned LEB128, at most 5
//! bytes, value < 2^32):
//!
//! ```text
//! offset size
//!  0      4   magic "PGBM"
//!  4      1   version, 1
//!  5      1   poison flags (Poison bits; 0 = trustworthy)
//!  6      2   reserved, 0
//!  8      8   system identifier
//! 16      4   PostgreSQL major version (from the WAL page magic)
//! 20      4   timeline
//! 24      8   start LSN: where the first record ending in the segment starts
//! 32      8   end LSN: where the record after the last one starts
//! 40     32   BLAKE3 of the segment the map was built from
//! 72          varint file count, then per file, sorted by (spc, db, rel, fork):
//!               varint spc, varint db, varint rel, u8 fork (0 main, 2 vm, 3 init),
//!               u8 file flags (1 = has limit, 2 = whole file), [varint limit],
//!               varint run count, runs: varint gap, varint length - 1
//!               (gap: from the end of the previous run, the first from block 0)
//! ```
//!
//! `rel` 0 marks a whole database directory `(spc, db)` (created or dropped).

use std::collections::BTreeMap;

use crate::pg::lsn::Lsn;
use crate::pg::wal::{
    read_segment_each, Fork, RelFileLocator, SegmentRecords, Special, WalError, WalErrorKind,
    WalLevel, WalRecord,
};

pub const MAGIC: &[u8; 4] = b"PGBM";
pub const VERSION: u8 = 1;
const HEADER_LEN: usize = 72;
/// Most blocks one map may list: a block reference takes at least 8 bytes of WAL, so
/// a 16 MiB segment names fewer; a map of a larger segment naming more is poisoned.
pub const MAX_BLOCKS: usize = 1 << 21;

/// Why a map cannot be trusted (bits of the poison byte).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Poison(pub u8);

impl Poison {
    /// A record straddles in from a previous segment that was not available.
    pub const HEAD_MISSING: u8 = 1;
    /// The segment did not parse (bad CRC, invalid record, ...).
    pub const PARSE_ERROR: u8 = 2;
    /// wal_level was minimal: relations may change without WAL.
    pub const MINIMAL_WAL: u8 = 4;
    /// A record changes files in a way the reader does not know.
    pub const UNKNOWN_REL_UPDATE: u8 = 8;
    /// The WAL page magic is not one this build knows.
    pub const UNKNOWN_MAGIC: u8 = 16;
    /// The segment ends early (zeroed pages, record never finished).
    pub const INCOMPLETE: u8 = 32;

    pub fn is_poisoned(self) -> bool {
        self.0 != 0
    }

    /// The reasons, for messages.
    pub fn reasons(self) -> Vec<&'static str> {
        [
            (Self::HEAD_MISSING, "previous segment missing"),
            (Self::PARSE_ERROR, "parse error"),
            (Self::MINIMAL_WAL, "wal_level=minimal"),
            (Self::UNKNOWN_REL_UPDATE, "unknown relation-changing record"),
            (Self::UNKNOWN_MAGIC, "unknown WAL magic"),
            (Self::INCOMPLETE, "segment incomplete"),
        ]
        .into_iter()
        .filter(|(bit, _)| self.0 & bit != 0)
        .map(|(_, why)| why)
        .collect()
    }
}

/// A relation fork file `(spc, db, rel, fork)`; `rel` 0 is a whole database directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RelFork {
    pub spc: u32,
    pub db: u32,
    pub rel: u32,
    pub fork: u8,
}

impl RelFork {
    fn of(rel: RelFileLocator, fork: Fork) -> RelFork {
        RelFork {
            spc: rel.spc,
            db: rel.db,
            rel: rel.rel,
            fork: fork as u8,
        }
    }

    fn database(spc: u32, db: u32) -> RelFork {
        RelFork {
            spc,
            db,
            rel: 0,
            fork: 0,
        }
    }
}

/// What happened to one file in a map's range.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FileChanges {
    /// Truncated (or dropped, 0) to this many blocks at some point; blocks at or past
    /// the smallest limit must be read whole from the file.
    pub limit: Option<u32>,
    /// Created (or copied, or a database directory created/dropped): copy it whole.
    pub whole: bool,
    /// Blocks changed after the last truncation below them: sorted, distinct.
    pub blocks: Vec<u32>,
}

impl FileChanges {
    /// Applies `later` (the changes of a following range) on top of these: the
    /// merge is associative, so maps can be rolled up in any grouping.
    pub fn then(&mut self, later: &FileChanges) {
        if let Some(limit) = later.limit {
            self.blocks.retain(|&b| b < limit);
            self.limit = Some(self.limit.map_or(limit, |l| l.min(limit)));
        }
        self.whole |= later.whole;
        self.blocks.extend_from_slice(&later.blocks);
        self.blocks.sort_unstable();
        self.blocks.dedup();
    }

    fn truncate(&mut self, limit: u32) {
        self.then(&FileChanges {
            limit: Some(limit),
            ..FileChanges::default()
        });
    }
}

/// One segment's map, or (after [`BlockMap::then`]) a range of them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockMap {
    pub system_identifier: u64,
    pub pg_major: u32,
    pub timeline: u32,
    pub start: Lsn,
    pub end: Lsn,
    pub segment_checksum: [u8; 32],
    pub poison: Poison,
    pub files: BTreeMap<RelFork, FileChanges>,
}

/// Folds a segment's records into a map, one at a time, in WAL order.
#[derive(Default)]
struct MapBuilder {
    files: BTreeMap<RelFork, FileChanges>,
    poison: u8,
    /// Start of the first record and where the record after the last one starts.
    first: Option<Lsn>,
    next: Option<Lsn>,
}

impl MapBuilder {
    fn record(&mut self, record: &WalRecord) {
        self.first.get_or_insert(record.lsn);
        self.next = Some(record.next);
        let files = &mut self.files;
        for b in &record.blocks {
            // The FSM is not WAL-logged reliably; backups copy it whole.
            if b.fork != Fork::FreeSpaceMap {
                files
                    .entry(RelFork::of(b.rel, b.fork))
                    .or_default()
                    .blocks
                    .push(b.block);
            }
        }
        match &record.special {
            None | Some(Special::Switch) | Some(Special::OverwriteContrecord { .. }) => {}
            Some(Special::SmgrCreate { rel, fork }) => {
                if *fork != Fork::FreeSpaceMap {
                    files.entry(RelFork::of(*rel, *fork)).or_default().whole = true;
                }
            }
            Some(Special::SmgrTruncate { rel, blocks, forks }) => {
                if forks.main {
                    files
                        .entry(RelFork::of(*rel, Fork::Main))
                        .or_default()
                        .truncate(*blocks);
                }
                if forks.visibility_map {
                    // Its new length is in map pages, not heap blocks: copy it whole.
                    files
                        .entry(RelFork::of(*rel, Fork::VisibilityMap))
                        .or_default()
                        .whole = true;
                }
            }
            Some(Special::DatabaseCreate { db, spc, .. }) => {
                files.entry(RelFork::database(*spc, *db)).or_default().whole = true;
            }
            Some(Special::DatabaseDrop { db, tablespaces }) => {
                for spc in tablespaces {
                    let f = files.entry(RelFork::database(*spc, *db)).or_default();
                    f.truncate(0);
                    f.whole = true;
                }
            }
            Some(Special::TransactionEnd { dropped, .. }) => {
                for rel in dropped {
                    for fork in [Fork::Main, Fork::VisibilityMap, Fork::Init] {
                        files
                            .entry(RelFork::of(*rel, fork))
                            .or_default()
                            .truncate(0);
                    }
                }
            }
            Some(Special::WalLevel { level, .. }) => {
                if matches!(level, WalLevel::Minimal | WalLevel::Unknown(_)) {
                    self.poison |= Poison::MINIMAL_WAL;
                }
            }
            Some(Special::UnknownRelUpdate) => self.poison |= Poison::UNKNOWN_REL_UPDATE,
        }
    }

    /// The map, given how reading ended (its records were fed to `record`).
    fn finish(
        self,
        read: Result<SegmentRecords, WalError>,
        identity: (u64, u32, u32, Lsn),
        checksum: [u8; 32],
    ) -> BlockMap {
        let (sysid, major, tli, seg_start) = identity;
        let read = match read {
            Ok(read) => read,
            Err(WalError {
                kind: WalErrorKind::UnknownMagic(_),
                ..
            }) => {
                return BlockMap::poisoned(
                    (sysid, major, tli),
                    seg_start,
                    checksum,
                    Poison::UNKNOWN_MAGIC,
                )
            }
            Err(_) => {
                return BlockMap::poisoned(
                    (sysid, major, tli),
                    seg_start,
                    checksum,
                    Poison::PARSE_ERROR,
                )
            }
        };
        let header = (read.system_identifier, read.pg_major, read.timeline);
        let MapBuilder {
            mut files,
            mut poison,
            first,
            next,
        } = self;
        if read.head_missing.is_some() {
            poison |= Poison::HEAD_MISSING;
        }
        if read.end_of_wal.is_some() {
            poison |= Poison::INCOMPLETE;
        }
        let (start, end) = match (first, next) {
            // Only page headers precede a first record that starts in the segment.
            (Some(first), Some(next)) => (first.min(read.start), next),
            _ => (read.start, read.start),
        };
        // A record abandoned by an overwrite-contrecord here started in an earlier
        // segment and changed nothing: the map covers its bytes too, so maps still chain.
        let start = read.aborted.iter().map(|a| a.0).fold(start, Lsn::min);
        for changes in files.values_mut() {
            changes.blocks.sort_unstable();
            changes.blocks.dedup();
        }
        if files.values().map(|c| c.blocks.len()).sum::<usize>() > MAX_BLOCKS {
            poison |= Poison::PARSE_ERROR;
        }
        if poison != 0 {
            return BlockMap::poisoned(header, read.start, checksum, poison);
        }
        BlockMap {
            system_identifier: header.0,
            pg_major: header.1,
            timeline: header.2,
            start,
            end,
            segment_checksum: checksum,
            poison: Poison(0),
            files,
        }
    }
}

/// Why bytes are not a block map.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum MapError {
    #[error("truncated")]
    Truncated,
    #[error("not a block map (bad magic)")]
    Magic,
    #[error("version {0} is newer than this pgward reads")]
    Version(u8),
    #[error("reserved bytes are not zero")]
    Reserved,
    #[error("start {0} is after end {1}")]
    Range(Lsn, Lsn),
    #[error("invalid number encoding")]
    Varint,
    #[error("invalid fork number {0}")]
    Fork(u8),
    #[error("invalid file flags {0:#04x}")]
    Flags(u8),
    #[error("files are not sorted and distinct")]
    Order,
    #[error("block runs overflow")]
    Runs,
    #[error("a poisoned map lists files")]
    PoisonedWithFiles,
    #[error("{0} trailing bytes")]
    Trailing(usize),
}

/// Why two maps cannot be merged.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum MergeError {
    #[error("the maps are of different clusters or timelines")]
    Identity,
    #[error("gap or overlap: one ends at {0}, the next starts at {1}")]
    NotContiguous(Lsn, Lsn),
}

impl BlockMap {
    /// A map of nothing that says why it cannot be trusted.
    pub fn poisoned(
        header: (u64, u32, u32),
        segment_start: Lsn,
        checksum: [u8; 32],
        poison: u8,
    ) -> BlockMap {
        BlockMap {
            system_identifier: header.0,
            pg_major: header.1,
            timeline: header.2,
            start: segment_start,
            end: segment_start,
            segment_checksum: checksum,
            poison: Poison(poison),
            files: BTreeMap::new(),
        }
    }

    /// The map of a read segment, or of the reader's failure on it. `identity` is
    /// (system identifier, major, timeline, segment start) from the segment's header,
    /// used when reading failed.
    pub fn build(
        read: Result<SegmentRecords, WalError>,
        identity: (u64, u32, u32, Lsn),
        checksum: [u8; 32],
    ) -> BlockMap {
        let mut builder = MapBuilder::default();
        if let Ok(read) = &read {
            read.records.iter().for_each(|r| builder.record(r));
        }
        builder.finish(read, identity, checksum)
    }

    /// The map of `segment` (`before`: as `pg::wal::read_segment` takes it), built as
    /// its records are read, none kept; and whether the head of a record straddling in
    /// was among the bytes given (with a parse error, no).
    pub fn of_segment(
        segment: &[u8],
        before: Option<&[u8]>,
        identity: (u64, u32, u32, Lsn),
        checksum: [u8; 32],
    ) -> (BlockMap, bool) {
        Self::of_segment_read(segment, before, identity, checksum, |_| {})
    }

    /// [`BlockMap::of_segment`] letting `adjust` amend what the reader found before the
    /// map is finished (a segment read only up to a position: the end of WAL there is
    /// where reading stopped, not damage).
    pub fn of_segment_read(
        segment: &[u8],
        before: Option<&[u8]>,
        identity: (u64, u32, u32, Lsn),
        checksum: [u8; 32],
        adjust: impl FnOnce(&mut SegmentRecords),
    ) -> (BlockMap, bool) {
        let mut builder = MapBuilder::default();
        let mut read = read_segment_each(segment, before, |r| builder.record(&r));
        if let Ok(r) = &mut read {
            adjust(r);
        }
        let whole_head = matches!(&read, Ok(r) if r.head_missing.is_none());
        (builder.finish(read, identity, checksum), whole_head)
    }

    /// Merges the map of the range right after this one into it (ascending LSN order).
    pub fn then(&mut self, later: &BlockMap) -> Result<(), MergeError> {
        if (self.system_identifier, self.pg_major, self.timeline)
            != (later.system_identifier, later.pg_major, later.timeline)
        {
            return Err(MergeError::Identity);
        }
        if self.end != later.start && !self.poison.is_poisoned() && !later.poison.is_poisoned() {
            return Err(MergeError::NotContiguous(self.end, later.start));
        }
        self.poison.0 |= later.poison.0;
        self.end = later.end.max(self.end);
        self.segment_checksum = later.segment_checksum;
        if self.poison.is_poisoned() {
            self.files.clear();
            return Ok(());
        }
        for (file, changes) in &later.files {
            match self.files.get_mut(file) {
                Some(mine) => mine.then(changes),
                None => {
                    self.files.insert(*file, changes.clone());
                }
            }
        }
        Ok(())
    }

    /// The payload stored in the map's envelope.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + 16 * self.files.len());
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        out.push(self.poison.0);
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&self.system_identifier.to_le_bytes());
        out.extend_from_slice(&self.pg_major.to_le_bytes());
        out.extend_from_slice(&self.timeline.to_le_bytes());
        out.extend_from_slice(&self.start.0.to_le_bytes());
        out.extend_from_slice(&self.end.0.to_le_bytes());
        out.extend_from_slice(&self.segment_checksum);
        let files: &[(&RelFork, &FileChanges)] = &if self.poison.is_poisoned() {
            Vec::new()
        } else {
            self.files.iter().collect()
        };
        put_varint(&mut out, files.len() as u32);
        for (f, c) in files {
            put_varint(&mut out, f.spc);
            put_varint(&mut out, f.db);
            put_varint(&mut out, f.rel);
            out.push(f.fork);
            out.push(u8::from(c.limit.is_some()) | (u8::from(c.whole) << 1));
            if let Some(limit) = c.limit {
                put_varint(&mut out, limit);
            }
            let runs = runs(&c.blocks);
            put_varint(&mut out, runs.len() as u32);
            let mut next = 0u64;
            for (first, len) in runs {
                put_varint(&mut out, (first - next) as u32);
                put_varint(&mut out, (len - 1) as u32);
                next = first + len;
            }
        }
        out
    }

    /// Parses a payload; every length and value is checked before it is used.
    pub fn decode(b: &[u8]) -> Result<BlockMap, MapError> {
        if b.len() < HEADER_LEN {
            return Err(if b.starts_with(MAGIC) || b.len() < 4 {
                MapError::Truncated
            } else {
                MapError::Magic
            });
        }
        if &b[..4] != MAGIC {
            return Err(MapError::Magic);
        }
        if b[4] != VERSION {
            return Err(MapError::Version(b[4]));
        }
        if b[6..8] != [0, 0] || b[5] & !63 != 0 {
            return Err(MapError::Reserved);
        }
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"));
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"));
        let (start, end) = (Lsn(u64_at(24)), Lsn(u64_at(32)));
        if start > end {
            return Err(MapError::Range(start, end));
        }
        let mut map = BlockMap {
            system_identifier: u64_at(8),
            pg_major: u32_at(16),
            timeline: u32_at(20),
            start,
            end,
            segment_checksum: b[40..72].try_into().expect("32 bytes"),
            poison: Poison(b[5]),
            files: BTreeMap::new(),
        };
        let mut r = Cursor { b, at: HEADER_LEN };
        let count = r.varint()?;
        if map.poison.is_poisoned() && count != 0 {
            return Err(MapError::PoisonedWithFiles);
        }
        let mut previous: Option<RelFork> = None;
        let mut total = 0usize;
        for _ in 0..count {
            let file = RelFork {
                spc: r.varint()?,
                db: r.varint()?,
                rel: r.varint()?,
                fork: r.byte()?,
            };
            if !matches!(file.fork, 0 | 2 | 3) {
                return Err(MapError::Fork(file.fork));
            }
            if previous.is_some_and(|p| p >= file) {
                return Err(MapError::Order);
            }
            previous = Some(file);
            let flags = r.byte()?;
            if flags & !3 != 0 {
                return Err(MapError::Flags(flags));
            }
            let mut changes = FileChanges {
                limit: None,
                whole: flags & 2 != 0,
                blocks: Vec::new(),
            };
            if flags & 1 != 0 {
                changes.limit = Some(r.varint()?);
            }
            let runs = r.varint()?;
            let mut next = 0u64;
            for _ in 0..runs {
                let first = next + u64::from(r.varint()?);
                let len = u64::from(r.varint()?) + 1;
                let past = first + len;
                if past > 1 << 32 {
                    return Err(MapError::Runs);
                }
                // Damage must not make the reader allocate billions of entries.
                total += len as usize;
                if total > MAX_BLOCKS {
                    return Err(MapError::Runs);
                }
                changes.blocks.extend((first..past).map(|b| b as u32));
                next = past;
            }
            map.files.insert(file, changes);
        }
        if r.at != b.len() {
            return Err(MapError::Trailing(b.len() - r.at));
        }
        Ok(map)
    }
}

/// Sorted blocks as (first, length) runs.
fn runs(blocks: &[u32]) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for &b in blocks {
        let b = u64::from(b);
        match out.last_mut() {
            Some((first, len)) if *first + *len == b => *len += 1,
            _ => out.push((b, 1)),
        }
    }
    out
}

fn put_varint(out: &mut Vec<u8>, mut v: u32) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

struct Cursor<'a> {
    b: &'a [u8],
    at: usize,
}

impl Cursor<'_> {
    fn byte(&mut self) -> Result<u8, MapError> {
        let v = *self.b.get(self.at).ok_or(MapError::Truncated)?;
        self.at += 1;
        Ok(v)
    }

    fn varint(&mut self) -> Result<u32, MapError> {
        let mut v: u64 = 0;
        for i in 0..5 {
            let byte = self.byte()?;
            v |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                return u32::try_from(v).map_err(|_| MapError::Varint);
            }
        }
        Err(MapError::Varint)
    }
}

#[cfg(test)]
pub(crate) mod tests;
