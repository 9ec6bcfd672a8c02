//! WAL page headers (`XLogPageHeaderData`, `XLogLongPageHeaderData` in
//! `src/include/access/xlog_internal.h`): the one place that knows their layout. The
//! reader's [`parse_page_header`] makes the checks `XLogReaderValidatePageHeader`
//! (`xlogreader.c`) makes before a byte of a page is believed; [`parse_long_page_header`]
//! reads a segment's first page on its own. The layout is the same in PostgreSQL 13-18;
//! the magic number alone differs.

use super::{WalErrorKind, XLOG_BLCKSZ};
use crate::pg::lsn::{Lsn, TimelineId};

/// The page starts with the tail of a record begun on an earlier page.
pub const XLP_FIRST_IS_CONTRECORD: u16 = 0x0001;
/// First page of a segment: the long header follows.
pub const XLP_LONG_HEADER: u16 = 0x0002;
/// `XLP_BKP_REMOVABLE`: only informative for archive compressors.
pub const XLP_BKP_REMOVABLE: u16 = 0x0004;
/// The record that should continue here was lost; a new record starts instead. Written
/// after crash recovery ended inside a record (PG 14, back-patched to 13.5).
pub const XLP_FIRST_IS_OVERWRITE_CONTRECORD: u16 = 0x0008;
/// `XLP_ALL_FLAGS`: any other bit makes the page invalid.
pub const XLP_ALL_FLAGS: u16 = 0x000F;

/// `SizeOfXLogShortPHD`: 20 bytes MAXALIGNed.
pub const SHORT_HEADER_SIZE: usize = 24;
/// `SizeOfXLogLongPHD`.
pub const LONG_HEADER_SIZE: usize = 40;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PageHeader {
    pub magic: u16,
    pub info: u16,
    pub timeline: u32,
    pub page_address: Lsn,
    /// `xlp_rem_len`: bytes of a record continued from the previous page.
    pub remaining_length: u32,
    /// Present on the first page of each segment only.
    pub long: Option<LongHeader>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LongHeader {
    pub system_identifier: u64,
    pub segment_size: u32,
    pub block_size: u32,
}

impl PageHeader {
    pub fn size(&self) -> usize {
        if self.long.is_some() {
            LONG_HEADER_SIZE
        } else {
            SHORT_HEADER_SIZE
        }
    }

    pub fn is_contrecord(&self) -> bool {
        self.info & XLP_FIRST_IS_CONTRECORD != 0
    }

    pub fn is_overwrite_contrecord(&self) -> bool {
        self.info & XLP_FIRST_IS_OVERWRITE_CONTRECORD != 0
    }

    pub fn pg_major(&self) -> u32 {
        // Parsing rejects unknown magics, so this always answers.
        pg_major_for_wal_magic(self.magic).unwrap_or(0)
    }
}

pub(super) fn u16_at(b: &[u8], o: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(o..o + 2)?.try_into().ok()?))
}

pub(super) fn u32_at(b: &[u8], o: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(o..o + 4)?.try_into().ok()?))
}

pub(super) fn u64_at(b: &[u8], o: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(o..o + 8)?.try_into().ok()?))
}

/// Parses and validates the header of the page that should sit at `page_lsn` in a WAL
/// stream of `segment_size`-byte segments. Every check of `XLogReaderValidatePageHeader`
/// except the system identifier and the timeline order, which need the pages before
/// (the reader makes them).
pub fn parse_page_header(
    page: &[u8],
    page_lsn: Lsn,
    segment_size: u64,
) -> Result<PageHeader, WalErrorKind> {
    if page.len() < XLOG_BLCKSZ {
        return Err(WalErrorKind::ShortPage(page.len()));
    }
    let short = |o| u32_at(page, o).unwrap_or(0);
    let magic = u16_at(page, 0).unwrap_or(0);
    if pg_major_for_wal_magic(magic).is_none() {
        return Err(WalErrorKind::UnknownMagic(magic));
    }
    let info = u16_at(page, 2).unwrap_or(0);
    if info & !XLP_ALL_FLAGS != 0 {
        return Err(WalErrorKind::InvalidPageInfo(info));
    }
    let page_address = Lsn(u64_at(page, 8).unwrap_or(0));
    let long = if info & XLP_LONG_HEADER != 0 {
        let h = LongHeader {
            system_identifier: u64_at(page, 24).unwrap_or(0),
            segment_size: short(32),
            block_size: short(36),
        };
        if h.segment_size as u64 != segment_size {
            return Err(WalErrorKind::SegmentSizeMismatch {
                page: h.segment_size,
                expected: segment_size,
            });
        }
        if h.block_size as usize != XLOG_BLCKSZ {
            return Err(WalErrorKind::UnsupportedBlockSize(h.block_size));
        }
        Some(h)
    } else if page_lsn.0.is_multiple_of(segment_size) {
        return Err(WalErrorKind::MissingLongHeader(info));
    } else {
        None
    };
    if page_address != page_lsn {
        return Err(WalErrorKind::UnexpectedPageAddress(page_address));
    }
    Ok(PageHeader {
        magic,
        info,
        timeline: short(4),
        page_address,
        remaining_length: short(16),
        long,
    })
}

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
    #[error("WAL page is too short: {0} bytes, need {LONG_HEADER_SIZE}")]
    TooShort(usize),
    #[error("WAL page has no long header (xlp_info {0:#06x}): not the first page of a segment")]
    NotLongHeader(u16),
    #[error("unknown WAL page magic {0:#06x}: not a WAL segment of PostgreSQL 13-18")]
    UnknownMagic(u16),
}

/// Parses the first page of a WAL segment on its own (archive-push's check of what it is
/// handed, verify's check of what is stored), without the page-sequence checks of
/// [`parse_page_header`]. The magic is checked first: it is what tells a WAL file from
/// random bytes, and it decides whether the rest of the layout applies.
pub fn parse_long_page_header(first_page: &[u8]) -> Result<WalLongPageHeader, WalHeaderError> {
    let b = first_page
        .get(..LONG_HEADER_SIZE)
        .ok_or(WalHeaderError::TooShort(first_page.len()))?;
    let at32 = |o| u32_at(b, o).unwrap_or(0);
    let magic = u16_at(b, 0).unwrap_or(0);
    if pg_major_for_wal_magic(magic).is_none() {
        return Err(WalHeaderError::UnknownMagic(magic));
    }
    let info = u16_at(b, 2).unwrap_or(0);
    if info & XLP_LONG_HEADER == 0 {
        return Err(WalHeaderError::NotLongHeader(info));
    }
    // Offset 20..24 is alignment padding of the short header.
    Ok(WalLongPageHeader {
        magic,
        info,
        timeline: TimelineId(at32(4)),
        page_address: Lsn(u64_at(b, 8).unwrap_or(0)),
        remaining_length: at32(16),
        system_identifier: u64_at(b, 24).unwrap_or(0),
        segment_size: at32(32),
        block_size: at32(36),
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
mod long_header_tests {
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
            parse_long_page_header(&PAGE[..LONG_HEADER_SIZE]).unwrap(),
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
