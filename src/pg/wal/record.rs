//! One assembled WAL record: its header (`XLogRecord` in `xlogrecord.h`), CRC and block
//! references, decoded the way `DecodeXLogRecord` (`xlogreader.c`) does, including every
//! consistency check it makes. Block data and page images are sized and skipped, never
//! copied or decompressed: the block map needs where a record writes, not what.

use smallvec::SmallVec;

use super::page::{u16_at, u32_at, u64_at};
use super::special::{decode_special, Special};
use crate::pg::lsn::Lsn;
use crate::pg::page::BLCKSZ;

/// `SizeOfXLogRecord`.
pub const RECORD_HEADER_SIZE: usize = 24;
/// Larger than any record a server writes (`XLogRecordMaxSize` is 1020 MB, PG 13-14's
/// reader refused anything over `MaxAllocSize`). A bigger `xl_tot_len` is garbage.
pub const MAX_RECORD_SIZE: u32 = 0x3FFF_FFFF;

/// `XLR_SPECIAL_REL_UPDATE`: the record changes relation files in a way its block
/// references do not show. Set for tools like this one; PostgreSQL itself ignores it.
pub const XLR_SPECIAL_REL_UPDATE: u8 = 0x01;

const XLR_MAX_BLOCK_ID: u8 = 32;
const XLR_BLOCK_ID_DATA_SHORT: u8 = 255;
const XLR_BLOCK_ID_DATA_LONG: u8 = 254;
const XLR_BLOCK_ID_ORIGIN: u8 = 253;
const XLR_BLOCK_ID_TOPLEVEL_XID: u8 = 252;

const BKPBLOCK_FORK_MASK: u8 = 0x0F;
const BKPBLOCK_HAS_IMAGE: u8 = 0x10;
const BKPBLOCK_HAS_DATA: u8 = 0x20;
const BKPBLOCK_WILL_INIT: u8 = 0x40;
const BKPBLOCK_SAME_REL: u8 = 0x80;

const BKPIMAGE_HAS_HOLE: u8 = 0x01;
/// PG 13-14: one compression method (pglz), one bit; APPLY is 0x04.
const BKPIMAGE_IS_COMPRESSED_13: u8 = 0x02;
const BKPIMAGE_APPLY_13: u8 = 0x04;
/// PG 15+: APPLY moved to 0x02, one bit per method (pglz 0x04, lz4 0x08, zstd 0x10).
const BKPIMAGE_APPLY_15: u8 = 0x02;
const BKPIMAGE_COMPRESSED_15: u8 = 0x04 | 0x08 | 0x10;

/// Resource manager ids of PostgreSQL 13-18 (`rmgrlist.h`; unchanged in these versions).
pub const RM_XLOG_ID: u8 = 0;
pub const RM_XACT_ID: u8 = 1;
pub const RM_SMGR_ID: u8 = 2;
pub const RM_DBASE_ID: u8 = 4;
const RMGR_NAMES: [&str; 22] = [
    "XLOG",
    "Transaction",
    "Storage",
    "CLOG",
    "Database",
    "Tablespace",
    "MultiXact",
    "RelMap",
    "Standby",
    "Heap2",
    "Heap",
    "Btree",
    "Hash",
    "Gin",
    "Gist",
    "Sequence",
    "SPGist",
    "BRIN",
    "CommitTs",
    "ReplicationOrigin",
    "Generic",
    "LogicalMessage",
];
/// `RM_MIN_CUSTOM_ID`: extensions may register resource managers 128-255 from PG 15.
const RM_MIN_CUSTOM_ID: u8 = 128;

/// The name pg_waldump prints for a built-in resource manager.
pub fn rmgr_name(rmgr: u8) -> Option<&'static str> {
    RMGR_NAMES.get(rmgr as usize).copied()
}

/// `RmgrIdIsValid` for the given major.
fn rmgr_is_valid(rmgr: u8, pg_major: u32) -> bool {
    (rmgr as usize) < RMGR_NAMES.len() || (pg_major >= 15 && rmgr >= RM_MIN_CUSTOM_ID)
}

/// A relation file's identity (`RelFileNode`, renamed `RelFileLocator` in PG 16, same
/// 12 bytes): tablespace, database and relfilenumber OIDs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RelFileLocator {
    pub spc: u32,
    pub db: u32,
    pub rel: u32,
}

impl RelFileLocator {
    pub(super) fn parse(b: &[u8], o: usize) -> Option<RelFileLocator> {
        Some(RelFileLocator {
            spc: u32_at(b, o)?,
            db: u32_at(b, o + 4)?,
            rel: u32_at(b, o + 8)?,
        })
    }
}

/// `ForkNumber`. `InvalidForkNumber` (-1) and anything past the init fork never appear
/// in valid WAL; the decoder rejects them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Fork {
    Main = 0,
    FreeSpaceMap = 1,
    VisibilityMap = 2,
    Init = 3,
}

impl Fork {
    pub fn from_number(n: u32) -> Option<Fork> {
        match n {
            0 => Some(Fork::Main),
            1 => Some(Fork::FreeSpaceMap),
            2 => Some(Fork::VisibilityMap),
            3 => Some(Fork::Init),
            _ => None,
        }
    }

    /// `forkNames[]`: also the file name suffix (`16384_vm`).
    pub fn name(self) -> &'static str {
        match self {
            Fork::Main => "main",
            Fork::FreeSpaceMap => "fsm",
            Fork::VisibilityMap => "vm",
            Fork::Init => "init",
        }
    }
}

/// A full-page image attached to a block reference (`XLogRecordBlockImageHeader`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockImage {
    /// Bytes of image data in the record (after hole removal and compression).
    pub stored_len: u16,
    pub hole_offset: u16,
    pub hole_length: u16,
    pub compressed: bool,
    /// Redo restores the image (false for images logged only for consistency checks).
    pub apply: bool,
}

/// One block reference: the page a record changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockRef {
    pub id: u8,
    pub rel: RelFileLocator,
    pub fork: Fork,
    pub block: u32,
    /// Redo rebuilds the page from scratch (`BKPBLOCK_WILL_INIT`).
    pub will_init: bool,
    pub image: Option<BlockImage>,
    pub data_len: u16,
}

/// A decoded record. `end` is where its last byte ends; `next` is where the following
/// record starts (`EndRecPtr`: MAXALIGNed, or the next segment after XLOG_SWITCH). A
/// record belongs to the segment holding byte `end - 1`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WalRecord {
    pub lsn: Lsn,
    pub end: Lsn,
    pub next: Lsn,
    pub prev: Lsn,
    pub total_len: u32,
    pub xid: u32,
    pub rmgr: u8,
    pub info: u8,
    pub toplevel_xid: Option<u32>,
    /// Inline up to two (most records): a busy segment holds a quarter of a million
    /// records, and one allocation each was a fifth of reading it.
    pub blocks: SmallVec<[BlockRef; 2]>,
    pub main_data_len: u32,
    /// What the record changes besides its block references (see `special.rs`).
    pub special: Option<Special>,
}

impl WalRecord {
    pub fn rmgr_name(&self) -> Option<&'static str> {
        rmgr_name(self.rmgr)
    }

    /// Bytes of full-page images: pg_waldump's "tot" minus "rec".
    pub fn image_bytes(&self) -> u32 {
        self.blocks
            .iter()
            .filter_map(|b| b.image)
            .map(|i| i.stored_len as u32)
            .sum()
    }
}

/// Why a record's header or body is invalid.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error(
        "record length {0} is invalid (at least {RECORD_HEADER_SIZE}, at most {MAX_RECORD_SIZE})"
    )]
    InvalidLength(u32),
    #[error("invalid resource manager id {0}")]
    InvalidRmgr(u8),
    #[error("record's prev-link {found} does not point at the previous record {expected}")]
    BadPrevLink { found: Lsn, expected: Lsn },
    #[error("record's prev-link {0} is not before the record")]
    PrevLinkNotBefore(Lsn),
    #[error("CRC mismatch: record says {stored:#010x}, bytes give {computed:#010x}")]
    CrcMismatch { stored: u32, computed: u32 },
    #[error("fragment headers overrun the record")]
    ShortData,
    #[error("out-of-order block id {0}")]
    BlockIdOrder(u8),
    #[error("invalid block id {0}")]
    InvalidBlockId(u8),
    #[error("block {0}: data flag and data length disagree")]
    BlockDataFlag(u8),
    #[error("block {0}: invalid full-page image header")]
    BadImageHeader(u8),
    #[error("block {0}: same-relation flag without a previous relation")]
    SameRelWithoutRel(u8),
    #[error("block {0}: invalid fork number {1}")]
    InvalidFork(u8, u8),
    #[error("main data of a {rmgr} record (info {info:#04x}) is malformed: {what}")]
    BadMainData {
        rmgr: &'static str,
        info: u8,
        what: &'static str,
    },
}

/// The fields of `XLogRecord`, readable once the first 24 bytes are at hand (they may
/// span two pages).
#[derive(Clone, Copy, Debug)]
pub struct RecordHeader {
    pub total_len: u32,
    pub xid: u32,
    pub prev: Lsn,
    pub info: u8,
    pub rmgr: u8,
    pub crc: u32,
}

impl RecordHeader {
    pub fn parse(b: &[u8]) -> Option<RecordHeader> {
        Some(RecordHeader {
            total_len: u32_at(b, 0)?,
            xid: u32_at(b, 4)?,
            prev: Lsn(u64_at(b, 8)?),
            info: *b.get(16)?,
            rmgr: *b.get(17)?,
            crc: u32_at(b, 20)?,
        })
    }

    /// `ValidXLogRecordHeader`. `expected_prev` is the previous record's LSN when reading
    /// sequentially, `None` when this is the first record read (then the prev-link only
    /// has to point backwards).
    pub fn validate(
        &self,
        lsn: Lsn,
        expected_prev: Option<Lsn>,
        pg_major: u32,
    ) -> Result<(), RecordError> {
        check_total_len(self.total_len)?;
        if !rmgr_is_valid(self.rmgr, pg_major) {
            return Err(RecordError::InvalidRmgr(self.rmgr));
        }
        match expected_prev {
            Some(expected) if self.prev != expected => Err(RecordError::BadPrevLink {
                found: self.prev,
                expected,
            }),
            None if self.prev >= lsn => Err(RecordError::PrevLinkNotBefore(self.prev)),
            _ => Ok(()),
        }
    }
}

pub fn check_total_len(total_len: u32) -> Result<(), RecordError> {
    if (total_len as usize) < RECORD_HEADER_SIZE || total_len > MAX_RECORD_SIZE {
        return Err(RecordError::InvalidLength(total_len));
    }
    Ok(())
}

/// `ValidXLogRecord`: CRC-32C of the body, then of the header up to `xl_crc`.
pub fn check_crc(bytes: &[u8]) -> Result<(), RecordError> {
    let stored = u32_at(bytes, 20).ok_or(RecordError::ShortData)?;
    let body = bytes
        .get(RECORD_HEADER_SIZE..)
        .ok_or(RecordError::ShortData)?;
    let computed = crc32c::crc32c_append(crc32c::crc32c(body), &bytes[..20]);
    if stored != computed {
        return Err(RecordError::CrcMismatch { stored, computed });
    }
    Ok(())
}

/// Decodes a complete record whose header was validated and whose CRC matched.
/// `pg_major` selects the image flag bits and the main-data layouts.
pub fn decode_record(
    bytes: &[u8],
    lsn: Lsn,
    end: Lsn,
    next: Lsn,
    pg_major: u32,
) -> Result<WalRecord, RecordError> {
    let h = RecordHeader::parse(bytes).ok_or(RecordError::ShortData)?;
    if h.total_len as usize != bytes.len() {
        return Err(RecordError::InvalidLength(h.total_len));
    }
    let mut cur = Cursor {
        b: bytes,
        pos: RECORD_HEADER_SIZE,
    };
    let mut blocks = SmallVec::new();
    let mut toplevel_xid = None;
    let mut main_data_len: u32 = 0;
    // Payload bytes announced by the fragment headers: must equal what follows them.
    let mut data_total: u64 = 0;
    let mut last_rel: Option<RelFileLocator> = None;
    let mut max_block_id: Option<u8> = None;
    while (cur.remaining() as u64) > data_total {
        let id = cur.u8()?;
        match id {
            XLR_BLOCK_ID_DATA_SHORT => {
                main_data_len = cur.u8()? as u32;
                data_total += main_data_len as u64;
                break; // main data is always the last fragment
            }
            XLR_BLOCK_ID_DATA_LONG => {
                main_data_len = cur.u32()?;
                data_total += main_data_len as u64;
                break;
            }
            XLR_BLOCK_ID_ORIGIN => {
                cur.u16()?;
            }
            XLR_BLOCK_ID_TOPLEVEL_XID => {
                toplevel_xid = Some(cur.u32()?);
            }
            id if id <= XLR_MAX_BLOCK_ID => {
                if max_block_id.is_some_and(|m| id <= m) {
                    return Err(RecordError::BlockIdOrder(id));
                }
                max_block_id = Some(id);
                let (block, announced) = decode_block(&mut cur, id, &mut last_rel, pg_major)?;
                data_total += announced;
                blocks.push(block);
            }
            id => return Err(RecordError::InvalidBlockId(id)),
        }
    }
    if cur.remaining() as u64 != data_total {
        return Err(RecordError::ShortData);
    }
    // Block data and images come first, main data last.
    let main_data = &bytes[bytes.len() - main_data_len as usize..];
    let mut record = WalRecord {
        lsn,
        end,
        next,
        prev: h.prev,
        total_len: h.total_len,
        xid: h.xid,
        rmgr: h.rmgr,
        info: h.info,
        toplevel_xid,
        blocks,
        main_data_len,
        special: None,
    };
    record.special = decode_special(h.rmgr, h.info, main_data, pg_major)?;
    Ok(record)
}

/// One `XLogRecordBlockHeader` and what follows it; returns the payload bytes it
/// announces (data plus image).
fn decode_block(
    cur: &mut Cursor,
    id: u8,
    last_rel: &mut Option<RelFileLocator>,
    pg_major: u32,
) -> Result<(BlockRef, u64), RecordError> {
    let fork_flags = cur.u8()?;
    let data_len = cur.u16()?;
    let has_data = fork_flags & BKPBLOCK_HAS_DATA != 0;
    if has_data != (data_len > 0) {
        return Err(RecordError::BlockDataFlag(id));
    }
    let mut announced = data_len as u64;
    let image = if fork_flags & BKPBLOCK_HAS_IMAGE != 0 {
        let stored_len = cur.u16()?;
        let hole_offset = cur.u16()?;
        let bimg_info = cur.u8()?;
        let (compressed, apply) = if pg_major >= 15 {
            (
                bimg_info & BKPIMAGE_COMPRESSED_15 != 0,
                bimg_info & BKPIMAGE_APPLY_15 != 0,
            )
        } else {
            (
                bimg_info & BKPIMAGE_IS_COMPRESSED_13 != 0,
                bimg_info & BKPIMAGE_APPLY_13 != 0,
            )
        };
        let has_hole = bimg_info & BKPIMAGE_HAS_HOLE != 0;
        let hole_length = if compressed {
            if has_hole {
                cur.u16()?
            } else {
                0
            }
        } else {
            (BLCKSZ as u16).wrapping_sub(stored_len)
        };
        // The cross-checks of DecodeXLogRecord, in its order.
        let bad = (has_hole
            && (hole_offset == 0 || hole_length == 0 || stored_len as usize == BLCKSZ))
            || (!has_hole && (hole_offset != 0 || hole_length != 0))
            || (compressed && stored_len as usize == BLCKSZ)
            || (!has_hole && !compressed && stored_len as usize != BLCKSZ)
            || stored_len as usize > BLCKSZ;
        if bad {
            return Err(RecordError::BadImageHeader(id));
        }
        announced += stored_len as u64;
        Some(BlockImage {
            stored_len,
            hole_offset,
            hole_length,
            compressed,
            apply,
        })
    } else {
        None
    };
    let rel = if fork_flags & BKPBLOCK_SAME_REL == 0 {
        let rel = RelFileLocator {
            spc: cur.u32()?,
            db: cur.u32()?,
            rel: cur.u32()?,
        };
        *last_rel = Some(rel);
        rel
    } else {
        last_rel.ok_or(RecordError::SameRelWithoutRel(id))?
    };
    let block = cur.u32()?;
    let fork_number = fork_flags & BKPBLOCK_FORK_MASK;
    let fork =
        Fork::from_number(fork_number as u32).ok_or(RecordError::InvalidFork(id, fork_number))?;
    Ok((
        BlockRef {
            id,
            rel,
            fork,
            block,
            will_init: fork_flags & BKPBLOCK_WILL_INIT != 0,
            image,
            data_len,
        },
        announced,
    ))
}

/// Reads little-endian fields and fails, never panics, past the end.
struct Cursor<'a> {
    b: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn remaining(&self) -> usize {
        self.b.len().saturating_sub(self.pos)
    }

    fn take(&mut self, n: usize) -> Result<usize, RecordError> {
        if self.remaining() < n {
            return Err(RecordError::ShortData);
        }
        self.pos += n;
        Ok(self.pos - n)
    }

    fn u8(&mut self) -> Result<u8, RecordError> {
        let at = self.take(1)?;
        Ok(self.b[at])
    }

    fn u16(&mut self) -> Result<u16, RecordError> {
        let at = self.take(2)?;
        u16_at(self.b, at).ok_or(RecordError::ShortData)
    }

    fn u32(&mut self) -> Result<u32, RecordError> {
        let at = self.take(4)?;
        u32_at(self.b, at).ok_or(RecordError::ShortData)
    }
}
