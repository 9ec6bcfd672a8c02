//! WAL page headers (`XLogPageHeaderData`, `XLogLongPageHeaderData` in
//! `src/include/access/xlog_internal.h`) and the checks `XLogReaderValidatePageHeader`
//! (`xlogreader.c`) makes before a byte of the page is believed. The layout is the same in
//! PostgreSQL 13-18; the magic number alone differs.

use super::{WalErrorKind, XLOG_BLCKSZ};
use crate::pg::lsn::Lsn;
use crate::pg::walheader::pg_major_for_wal_magic;

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
