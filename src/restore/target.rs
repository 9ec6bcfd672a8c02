//! Recovery targets: choosing the backup to start from and the settings that make
//! PostgreSQL stop where the operator asked.

use chrono::{DateTime, FixedOffset, NaiveDateTime, Utc};

use crate::error::{Error, ErrorKind, Result};
use crate::pg::{Lsn, TimelineId};
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
/// time without an offset is refused: PostgreSQL would read it in the restored cluster's
/// `timezone`, pgward cannot know that zone when it picks the backup and checks the
/// window, and guessing UTC restores to the wrong moment anywhere else.
pub fn parse_target_time(s: &str) -> Result<DateTime<FixedOffset>> {
    const HINT: &str =
        "use PostgreSQL's format with an offset, for example '2026-11-21 12:00:00+00'";
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
        if NaiveDateTime::parse_from_str(s, fmt).is_ok() {
            return Err(Error::config(format!("--target-time {s:?} has no UTC offset")).hint(HINT));
        }
    }
    Err(Error::config(format!(
        "--target-time {s:?} is not a time pgward understands"
    ))
    .hint(HINT))
}

/// Longest restore point name: `pg_create_restore_point` refuses MAXFNAMELEN (64) bytes
/// or more.
const MAX_RESTORE_POINT_NAME: usize = 63;

/// Refuses a `--target-name` that cannot name a restore point pgward can target: empty
/// (PostgreSQL reads an empty `recovery_target_name` as no target at all, and would replay
/// everything), longer than PostgreSQL allows, or holding characters that
/// postgresql.auto.conf's quoting would change: control characters (a newline ends the
/// line), a quote or a backslash (escape characters in a quoted setting). PostgreSQL lets
/// `pg_create_restore_point` take such names; a restore point named so is reached with
/// `--target-lsn` or `--target-time` instead.
pub fn check_target_name(name: &str) -> Result<()> {
    let problem = if name.is_empty() {
        Some("is empty".to_string())
    } else if name.len() > MAX_RESTORE_POINT_NAME {
        Some(format!(
            "is {} bytes long; PostgreSQL's restore point names have at most {MAX_RESTORE_POINT_NAME}",
            name.len()
        ))
    } else if let Some(c) = name.chars().find(|c| c.is_control()) {
        Some(format!("holds the control character {c:?}"))
    } else if name.contains('\'') {
        Some("holds a quote ('), which postgresql.auto.conf reads as quoting".to_string())
    } else if name.contains('\\') {
        Some("holds a backslash (\\), which postgresql.auto.conf reads as an escape".to_string())
    } else {
        None
    };
    match problem {
        None => Ok(()),
        Some(problem) => Err(
            Error::config(format!("--target-name {name:?} {problem}")).hint(
                "give the name exactly as passed to pg_create_restore_point (at most 63 bytes, \
             no control characters, quotes or backslashes); a restore point with such a name \
             is reached with --target-lsn or --target-time",
            ),
        ),
    }
}

/// `--target-timeline`, read as PostgreSQL reads `recovery_target_timeline`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimelineGoal {
    /// The newest timeline whose history files follow the backup's without a gap.
    Latest,
    /// The backup's own timeline.
    Current,
    Id(TimelineId),
}

/// `latest`, `current`, or a number as C's `strtoul(s, NULL, 0)` reads it (decimal,
/// `0x` hexadecimal, a leading `0` octal), which is what PostgreSQL does.
pub fn parse_target_timeline(s: &str) -> Result<TimelineGoal> {
    let number = if let Some(hex) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        u32::from_str_radix(hex, 16).ok()
    } else if s.len() > 1 && s.starts_with('0') {
        u32::from_str_radix(&s[1..], 8).ok()
    } else {
        s.parse::<u32>().ok()
    };
    match (s, number) {
        ("latest", _) => Ok(TimelineGoal::Latest),
        ("current", _) => Ok(TimelineGoal::Current),
        (_, Some(n)) if n > 0 => Ok(TimelineGoal::Id(TimelineId(n))),
        _ => Err(Error::config(format!(
            "--target-timeline {s:?}: expected latest, current or a timeline number"
        ))
        .hint("`pgward info` lists the archive's timelines")),
    }
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

/// The recovery target options as given (clap lets at most one be set); none is the
/// end of the archive. Shared by `restore` and `drill`.
#[derive(Clone, Debug, Default)]
pub struct TargetOptions<'a> {
    pub time: Option<&'a str>,
    pub xid: Option<u64>,
    pub lsn: Option<&'a str>,
    pub name: Option<&'a str>,
    pub immediate: bool,
}

impl TargetOptions<'_> {
    pub fn parse(&self) -> Result<RecoveryTarget> {
        Ok(if let Some(t) = self.time {
            RecoveryTarget::Time(parse_target_time(t)?)
        } else if let Some(x) = self.xid {
            RecoveryTarget::Xid(x)
        } else if let Some(l) = self.lsn {
            RecoveryTarget::Lsn(l.parse().map_err(|e: crate::pg::lsn::ParseLsnError| {
                Error::config(format!("--target-lsn: {e}"))
            })?)
        } else if let Some(n) = self.name {
            check_target_name(n)?;
            RecoveryTarget::Name(n.to_string())
        } else if self.immediate {
            RecoveryTarget::Immediate
        } else {
            RecoveryTarget::EndOfArchive
        })
    }
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
        let t = parse_target_time("2026-11-21T12:00:00Z").unwrap();
        assert_eq!(t.offset().local_minus_utc(), 0);
        let t = parse_target_time("2026-11-21 12:00:00+05:30").unwrap();
        assert_eq!(t.offset().local_minus_utc(), 5 * 3600 + 1800);
        assert!(parse_target_time("yesterday").is_err());
    }

    #[test]
    fn a_time_without_offset_is_refused_with_the_format_hint() {
        for s in ["2026-11-21 12:00:00", "2026-11-21T12:00:00.5"] {
            let e = parse_target_time(s).unwrap_err();
            assert_eq!(e.kind, ErrorKind::Config);
            assert!(e.to_string().contains("has no UTC offset"), "{e}");
            assert_eq!(
                e.hint.as_deref(),
                parse_target_time("yesterday").unwrap_err().hint.as_deref()
            );
        }
    }

    #[test]
    fn target_names_postgresql_could_not_have_written_are_refused() {
        assert!(check_target_name("before_migration").is_ok());
        assert!(check_target_name("with space and \"double quotes\" ünïcode").is_ok());
        assert!(check_target_name(&"x".repeat(63)).is_ok());
        for bad in [
            "",
            "a\nb",
            "a\rb",
            "tab\there",
            "it's",
            "back\\slash",
            "\u{7f}",
        ] {
            let e = check_target_name(bad).unwrap_err();
            assert_eq!(e.kind, ErrorKind::Config, "{bad:?}");
        }
        assert!(check_target_name(&"x".repeat(64)).is_err());
        // 63 bytes is the limit, not 63 characters.
        assert!(check_target_name(&"é".repeat(32)).is_err());
    }

    #[test]
    fn target_timelines_read_like_postgresql() {
        use TimelineGoal::*;
        let p = |s| parse_target_timeline(s).ok();
        assert_eq!(p("latest"), Some(Latest));
        assert_eq!(p("current"), Some(Current));
        assert_eq!(p("10"), Some(Id(TimelineId(10))));
        assert_eq!(p("0xA"), Some(Id(TimelineId(10))));
        assert_eq!(p("012"), Some(Id(TimelineId(10))));
        for bad in ["0", "", "0x", "09", "-1", "newest", "1.5"] {
            assert_eq!(p(bad), None, "{bad:?}");
        }
    }
}
