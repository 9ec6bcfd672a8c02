//! `backup_label`, as returned by `pg_backup_stop()` (built by `build_backup_content` in
//! `xlogbackup.c`, PG ≤ 14 in `xlog.c`) and read back by `read_backup_label` at recovery.
//!
//! One `KEY: value` per line. Timelines are decimal here, unlike in file names. PG 17 adds
//! `INCREMENTAL FROM LSN/TLI` for incremental backups; unknown keys are ignored so newer
//! labels still parse.

use super::lsn::{Lsn, TimelineId};
use super::walname::{WalFileName, WalSegment};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupLabel {
    pub start_lsn: Lsn,
    pub start_timeline: TimelineId,
    pub checkpoint_lsn: Lsn,
    /// `streamed` (or `pg_start_backup` for pre-15 exclusive backups).
    pub backup_method: String,
    /// `primary` or `standby`.
    pub backup_from: String,
    /// Server-local time with zone name, e.g. `2026-11-21 12:35:19 UTC`; kept as text.
    pub start_time: String,
    pub label: String,
    /// The segment named in `START WAL LOCATION: ... (file ...)`.
    pub start_segment: WalSegment,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BackupLabelError {
    #[error("backup_label has no {0:?} line")]
    Missing(&'static str),
    #[error("backup_label line {line}: invalid {key:?} value {value:?}")]
    Invalid {
        line: usize,
        key: &'static str,
        value: String,
    },
    #[error("backup_label: start segment {segment} is on timeline {segment_tli}, but START TIMELINE is {start_tli}")]
    TimelineMismatch {
        segment: WalSegment,
        segment_tli: TimelineId,
        start_tli: TimelineId,
    },
}

const START_WAL: &str = "START WAL LOCATION";
const CHECKPOINT: &str = "CHECKPOINT LOCATION";
const METHOD: &str = "BACKUP METHOD";
const FROM: &str = "BACKUP FROM";
const TIME: &str = "START TIME";
const LABEL: &str = "LABEL";
const TIMELINE: &str = "START TIMELINE";

pub fn parse_backup_label(text: &str) -> Result<BackupLabel, BackupLabelError> {
    let mut start: Option<(Lsn, WalSegment)> = None;
    let (mut checkpoint, mut timeline) = (None, None);
    let (mut method, mut from, mut time, mut label) = (None, None, None, None);

    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        // Split at the first ": " so a label containing ": " stays whole; "LABEL: " with an
        // empty label has nothing after the separator.
        let Some((key, value)) = raw
            .split_once(": ")
            .or_else(|| raw.strip_suffix(':').map(|k| (k, "")))
        else {
            continue;
        };
        let invalid = |key: &'static str| BackupLabelError::Invalid {
            line,
            key,
            value: value.to_string(),
        };
        match key {
            START_WAL => start = Some(parse_start(value).ok_or_else(|| invalid(START_WAL))?),
            CHECKPOINT => checkpoint = Some(value.parse::<Lsn>().map_err(|_| invalid(CHECKPOINT))?),
            TIMELINE => {
                let tli = value.trim().parse::<u32>().ok().filter(|&t| t != 0);
                timeline = Some(TimelineId(tli.ok_or_else(|| invalid(TIMELINE))?));
            }
            METHOD => method = Some(value.to_string()),
            FROM => from = Some(value.to_string()),
            TIME => time = Some(value.to_string()),
            LABEL => label = Some(value.to_string()),
            _ => {}
        }
    }

    let (start_lsn, start_segment) = start.ok_or(BackupLabelError::Missing(START_WAL))?;
    let start_timeline = timeline.ok_or(BackupLabelError::Missing(TIMELINE))?;
    if start_segment.timeline != start_timeline {
        return Err(BackupLabelError::TimelineMismatch {
            segment: start_segment,
            segment_tli: start_segment.timeline,
            start_tli: start_timeline,
        });
    }
    Ok(BackupLabel {
        start_lsn,
        start_timeline,
        checkpoint_lsn: checkpoint.ok_or(BackupLabelError::Missing(CHECKPOINT))?,
        backup_method: method.ok_or(BackupLabelError::Missing(METHOD))?,
        backup_from: from.ok_or(BackupLabelError::Missing(FROM))?,
        start_time: time.ok_or(BackupLabelError::Missing(TIME))?,
        label: label.ok_or(BackupLabelError::Missing(LABEL))?,
        start_segment,
    })
}

/// `0/2000028 (file 000000010000000000000002)`
fn parse_start(value: &str) -> Option<(Lsn, WalSegment)> {
    let (lsn, rest) = value.split_once(" (file ")?;
    let name = rest.strip_suffix(')')?;
    match WalFileName::parse(name).ok()? {
        WalFileName::Segment(seg) => Some((lsn.parse().ok()?, seg)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `SELECT labelfile FROM pg_backup_stop()` after `pg_backup_start('fx', true)` on PG 15.
    const PG15: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/pg15/backup_label"
    ));

    #[test]
    fn parses_a_real_pg15_label() {
        let l = parse_backup_label(PG15).unwrap();
        assert_eq!(l.start_lsn, Lsn(0x2000028));
        assert_eq!(l.checkpoint_lsn, Lsn(0x2000060));
        assert_eq!(l.start_timeline, TimelineId(1));
        assert_eq!(l.start_segment.to_string(), "000000010000000000000002");
        assert_eq!(
            l.start_segment,
            WalSegment::containing(TimelineId(1), l.start_lsn, 16 << 20)
        );
        assert_eq!(l.backup_method, "streamed");
        assert_eq!(l.backup_from, "primary");
        assert_eq!(l.start_time, "2026-11-21 12:35:19 UTC");
        assert_eq!(l.label, "fx");
    }

    #[test]
    fn timeline_is_decimal_labels_keep_colons_and_unknown_keys_pass() {
        let text = PG15
            .replace("START TIMELINE: 1", "START TIMELINE: 10")
            .replace("(file 00000001", "(file 0000000A")
            .replace("LABEL: fx", "LABEL: nightly: db1 ")
            + "INCREMENTAL FROM LSN: 0/1000028\nINCREMENTAL FROM TLI: 1\n";
        let l = parse_backup_label(&text).unwrap();
        assert_eq!(l.start_timeline, TimelineId(10));
        assert_eq!(l.label, "nightly: db1 ");
        assert_eq!(
            parse_backup_label(&PG15.replace("LABEL: fx", "LABEL: "))
                .unwrap()
                .label,
            ""
        );
    }

    #[test]
    fn missing_or_malformed_lines_are_errors() {
        let drop = |key: &str| {
            PG15.lines()
                .filter(|l| !l.starts_with(key))
                .collect::<Vec<_>>()
                .join("\n")
        };
        assert_eq!(
            parse_backup_label(&drop("START WAL")),
            Err(BackupLabelError::Missing(START_WAL))
        );
        assert_eq!(
            parse_backup_label(&drop("CHECKPOINT")),
            Err(BackupLabelError::Missing(CHECKPOINT))
        );
        assert_eq!(
            parse_backup_label(&drop("START TIMELINE")),
            Err(BackupLabelError::Missing(TIMELINE))
        );
        assert_eq!(
            parse_backup_label(&drop("LABEL")),
            Err(BackupLabelError::Missing(LABEL))
        );
        assert_eq!(
            parse_backup_label(""),
            Err(BackupLabelError::Missing(START_WAL))
        );
        for (from, to) in [
            ("0/2000028 (file", "0/20000Z8 (file"),
            ("000000010000000000000002)", "00000001000000000000002)"),
            ("000000010000000000000002)", "000000010000000000000002"),
            ("START TIMELINE: 1", "START TIMELINE: 0x1"),
            (
                "CHECKPOINT LOCATION: 0/2000060",
                "CHECKPOINT LOCATION: 2000060",
            ),
        ] {
            assert!(
                matches!(
                    parse_backup_label(&PG15.replace(from, to)),
                    Err(BackupLabelError::Invalid { .. })
                ),
                "{to}"
            );
        }
        let other_tli = PG15.replace("START TIMELINE: 1", "START TIMELINE: 2");
        assert!(matches!(
            parse_backup_label(&other_tli),
            Err(BackupLabelError::TimelineMismatch { .. })
        ));
    }
}
