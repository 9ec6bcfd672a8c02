//! Names of the files PostgreSQL hands to `archive_command`, parsed into validated types
//! at the edge so no code ever slices an unchecked name.

use std::fmt;

use super::lsn::{Lsn, TimelineId};

/// A WAL segment identified the way its file name spells it: timeline, "log" and "seg"
/// halves (`TTTTTTTTLLLLLLLLSSSSSSSS`). Converting to a segment number needs the segment size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WalSegment {
    pub timeline: TimelineId,
    pub log: u32,
    pub seg: u32,
}

impl WalSegment {
    pub fn from_segno(timeline: TimelineId, segno: u64, segment_size: u64) -> WalSegment {
        let per_log = segments_per_log(segment_size);
        WalSegment {
            timeline,
            log: (segno / per_log) as u32,
            seg: (segno % per_log) as u32,
        }
    }

    pub fn containing(timeline: TimelineId, lsn: Lsn, segment_size: u64) -> WalSegment {
        Self::from_segno(timeline, lsn.segment_number(segment_size), segment_size)
    }

    pub fn segno(&self, segment_size: u64) -> u64 {
        self.log as u64 * segments_per_log(segment_size) + self.seg as u64
    }

    /// LSN of the first byte of this segment.
    pub fn start_lsn(&self, segment_size: u64) -> Lsn {
        Lsn(self.segno(segment_size) * segment_size)
    }

    pub fn next(&self, segment_size: u64) -> WalSegment {
        Self::from_segno(self.timeline, self.segno(segment_size) + 1, segment_size)
    }

    /// The 16-character directory part shared by up to one "log" worth of segments.
    pub fn log_prefix(&self) -> String {
        format!("{}{:08X}", self.timeline.hex(), self.log)
    }

    fn parse(s: &str) -> Option<WalSegment> {
        if s.len() != 24 || !is_upper_hex(s) {
            return None;
        }
        Some(WalSegment {
            timeline: TimelineId::from_hex(&s[0..8])?,
            log: u32::from_str_radix(&s[8..16], 16).ok()?,
            seg: u32::from_str_radix(&s[16..24], 16).ok()?,
        })
    }
}

impl fmt::Display for WalSegment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{:08X}{:08X}", self.timeline.hex(), self.log, self.seg)
    }
}

fn segments_per_log(segment_size: u64) -> u64 {
    0x1_0000_0000 / segment_size
}

fn is_upper_hex(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b))
}

/// Any file PostgreSQL archives.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum WalFileName {
    Segment(WalSegment),
    /// The last, incomplete segment of a timeline left behind at promotion.
    Partial(WalSegment),
    /// `SEGMENT.OFFSET.backup`: the backup history file written by `pg_backup_stop`.
    BackupHistory {
        segment: WalSegment,
        offset: u32,
    },
    /// `TIMELINE.history`.
    History(TimelineId),
}

#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not a WAL file name (expected a 24-hex-digit segment, SEGMENT.partial, SEGMENT.XXXXXXXX.backup or TIMELINE.history)")]
pub struct InvalidWalFileName(pub String);

impl WalFileName {
    pub fn parse(name: &str) -> Result<WalFileName, InvalidWalFileName> {
        Self::try_parse(name).ok_or_else(|| InvalidWalFileName(name.to_string()))
    }

    fn try_parse(name: &str) -> Option<WalFileName> {
        if let Some(tli) = name.strip_suffix(".history") {
            return TimelineId::from_hex(tli)
                .filter(|_| is_upper_hex(tli))
                .map(WalFileName::History);
        }
        if let Some(seg) = name.strip_suffix(".partial") {
            return WalSegment::parse(seg).map(WalFileName::Partial);
        }
        if let Some(rest) = name.strip_suffix(".backup") {
            let (seg, offset) = rest.split_once('.')?;
            if offset.len() != 8 || !is_upper_hex(offset) {
                return None;
            }
            return Some(WalFileName::BackupHistory {
                segment: WalSegment::parse(seg)?,
                offset: u32::from_str_radix(offset, 16).ok()?,
            });
        }
        WalSegment::parse(name).map(WalFileName::Segment)
    }

    pub fn timeline(&self) -> TimelineId {
        match self {
            WalFileName::Segment(s) | WalFileName::Partial(s) => s.timeline,
            WalFileName::BackupHistory { segment, .. } => segment.timeline,
            WalFileName::History(t) => *t,
        }
    }

    /// The segment this file belongs to, if any (history files belong to none).
    pub fn segment(&self) -> Option<WalSegment> {
        match self {
            WalFileName::Segment(s) | WalFileName::Partial(s) => Some(*s),
            WalFileName::BackupHistory { segment, .. } => Some(*segment),
            WalFileName::History(_) => None,
        }
    }
}

impl fmt::Display for WalFileName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WalFileName::Segment(s) => write!(f, "{s}"),
            WalFileName::Partial(s) => write!(f, "{s}.partial"),
            WalFileName::BackupHistory { segment, offset } => {
                write!(f, "{segment}.{offset:08X}.backup")
            }
            WalFileName::History(t) => write!(f, "{}.history", t.hex()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    const SEG: u64 = 16 * 1024 * 1024;

    #[test]
    fn every_kind_of_archived_name_round_trips() {
        for name in [
            "000000010000000000000001",
            "0000000A00000001000000FF",
            "000000020000000000000003.partial",
            "000000010000000000000002.00000028.backup",
            "0000001A.history",
        ] {
            assert_eq!(WalFileName::parse(name).unwrap().to_string(), name);
        }
    }

    #[test]
    fn malformed_names_are_refused_without_panicking() {
        for name in [
            "",
            "0000000100000000",
            "00000001000000000000000g",
            "000000000000000000000001",
            "000000010000000000000001.backup",
            "1.history",
            "00000001.History",
            "../etc/passwd",
            "000000010000000000000001.partial.x",
            "0000000100000000000000010",
        ] {
            assert!(WalFileName::parse(name).is_err(), "{name}");
        }
    }

    #[test]
    fn segment_numbers_follow_segment_size() {
        let s = WalSegment::parse("0000000100000001000000FF").unwrap();
        assert_eq!(s.segno(SEG), 256 + 255);
        assert_eq!(s.next(SEG).to_string(), "000000010000000200000000");
        assert_eq!(WalSegment::from_segno(TimelineId(1), 256 + 255, SEG), s);
        // 64 MiB segments: 64 per log
        let big = WalSegment::from_segno(TimelineId(1), 65, 64 * 1024 * 1024);
        assert_eq!(big.to_string(), "000000010000000100000001");
        assert_eq!(
            WalSegment::containing(TimelineId(3), Lsn(0x1_0300_0028), SEG).to_string(),
            "000000030000000100000003"
        );
    }
}
