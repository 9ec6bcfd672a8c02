//! The records that change files without (or beyond) block references, decoded from their
//! main data. A block map that only followed block references would miss these:
//!
//! - `XLOG_SMGR_CREATE` (`xl_smgr_create`): a new, empty relation fork. Covers the new
//!   relfilenumber of TRUNCATE, VACUUM FULL, CLUSTER, SET TABLESPACE and REINDEX.
//! - `XLOG_SMGR_TRUNCATE` (`xl_smgr_truncate`): VACUUM cuts a relation's tail; flags say
//!   which forks (heap 1, vm 2, fsm 4).
//! - Database records (`dbcommands_xlog.h`): PG 13-14 `CREATE` 0x00 and `DROP` 0x10;
//!   PG 15+ `CREATE_FILE_COPY` 0x00, `CREATE_WAL_LOG` 0x10, `DROP` 0x20. A file copy (also
//!   what ALTER DATABASE SET TABLESPACE logs) copies a whole directory with no block WAL.
//! - Transaction commit/abort (+ prepared) with `XACT_XINFO_HAS_RELFILENODES`: relations
//!   deleted at transaction end. The parts before the relation list (dbinfo, subxacts)
//!   are the same in 13-18; the parts after it (dropped stats from 15, whose item grew in
//!   18; invalidations; two-phase ids) are not read, so their layout changes cannot
//!   mislead this decoder (`ParseCommitRecord`/`ParseAbortRecord` in `xactdesc.c`).
//! - wal_level: `XLOG_PARAMETER_CHANGE` in every version; from PG 17 also the checkpoint
//!   records, `XLOG_CHECKPOINT_REDO` and `XLOG_END_OF_RECOVERY` (`pg_control.h`). A period
//!   at `minimal` lets relations skip WAL entirely.
//! - `XLOG_SWITCH` (the rest of the segment is unused) and `XLOG_OVERWRITE_CONTRECORD`.
//! - Any other record carrying `XLR_SPECIAL_REL_UPDATE` (a custom resource manager, a
//!   future record kind): reported as unknown so the map can refuse to trust itself.

use super::page::{u32_at, u64_at};
use super::record::{
    rmgr_name, Fork, RecordError, RelFileLocator, RM_DBASE_ID, RM_SMGR_ID, RM_XACT_ID, RM_XLOG_ID,
    XLR_SPECIAL_REL_UPDATE,
};
use crate::pg::lsn::Lsn;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Special {
    SmgrCreate {
        rel: RelFileLocator,
        fork: Fork,
    },
    SmgrTruncate {
        rel: RelFileLocator,
        /// New length in blocks.
        blocks: u32,
        forks: TruncatedForks,
    },
    DatabaseCreate {
        db: u32,
        spc: u32,
        how: DatabaseCreation,
    },
    DatabaseDrop {
        db: u32,
        tablespaces: Vec<u32>,
    },
    TransactionEnd {
        kind: TransactionEnd,
        /// `dbinfo` of the record, when it has one.
        db: Option<u32>,
        dropped: Vec<RelFileLocator>,
    },
    WalLevel {
        source: WalLevelSource,
        level: WalLevel,
    },
    Switch,
    OverwriteContrecord {
        overwritten: Lsn,
    },
    /// `XLR_SPECIAL_REL_UPDATE` on a record this decoder does not know.
    UnknownRelUpdate,
}

/// `SMGR_TRUNCATE_*` flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TruncatedForks {
    pub main: bool,
    pub visibility_map: bool,
    pub free_space_map: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DatabaseCreation {
    /// PG 13-14 `XLOG_DBASE_CREATE`, PG 15+ `XLOG_DBASE_CREATE_FILE_COPY`: the source
    /// directory is copied file by file outside WAL.
    FileCopy { src_db: u32, src_spc: u32 },
    /// PG 15+ `XLOG_DBASE_CREATE_WAL_LOG`: only the directory and `PG_VERSION`; every
    /// block follows as its own record.
    WalLog,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransactionEnd {
    Commit,
    Abort,
    CommitPrepared,
    AbortPrepared,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WalLevelSource {
    ParameterChange,
    CheckpointShutdown,
    CheckpointOnline,
    CheckpointRedo,
    EndOfRecovery,
}

/// `WalLevel` (`xlog.h`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WalLevel {
    Minimal,
    Replica,
    Logical,
    Unknown(i32),
}

impl WalLevel {
    fn from_raw(v: i32) -> WalLevel {
        match v {
            0 => WalLevel::Minimal,
            1 => WalLevel::Replica,
            2 => WalLevel::Logical,
            v => WalLevel::Unknown(v),
        }
    }
}

// Info codes (high four bits of xl_info).
const XLOG_CHECKPOINT_SHUTDOWN: u8 = 0x00;
const XLOG_CHECKPOINT_ONLINE: u8 = 0x10;
const XLOG_SWITCH: u8 = 0x40;
const XLOG_PARAMETER_CHANGE: u8 = 0x60;
const XLOG_END_OF_RECOVERY: u8 = 0x90;
const XLOG_OVERWRITE_CONTRECORD: u8 = 0xD0;
const XLOG_CHECKPOINT_REDO: u8 = 0xE0; // PG 17+
const XLOG_SMGR_CREATE: u8 = 0x10;
const XLOG_SMGR_TRUNCATE: u8 = 0x20;
const XLOG_XACT_OPMASK: u8 = 0x70;
const XLOG_XACT_HAS_INFO: u8 = 0x80;
const XLOG_XACT_COMMIT: u8 = 0x00;
const XLOG_XACT_ABORT: u8 = 0x20;
const XLOG_XACT_COMMIT_PREPARED: u8 = 0x30;
const XLOG_XACT_ABORT_PREPARED: u8 = 0x40;
const XACT_XINFO_HAS_DBINFO: u32 = 1 << 0;
const XACT_XINFO_HAS_SUBXACTS: u32 = 1 << 1;
const XACT_XINFO_HAS_RELFILENODES: u32 = 1 << 2;

/// Whether `(rmgr, info)` is the XLOG_SWITCH record (the reader needs this before decoding).
pub fn is_switch(rmgr: u8, info: u8) -> bool {
    rmgr == RM_XLOG_ID && info & 0xF0 == XLOG_SWITCH
}

pub(super) fn decode_special(
    rmgr: u8,
    info: u8,
    data: &[u8],
    pg_major: u32,
) -> Result<Option<Special>, RecordError> {
    let code = info & 0xF0;
    let bad = |what| RecordError::BadMainData {
        rmgr: rmgr_name(rmgr).unwrap_or("custom"),
        info,
        what,
    };
    let exact = |len: usize, what| {
        if data.len() == len {
            Ok(())
        } else {
            Err(bad(what))
        }
    };
    let special = match (rmgr, code) {
        (RM_XLOG_ID, XLOG_SWITCH) => Some(Special::Switch),
        (RM_XLOG_ID, XLOG_OVERWRITE_CONTRECORD) => {
            exact(16, "xl_overwrite_contrecord is 16 bytes")?;
            Some(Special::OverwriteContrecord {
                overwritten: Lsn(u64_at(data, 0).unwrap_or(0)),
            })
        }
        (RM_XLOG_ID, XLOG_PARAMETER_CHANGE) => {
            exact(28, "xl_parameter_change is 28 bytes")?;
            wal_level(WalLevelSource::ParameterChange, data, 20)
        }
        (RM_XLOG_ID, XLOG_CHECKPOINT_SHUTDOWN | XLOG_CHECKPOINT_ONLINE) if pg_major >= 17 => {
            let source = if code == XLOG_CHECKPOINT_SHUTDOWN {
                WalLevelSource::CheckpointShutdown
            } else {
                WalLevelSource::CheckpointOnline
            };
            // CheckPoint: redo u64, two TLIs, fullPageWrites (padded), then wal_level.
            if data.len() < 24 {
                return Err(bad("CheckPoint is too short"));
            }
            wal_level(source, data, 20)
        }
        (RM_XLOG_ID, XLOG_CHECKPOINT_REDO) if pg_major >= 17 => {
            exact(4, "XLOG_CHECKPOINT_REDO holds one int")?;
            wal_level(WalLevelSource::CheckpointRedo, data, 0)
        }
        (RM_XLOG_ID, XLOG_END_OF_RECOVERY) if pg_major >= 17 => {
            exact(24, "xl_end_of_recovery is 24 bytes")?;
            wal_level(WalLevelSource::EndOfRecovery, data, 16)
        }
        (RM_SMGR_ID, XLOG_SMGR_CREATE) => {
            exact(16, "xl_smgr_create is 16 bytes")?;
            let rel = RelFileLocator::parse(data, 0).ok_or(bad("short"))?;
            let fork = u32_at(data, 12)
                .and_then(Fork::from_number)
                .ok_or(bad("invalid fork number"))?;
            Some(Special::SmgrCreate { rel, fork })
        }
        (RM_SMGR_ID, XLOG_SMGR_TRUNCATE) => {
            exact(20, "xl_smgr_truncate is 20 bytes")?;
            let flags = u32_at(data, 16).unwrap_or(0);
            Some(Special::SmgrTruncate {
                blocks: u32_at(data, 0).unwrap_or(0),
                rel: RelFileLocator::parse(data, 4).ok_or(bad("short"))?,
                forks: TruncatedForks {
                    main: flags & 1 != 0,
                    visibility_map: flags & 2 != 0,
                    free_space_map: flags & 4 != 0,
                },
            })
        }
        (RM_DBASE_ID, _) => decode_database(code, data, pg_major).map_err(bad)?,
        (RM_XACT_ID, _) => decode_transaction_end(info, data).map_err(bad)?,
        _ => None,
    };
    if special.is_none() && info & XLR_SPECIAL_REL_UPDATE != 0 {
        return Ok(Some(Special::UnknownRelUpdate));
    }
    Ok(special)
}

fn wal_level(source: WalLevelSource, data: &[u8], offset: usize) -> Option<Special> {
    let raw = u32_at(data, offset)? as i32;
    Some(Special::WalLevel {
        source,
        level: WalLevel::from_raw(raw),
    })
}

fn decode_database(code: u8, data: &[u8], pg_major: u32) -> Result<Option<Special>, &'static str> {
    let oid = |o| u32_at(data, o).ok_or("short");
    // (create file copy, create wal log, drop) info codes per version.
    let (file_copy, wal_log, drop) = if pg_major >= 15 {
        (0x00, Some(0x10), 0x20)
    } else {
        (0x00, None, 0x10)
    };
    if code == file_copy {
        if data.len() != 16 {
            return Err("a file-copy database creation is 16 bytes");
        }
        return Ok(Some(Special::DatabaseCreate {
            db: oid(0)?,
            spc: oid(4)?,
            how: DatabaseCreation::FileCopy {
                src_db: oid(8)?,
                src_spc: oid(12)?,
            },
        }));
    }
    if Some(code) == wal_log {
        if data.len() != 8 {
            return Err("a WAL-logged database creation is 8 bytes");
        }
        return Ok(Some(Special::DatabaseCreate {
            db: oid(0)?,
            spc: oid(4)?,
            how: DatabaseCreation::WalLog,
        }));
    }
    if code == drop {
        let n = oid(4)? as i32;
        if n < 0 || data.len() != 8 + 4 * n as usize {
            return Err("tablespace count disagrees with the record length");
        }
        let tablespaces = (0..n as usize)
            .map(|i| oid(8 + 4 * i))
            .collect::<Result<_, _>>()?;
        return Ok(Some(Special::DatabaseDrop {
            db: oid(0)?,
            tablespaces,
        }));
    }
    Ok(None)
}

/// The prefix of `ParseCommitRecord`/`ParseAbortRecord` up to the dropped relations.
fn decode_transaction_end(info: u8, data: &[u8]) -> Result<Option<Special>, &'static str> {
    let kind = match info & XLOG_XACT_OPMASK {
        XLOG_XACT_COMMIT => TransactionEnd::Commit,
        XLOG_XACT_ABORT => TransactionEnd::Abort,
        XLOG_XACT_COMMIT_PREPARED => TransactionEnd::CommitPrepared,
        XLOG_XACT_ABORT_PREPARED => TransactionEnd::AbortPrepared,
        _ => return Ok(None),
    };
    let field = |o: usize| u32_at(data, o).ok_or("truncated");
    // xl_xact_commit / xl_xact_abort: TimestampTz xact_time.
    let mut pos = 8;
    if data.len() < pos {
        return Err("truncated");
    }
    let xinfo = if info & XLOG_XACT_HAS_INFO != 0 {
        pos += 4;
        field(8)?
    } else {
        0
    };
    let mut db = None;
    if xinfo & XACT_XINFO_HAS_DBINFO != 0 {
        db = Some(field(pos)?);
        field(pos + 4)?; // tsId
        pos += 8;
    }
    if xinfo & XACT_XINFO_HAS_SUBXACTS != 0 {
        let n = count(field(pos)?, 4, data.len() - pos - 4)?;
        pos += 4 + 4 * n;
    }
    let mut dropped = Vec::new();
    if xinfo & XACT_XINFO_HAS_RELFILENODES != 0 {
        let n = count(field(pos)?, 12, data.len() - pos - 4)?;
        pos += 4;
        dropped = (0..n)
            .map(|i| RelFileLocator::parse(data, pos + 12 * i).ok_or("truncated"))
            .collect::<Result<_, _>>()?;
    }
    Ok(Some(Special::TransactionEnd { kind, db, dropped }))
}

/// A C `int` count of `item`-byte entries that must fit in `room` bytes.
fn count(raw: u32, item: usize, room: usize) -> Result<usize, &'static str> {
    let n = raw as i32;
    if n < 0 || (n as usize).saturating_mul(item) > room {
        return Err("item count exceeds the record");
    }
    Ok(n as usize)
}
