//! Backup labels: `YYYYMMDD-HHMMSS` (UTC) plus a type letter, so that sorting labels
//! sorts backups by start time.

use chrono::{DateTime, NaiveDateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackupType {
    Full,
    Diff,
    Incr,
}

impl BackupType {
    pub fn letter(self) -> char {
        match self {
            BackupType::Full => 'F',
            BackupType::Diff => 'D',
            BackupType::Incr => 'I',
        }
    }
}

impl std::fmt::Display for BackupType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BackupType::Full => "full",
            BackupType::Diff => "diff",
            BackupType::Incr => "incr",
        })
    }
}

const TIME_FORMAT: &str = "%Y%m%d-%H%M%S";

/// A new label for a backup starting `now`, later than every existing label.
pub fn new_label(kind: BackupType, now: DateTime<Utc>, existing: &[String]) -> String {
    let latest = existing.iter().filter_map(|l| label_time(l)).max();
    let at = match latest {
        Some(t) if t >= now.timestamp() => t + 1,
        _ => now.timestamp(),
    };
    let time = Utc.timestamp_opt(at, 0).single().expect("valid time");
    format!("{}{}", time.format(TIME_FORMAT), kind.letter())
}

/// Seconds since the epoch a label names; None for anything that is not a label.
pub fn label_time(label: &str) -> Option<i64> {
    if label.len() != 16 || !matches!(label.as_bytes()[15], b'F' | b'D' | b'I') {
        return None;
    }
    NaiveDateTime::parse_from_str(&label[..15], TIME_FORMAT)
        .ok()
        .map(|t| t.and_utc().timestamp())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_sort_by_time_and_never_collide() {
        let now = Utc.with_ymd_and_hms(2026, 11, 21, 12, 0, 0).unwrap();
        let first = new_label(BackupType::Full, now, &[]);
        assert_eq!(first, "20261121-120000F");
        let second = new_label(BackupType::Incr, now, std::slice::from_ref(&first));
        assert_eq!(second, "20261121-120001I");
        assert!(first < second);
        assert_eq!(label_time("garbage"), None);
        assert_eq!(label_time("20261121-12000XF"), None);
    }
}
