//! Recovery targets: choosing the backup to start from and the settings that make
//! PostgreSQL stop where the operator asked.

use chrono::{DateTime, FixedOffset, NaiveDateTime, Utc};

use crate::error::{Error, ErrorKind, Result};
use crate::pg::Lsn;
use crate::repo::manifest::Manifest;

#[derive(Clone, Debug, PartialEq)]
pub enum RecoveryTarget {
    /// Replay all archived WAL.
    EndOfArchive,
    /// Stop as soon as the backup is consistent.
    Immediate,
    Time(DateTime<FixedOffset>),
    Xid(u64),
    Lsn(Lsn),
    Name(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TargetAction {
    Promote,
    Pause,
    Shutdown,
}

/// Parses a time as PostgreSQL prints it (`2026-11-21 12:00:00.123+00`) or ISO 8601. A
/// time without an offset is UTC, and is written for PostgreSQL with that offset, so
/// backup selection and recovery agree.
pub fn parse_target_time(s: &str) -> Result<DateTime<FixedOffset>> {
    let s = s.trim();
    // PostgreSQL prints offsets as "+00" or "-05"; chrono wants minutes too.
    let b = s.as_bytes();
    let short_offset =
        b.len() > 3 && matches!(b[b.len() - 3], b'+' | b'-') && s[..b.len() - 3].contains(':');
    let with_minutes = if short_offset {
        format!("{s}:00")
    } else {
        s.to_string()
    };
    for fmt in [
        "%Y-%m-%d %H:%M:%S%.f%:z",
        "%Y-%m-%dT%H:%M:%S%.f%:z",
        "%Y-%m-%d %H:%M:%S%.f%z",
    ] {
        if let Ok(t) = DateTime::parse_from_str(&with_minutes, fmt) {
            return Ok(t);
        }
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t);
    }
    for fmt in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(s, fmt) {
            return Ok(t.and_utc().fixed_offset());
        }
    }
    Err(Error::config(format!(
        "--target-time {s:?} is not a time pgward understands"
    ))
    .hint("use PostgreSQL's format with an offset, for example '2026-11-21 12:00:00+00'"))
}

/// The backup to restore: the named one, or the newest that ends before the target.
pub fn select_backup<'a>(
    manifests: &'a [Manifest],
    set: Option<&str>,
    target: &RecoveryTarget,
) -> Result<&'a Manifest> {
    if let Some(label) = set {
        let found = manifests.iter().find(|m| m.label == label);
        return found.ok_or_else(|| {
            Error::new(
                ErrorKind::NotFound,
                format!("backup {label} does not exist"),
            )
            .hint("`pgward info` lists the backups")
        });
    }
    let candidates = manifests.iter().rev();
    let chosen = match target {
        RecoveryTarget::Time(t) => candidates
            .clone()
            .find(|m| m.stop_time < t.with_timezone(&Utc)),
        RecoveryTarget::Lsn(lsn) => candidates.clone().find(|m| m.stop_lsn <= *lsn),
        _ => candidates.clone().next(),
    };
    chosen.ok_or_else(|| match target {
        RecoveryTarget::Time(_) | RecoveryTarget::Lsn(_) if !manifests.is_empty() => {
            Error::new(ErrorKind::NotFound, "no backup ends before the recovery target")
                .hint("a point-in-time restore needs a backup that finished before the target; `pgward info` shows the recoverable window")
        }
        _ => Error::new(ErrorKind::NotFound, "the stanza has no backups").hint("take one with `pgward backup`"),
    })
}

/// `postgresql.auto.conf` lines for the target, as (name, value) pairs.
pub fn target_settings(
    target: &RecoveryTarget,
    action: Option<TargetAction>,
    timeline: Option<&str>,
    exclusive: bool,
) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut set = |k: &str, v: String| out.push((k.to_string(), v));
    let has_target = !matches!(target, RecoveryTarget::EndOfArchive);
    match target {
        RecoveryTarget::EndOfArchive => {}
        RecoveryTarget::Immediate => set("recovery_target", "immediate".into()),
        RecoveryTarget::Time(t) => set(
            "recovery_target_time",
            t.format("%Y-%m-%d %H:%M:%S%.6f%:z").to_string(),
        ),
        RecoveryTarget::Xid(x) => set("recovery_target_xid", x.to_string()),
        RecoveryTarget::Lsn(l) => set("recovery_target_lsn", l.to_string()),
        RecoveryTarget::Name(n) => set("recovery_target_name", n.clone()),
    }
    if has_target && exclusive && !matches!(target, RecoveryTarget::Immediate) {
        set("recovery_target_inclusive", "false".into());
    }
    if let (true, Some(action)) = (has_target, action) {
        let a = match action {
            TargetAction::Promote => "promote",
            TargetAction::Pause => "pause",
            TargetAction::Shutdown => "shutdown",
        };
        set("recovery_target_action", a.into());
    }
    if let Some(tl) = timeline {
        set("recovery_target_timeline", tl.to_string());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_printed_times_parse_with_their_offset() {
        let t = parse_target_time("2026-11-21 12:00:00.123456+00").unwrap();
        assert_eq!(t.to_rfc3339(), "2026-11-21T12:00:00.123456+00:00");
        let t = parse_target_time("2026-11-21 14:00:00+02").unwrap();
        assert_eq!(
            t.with_timezone(&Utc).to_rfc3339(),
            "2026-11-21T12:00:00+00:00"
        );
        let t = parse_target_time("2026-11-21 12:00:00").unwrap();
        assert_eq!(t.offset().local_minus_utc(), 0);
        assert!(parse_target_time("yesterday").is_err());
    }
}
