//! Is a `--target-time` or `--target-lsn` inside what the archive can reach? Checked once
//! the backup is chosen and before anything is written. Otherwise the whole copy runs, and
//! only the started cluster finds out: "recovery ended before configured recovery target
//! was reached" for a target past the archived WAL, "requested recovery stop point is
//! before consistent recovery point" for one before the backup's end.
//!
//! The window runs from the backup's end (stop LSN and time) to the end of the WAL that
//! recovery replays without a gap from the backup's start along the target timeline's
//! history ([`reachable_end`], the runs `info` shows). The time bound is when the last
//! reachable segment was archived: every record in it was written before. Both bounds are
//! necessary, not sufficient: a time target also needs a commit after it in that WAL, and
//! an LSN target a record at or after it. A `--target-xid` is not checked (which
//! transaction ids the WAL holds is only known by reading it), nor is a `--target-name`
//! looked up in the WAL.

use std::collections::BTreeSet;

use chrono::{DateTime, DurationRound, TimeDelta, Utc};

use super::target::{parse_target_timeline, RecoveryTarget, TimelineGoal};
use crate::error::{Error, ErrorKind, Result};
use crate::pg::history::{parse_history, HistoryEntry};
use crate::pg::{Lsn, TimelineId, WalFileName};
use crate::repo::archive::history_timeline;
use crate::repo::archive_map::{reachable_end, ReachableEnd};
use crate::repo::manifest::Manifest;
use crate::repo::Repo;

const UNCHECKED_HINT: &str =
    "pass --target-unchecked if the WAL up to the target will be archived before recovery needs it";

/// Refuses a time or LSN target outside the window `backup` can recover to along the
/// timeline `--target-timeline` names (default `latest`).
pub async fn check_reachable(
    repo: &Repo,
    backup: &Manifest,
    target: &RecoveryTarget,
    timeline: Option<&str>,
) -> Result<()> {
    if !matches!(target, RecoveryTarget::Time(_) | RecoveryTarget::Lsn(_)) {
        return Ok(());
    }
    let window = reachable_window(repo, backup, timeline).await?;
    check_window(target, &BackupSpan::of(backup), window.timeline, window.end)
}

/// Where recovery of a backup can go along one timeline path.
pub struct Reach {
    /// The timeline recovery follows (`--target-timeline`, default `latest`).
    pub timeline: TimelineId,
    /// That timeline's history (empty when it is the backup's own).
    pub history: Vec<HistoryEntry>,
    /// The end of the WAL replayable without a gap from the backup's start, if its start
    /// segment is archived at all.
    pub end: Option<ReachableEnd>,
}

/// How far recovery of `backup` can reach along the timeline `timeline` names (default
/// `latest`): what `restore` checks targets against, and where `drill --target random`
/// draws its point from.
pub async fn reachable_window(
    repo: &Repo,
    backup: &Manifest,
    timeline: Option<&str>,
) -> Result<Reach> {
    let goal = match timeline {
        Some(t) => parse_target_timeline(t)?,
        None => TimelineGoal::Latest,
    };
    let (target_timeline, history) = timeline_path(repo, backup, goal).await?;
    let archived = repo.list_archive().await?;
    let end = reachable_end(
        &archived,
        backup.timeline,
        backup.start_lsn,
        target_timeline,
        &history,
        backup.wal_segment_size,
    );
    Ok(Reach {
        timeline: target_timeline,
        history,
        end,
    })
}

/// What the window needs of a backup.
struct BackupSpan<'a> {
    label: &'a str,
    timeline: TimelineId,
    start_lsn: Lsn,
    stop_lsn: Lsn,
    stop_time: DateTime<Utc>,
}

impl BackupSpan<'_> {
    fn of(m: &Manifest) -> BackupSpan<'_> {
        BackupSpan {
            label: &m.label,
            timeline: m.timeline,
            start_lsn: m.start_lsn,
            stop_lsn: m.stop_lsn,
            stop_time: m.stop_time,
        }
    }
}

/// The timeline recovery will follow and its history (empty when it is the backup's own).
/// `latest` is what PostgreSQL's `findNewestTimeLine` picks: the highest timeline whose
/// history files follow the backup's timeline without a gap. PostgreSQL refuses to start
/// when the backup is not on that timeline's history, so pgward refuses first.
async fn timeline_path(
    repo: &Repo,
    backup: &Manifest,
    goal: TimelineGoal,
) -> Result<(TimelineId, Vec<HistoryEntry>)> {
    let target = match goal {
        TimelineGoal::Current => backup.timeline,
        TimelineGoal::Id(t) => t,
        TimelineGoal::Latest => {
            let have: BTreeSet<TimelineId> = repo
                .history_files()
                .await?
                .iter()
                .filter_map(history_timeline)
                .collect();
            let mut newest = backup.timeline;
            while have.contains(&TimelineId(newest.0.saturating_add(1))) {
                newest = TimelineId(newest.0 + 1);
            }
            newest
        }
    };
    if target == backup.timeline {
        return Ok((target, Vec::new()));
    }
    let name = WalFileName::History(target);
    let off_path = |problem: String| {
        Error::new(ErrorKind::NotFound, problem).hint(format!(
            "restore along the backup's own timeline with --target-timeline current (or {}), or choose another backup with --set; `pgward info` shows the timelines",
            backup.timeline
        ))
    };
    let Some(file) = repo.find_archived(&name).await?.into_iter().next() else {
        return Err(off_path(format!(
            "recovery target timeline {target} has no history file ({name}) in the archive"
        )));
    };
    // The one checked reader of archived files lives in archive/ for now (info and backup
    // call it too); it belongs in repo/.
    let text = repo.read_wal(&file).await?;
    let history = parse_history(&String::from_utf8_lossy(&text))
        .map_err(|e| Error::corrupt(format!("archived {name}: {e}")))?;
    match history.iter().find(|e| e.timeline == backup.timeline) {
        Some(e) if backup.stop_lsn <= e.switch_point => Ok((target, history)),
        Some(e) => Err(off_path(format!(
            "backup {} ends at {} on timeline {}, after timeline {target} forked off it at {}",
            backup.label, backup.stop_lsn, backup.timeline, e.switch_point
        ))),
        None => Err(off_path(format!(
            "timeline {target} does not descend from timeline {} of backup {}",
            backup.timeline, backup.label
        ))),
    }
}

/// PostgreSQL's way of printing a time, which `--target-time` reads back. Rounded up to
/// PostgreSQL's microseconds, so that a pasted window start is not before the window.
fn pg_time(t: DateTime<Utc>) -> String {
    t.duration_round_up(TimeDelta::microseconds(1))
        .unwrap_or(t)
        .format("%Y-%m-%d %H:%M:%S%.f+00")
        .to_string()
}

fn check_window(
    target: &RecoveryTarget,
    backup: &BackupSpan,
    timeline: TimelineId,
    end: Option<ReachableEnd>,
) -> Result<()> {
    if !matches!(target, RecoveryTarget::Time(_) | RecoveryTarget::Lsn(_)) {
        return Ok(());
    }
    let Some(end) = end.filter(|e| e.lsn >= backup.stop_lsn) else {
        return Err(Error::new(
            ErrorKind::NotFound,
            format!(
                "the archive does not hold the WAL backup {} needs to become consistent ({} to {} on timeline {}), so no point in time can be recovered from it",
                backup.label, backup.start_lsn, backup.stop_lsn, backup.timeline
            ),
        )
        .hint(format!(
            "`pgward verify` names the missing segments; {UNCHECKED_HINT}"
        )));
    };
    let window = format!(
        "the recoverable window of backup {} along timeline {timeline} is from {} ({}, the backup's end) to {} on timeline {} (archived {})",
        backup.label,
        backup.stop_lsn,
        pg_time(backup.stop_time),
        end.lsn,
        end.timeline,
        pg_time(end.archived_time)
    );
    let refuse = |problem: String| {
        Err(Error::new(ErrorKind::NotFound, problem).hint(format!(
            "{window}; choose a target inside it, or {UNCHECKED_HINT}"
        )))
    };
    match target {
        RecoveryTarget::Lsn(lsn) if *lsn < backup.stop_lsn => refuse(format!(
            "--target-lsn {lsn} is before the end of backup {} ({}): recovery cannot stop before the backup is consistent",
            backup.label, backup.stop_lsn
        )),
        RecoveryTarget::Lsn(lsn) if *lsn >= end.lsn => refuse(format!(
            "--target-lsn {lsn} is past the end of the archived WAL ({})",
            end.lsn
        )),
        RecoveryTarget::Time(t) if t.with_timezone(&Utc) <= backup.stop_time => refuse(format!(
            "--target-time {} is before the end of backup {} ({}): recovery cannot stop before the backup is consistent",
            pg_time(t.with_timezone(&Utc)),
            backup.label,
            pg_time(backup.stop_time)
        )),
        // Modification times have whole seconds: the segment may have been archived up to
        // a second after the time the listing shows.
        RecoveryTarget::Time(t)
            if t.with_timezone(&Utc) >= end.archived_time + TimeDelta::seconds(1) =>
        {
            refuse(format!(
                "--target-time {} is after the last reachable WAL was archived ({})",
                pg_time(t.with_timezone(&Utc)),
                pg_time(end.archived_time)
            ))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    const SEG: u64 = 16 << 20;

    fn at(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000 + secs, 0).unwrap()
    }

    fn backup() -> BackupSpan<'static> {
        BackupSpan {
            label: "20270115-080000F",
            timeline: TimelineId(1),
            start_lsn: Lsn(2 * SEG + 0x28),
            stop_lsn: Lsn(2 * SEG + 0x1000),
            stop_time: at(0),
        }
    }

    /// The archive reaches the end of segment 5 on timeline 2, archived 100 s after the backup.
    fn end() -> Option<ReachableEnd> {
        Some(ReachableEnd {
            timeline: TimelineId(2),
            lsn: Lsn(6 * SEG),
            archived_time: at(100),
        })
    }

    fn check(target: RecoveryTarget) -> Result<()> {
        check_window(&target, &backup(), TimelineId(2), end())
    }

    fn time(secs: i64, millis: u32) -> RecoveryTarget {
        RecoveryTarget::Time((at(secs) + TimeDelta::milliseconds(millis.into())).fixed_offset())
    }

    #[test]
    fn targets_inside_the_window_pass() {
        assert!(check(RecoveryTarget::Lsn(Lsn(2 * SEG + 0x1000))).is_ok());
        assert!(check(RecoveryTarget::Lsn(Lsn(6 * SEG - 1))).is_ok());
        assert!(check(time(0, 1)).is_ok());
        // Listed modification times are whole seconds: the last segment may have been
        // archived up to a second later.
        assert!(check(time(100, 999)).is_ok());
        for other in [
            RecoveryTarget::EndOfArchive,
            RecoveryTarget::Immediate,
            RecoveryTarget::Xid(1 << 40),
            RecoveryTarget::Name("anything".into()),
        ] {
            assert!(check_window(&other, &backup(), TimelineId(2), None).is_ok());
        }
    }

    #[test]
    fn targets_outside_the_window_are_refused_with_the_window_in_the_hint() {
        for (target, says) in [
            (
                RecoveryTarget::Lsn(Lsn(2 * SEG + 0xFFF)),
                "before the end of backup",
            ),
            (
                RecoveryTarget::Lsn(Lsn(6 * SEG)),
                "past the end of the archived WAL (0/6000000)",
            ),
            (time(0, 0), "before the end of backup"),
            (time(-3600, 0), "before the end of backup"),
            (time(101, 0), "after the last reachable WAL was archived"),
        ] {
            let e = check(target.clone()).unwrap_err();
            assert_eq!(e.kind, ErrorKind::NotFound);
            assert!(e.message.contains(says), "{target:?}: {e}");
            let hint = e.hint.unwrap();
            for part in [
                "along timeline 2",
                "from 0/2001000 (2027-01-15 08:00:00+00, the backup's end)",
                "to 0/6000000 on timeline 2 (archived 2027-01-15 08:01:40+00)",
                "--target-unchecked",
            ] {
                assert!(hint.contains(part), "{part:?} not in {hint}");
            }
        }
    }

    #[test]
    fn window_times_print_as_postgresql_reads_them_never_before_the_window() {
        let t = at(0) + TimeDelta::nanoseconds(623_613_137);
        assert_eq!(pg_time(t), "2027-01-15 08:00:00.623614+00");
        assert_eq!(pg_time(at(1)), "2027-01-15 08:00:01+00");
        let back = super::super::target::parse_target_time(&pg_time(t)).unwrap();
        assert!(back.with_timezone(&Utc) > t);
    }

    #[test]
    fn a_backup_whose_own_wal_is_missing_has_no_window() {
        let short = ReachableEnd {
            timeline: TimelineId(1),
            lsn: Lsn(2 * SEG),
            archived_time: at(1),
        };
        for end in [None, Some(short)] {
            let e = check_window(&time(50, 0), &backup(), TimelineId(1), end).unwrap_err();
            assert!(e.message.contains("needs to become consistent"), "{e}");
        }
    }
}
