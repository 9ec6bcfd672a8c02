//! Which blocks an incremental reads, from the block maps of the WAL between its
//! reference's start and its own (issue 12): the plan step of a map-based incremental.
//!
//! The range `[R.start, N.start)` is followed along the current timeline's history:
//! each timeline contributes `[begin, switch)` (exclusive at the switch points, the
//! rule PostgreSQL 17 learned in f549ecd2660), from the maps of its segments in LSN
//! order. Within a timeline `BlockMap::then` proves each step contiguous; across a
//! switch, the next timeline's first map must start no later than where the previous
//! one ended. Covering more WAL than the range is safe (more blocks read), less is not.
//!
//! The segment holding the new start LSN is not archived yet when copying starts (and
//! archiving may lag): such segments are read from the cluster's own `pg_wal`, up to
//! the start LSN, with the same reader. Bytes at or past the start LSN are zeroed
//! first: the server may be writing them while we read, and they are not needed.
//!
//! Anything not proven (a missing or poisoned map, a timeline history that cannot be
//! read, a recycled pg_wal file) makes the plan [`MapPlan::Unusable`] with the reason:
//! every relation file is then copied by today's page-LSN scan.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use futures::StreamExt;

use super::copy::MapUse;
use crate::pg::datadir::relation_file;
use crate::pg::history::{parse_history, HistoryEntry};
use crate::pg::page::BLCKSZ;
use crate::pg::wal::{Fork, XLOG_BLCKSZ};
use crate::pg::{Lsn, TimelineId, WalFileName, WalSegment};
use crate::repo::blockmap::{BlockMap, FileChanges, RelFork};
use crate::repo::manifest::{FileEntry, Manifest};
use crate::repo::wal_map::{retry_worthwhile, PREDECESSOR_TAIL};
use crate::repo::Repo;

/// `--block-map-check`: how many unmapped blocks of each file read from the maps are
/// read anyway to check that their page LSN is older than the range.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum BlockMapCheck {
    Off,
    /// A fraction in (0, 1] of each file's unmapped blocks, at least one.
    Fraction(f64),
    All,
}

impl Default for BlockMapCheck {
    fn default() -> Self {
        BlockMapCheck::Fraction(0.01)
    }
}

impl std::str::FromStr for BlockMapCheck {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "off" => Ok(BlockMapCheck::Off),
            "all" => Ok(BlockMapCheck::All),
            n => match n.parse::<f64>() {
                Ok(f) if f > 0.0 && f <= 1.0 => Ok(BlockMapCheck::Fraction(f)),
                Ok(0.0) => Ok(BlockMapCheck::Off),
                _ => Err(format!(
                    "must be off, all or a fraction in (0, 1], found {s:?}"
                )),
            },
        }
    }
}

impl std::fmt::Display for BlockMapCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BlockMapCheck::Off => f.write_str("off"),
            BlockMapCheck::All => f.write_str("all"),
            BlockMapCheck::Fraction(x) => write!(f, "{x}"),
        }
    }
}

impl BlockMapCheck {
    /// How many of `unmapped` blocks to check: the fraction of them, its fractional part
    /// decided by `coin` (a random u64), so that over many files the expected share read
    /// is the fraction itself. Rounding up instead read one block of every small file
    /// whose mtime moved: hundreds of catalog files, many times the fraction.
    pub fn sample_size(self, unmapped: u64, coin: u64) -> u64 {
        match self {
            BlockMapCheck::Off => 0,
            BlockMapCheck::All => unmapped,
            BlockMapCheck::Fraction(f) => {
                let expected = unmapped as f64 * f;
                let whole = expected.floor();
                let heads = (coin as f64 / u64::MAX as f64) < expected - whole;
                (whole as u64 + u64::from(heads)).min(unmapped)
            }
        }
    }
}

/// What the maps of the range say, merged; or why they cannot be used.
#[derive(Debug)]
pub enum MapPlan {
    Mapped(Changes),
    /// Every relation file falls back to the page-LSN scan, for this reason.
    Unusable(String),
}

/// The merged changes of the range.
#[derive(Debug, Default)]
pub struct Changes {
    pub files: BTreeMap<RelFork, FileChanges>,
    /// Database directories `(spc, db)` created, copied, moved or dropped in the range.
    pub databases: BTreeSet<(u32, u32)>,
}

/// How one relation file is copied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FilePlan {
    /// Read these blocks (file-local numbers, sorted) and every block from `rest_from`
    /// on; the rest is the reference's.
    Blocks { blocks: Vec<u32>, rest_from: u64 },
    /// Created, copied or recreated in the range (or a fork the maps do not follow):
    /// read whole.
    Whole,
    /// The page-LSN scan, for this reason.
    Scan(String),
}

impl FilePlan {
    /// How `path` (listed at `size` bytes, `old` in the reference) is copied; None for
    /// files that are not relation files (they keep their own handling).
    pub fn of(plan: &MapPlan, path: &str, size: u64, old: &FileEntry) -> Option<FilePlan> {
        let rel = relation_file(path)?;
        let changes = match plan {
            MapPlan::Unusable(why) => return Some(FilePlan::Scan(why.clone())),
            MapPlan::Mapped(c) => c,
        };
        let loc = rel.locator();
        let fork = rel.wal_fork();
        if fork != Fork::Main || changes.databases.contains(&(loc.spc, loc.db)) {
            return Some(FilePlan::Whole);
        }
        let key = RelFork {
            spc: loc.spc,
            db: loc.db,
            rel: loc.rel,
            fork: fork as u8,
        };
        let old_blocks = old.size / BLCKSZ as u64;
        let range = rel.blocks();
        let Some(entry) = changes.files.get(&key) else {
            // Only a truncation shrinks a file, and truncations are in the WAL.
            if size < old.size {
                return Some(FilePlan::Scan(
                    "file shrank without a truncation in the WAL".into(),
                ));
            }
            // Blocks past the reference's end may be unlogged zero extension.
            return Some(FilePlan::Blocks {
                blocks: Vec::new(),
                rest_from: old_blocks,
            });
        };
        if entry.whole {
            return Some(FilePlan::Whole);
        }
        let limit = entry
            .limit
            .map_or(u64::MAX, |l| u64::from(l).saturating_sub(range.start));
        let rest_from = limit.min(old_blocks);
        let from = entry
            .blocks
            .partition_point(|&b| u64::from(b) < range.start);
        let to = entry.blocks.partition_point(|&b| u64::from(b) < range.end);
        let blocks = entry.blocks[from..to]
            .iter()
            .map(|&b| (u64::from(b) - range.start) as u32)
            .filter(|&b| u64::from(b) < rest_from)
            .collect();
        Some(FilePlan::Blocks { blocks, rest_from })
    }
}

/// One timeline's part of the range: `[from, to)` on `timeline`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Step {
    pub timeline: TimelineId,
    pub from: Lsn,
    pub to: Lsn,
}

/// The timelines from the reference's `(timeline, start)` to the new backup's, following
/// `history` (the new timeline's history file, oldest first; empty on one timeline).
pub fn steps(
    reference: (TimelineId, Lsn),
    reference_stop: Lsn,
    current: (TimelineId, Lsn),
    history: &[HistoryEntry],
) -> Result<Vec<Step>, String> {
    let (mut timeline, mut from) = reference;
    if timeline == current.0 {
        return Ok(vec![Step {
            timeline,
            from,
            to: current.1,
        }]);
    }
    let Some(i) = history.iter().position(|e| e.timeline == timeline) else {
        return Err(format!(
            "timeline {timeline} of the reference is not an ancestor of timeline {}",
            current.0
        ));
    };
    if reference_stop > history[i].switch_point {
        return Err(format!(
            "the reference ends at {reference_stop}, after timeline {timeline} was left at {}",
            history[i].switch_point
        ));
    }
    let mut out = Vec::new();
    for (j, entry) in history[i..].iter().enumerate() {
        out.push(Step {
            timeline,
            from,
            to: entry.switch_point,
        });
        timeline = history.get(i + j + 1).map_or(current.0, |e| e.timeline);
        from = entry.switch_point;
    }
    out.push(Step {
        timeline,
        from,
        to: current.1,
    });
    Ok(out)
}

/// The segments whose maps cover the steps: on each timeline, from the segment holding
/// its start to the one before its switch segment (the child timeline's copy of the
/// switch segment covers the rest), and on the last, to the segment holding its end.
pub fn segments(steps: &[Step], seg_size: u64) -> Vec<WalSegment> {
    let mut out = Vec::new();
    for (i, s) in steps.iter().enumerate() {
        let first = s.from.segment_number(seg_size);
        let last = if i + 1 == steps.len() {
            s.to.segment_number(seg_size)
        } else {
            match s.to.segment_number(seg_size).checked_sub(1) {
                Some(l) => l,
                None => continue,
            }
        };
        out.extend((first..=last).map(|n| WalSegment::from_segno(s.timeline, n, seg_size)));
    }
    out
}

/// Whether a map ending at `end` covers WAL up to `target`: records never start inside a
/// page header, so an end at a page boundary reaches a target inside that header.
fn reaches(end: Lsn, target: Lsn) -> bool {
    end >= target || (end.0.is_multiple_of(XLOG_BLCKSZ as u64) && target.0 - end.0 <= 40)
}

/// Merges the maps (in LSN order, consecutive per timeline) and proves they cover
/// `[from, to)`.
pub fn combine(maps: &[BlockMap], from: Lsn, to: Lsn) -> Result<Changes, String> {
    let mut merge = Merge::default();
    for m in maps {
        merge.push(m.clone())?;
    }
    merge.finish(from, to)
}

/// Maps merged one at a time, in LSN order: memory holds the merge, not the maps.
#[derive(Default)]
pub struct Merge {
    /// Where the first map starts.
    start: Option<Lsn>,
    /// The current timeline's maps, merged.
    current: Option<BlockMap>,
    /// The changes of the timelines before it.
    before: Changes,
}

impl Merge {
    pub fn push(&mut self, m: BlockMap) -> Result<(), String> {
        if m.poison.is_poisoned() {
            return Err(format!(
                "the block map of WAL from {} on timeline {} is poisoned ({})",
                m.start,
                m.timeline,
                m.poison.reasons().join(", ")
            ));
        }
        match &mut self.current {
            Some(cur) if cur.timeline == m.timeline => {
                cur.then(&m).map_err(|e| format!("block maps: {e}"))?
            }
            Some(cur) if !reaches(cur.end, m.start) || cur.timeline > m.timeline => {
                return Err(format!(
                    "block maps do not join at the switch to timeline {}: {} ends at {}, the next starts at {}",
                    m.timeline, cur.timeline, cur.end, m.start
                ))
            }
            Some(_) => {
                let done = self.current.replace(m).expect("matched Some");
                self.before.add(done);
            }
            None => {
                self.start = Some(m.start);
                self.current = Some(m);
            }
        }
        Ok(())
    }

    pub fn finish(mut self, from: Lsn, to: Lsn) -> Result<Changes, String> {
        let (Some(start), Some(last)) = (self.start, self.current.take()) else {
            return Err("no block maps for the range".into());
        };
        if start > from || !reaches(last.end, to) {
            return Err(format!(
                "block maps cover {start} .. {}, not the range {from} .. {to}",
                last.end
            ));
        }
        self.before.add(last);
        Ok(self.before)
    }
}

impl Changes {
    /// Applies a later timeline's merged map.
    fn add(&mut self, m: BlockMap) {
        for (file, changes) in m.files {
            if file.rel == 0 {
                self.databases.insert((file.spc, file.db));
                continue;
            }
            match self.files.get_mut(&file) {
                Some(mine) => mine.then(&changes),
                None => {
                    self.files.insert(file, changes);
                }
            }
        }
    }
}

/// What the copy needs of the maps for an incremental on `reference` starting at
/// `start` on `timeline`.
pub async fn map_use<F: Sync>(
    repo: &Repo,
    reference: &Manifest<F>,
    timeline: TimelineId,
    start: Lsn,
    pgdata: &Path,
    check: BlockMapCheck,
) -> MapUse {
    let plan = match block_size(pgdata) {
        Err(why) => MapPlan::Unusable(why),
        Ok(_) => {
            plan(
                repo,
                reference,
                timeline,
                start,
                pgdata,
                reference.wal_segment_size,
            )
            .await
        }
    };
    MapUse {
        plan,
        check,
        range_end: start,
    }
}

/// The cluster's block size, when it is the one the maps' block numbers assume.
fn block_size(pgdata: &Path) -> Result<u32, String> {
    let path = pgdata.join(crate::pg::datadir::CONTROL_FILE);
    let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let control = crate::pg::control::parse_control_file(&bytes)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if control.block_size as usize != BLCKSZ {
        return Err(format!(
            "the cluster's block size is {}, block maps assume {BLCKSZ}",
            control.block_size
        ));
    }
    Ok(control.block_size)
}

/// The plan of an incremental on `reference`, starting at `start` on `timeline`.
/// Never fails: what cannot be proven is a reason to scan.
pub async fn plan<F: Sync>(
    repo: &Repo,
    reference: &Manifest<F>,
    timeline: TimelineId,
    start: Lsn,
    pgdata: &Path,
    seg_size: u64,
) -> MapPlan {
    match try_plan(repo, reference, timeline, start, pgdata, seg_size).await {
        Ok(changes) => MapPlan::Mapped(changes),
        Err(why) => {
            tracing::info!("block maps not used, relation files are scanned: {why}");
            MapPlan::Unusable(why)
        }
    }
}

async fn try_plan<F: Sync>(
    repo: &Repo,
    reference: &Manifest<F>,
    timeline: TimelineId,
    start: Lsn,
    pgdata: &Path,
    seg_size: u64,
) -> Result<Changes, String> {
    if reference.stop_lsn > start {
        return Err(format!(
            "the reference ends at {}, after this backup's start {start}",
            reference.stop_lsn
        ));
    }
    let history = if reference.timeline == timeline {
        Vec::new()
    } else {
        let name = WalFileName::History(timeline);
        let file = repo
            .find_archived(&name)
            .await
            .map_err(|e| format!("looking for {name}: {e}"))?
            .into_iter()
            .next()
            .ok_or_else(|| format!("{name} is not archived"))?;
        let bytes = repo
            .read_wal(&file)
            .await
            .map_err(|e| format!("reading {name}: {e}"))?;
        parse_history(&String::from_utf8_lossy(&bytes)).map_err(|e| format!("{name}: {e}"))?
    };
    let steps = steps(
        (reference.timeline, reference.start_lsn),
        reference.stop_lsn,
        (timeline, start),
        &history,
    )?;
    let segments = segments(&steps, seg_size);
    // A few reads in flight (object storage), taken in order.
    let mut stored_maps = futures::stream::iter(segments.iter().map(|seg| {
        let name = WalFileName::Segment(*seg);
        async move { repo.read_wal_map(&name).await }
    }))
    .buffered(8);
    let mut merge = Merge::default();
    let mut previous: Option<Vec<u8>> = None;
    let mut predecessor: Option<WalSegment> = None;
    for &seg in &segments {
        let name = WalFileName::Segment(seg);
        let stored = stored_maps
            .next()
            .await
            .expect("one read per segment")
            .map_err(|e| format!("reading the block map of {name}: {e}"))?;
        let map = match stored {
            Some(m) if !retry_worthwhile(&m) => {
                previous = None;
                m
            }
            _ => {
                let before = match previous.take() {
                    Some(bytes) => Before::Read(bytes),
                    // At a switch, the segment before is the parent timeline's.
                    None => Before::Find(
                        predecessor
                            .filter(|p| p.segno(seg_size) + 1 == seg.segno(seg_size))
                            .unwrap_or_else(|| {
                                WalSegment::from_segno(
                                    seg.timeline,
                                    seg.segno(seg_size).saturating_sub(1),
                                    seg_size,
                                )
                            }),
                    ),
                };
                let (map, bytes) = local_map(repo, pgdata, seg, seg_size, start, before)
                    .await
                    .map_err(|why| format!("no block map of {name} ({why})"))?;
                // Only its tail can hold the head of a record straddling into the next.
                let tail = bytes.len().saturating_sub(PREDECESSOR_TAIL as usize);
                previous = Some(bytes[tail..].to_vec());
                map
            }
        };
        predecessor = Some(seg);
        merge.push(map)?;
    }
    merge.finish(reference.start_lsn, start)
}

/// The WAL before a segment read from pg_wal, for a record straddling into it.
enum Before {
    /// Read already (the previous segment came from pg_wal too): its last
    /// `PREDECESSOR_TAIL` bytes.
    Read(Vec<u8>),
    /// To be looked for in pg_wal, then in the archive, when needed.
    Find(WalSegment),
}

/// The map of a segment still in `pg_wal` (whole, or up to `upto` for the segment
/// holding it), and the bytes read.
async fn local_map(
    repo: &Repo,
    pgdata: &Path,
    seg: WalSegment,
    seg_size: u64,
    upto: Lsn,
    before: Before,
) -> Result<(BlockMap, Vec<u8>), String> {
    let stanza = repo.stanza_info().await.map_err(|e| e.to_string())?;
    let seg_start = seg.start_lsn(seg_size);
    let path = pgdata.join("pg_wal").join(seg.to_string());
    let io = |e: std::io::Error| format!("{}: {e}", path.display());
    let file = std::fs::File::open(&path).map_err(io)?;
    if file.metadata().map_err(io)?.len() != seg_size {
        return Err(format!("{} is not a whole segment", path.display()));
    }
    // Only the pages before `upto`: later bytes may be being written right now.
    let cut = upto.0.saturating_sub(seg_start.0).min(seg_size) as usize;
    let mut bytes = vec![0u8; cut.div_ceil(XLOG_BLCKSZ) * XLOG_BLCKSZ];
    std::os::unix::fs::FileExt::read_exact_at(&file, &mut bytes, 0).map_err(io)?;
    bytes[cut..].fill(0);
    let straddles = bytes.get(2..4).is_some_and(|i| i[0] & 1 != 0);
    let checksum = *blake3::hash(&bytes).as_bytes();
    let identity = (
        stanza.system_identifier,
        stanza.pg_major,
        seg.timeline.0,
        seg_start,
    );
    // Records are folded into the map as they are read, none kept; the head of a
    // record straddling in is looked for in the predecessor's tail first, in all of it
    // only when a record is longer than that tail.
    let parse = |bytes: Vec<u8>, before: Option<Vec<u8>>| async move {
        tokio::task::spawn_blocking(move || {
            let (map, whole_head) =
                BlockMap::of_segment_read(&bytes, before.as_deref(), identity, checksum, |r| {
                    // The zeroed tail past `upto` is not damage.
                    if r.end_of_wal.is_some_and(|e| reaches(e, upto)) {
                        r.end_of_wal = None;
                    }
                });
            (map, whole_head, bytes)
        })
        .await
        .map_err(|_| "the WAL reader panicked".to_string())
    };
    let previous_path = |p: WalSegment| pgdata.join("pg_wal").join(p.to_string());
    let (map, bytes) = match before {
        _ if !straddles => {
            let (map, _, bytes) = parse(bytes, None).await?;
            (map, bytes)
        }
        Before::Read(tail) => {
            let (map, whole_head, bytes) = parse(bytes, Some(tail)).await?;
            let previous = WalSegment::from_segno(
                seg.timeline,
                seg.segno(seg_size).saturating_sub(1),
                seg_size,
            );
            match whole_head {
                true => (map, bytes),
                // A record longer than the tail: all of the predecessor.
                false => match predecessor_bytes(
                    repo,
                    &previous_path(previous),
                    previous,
                    None,
                    seg_size,
                )
                .await
                {
                    Some(all) => {
                        let (map, _, bytes) = parse(bytes, Some(all)).await?;
                        (map, bytes)
                    }
                    None => (map, bytes),
                },
            }
        }
        Before::Find(previous) => {
            let (mut map, mut bytes) = (None, bytes);
            for take in [Some(PREDECESSOR_TAIL), None] {
                let path = previous_path(previous);
                let Some(tail) = predecessor_bytes(repo, &path, previous, take, seg_size).await
                else {
                    continue;
                };
                let (parsed, whole_head, back) = parse(bytes, Some(tail)).await?;
                bytes = back;
                map = Some(parsed);
                if whole_head {
                    break;
                }
            }
            match map {
                Some(map) => (map, bytes),
                None => {
                    let (map, _, bytes) = parse(bytes, None).await?;
                    (map, bytes)
                }
            }
        }
    };
    if map.system_identifier != stanza.system_identifier {
        return Err(format!("{} is of another cluster", path.display()));
    }
    Ok((map, bytes))
}

/// The last `take` bytes (all when None) of the segment before one read from pg_wal:
/// from pg_wal when it is still whole there, else from the archive.
async fn predecessor_bytes(
    repo: &Repo,
    path: &Path,
    segment: WalSegment,
    take: Option<u64>,
    seg_size: u64,
) -> Option<Vec<u8>> {
    let take = take.unwrap_or(seg_size).min(seg_size);
    let local = (|| {
        let file = std::fs::File::open(path).ok()?;
        if file.metadata().ok()?.len() != seg_size {
            return None;
        }
        let mut bytes = vec![0u8; take as usize];
        std::os::unix::fs::FileExt::read_exact_at(&file, &mut bytes, seg_size - take).ok()?;
        Some(bytes)
    })();
    if local.is_some() {
        return local;
    }
    let name = WalFileName::Segment(segment);
    let file = repo.find_archived(&name).await.ok()?.into_iter().next()?;
    let stored = repo.open_wal(&file).await.ok()?;
    // Streamed through, keeping the tail only: the segment read from pg_wal is held
    // already, and a second whole one took an incremental past 64 MiB.
    let mut tail = Tail {
        keep: take as usize,
        bytes: Vec::new(),
    };
    tokio::task::spawn_blocking(move || stored.copy_to(&mut tail).ok().map(|_| tail.finish()))
        .await
        .ok()?
}

/// Keeps the last `keep` bytes written to it, in at most twice that much memory.
struct Tail {
    keep: usize,
    bytes: Vec<u8>,
}

impl std::io::Write for Tail {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.bytes
            .extend_from_slice(&buf[buf.len().saturating_sub(self.keep)..]);
        if self.bytes.len() >= 2 * self.keep {
            self.bytes.drain(..self.bytes.len() - self.keep);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Tail {
    fn finish(mut self) -> Vec<u8> {
        self.bytes
            .drain(..self.bytes.len().saturating_sub(self.keep));
        self.bytes
    }
}

#[cfg(test)]
mod tests;
