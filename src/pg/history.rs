//! Timeline history files (`0000000A.history`), written by `writeTimeLineHistory` and read by
//! `readTimeLineHistory` in `src/backend/access/transam/timeline.c`.
//!
//! Each line is `parentTLI<TAB>switchpoint<TAB>reason`. The parent TLI is printed in *decimal*
//! even though the file name is hex (timeline 10 is line `10`, file `0000000A.history`). A new
//! timeline's file is its parent's file plus one line, joined by an empty line, so blank lines
//! are normal; `#` comments are allowed. Like PostgreSQL we require only the first two fields.

use serde::{Deserialize, Serialize};

use super::lsn::{Lsn, TimelineId};

/// One ancestor: `timeline` held WAL up to (not including) `switch_point`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub timeline: TimelineId,
    pub switch_point: Lsn,
    pub reason: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HistoryError {
    #[error("history file line {line}: expected a decimal timeline ID, got {got:?}")]
    BadTimeline { line: usize, got: String },
    #[error("history file line {line}: expected a WAL switch point like 0/4000028, got {got:?}")]
    BadSwitchPoint { line: usize, got: String },
    #[error("history file line {line}: timeline {tli} does not follow {prev}; IDs must increase")]
    NotIncreasing { line: usize, tli: u32, prev: u32 },
    #[error("history file line {line}: switch point {lsn} is before the previous one {prev}")]
    SwitchPointBackwards { line: usize, lsn: Lsn, prev: Lsn },
}

/// Parses a history file into its entries, oldest first.
pub fn parse_history(text: &str) -> Result<Vec<HistoryEntry>, HistoryError> {
    let mut entries: Vec<HistoryEntry> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line_no = i + 1;
        let line = raw.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (tli_str, rest) = split_field(line);
        let tli = tli_str
            .parse::<u32>()
            .ok()
            .filter(|&t| t != 0)
            .ok_or_else(|| HistoryError::BadTimeline {
                line: line_no,
                got: tli_str.to_string(),
            })?;
        let (lsn_str, reason) = split_field(rest);
        let switch_point = lsn_str
            .parse::<Lsn>()
            .map_err(|_| HistoryError::BadSwitchPoint {
                line: line_no,
                got: lsn_str.to_string(),
            })?;
        if let Some(prev) = entries.last() {
            if tli <= prev.timeline.0 {
                return Err(HistoryError::NotIncreasing {
                    line: line_no,
                    tli,
                    prev: prev.timeline.0,
                });
            }
            // PostgreSQL does not check this, but timeline_of_lsn relies on it.
            if switch_point < prev.switch_point {
                return Err(HistoryError::SwitchPointBackwards {
                    line: line_no,
                    lsn: switch_point,
                    prev: prev.switch_point,
                });
            }
        }
        entries.push(HistoryEntry {
            timeline: TimelineId(tli),
            switch_point,
            reason: reason.trim_end().to_string(),
        });
    }
    Ok(entries)
}

/// Splits off the first whitespace-delimited field (PostgreSQL reads with `sscanf`, so any
/// whitespace separates fields).
fn split_field(s: &str) -> (&str, &str) {
    let s = s.trim_start();
    match s.find(char::is_whitespace) {
        Some(end) => (&s[..end], s[end..].trim_start()),
        None => (s, ""),
    }
}

/// The timeline whose WAL contains position `lsn` when following `target`'s ancestry
/// (`tliOfPointInHistory`). `history` is `target`'s own history file: each ancestor owns the
/// WAL before its switch point, and `target` owns everything from the last switch point on.
/// A switch point itself belongs to the child: the parent's WAL ends just before it.
pub fn timeline_of_lsn(target: TimelineId, history: &[HistoryEntry], lsn: Lsn) -> TimelineId {
    history
        .iter()
        .find(|e| lsn < e.switch_point)
        .map_or(target, |e| e.timeline)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TLI2: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/pg15/00000002.history"
    ));
    /// Eleven promotions of the PG 15 fixture cluster: shows decimal TLIs and blank lines.
    const TLI12: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/pg15/0000000C.history"
    ));

    #[test]
    fn parses_real_history_from_pitr_promotion() {
        let h = parse_history(TLI2).unwrap();
        assert_eq!(
            h,
            [HistoryEntry {
                timeline: TimelineId(1),
                switch_point: "0/400BD28".parse().unwrap(),
                reason: "at restore point \"fx_rp\"".into()
            }]
        );
    }

    #[test]
    fn parent_timelines_are_decimal() {
        let h = parse_history(TLI12).unwrap();
        assert_eq!(h.len(), 11);
        assert_eq!(
            h.iter().map(|e| e.timeline.0).collect::<Vec<_>>(),
            (1..=11).collect::<Vec<_>>()
        );
        assert_eq!(h[9].timeline, TimelineId(10)); // line "10\t0/C0000A0\t..."
        assert_eq!(h[9].switch_point, Lsn(0xC0000A0));
        assert_eq!(h[10].reason, "no recovery target specified");
    }

    #[test]
    fn lsn_to_timeline_follows_ancestry() {
        let h = parse_history(TLI12).unwrap();
        let t = |s: &str| timeline_of_lsn(TimelineId(12), &h, s.parse().unwrap()).0;
        assert_eq!(t("0/1000000"), 1);
        assert_eq!(t("0/400BD27"), 1);
        assert_eq!(t("0/400BD28"), 2, "the switch point belongs to the child");
        assert_eq!(t("0/400BE17"), 2);
        assert_eq!(t("0/C0000A0"), 11);
        assert_eq!(t("0/D0000A0"), 12);
        assert_eq!(t("5/0"), 12);
        assert_eq!(timeline_of_lsn(TimelineId(1), &[], Lsn(42)), TimelineId(1));
    }

    #[test]
    fn comments_missing_reason_and_errors() {
        let h =
            parse_history("# made by hand\n\n  1\t0/3000000\n3 0/5000000 skipped two\r\n").unwrap();
        assert_eq!(h[0].reason, "");
        assert_eq!(
            (h[1].timeline, h[1].reason.as_str()),
            (TimelineId(3), "skipped two")
        );
        assert!(parse_history("").unwrap().is_empty());
        assert!(matches!(
            parse_history("A\t0/1\tx"),
            Err(HistoryError::BadTimeline { line: 1, .. })
        ));
        assert!(matches!(
            parse_history("0\t0/1\tx"),
            Err(HistoryError::BadTimeline { .. })
        ));
        assert!(matches!(
            parse_history("1\n"),
            Err(HistoryError::BadSwitchPoint { .. })
        ));
        assert!(matches!(
            parse_history("1\t0/G\tx"),
            Err(HistoryError::BadSwitchPoint { .. })
        ));
        assert!(matches!(
            parse_history("2\t0/1\n\n1\t0/2\n"),
            Err(HistoryError::NotIncreasing { line: 3, .. })
        ));
        assert!(matches!(
            parse_history("1\t0/2\n2\t0/1\n"),
            Err(HistoryError::SwitchPointBackwards { .. })
        ));
    }
}
