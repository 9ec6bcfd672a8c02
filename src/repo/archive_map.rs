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
    let (latest_lsn, latest_archived_time) = run_end(
        archived,
        newest.timeline,
        newest.start_lsn.segment_number(seg_size),
        seg_size,
    )?;
    Some(RecoverableWindow {
        earliest_time: oldest.stop_time,
        earliest_lsn: oldest.stop_lsn,
        earliest_backup: oldest.label.clone(),
        latest_lsn,
        latest_timeline: newest.timeline,
        latest_archived_time,
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
        let Some(first_missing) = missing.first() else {
            return Ok(());
        };
        if Instant::now() >= deadline {
            return Err(Error::new(
                ErrorKind::Timeout,
                format!("WAL segment {first_missing} (and {} more) did not reach the archive within {}s", missing.len() - 1, timeout.as_secs()),
            )
            .hint("check that archive_mode is on and archive_command runs `pgward archive-push %p` for this repository and stanza; the server log and `pgward pitr status` show archiving failures"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::compress::Codec;

    const SEG: u64 = 16 << 20;

    fn archived(names: &[&str]) -> Vec<ArchivedFile> {
        names
            .iter()
            .enumerate()
            .map(|(i, n)| ArchivedFile {
                name: WalFileName::parse(n).unwrap(),
                checksum: "0".repeat(64),
                codec: Codec::None,
                stored_size: 100,
                archived_at: 1_700_000_000 + i as i64,
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
