//! `--target random`: a point drawn at random inside the window the chosen backup can
//! recover to, so that over many drills every stretch of the archive gets replayed.
//!
//! The listing gives the window's bounds (the backup's end, the end of the gap-free WAL
//! after it), but not where records are: the tail of a switched segment is zeros, and a
//! target there is never reached ("recovery ended before configured recovery target was
//! reached"). So a segment of the window is drawn, read, and one of its records that
//! starts at or after the backup's end is the `--target-lsn` (inclusive: recovery stops
//! right after replaying it).

use crate::error::{Error, ErrorKind, Result};
use crate::pg::history::HistoryEntry;
use crate::pg::{Lsn, TimelineId, WalFileName, WalSegment};
use crate::repo::manifest::Manifest;
use crate::repo::Repo;
use crate::restore::reach::reachable_window;

/// Segments read at most before giving up on finding a record (each is one segment of
/// memory and one read from the repository).
const MAX_SEGMENTS_READ: u64 = 8;

#[derive(Clone, Debug, serde::Serialize)]
pub struct RandomTarget {
    /// Reproduces the draw: `--target random --seed N` against the same archive.
    pub seed: u64,
    pub lsn: Lsn,
    /// The window drawn from: the backup's end to the end of the reachable WAL.
    pub window_start_lsn: Lsn,
    pub window_end_lsn: Lsn,
    pub timeline: TimelineId,
}

/// splitmix64: small, seedable, good enough to spread drills over a window.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

pub fn new_seed() -> u64 {
    let mut b = [0u8; 8];
    if getrandom::fill(&mut b).is_err() {
        // Only a spread is needed, not secrecy: the clock will do.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        return now.as_nanos() as u64 ^ u64::from(std::process::id());
    }
    u64::from_le_bytes(b)
}

pub async fn pick(
    repo: &Repo,
    backup: &Manifest,
    timeline: Option<&str>,
    seed: u64,
) -> Result<RandomTarget> {
    let reach = reachable_window(repo, backup, timeline).await?;
    let seg = backup.wal_segment_size;
    let Some(end) = reach.end.filter(|e| e.lsn > backup.stop_lsn) else {
        return Err(Error::new(
            ErrorKind::NotFound,
            format!(
                "backup {} has no recoverable window: the archive does not hold the WAL from its start ({}) to its end ({})",
                backup.label, backup.start_lsn, backup.stop_lsn
            ),
        )
        .hint("`pgward verify` names the missing segments; `pgward info` shows the windows"));
    };
    let first = backup.stop_lsn.segment_number(seg);
    let last = Lsn(end.lsn.0 - 1).segment_number(seg);
    let count = last - first + 1;
    let archived = repo.list_archive().await?;
    let mut rng = SplitMix(seed);
    let start = rng.below(count);
    for i in 0..count.min(MAX_SEGMENTS_READ) {
        let segno = first + (start + i) % count;
        let tl = timeline_of(segno, backup.timeline, reach.timeline, &reach.history, seg);
        let name = WalFileName::Segment(WalSegment::from_segno(tl, segno, seg));
        let Some(file) = archived.iter().find(|f| f.name == name) else {
            continue;
        };
        let bytes = repo.read_wal(file).await?;
        let records =
            tokio::task::spawn_blocking(move || crate::pg::wal::read_segment(&bytes, None))
                .await
                .unwrap_or_else(|e| {
                    Err(crate::pg::wal::WalError {
                        lsn: Lsn(0),
                        kind: crate::pg::wal::WalErrorKind::BadInput(if e.is_panic() {
                            "reader panicked"
                        } else {
                            "reader cancelled"
                        }),
                    })
                })
                .map_err(|e| Error::corrupt(format!("archived {name}: {e}")))?;
        let starts: Vec<Lsn> = records
            .records
            .iter()
            .filter(|r| r.lsn >= backup.stop_lsn && r.end <= end.lsn)
            .map(|r| r.lsn)
            .collect();
        if !starts.is_empty() {
            let lsn = starts[rng.below(starts.len() as u64) as usize];
            return Ok(RandomTarget {
                seed,
                lsn,
                window_start_lsn: backup.stop_lsn,
                window_end_lsn: end.lsn,
                timeline: reach.timeline,
            });
        }
    }
    Err(Error::new(
        ErrorKind::NotFound,
        format!(
            "found no WAL record to stop at in the window of backup {} ({} to {})",
            backup.label, backup.stop_lsn, end.lsn
        ),
    )
    .hint(
        "give a target yourself (--target-lsn, --target-time), or drill to the end of the archive",
    ))
}

/// The timeline whose file of segment `segno` recovery reads along `history` to
/// `target`: the newest timeline that began at or before the segment, as PostgreSQL's
/// `XLogFileReadAnyTLI` picks it.
fn timeline_of(
    segno: u64,
    start: TimelineId,
    target: TimelineId,
    history: &[HistoryEntry],
    seg: u64,
) -> TimelineId {
    let Some(from) = history.iter().position(|e| e.timeline == start) else {
        return start;
    };
    let path = &history[from..];
    let mut tl = start;
    for (i, entry) in path.iter().enumerate() {
        let next = path.get(i + 1).map_or(target, |n| n.timeline);
        if segno >= entry.switch_point.segment_number(seg) {
            tl = next;
        }
    }
    tl
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_read_from_the_newest_timeline_that_began_before_them() {
        let seg = 16 << 20;
        let history = vec![
            HistoryEntry {
                timeline: TimelineId(1),
                switch_point: Lsn(3 * seg + 100),
                reason: String::new(),
            },
            HistoryEntry {
                timeline: TimelineId(2),
                switch_point: Lsn(6 * seg),
                reason: String::new(),
            },
        ];
        let tl = |n| timeline_of(n, TimelineId(1), TimelineId(3), &history, seg).0;
        assert_eq!([tl(2), tl(3), tl(5), tl(6), tl(9)], [1, 2, 2, 3, 3]);
        assert_eq!(
            timeline_of(9, TimelineId(1), TimelineId(1), &[], seg),
            TimelineId(1)
        );
    }

    #[test]
    fn the_same_seed_draws_the_same_numbers() {
        let (mut a, mut b) = (SplitMix(42), SplitMix(42));
        let draws: Vec<u64> = (0..5).map(|_| a.below(1000)).collect();
        assert_eq!(draws, (0..5).map(|_| b.below(1000)).collect::<Vec<_>>());
        assert!(draws.iter().any(|d| *d != draws[0]));
    }
}
