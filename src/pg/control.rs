//! `global/pg_control` (`ControlFileData` in `src/include/catalog/pg_control.h`).
//!
//! The struct is written in the server's native byte order and alignment; we read the
//! little-endian, 8-byte-aligned (x86-64 / arm64) layout. Every field we read sits at the same
//! offset in PG 13–18: PG 17 put `wal_level` into padding inside the embedded `CheckPoint`, and
//! PG 18 appended `default_char_signedness` after `data_checksum_version`, which pushes the nonce
//! and so the CRC back by 4 bytes. The CRC-32C covers everything before the `crc` field.

use serde::{Deserialize, Serialize};

use super::lsn::{Lsn, TimelineId};

// Offsets of the fields we read (identical for pg_control_version 1300, 1700 and 1800).
const OFF_SYSID: usize = 0;
const OFF_CONTROL_VERSION: usize = 8;
const OFF_CATALOG_VERSION: usize = 12;
const OFF_STATE: usize = 16;
const OFF_CHECKPOINT: usize = 32;
/// `checkPointCopy` starts at 40: `redo` first, then `ThisTimeLineID`.
const OFF_REDO: usize = 40;
const OFF_TIMELINE: usize = 48;
const OFF_BLCKSZ: usize = 216;
const OFF_XLOG_SEG_SIZE: usize = 228;
const OFF_DATA_CHECKSUM_VERSION: usize = 252;

/// Where the CRC lives for each `pg_control_version` we understand: 13–16 share 1300.
fn crc_offset(pg_control_version: u32) -> Option<usize> {
    match pg_control_version {
        1300 | 1700 => Some(288),
        1800 => Some(292),
        _ => None,
    }
}

/// The fields of `pg_control` a backup tool needs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlFile {
    pub system_identifier: u64,
    pub pg_control_version: u32,
    pub catalog_version: u32,
    /// `DBState`: 0 starting up, 1 shut down, 2 shut down in recovery, 3 shutting down,
    /// 4 in crash recovery, 5 in archive recovery, 6 in production.
    pub state: u32,
    pub checkpoint_lsn: Lsn,
    pub redo_lsn: Lsn,
    /// `ThisTimeLineID` of the latest checkpoint.
    pub timeline: TimelineId,
    pub block_size: u32,
    pub wal_segment_size: u32,
    /// 0 = data checksums off, 1 = on.
    pub data_checksum_version: u32,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ControlFileError {
    #[error("pg_control is too short: {len} bytes, need at least {need}")]
    TooShort { len: usize, need: usize },
    #[error("pg_control was written by a big-endian server (pg_control_version {0} byte-swapped); only little-endian clusters are supported")]
    BigEndian(u32),
    #[error("unsupported pg_control_version {0} (supported: 1300 for PG 13-16, 1700 for PG 17, 1800 for PG 18)")]
    UnsupportedVersion(u32),
    #[error("pg_control CRC mismatch: stored {stored:#010x}, computed {computed:#010x}; the file is corrupt or torn")]
    CrcMismatch { stored: u32, computed: u32 },
    #[error("pg_control names a WAL segment size of {0} bytes; PostgreSQL's are powers of two from 1 MiB to 1 GiB")]
    BadSegmentSize(u32),
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().expect("8 bytes"))
}

/// PostgreSQL's IsValidWalSegSize: a power of two from 1 MiB to 1 GiB. Every segment
/// computation divides by the size, so a stored one is checked before it is trusted.
pub fn is_valid_wal_segment_size(size: u64) -> bool {
    size.is_power_of_two() && (1 << 20..=1 << 30).contains(&size)
}

/// Parses `pg_control`, refusing to trust any field until the CRC-32C checks out.
pub fn parse_control_file(bytes: &[u8]) -> Result<ControlFile, ControlFileError> {
    let header = OFF_CATALOG_VERSION + 4;
    if bytes.len() < header {
        return Err(ControlFileError::TooShort {
            len: bytes.len(),
            need: header,
        });
    }
    let version = u32_at(bytes, OFF_CONTROL_VERSION);
    let crc_off = match crc_offset(version) {
        Some(off) => off,
        None if crc_offset(version.swap_bytes()).is_some() => {
            return Err(ControlFileError::BigEndian(version.swap_bytes()))
        }
        None => return Err(ControlFileError::UnsupportedVersion(version)),
    };
    if bytes.len() < crc_off + 4 {
        return Err(ControlFileError::TooShort {
            len: bytes.len(),
            need: crc_off + 4,
        });
    }
    let stored = u32_at(bytes, crc_off);
    let computed = crc32c::crc32c(&bytes[..crc_off]);
    if stored != computed {
        return Err(ControlFileError::CrcMismatch { stored, computed });
    }
    let wal_segment_size = u32_at(bytes, OFF_XLOG_SEG_SIZE);
    if !is_valid_wal_segment_size(wal_segment_size.into()) {
        return Err(ControlFileError::BadSegmentSize(wal_segment_size));
    }
    Ok(ControlFile {
        system_identifier: u64_at(bytes, OFF_SYSID),
        pg_control_version: version,
        catalog_version: u32_at(bytes, OFF_CATALOG_VERSION),
        state: u32_at(bytes, OFF_STATE),
        checkpoint_lsn: Lsn(u64_at(bytes, OFF_CHECKPOINT)),
        redo_lsn: Lsn(u64_at(bytes, OFF_REDO)),
        timeline: TimelineId(u32_at(bytes, OFF_TIMELINE)),
        block_size: u32_at(bytes, OFF_BLCKSZ),
        wal_segment_size,
        data_checksum_version: u32_at(bytes, OFF_DATA_CHECKSUM_VERSION),
    })
}

/// `CATALOG_VERSION_NO` of each release (never changes within a major).
const RELEASE_CATALOG_VERSIONS: [(u32, u32); 4] = [
    (13, 202007201),
    (14, 202107181),
    (15, 202209061),
    (16, 202307071),
];

impl ControlFile {
    /// The PostgreSQL major version, best effort. 17 and 18 have their own
    /// `pg_control_version`; 13–16 share 1300, so those are told apart by catalog version:
    /// anything after the previous major's release catversion up to this one's. Development
    /// snapshots between branching and release can be misattributed or give `None`.
    pub fn major_version(&self) -> Option<u32> {
        match self.pg_control_version {
            1700 => Some(17),
            1800 => Some(18),
            1300 => {
                let mut prev = 201909212; // PG 12's release catversion
                for (major, cat) in RELEASE_CATALOG_VERSIONS {
                    if self.catalog_version > prev && self.catalog_version <= cat {
                        return Some(major);
                    }
                    prev = cat;
                }
                None
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PG15: &[u8] = include_bytes!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/pg15/pg_control"
    ));

    #[test]
    fn parses_a_real_pg15_control_file_like_pg_controldata() {
        // Values from tests/fixtures/pg15/pg_controldata.txt (cleanly shut down cluster).
        let c = parse_control_file(PG15).unwrap();
        assert_eq!(c.system_identifier, 7710602386710402550);
        assert_eq!(c.pg_control_version, 1300);
        assert_eq!(c.catalog_version, 202209061);
        assert_eq!(c.state, 1, "shut down");
        assert_eq!(c.checkpoint_lsn.to_string(), "0/5000028");
        assert_eq!(c.redo_lsn.to_string(), "0/5000028");
        assert_eq!(c.timeline, TimelineId(1));
        assert_eq!(c.block_size, 8192);
        assert_eq!(c.wal_segment_size, 16 * 1024 * 1024);
        assert_eq!(c.data_checksum_version, 1);
        assert_eq!(c.major_version(), Some(15));
        // Only the CRC-covered prefix matters.
        assert_eq!(parse_control_file(&PG15[..292]).unwrap(), c);
    }

    #[test]
    fn any_flipped_byte_is_a_crc_error() {
        for off in [0, 40, 216, 287, 288] {
            let mut b = PG15.to_vec();
            b[off] ^= 0x01;
            assert!(
                matches!(
                    parse_control_file(&b),
                    Err(ControlFileError::CrcMismatch { .. })
                ),
                "{off}"
            );
        }
    }

    #[test]
    fn short_or_foreign_input_is_an_error_not_a_panic() {
        for len in [0, 7, 15, 16, 200, 291] {
            assert!(
                matches!(
                    parse_control_file(&PG15[..len]),
                    Err(ControlFileError::TooShort { .. })
                ),
                "{len}"
            );
        }
        let mut b = PG15.to_vec();
        b[8..12].copy_from_slice(&1201u32.to_le_bytes());
        assert_eq!(
            parse_control_file(&b),
            Err(ControlFileError::UnsupportedVersion(1201))
        );
        b[8..12].copy_from_slice(&1300u32.to_be_bytes());
        assert_eq!(
            parse_control_file(&b),
            Err(ControlFileError::BigEndian(1300))
        );
    }

    #[test]
    fn a_segment_size_postgresql_cannot_have_is_refused() {
        for size in [0u32, 4096, (16 << 20) + 1, 2 << 30] {
            let mut b = PG15.to_vec();
            b[OFF_XLOG_SEG_SIZE..OFF_XLOG_SEG_SIZE + 4].copy_from_slice(&size.to_le_bytes());
            let crc = crc32c::crc32c(&b[..288]);
            b[288..292].copy_from_slice(&crc.to_le_bytes());
            assert_eq!(
                parse_control_file(&b),
                Err(ControlFileError::BadSegmentSize(size)),
                "{size}"
            );
        }
    }

    /// PG 18 moves the CRC to 292; rebuild the fixture as if written by 18 to prove we look there.
    #[test]
    fn pg18_layout_has_its_crc_four_bytes_later() {
        let mut b = PG15[..296].to_vec();
        b[8..12].copy_from_slice(&1800u32.to_le_bytes());
        b[12..16].copy_from_slice(&202506291u32.to_le_bytes());
        let crc = crc32c::crc32c(&b[..292]);
        b[292..296].copy_from_slice(&crc.to_le_bytes());
        let c = parse_control_file(&b).unwrap();
        assert_eq!(
            (
                c.major_version(),
                c.wal_segment_size,
                c.data_checksum_version
            ),
            (Some(18), 16 << 20, 1)
        );
    }

    #[test]
    fn major_version_from_catalog_version() {
        let mut c = parse_control_file(PG15).unwrap();
        for (cat, want) in [
            (202007201, Some(13)),
            (202107181, Some(14)),
            (202307071, Some(16)),
            (202310181, None),
        ] {
            c.catalog_version = cat;
            assert_eq!(c.major_version(), want, "{cat}");
        }
        c.pg_control_version = 1700;
        assert_eq!(c.major_version(), Some(17));
    }
}
