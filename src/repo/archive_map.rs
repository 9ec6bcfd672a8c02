//! What the archive listing says, without reading any WAL: the segments on each
//! timeline, their gaps, how far a gap-free run reaches, and the range point-in-time
//! recovery can reach from the backups. Commands (`info`, `verify`, `wal`, `backup`,
//! `check`) share these; `wait_for_archived` polls the listing until segments arrive.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeZone, Utc};
use serde::Serialize;

use super::archive::{archive_subdir, ArchivedFile};
use super::manifest::Manifest;
use super::Repo;
use crate::error::{Error, ErrorKind, Result};
use crate::pg::history::HistoryEntry;
use crate::pg::{Lsn, TimelineId, WalFileName, WalSegment};

/// What the archive holds on one timeline (`info`, `wal stats`).
#[derive(Debug, Serialize)]
pub struct TimelineArchive {
    pub timeline: TimelineId,
    pub first_segment: String,
    pub last_segment: String,
    pub segments: usize,
    pub partial_segments: usize,
    /// Missing ranges `[first, last]` between the first and last segment.
    pub gaps: Vec<(String, String)>,
    pub stored_size: u64,
}

#[derive(Debug, Serialize)]
pub struct RecoverableWindow {
    /// The earliest consistent point: the end of the oldest restorable backup.
    pub earliest_time: DateTime<Utc>,
    pub earliest_lsn: Lsn,
    pub earliest_backup: String,
    /// The end of the newest WAL reachable without a gap from that backup.
    pub latest_lsn: Lsn,
    pub latest_timeline: TimelineId,
    /// When that WAL was archived: recovery can reach at least this time.
    pub latest_archived_time: DateTime<Utc>,
}

/// Segment numbers of complete segments archived on `timeline`, ascending.
pub fn segments_on(archived: &[ArchivedFile], timeline: TimelineId, seg_size: u64) -> Vec<u64> {
    let mut v: Vec<u64> = archived
        .iter()
        .filter_map(|f| match f.name {
            WalFileName::Segment(s) if s.timeline == timeline => Some(s.segno(seg_size)),
            _ => None,
        })
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// One summary per timeline with archived segments, in timeline order.
pub fn timelines(archived: &[ArchivedFile], seg_size: u64) -> Vec<TimelineArchive> {
    let mut tls: Vec<TimelineId> = archived
        .iter()
        .filter(|f| f.name.segment().is_some())
        .map(|f| f.name.timeline())
        .collect();
    tls.sort();
    tls.dedup();
    tls.into_iter()
        .filter_map(|tl| {
            let segs = segments_on(archived, tl, seg_size);
            let name = |n: u64| WalSegment::from_segno(tl, n, seg_size).to_string();
            let gaps = segs
                .windows(2)
                .filter(|w| w[1] > w[0] + 1)
                .map(|w| (name(w[0] + 1), name(w[1] - 1)))
                .collect();
            Some(TimelineArchive {
                timeline: tl,
                first_segment: name(*segs.first()?),
                last_segment: name(*segs.last()?),
                segments: segs.len(),
                partial_segments: archived
                    .iter()
                    .filter(|f| matches!(f.name, WalFileName::Partial(s) if s.timeline == tl))
                    .count(),
                gaps,
                stored_size: archived
                    .iter()
                    .filter(|f| f.name.segment().is_some() && f.name.timeline() == tl)
                    .map(|f| f.stored_size)
                    .sum(),
            })
        })
        .collect()
}

/// Last segment number of the gap-free run starting at `from` on `timeline`, if `from` is there.
pub fn contiguous_end(segs: &[u64], from: u64) -> Option<u64> {
    let start = segs.binary_search(&from).ok()?;
    let mut end = from;
    for &s in &segs[start + 1..] {
        if s != end + 1 {
            break;
        }
        end = s;
    }
    Some(end)
}

/// The range point-in-time recovery can reach: from the end of the oldest backup whose WAL
/// is all archived to the end of the gap-free WAL after the newest such backup.
pub fn recoverable_window(
    manifests: &[Manifest],
    archived: &[ArchivedFile],
    seg_size: u64,
) -> Option<RecoverableWindow> {
    let restorable = |m: &&Manifest| {
        let segs = segments_on(archived, m.timeline, seg_size);
        let needed_end = m.stop_lsn.prev_segment_number(seg_size);
        contiguous_end(&segs, m.start_lsn.segment_number(seg_size))
            .is_some_and(|end| end >= needed_end)
    };
    let oldest = manifests.iter().find(restorable)?;
    let newest = manifests.iter().rev().find(restorable)?;
    let segs = segments_on(archived, newest.timeline, seg_size);
    let end = contiguous_end(&segs, newest.start_lsn.segment_number(seg_size))?;
    let last = WalSegment::from_segno(newest.timeline, end, seg_size);
    let archived_at = archived
        .iter()
        .find(|f| f.name == WalFileName::Segment(last))
        .map_or(0, |f| f.archived_at);
    Some(RecoverableWindow {
        earliest_time: oldest.stop_time,
        earliest_lsn: oldest.stop_lsn,
        earliest_backup: oldest.label.clone(),
        latest_lsn: Lsn((end + 1) * seg_size),
        latest_timeline: newest.timeline,
        latest_archived_time: Utc
            .timestamp_opt(archived_at, 0)
            .single()
            .unwrap_or_default(),
    })
}

/// The end of the gap-free WAL on `timeline` from segment `from`, and when it was archived.
pub fn run_end(
    archived: &[ArchivedFile],
    timeline: TimelineId,
    from: u64,
    seg_size: u64,
) -> Option<(Lsn, DateTime<Utc>)> {
    let end = contiguous_end(&segments_on(archived, timeline, seg_size), from)?;
    let last = WalFileName::Segment(WalSegment::from_segno(timeline, end, seg_size));
    let at = archived
        .iter()
        .find(|f| f.name == last)
        .map_or(0, |f| f.archived_at);
    Some((
        Lsn((end + 1) * seg_size),
        Utc.timestamp_opt(at, 0).single().unwrap_or_default(),
    ))
}

#[derive(Debug, Serialize)]
pub struct TimelineWindow {
    pub timeline: TimelineId,
    pub from_lsn: Lsn,
    /// Where the window starts: the end of a backup, or the switch from the parent timeline.
    pub from: String,
    pub from_time: Option<DateTime<Utc>>,
    pub to_lsn: Lsn,
    pub to_archived_time: DateTime<Utc>,
    /// Backups on this timeline inside the window: (label, type letter, stop LSN).
    pub backups: Vec<(String, char, Lsn)>,
}

/// Per timeline with archived segments: the range point-in-time recovery can reach on it,
/// from the end of its first backup whose WAL follows without a gap, or else from its
/// switch off a parent timeline whose window holds the switch point (read from the
/// timeline's history file, a few bytes).
pub async fn timeline_windows(
    repo: &Repo,
    manifests: &[Manifest],
    archived: &[ArchivedFile],
    seg_size: u64,
) -> Result<Vec<TimelineWindow>> {
    let mut timelines: Vec<TimelineId> = archived
        .iter()
        .filter(|f| f.name.segment().is_some())
        .map(|f| f.name.timeline())
        .collect();
    timelines.sort();
    timelines.dedup();
    let mut out: Vec<TimelineWindow> = Vec::new();
    for tl in timelines {
        let on_tl: Vec<&Manifest> = manifests.iter().filter(|m| m.timeline == tl).collect();
        let from_backup = on_tl.iter().find_map(|m| {
            let (to, at) = run_end(archived, tl, m.start_lsn.segment_number(seg_size), seg_size)?;
            (to > m.stop_lsn).then(|| {
                (
                    m.stop_lsn,
                    format!("end of backup {}", m.label),
                    Some(m.stop_time),
                    to,
                    at,
                )
            })
        });
        // Without a backup of its own, a timeline is reachable from its parent's window.
        let from_parent = || async {
            let file = repo
                .find_archived(&WalFileName::History(tl))
                .await
                .ok()?
                .into_iter()
                .next()?;
            let text = repo.read_wal(&file).await.ok()?;
            let entry = crate::pg::history::parse_history(&String::from_utf8_lossy(&text))
                .ok()?
                .pop()?;
            let parent = out.iter().find(|w| {
                w.timeline == entry.timeline
                    && w.from_lsn <= entry.switch_point
                    && entry.switch_point <= w.to_lsn
            })?;
            let (to, at) = run_end(
                archived,
                tl,
                entry.switch_point.segment_number(seg_size),
                seg_size,
            )?;
            Some((
                entry.switch_point,
                format!("switch from timeline {}", parent.timeline),
                None,
                to,
                at,
            ))
        };
        let found = match from_backup {
            Some(f) => Some(f),
            None => from_parent().await,
        };
        if let Some((from_lsn, from, from_time, to_lsn, to_archived_time)) = found {
            let backups = on_tl
                .iter()
                .filter(|m| m.stop_lsn >= from_lsn && m.stop_lsn <= to_lsn)
                .map(|m| (m.label.clone(), m.backup_type.letter(), m.stop_lsn))
                .collect();
            out.push(TimelineWindow {
                timeline: tl,
                from_lsn,
                from,
                from_time,
                to_lsn,
                to_archived_time,
                backups,
            });
        }
    }
    Ok(out)
}

/// Where the WAL that recovery can replay without a gap ends, on the way to a target
/// timeline (see [`reachable_end`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct ReachableEnd {
    /// The timeline the reachable WAL ends on.
    pub timeline: TimelineId,
    /// The end of the last reachable segment.
    pub lsn: Lsn,
    /// When that segment was archived: every record in it was written before.
    pub archived_time: DateTime<Utc>,
}

/// How far recovery replays without a gap from `start` on `start_timeline` when it follows
/// `target`'s `history` (its history file's entries, oldest first; empty when `target` is
/// `start_timeline`). Each ancestor is read up to the segment before its switch point, and
/// the segment holding a switch point from the child, as PostgreSQL does
/// (`XLogFileReadAnyTLI` takes a segment from the newest timeline that began at or before
/// it). None when the segment holding `start` is not archived, or `start_timeline` is not
/// on `target`'s history. The same runs `info`'s windows are made of ([`run_end`]).
pub fn reachable_end(
    archived: &[ArchivedFile],
    start_timeline: TimelineId,
    start: Lsn,
    target: TimelineId,
    history: &[HistoryEntry],
    seg_size: u64,
) -> Option<ReachableEnd> {
    let ancestors = match history.iter().position(|e| e.timeline == start_timeline) {
        Some(i) => &history[i..],
        None if start_timeline == target => &[][..],
        None => return None,
    };
    let mut next = start.segment_number(seg_size);
    let mut reached: Option<ReachableEnd> = None;
    for entry in ancestors {
        let child_begins = entry.switch_point.segment_number(seg_size);
        if next < child_begins {
            let Some((lsn, archived_time)) = run_end(archived, entry.timeline, next, seg_size)
            else {
                return reached;
            };
            let timeline = entry.timeline;
            if lsn.segment_number(seg_size) < child_begins {
                return Some(ReachableEnd {
                    timeline,
                    lsn,
                    archived_time,
                });
            }
            let last = WalSegment::from_segno(timeline, child_begins - 1, seg_size);
            reached = Some(ReachableEnd {
                timeline,
                lsn: Lsn(child_begins * seg_size),
                archived_time: archived_time_of(archived, last),
            });
            next = child_begins;
        }
    }
    match run_end(archived, target, next, seg_size) {
        Some((lsn, archived_time)) => Some(ReachableEnd {
            timeline: target,
            lsn,
            archived_time,
        }),
        None => reached,
    }
}

fn archived_time_of(archived: &[ArchivedFile], segment: WalSegment) -> DateTime<Utc> {
    let at = archived
        .iter()
        .find(|f| f.name == WalFileName::Segment(segment))
        .map_or(0, |f| f.archived_at);
    Utc.timestamp_opt(at, 0).single().unwrap_or_default()
}

/// The segments holding WAL from `start` up to (not including) `stop`.
pub fn segments_between(
    timeline: TimelineId,
    start: Lsn,
    stop: Lsn,
    segment_size: u64,
) -> Vec<WalSegment> {
    let first = start.segment_number(segment_size);
    let last = stop.prev_segment_number(segment_size).max(first);
    (first..=last)
        .map(|n| WalSegment::from_segno(timeline, n, segment_size))
        .collect()
}

/// Polls the archive until every one of `segments` is there; a timeout names the first
/// missing one and how to find out why.
pub async fn wait_for_archived(
    repo: &Repo,
    segments: Vec<WalSegment>,
    timeout: Duration,
) -> Result<()> {
    let missing = wait_until_archived(repo, segments, timeout).await?;
    let Some(first_missing) = missing.first() else {
        return Ok(());
    };
    Err(Error::new(
        ErrorKind::Timeout,
        format!("WAL segment {first_missing} (and {} more) did not reach the archive within {}s", missing.len() - 1, timeout.as_secs()),
    )
    .hint("check that archive_mode is on and archive_command runs `pgward archive-push %p` for this repository and stanza; the server log and `pgward pitr status` show archiving failures"))
}

/// Polls the archive until every one of `segments` is there or `timeout` has passed;
/// returns the ones still missing then (in order; empty when all arrived), for callers
/// that explain a timeout their own way.
pub async fn wait_until_archived(
    repo: &Repo,
    segments: Vec<WalSegment>,
    timeout: Duration,
) -> Result<Vec<WalSegment>> {
    let mut missing: BTreeSet<WalSegment> = segments.into_iter().collect();
    let deadline = Instant::now() + timeout;
    loop {
        // One listing per archive directory per round, whatever the number of segments.
        let mut listings: HashMap<String, Vec<WalFileName>> = HashMap::new();
        let mut still = BTreeSet::new();
        for segment in missing {
            let name = WalFileName::Segment(segment);
            let dir = archive_subdir(&name);
            if !listings.contains_key(&dir) {
                let names = repo
                    .archived_in(&dir)
                    .await?
                    .into_iter()
                    .map(|f| f.name)
                    .collect();
                listings.insert(dir.clone(), names);
            }
            if !listings[&dir].contains(&name) {
                still.insert(segment);
            }
        }
        missing = still;
        if missing.is_empty() || Instant::now() >= deadline {
            return Ok(missing.into_iter().collect());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[cfg(test)]
mod reachable_end_tests {
    use super::*;

    const SEG: u64 = 16 << 20;

    /// Segment names, each archived one second after the previous.
    fn listing(names: &[&str]) -> Vec<ArchivedFile> {
        super::tests::archived_from(names, 1_000)
    }

    fn end(tl: u32, lsn: u64, at: i64) -> Option<ReachableEnd> {
        Some(ReachableEnd {
            timeline: TimelineId(tl),
            lsn: Lsn(lsn),
            archived_time: Utc.timestamp_opt(at, 0).unwrap(),
        })
    }

    fn switch(tl: u32, at: u64) -> HistoryEntry {
        HistoryEntry {
            timeline: TimelineId(tl),
            switch_point: Lsn(at),
            reason: String::new(),
        }
    }

    #[test]
    fn one_timeline_ends_at_the_first_gap_like_run_end() {
        let files = listing(&[
            "000000010000000000000002",
            "000000010000000000000003",
            "000000010000000000000004",
            "000000010000000000000006",
        ]);
        let tl1 = TimelineId(1);
        let got = reachable_end(&files, tl1, Lsn(2 * SEG + 40), tl1, &[], SEG);
        assert_eq!(got, end(1, 5 * SEG, 1_002));
        let (lsn, at) = run_end(&files, tl1, 2, SEG).unwrap();
        assert_eq!((got.unwrap().lsn, got.unwrap().archived_time), (lsn, at));
        // A backup starting after the gap reaches the end of the archive.
        assert_eq!(
            reachable_end(&files, tl1, Lsn(6 * SEG), tl1, &[], SEG),
            end(1, 7 * SEG, 1_003)
        );
        // The backup's first segment is missing: nothing is reachable.
        assert_eq!(reachable_end(&files, tl1, Lsn(SEG), tl1, &[], SEG), None);
    }

    #[test]
    fn a_switch_reads_the_parent_up_to_the_childs_first_segment() {
        // Timeline 2 forks off 1 inside segment 4; 1 went on to segment 6 elsewhere.
        let files = listing(&[
            "000000010000000000000002",
            "000000010000000000000003",
            "000000010000000000000004",
            "000000010000000000000005",
            "000000010000000000000006",
            "000000020000000000000004",
            "000000020000000000000005",
        ]);
        let history = [switch(1, 4 * SEG + 0x28)];
        let (tl1, tl2) = (TimelineId(1), TimelineId(2));
        assert_eq!(
            reachable_end(&files, tl1, Lsn(2 * SEG), tl2, &history, SEG),
            end(2, 6 * SEG, 1_006)
        );
        // Following timeline 1 itself ignores timeline 2.
        assert_eq!(
            reachable_end(&files, tl1, Lsn(2 * SEG), tl1, &[], SEG),
            end(1, 7 * SEG, 1_004)
        );
        // A backup taken on timeline 2 starts there.
        assert_eq!(
            reachable_end(&files, tl2, Lsn(5 * SEG), tl2, &history, SEG),
            end(2, 6 * SEG, 1_006)
        );
        // A timeline that is not on the history reaches nothing.
        assert_eq!(
            reachable_end(&files, TimelineId(3), Lsn(5 * SEG), tl2, &history, SEG),
            None
        );
    }

    #[test]
    fn a_gap_before_the_switch_or_a_missing_child_segment_ends_the_window() {
        let history = [switch(1, 4 * SEG)];
        let (tl1, tl2) = (TimelineId(1), TimelineId(2));
        // Segment 3 of timeline 1 is missing: timeline 2 is out of reach.
        let gap = listing(&["000000010000000000000002", "000000020000000000000004"]);
        assert_eq!(
            reachable_end(&gap, tl1, Lsn(2 * SEG), tl2, &history, SEG),
            end(1, 3 * SEG, 1_000)
        );
        // Timeline 1 is complete up to the switch but 2's first segment is not archived:
        // the parent's copy of segment 4 is not read past the switch point.
        let no_child = listing(&[
            "000000010000000000000002",
            "000000010000000000000003",
            "000000010000000000000004",
            "000000020000000000000005",
        ]);
        assert_eq!(
            reachable_end(&no_child, tl1, Lsn(2 * SEG), tl2, &history, SEG),
            end(1, 4 * SEG, 1_001)
        );
    }

    #[test]
    fn several_switches_are_followed_in_order() {
        // 1 -> 2 at segment 3, 2 -> 3 at segment 5 (mid-segment).
        let files = listing(&[
            "000000010000000000000002",
            "000000020000000000000003",
            "000000020000000000000004",
            "000000030000000000000005",
            "000000030000000000000006",
        ]);
        let history = [switch(1, 3 * SEG), switch(2, 5 * SEG + 0x100)];
        assert_eq!(
            reachable_end(
                &files,
                TimelineId(1),
                Lsn(2 * SEG + 0x28),
                TimelineId(3),
                &history,
                SEG
            ),
            end(3, 7 * SEG, 1_004)
        );
        // Timeline 2's first segment is missing: the window ends with timeline 1.
        let without = [&files[..1], &files[2..]].concat();
        assert_eq!(
            reachable_end(
                &without,
                TimelineId(1),
                Lsn(2 * SEG),
                TimelineId(3),
                &history,
                SEG
            ),
            end(1, 3 * SEG, 1_000)
        );
        // The backup was taken on timeline 2: timeline 1 is not read at all.
        assert_eq!(
            reachable_end(
                &files,
                TimelineId(2),
                Lsn(4 * SEG),
                TimelineId(3),
                &history,
                SEG
            ),
            end(3, 7 * SEG, 1_004)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::compress::Codec;

    const SEG: u64 = 16 << 20;

    fn archived(names: &[&str]) -> Vec<ArchivedFile> {
        archived_from(names, 1_700_000_000)
    }

    /// Segment names of 100 stored bytes each, the first archived at `first_at`, each
    /// next one a second later.
    pub(super) fn archived_from(names: &[&str], first_at: i64) -> Vec<ArchivedFile> {
        names
            .iter()
            .enumerate()
            .map(|(i, n)| ArchivedFile {
                name: WalFileName::parse(n).unwrap(),
                checksum: "0".repeat(64),
                codec: Codec::None,
                stored_size: 100,
                archived_at: first_at + i as i64,
            })
            .collect()
    }

    #[test]
    fn timelines_count_segments_and_name_gaps() {
        let files = archived(&[
            "000000010000000000000001",
            "000000010000000000000002",
            "000000010000000000000005",
            "000000010000000000000005.partial",
            "00000002.history",
            "000000020000000000000005",
        ]);
        let tls = timelines(&files, SEG);
        assert_eq!(tls.len(), 2);
        assert_eq!(tls[0].timeline, TimelineId(1));
        assert_eq!(tls[0].segments, 3);
        assert_eq!(tls[0].partial_segments, 1);
        assert_eq!(
            tls[0].gaps,
            [(
                "000000010000000000000003".to_string(),
                "000000010000000000000004".to_string()
            )]
        );
        assert_eq!(tls[0].stored_size, 400);
        assert_eq!(tls[1].first_segment, "000000020000000000000005");
        assert!(tls[1].gaps.is_empty());

        assert_eq!(segments_on(&files, TimelineId(1), SEG), [1, 2, 5]);
        assert_eq!(contiguous_end(&[1, 2, 5], 1), Some(2));
        assert_eq!(contiguous_end(&[1, 2, 5], 5), Some(5));
        assert_eq!(contiguous_end(&[1, 2, 5], 3), None);
        let (end, at) = run_end(&files, TimelineId(1), 1, SEG).unwrap();
        assert_eq!(end, Lsn(3 * SEG));
        assert_eq!(at.timestamp(), 1_700_000_001);
    }

    #[test]
    fn segments_between_covers_start_to_the_byte_before_stop() {
        let tl = TimelineId(1);
        let names = |v: Vec<WalSegment>| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            names(segments_between(tl, Lsn(SEG + 40), Lsn(3 * SEG), SEG)),
            ["000000010000000000000001", "000000010000000000000002"]
        );
        // A stop inside the start segment still needs that one segment.
        assert_eq!(
            names(segments_between(tl, Lsn(SEG + 40), Lsn(SEG + 80), SEG)),
            ["000000010000000000000001"]
        );
    }
}
