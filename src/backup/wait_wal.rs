//! Waiting until the WAL a backup needs is in the archive: a backup without it cannot
//! be restored, so it is not finished before then.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use crate::error::{Error, ErrorKind, Result};
use crate::pg::{Lsn, TimelineId, WalFileName, WalSegment};
use crate::repo::archive::archive_subdir;
use crate::repo::Repo;

pub async fn wait_for_archived(
    repo: &Repo,
    timeline: TimelineId,
    start: Lsn,
    stop: Lsn,
    segment_size: u64,
    timeout: Duration,
) -> Result<()> {
    let first = start.segment_number(segment_size);
    let last = stop.prev_segment_number(segment_size).max(first);
    let mut missing: BTreeSet<u64> = (first..=last).collect();
    let deadline = Instant::now() + timeout;
    loop {
        let mut listings: HashMap<String, Vec<WalFileName>> = HashMap::new();
        let mut still = BTreeSet::new();
        for &segno in &missing {
            let name = WalFileName::Segment(WalSegment::from_segno(timeline, segno, segment_size));
            let dir = archive_subdir(&name);
            if !listings.contains_key(&dir) {
                let found = repo.storage.list(&repo.archive_dir_key(&dir)).await?;
                let names = found
                    .files
                    .iter()
                    .filter_map(|f| crate::repo::archive::parse_stored_name(&f.name))
                    .map(|(n, _, _)| n)
                    .collect();
                listings.insert(dir.clone(), names);
            }
            if !listings[&dir].contains(&name) {
                still.insert(segno);
            }
        }
        missing = still;
        if missing.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let first_missing =
                WalSegment::from_segno(timeline, *missing.first().unwrap(), segment_size);
            return Err(Error::new(
                ErrorKind::Timeout,
                format!("WAL segment {first_missing} (and {} more) needed by this backup did not reach the archive within {}s", missing.len() - 1, timeout.as_secs()),
            )
            .hint("check that archive_mode is on and archive_command runs `pgward archive-push %p` for this repository and stanza (see the server log), or raise --archive-timeout"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
