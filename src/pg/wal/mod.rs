//! A WAL record reader for PostgreSQL 13-18: no I/O, bytes in, records out.
//!
//! It exists for block-level incrementals built from WAL (issue 12): archive-push reads
//! each segment it holds in memory and records which blocks its records change. So the
//! reader extracts per record the block references `(tablespace, database,
//! relfilenumber, fork, block)` with their WILL_INIT and image flags, and decodes the
//! records that change files without block references ([`special`]).
//!
//! Layers, each following the PostgreSQL function it names:
//! - [`page`]: page headers and `XLogReaderValidatePageHeader`'s checks.
//! - [`reader`]: record assembly across pages and segments (`XLogDecodeNextRecord`):
//!   continuation pages, overwrite-contrecord, XLOG_SWITCH, prev-link and CRC checks.
//! - [`record`]: `DecodeXLogRecord`: header, block references, image headers.
//! - [`special`]: main data of storage, database, transaction and XLOG records.
//! - [`read_segment`]: the archive-push entry point: the records that *end* in one
//!   segment, given the bytes before it for a record that straddles in.
//!
//! What differs between versions, and where it is handled:
//! - The page magic (13 `D106` ... 18 `D118`): the version tag; a change mid-stream, or
//!   an unknown one, is an error.
//! - Image flags (`bimg_info`): 13-14 have one compression bit (0x02) and APPLY 0x04;
//!   15+ have APPLY 0x02 and one bit per method (pglz, lz4, zstd). Only sizes are used.
//! - Database records: 13-14 `CREATE`/`DROP`; 15+ `CREATE_FILE_COPY`, `CREATE_WAL_LOG`,
//!   `DROP` with new info codes.
//! - wal_level is in checkpoint, CHECKPOINT_REDO and END_OF_RECOVERY records from 17.
//! - Custom resource managers (ids 128-255) exist from 15.
//! - `RelFileNode` became `RelFileLocator` in 16: same 12 bytes.
//!
//! Limits: 8 KiB WAL pages and data pages only (the defaults; other sizes are refused,
//! not misread). Errors are values; every length is checked before it is used, and
//! mutated real segments are fed to the reader in the tests to hold it to that.

pub mod page;
pub mod reader;
pub mod record;
pub mod special;

#[cfg(test)]
mod tests;

pub use reader::{WalEvent, WalReader};
pub use record::{BlockImage, BlockRef, Fork, RecordError, RelFileLocator, WalRecord};
pub use special::{
    DatabaseCreation, Special, TransactionEnd, TruncatedForks, WalLevel, WalLevelSource,
};

use crate::pg::lsn::Lsn;
use crate::pg::wal::page::parse_long_page_header;

/// `XLOG_BLCKSZ`: the WAL page size this reader supports.
pub const XLOG_BLCKSZ: usize = 8192;

/// Where reading stopped and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid WAL at {lsn}: {kind}")]
pub struct WalError {
    pub lsn: Lsn,
    pub kind: WalErrorKind,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WalErrorKind {
    #[error("page is {0} bytes, WAL pages are {XLOG_BLCKSZ}")]
    ShortPage(usize),
    #[error("page is not at a multiple of {XLOG_BLCKSZ}")]
    UnalignedPage,
    #[error("pages are not consecutive: expected the page at {expected}")]
    NotContiguous { expected: Lsn },
    #[error("unknown page magic {0:#06x}: not WAL of PostgreSQL 13-18")]
    UnknownMagic(u16),
    #[error("page magic changed from {first:#06x} to {now:#06x}")]
    MagicChanged { first: u16, now: u16 },
    #[error("invalid page info bits {0:#06x}")]
    InvalidPageInfo(u16),
    #[error("first page of a segment has no long header (info {0:#06x})")]
    MissingLongHeader(u16),
    #[error("segment size in the page header is {page}, expected {expected}")]
    SegmentSizeMismatch { page: u32, expected: u64 },
    #[error("WAL block size {0} is not supported (only {XLOG_BLCKSZ})")]
    UnsupportedBlockSize(u32),
    #[error("page header says it is the page at {0}")]
    UnexpectedPageAddress(Lsn),
    #[error("system identifier changed from {first} to {now}")]
    SystemIdentifierChanged { first: u64, now: u64 },
    #[error("timeline went back from {before} to {now}")]
    TimelineWentBack { before: u32, now: u32 },
    #[error("the record's continuation at {0} has no contrecord flag")]
    MissingContrecord(Lsn),
    #[error("contrecord length {found} disagrees with the record (expected {expected:?})")]
    BadContrecordLength { found: u32, expected: Option<u32> },
    #[error("a record should start here, but the page continues an earlier one")]
    UnexpectedContrecord,
    #[error("record starts inside the page header")]
    RecordInPageHeader,
    #[error("record length 0 or a zeroed page: end of WAL")]
    EndOfWal,
    #[error("after abandoning the record at {aborted}, the next record is not the XLOG_OVERWRITE_CONTRECORD naming it")]
    OverwriteMismatch { aborted: Lsn },
    #[error("{0}")]
    Record(RecordError),
    #[error("segment header: {0}")]
    SegmentHeader(String),
    #[error("{0}")]
    BadInput(&'static str),
}

/// The records of one segment: those whose last byte lies in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentRecords {
    pub start: Lsn,
    pub pg_major: u32,
    pub system_identifier: u64,
    pub timeline: u32,
    pub records: Vec<WalRecord>,
    /// A record ends in this segment but its start was not among the bytes given: it
    /// ends at this LSN and is not in `records`. The map must not trust itself then.
    pub head_missing: Option<Lsn>,
    /// Records abandoned by an overwrite-contrecord in this segment: (record, page).
    pub aborted: Vec<(Lsn, Lsn)>,
    /// Start of a record that continues into the next segment (it belongs there); with
    /// `end_of_wal`, a record that never finished.
    pub continues: Option<Lsn>,
    /// Reading met a zero record length or a zeroed page here (a `.partial` segment, or
    /// a segment cut short): nothing after it was read. In a complete archived segment
    /// this is damage, and the caller must not trust the segment's map.
    pub end_of_wal: Option<Lsn>,
}

/// Reads the records that end in `segment` (a whole segment, or a page-aligned prefix
/// of one). `before` holds the WAL right before it (page-aligned, any length, possibly
/// several segments): enough of it to hold the start of a record that straddles into
/// the segment; with too little, or none, `head_missing` says so.
pub fn read_segment(segment: &[u8], before: Option<&[u8]>) -> Result<SegmentRecords, WalError> {
    let mut records = Vec::new();
    let mut read = read_segment_each(segment, before, |r| records.push(r))?;
    read.records = records;
    Ok(read)
}

/// [`read_segment`] that hands each record to `each`, in WAL order, instead of keeping
/// it (`records` comes back empty): a busy segment holds a quarter of a million records,
/// and archive-push only folds them into a block map.
pub fn read_segment_each(
    segment: &[u8],
    before: Option<&[u8]>,
    mut each: impl FnMut(WalRecord),
) -> Result<SegmentRecords, WalError> {
    let header = parse_long_page_header(segment).map_err(|e| WalError {
        lsn: Lsn(0),
        kind: WalErrorKind::SegmentHeader(e.to_string()),
    })?;
    let start = header.page_address;
    let bad = |what| WalError {
        lsn: start,
        kind: WalErrorKind::BadInput(what),
    };
    let segment_size = header.segment_size as u64;
    if !segment_size.is_power_of_two() || !start.0.is_multiple_of(segment_size) {
        return Err(bad(
            "segment size is not a power of two or the segment is misaligned",
        ));
    }
    if !segment.len().is_multiple_of(XLOG_BLCKSZ) || segment.len() as u64 > segment_size {
        return Err(bad(
            "segment length is not whole pages within the segment size",
        ));
    }
    let before = before.unwrap_or(&[]);
    if !before.len().is_multiple_of(XLOG_BLCKSZ) || before.len() as u64 > start.0 {
        return Err(bad(
            "the WAL before the segment is not whole pages ending at its start",
        ));
    }
    let mut reader = WalReader::new(segment_size);
    let first = start.0 - before.len() as u64;
    for (i, page) in before.chunks(XLOG_BLCKSZ).enumerate() {
        // Everything before the segment is context: keep only what ends inside it.
        reader.feed_to(Lsn(first + (i * XLOG_BLCKSZ) as u64), page, &mut drop)?;
    }
    let mut out = SegmentRecords {
        start,
        pg_major: header.pg_major().unwrap_or(0),
        system_identifier: header.system_identifier,
        timeline: header.timeline.0,
        records: Vec::new(),
        head_missing: None,
        aborted: Vec::new(),
        continues: None,
        end_of_wal: None,
    };
    let (head_missing, aborted) = (&mut out.head_missing, &mut out.aborted);
    let mut sink = |event| match event {
        WalEvent::Record(r) => each(r),
        WalEvent::HeadMissing { end } => *head_missing = Some(end),
        WalEvent::Aborted {
            lsn,
            overwritten_at,
        } => aborted.push((lsn, overwritten_at)),
    };
    for (i, page) in segment.chunks(XLOG_BLCKSZ).enumerate() {
        match reader.feed_to(Lsn(start.0 + (i * XLOG_BLCKSZ) as u64), page, &mut sink) {
            Ok(()) => {}
            Err(WalError {
                lsn,
                kind: WalErrorKind::EndOfWal,
            }) => {
                out.end_of_wal = Some(lsn);
                break;
            }
            Err(e) => return Err(e),
        }
    }
    out.continues = reader.record_in_progress();
    Ok(out)
}
