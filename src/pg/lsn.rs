//! Log sequence numbers and timeline ids, printed the way PostgreSQL prints them.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A WAL position (`XLogRecPtr`), printed as `0/16B3748`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

impl Lsn {
    /// Number of the WAL segment holding this position (`XLByteToSeg`).
    pub fn segment_number(self, segment_size: u64) -> u64 {
        self.0 / segment_size
    }

    /// Number of the segment holding the byte just before this position (`XLByteToPrevSeg`):
    /// a stop LSN exactly on a segment boundary does not need the next segment.
    pub fn prev_segment_number(self, segment_size: u64) -> u64 {
        self.0.saturating_sub(1) / segment_size
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("invalid LSN {0:?}: expected two hexadecimal numbers separated by '/', like 0/16B3748")]
pub struct ParseLsnError(String);

impl FromStr for Lsn {
    type Err = ParseLsnError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseLsnError(s.to_string());
        let (hi, lo) = s.trim().split_once('/').ok_or_else(err)?;
        let hi = u32::from_str_radix(hi, 16).map_err(|_| err())?;
        let lo = u32::from_str_radix(lo, 16).map_err(|_| err())?;
        Ok(Lsn(((hi as u64) << 32) | lo as u64))
    }
}

impl Serialize for Lsn {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Lsn {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A timeline id. Always hexadecimal in file names (`00000002.history`) and in
/// `backup_label`'s `START TIMELINE` is decimal: parse each at its own edge.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TimelineId(pub u32);

impl TimelineId {
    /// Parses the 8-hex-digit form used in WAL and history file names.
    pub fn from_hex(s: &str) -> Option<TimelineId> {
        if s.len() != 8 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        u32::from_str_radix(s, 16)
            .ok()
            .filter(|&t| t != 0)
            .map(TimelineId)
    }

    pub fn hex(self) -> String {
        format!("{:08X}", self.0)
    }
}

impl fmt::Display for TimelineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_prints_and_parses_like_postgres() {
        let lsn: Lsn = "0/16B3748".parse().unwrap();
        assert_eq!(lsn.0, 0x16B3748);
        assert_eq!(lsn.to_string(), "0/16B3748");
        assert_eq!(Lsn(0x1_0000_0000).to_string(), "1/0");
        assert!("16B3748".parse::<Lsn>().is_err());
        assert!("0/xyz".parse::<Lsn>().is_err());
    }

    #[test]
    fn stop_lsn_on_segment_boundary_belongs_to_previous_segment() {
        let seg = 16 * 1024 * 1024;
        assert_eq!(Lsn(2 * seg).prev_segment_number(seg), 1);
        assert_eq!(Lsn(2 * seg + 1).prev_segment_number(seg), 2);
    }

    #[test]
    fn timeline_ids_are_hexadecimal_in_names() {
        assert_eq!(TimelineId::from_hex("0000000A"), Some(TimelineId(10)));
        assert_eq!(TimelineId::from_hex("00000000"), None);
        assert_eq!(TimelineId::from_hex("1"), None);
        assert_eq!(TimelineId(26).hex(), "0000001A");
    }
}
