//! Waiting until WAL segments are in the archive: a backup without the WAL from its
//! start to its stop cannot be restored, and `check` proves archiving with one segment.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use crate::error::{Error, ErrorKind, Result};
use crate::pg::{Lsn, TimelineId, WalFileName, WalSegment};
use crate::repo::archive::archive_subdir;
use crate::repo::Repo;

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
