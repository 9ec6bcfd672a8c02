//! The long page header at the start of every WAL segment (`XLogLongPageHeaderData` in
//! `src/include/access/xlog_internal.h`). Its layout is the same in PG 13–18; only the magic
//! number changes with each major, which makes it a reliable version tag for archived WAL.

use super::lsn::{Lsn, TimelineId};

/// `XLP_LONG_HEADER`: set in `xlp_info` on the first page of each segment.
pub const XLP_LONG_HEADER: u16 = 0x0002;
/// `XLP_FIRST_IS_CONTRECORD`: the page starts with the tail of a record from the previous page.
pub const XLP_FIRST_IS_CONTRECORD: u16 = 0x0001;
/// `SizeOfXLogLongPHD`: 24-byte short header + sysid (8) + seg size (4) + block size (4).
pub const WAL_LONG_PAGE_HEADER_SIZE: usize = 40;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WalLongPageHeader {
    pub magic: u16,
    pub info: u16,
    pub timeline: TimelineId,
    /// LSN of the first byte of this page, i.e. of the segment.
    pub page_address: Lsn,
    /// Bytes of a record continued from the previous segment (0 if none).
    pub remaining_length: u32,
    pub system_identifier: u64,
    pub segment_size: u32,
    pub block_size: u32,
}

impl WalLongPageHeader {
    pub fn pg_major(&self) -> Option<u32> {
        pg_major_for_wal_magic(self.magic)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WalHeaderError {
    #[error("WAL page is too short: {0} bytes, need {WAL_LONG_PAGE_HEADER_SIZE}")]
    TooShort(usize),
    #[error("WAL page has no long header (xlp_info {0:#06x}): not the first page of a segment")]
    NotLongHeader(u16),
    #[error("unknown WAL page magic {0:#06x}: not a WAL segment of PostgreSQL 13-18")]
    UnknownMagic(u16),
}

/// Parses the first page of a WAL segment. The magic is checked first: it is what tells a
/// WAL file from random bytes, and it decides whether the rest of the layout applies.
pub fn parse_long_page_header(first_page: &[u8]) -> Result<WalLongPageHeader, WalHeaderError> {
    let b: &[u8; WAL_LONG_PAGE_HEADER_SIZE] = first_page
        .get(..WAL_LONG_PAGE_HEADER_SIZE)
        .and_then(|s| s.try_into().ok())
        .ok_or(WalHeaderError::TooShort(first_page.len()))?;
    let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
    let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
    let u64_at = |o: usize| (u32_at(o) as u64) | ((u32_at(o + 4) as u64) << 32);

    let magic = u16_at(0);
    if pg_major_for_wal_magic(magic).is_none() {
        return Err(WalHeaderError::UnknownMagic(magic));
    }
    let info = u16_at(2);
    if info & XLP_LONG_HEADER == 0 {
        return Err(WalHeaderError::NotLongHeader(info));
    }
    // Offset 20..24 is alignment padding of the short header.
    Ok(WalLongPageHeader {
        magic,
        info,
        timeline: TimelineId(u32_at(4)),
        page_address: Lsn(u64_at(8)),
        remaining_length: u32_at(16),
        system_identifier: u64_at(24),
        segment_size: u32_at(32),
        block_size: u32_at(36),
    })
}

/// `XLOG_PAGE_MAGIC` of each supported major version.
pub fn pg_major_for_wal_magic(magic: u16) -> Option<u32> {
    match magic {
        0xD106 => Some(13),
        0xD10D => Some(14),
        0xD110 => Some(15),
        0xD113 => Some(16),
        0xD116 => Some(17),
        0xD118 => Some(18),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// First 8 KiB of 000000010000000000000004 from the PG 15 fixture cluster
    /// (sysid 7710602386710402550, timeline 1, pageaddr 0/4000000).
    const PAGE: &[u8] = include_bytes!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/pg15/wal-first-page.bin"
    ));

    #[test]
    fn parses_a_real_pg15_segment_header() {
        let h = parse_long_page_header(PAGE).unwrap();
        assert_eq!(h.magic, 0xD110);
        assert_eq!(h.pg_major(), Some(15));
        assert_eq!(h.info & XLP_LONG_HEADER, XLP_LONG_HEADER);
        assert_eq!(h.timeline, TimelineId(1));
        assert_eq!(h.page_address, Lsn(0x400_0000));
        assert_eq!(h.system_identifier, 7710602386710402550);
        assert_eq!(h.segment_size, 16 * 1024 * 1024);
        assert_eq!(h.block_size, 8192);
        assert_eq!(h.remaining_length, 0);
        assert_eq!(
            parse_long_page_header(&PAGE[..WAL_LONG_PAGE_HEADER_SIZE]).unwrap(),
            h
        );
    }

    #[test]
    fn rejects_short_unknown_and_short_header_pages() {
        assert_eq!(
            parse_long_page_header(&PAGE[..39]),
            Err(WalHeaderError::TooShort(39))
        );
        assert_eq!(
            parse_long_page_header(&[]),
            Err(WalHeaderError::TooShort(0))
        );
        let mut p = PAGE[..64].to_vec();
        p[0..2].copy_from_slice(&0xD0FFu16.to_le_bytes());
        assert_eq!(
            parse_long_page_header(&p),
            Err(WalHeaderError::UnknownMagic(0xD0FF))
        );
        let mut p = PAGE[..64].to_vec();
        p[2] &= !(XLP_LONG_HEADER as u8);
        assert!(matches!(
            parse_long_page_header(&p),
            Err(WalHeaderError::NotLongHeader(_))
        ));
    }

    #[test]
    fn magic_numbers_per_major() {
        let all: Vec<_> = [0xD106, 0xD10D, 0xD110, 0xD113, 0xD116, 0xD118]
            .map(pg_major_for_wal_magic)
            .into();
        assert_eq!(all, [13, 14, 15, 16, 17, 18].map(Some));
        assert_eq!(pg_major_for_wal_magic(0xD101), None); // PG 12
    }
}
