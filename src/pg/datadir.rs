//! What a base backup copies from a data directory, following the low-level backup
//! documentation and the exclude lists of `src/backend/backup/basebackup.c` (`sendDir`).
//!
//! Paths are relative to the data directory with `/` separators (a leading `./` and trailing
//! `/` are tolerated). Tablespaces appear as `pg_tblspc/<oid>/<PG_15_202209061>/...`.
//! basebackup.c compares excluded names against each directory entry at any depth, so we
//! match on the last path component too, except `pg_wal`, which only counts at the top.

use super::page::RELSEG_SIZE_BLOCKS;

/// Entries whose contents basebackup.c leaves out; the directories themselves are kept.
const EXCLUDE_DIR_CONTENTS: [&str; 7] = [
    "pg_stat_tmp",
    "pg_replslot",
    "pg_dynshmem",
    "pg_notify",
    "pg_serial",
    "pg_snapshots",
    "pg_subtrans",
];

/// `PG_TEMP_FILE_PREFIX`: temporary files and directories (`pgsql_tmp`, `pgsql_tmp1234.5`).
const TEMP_PREFIX: &str = "pgsql_tmp";

/// Files basebackup.c never sends, by exact name, at any depth; and the recovery signal
/// files, as pgBackRest leaves them out: a backup of a standby must not restore as a
/// standby (restore writes the signal file the restored cluster needs).
const EXCLUDE_FILES: [&str; 10] = [
    "standby.signal",
    "recovery.signal",
    "postgresql.auto.conf.tmp",
    "current_logfiles.tmp",
    // Ours come from pg_backup_stop() and are stored with the backup instead.
    "backup_label",
    "tablespace_map",
    "backup_manifest",
    "postmaster.pid",
    "postmaster.opts",
    ".DS_Store",
];
/// `RELCACHE_INIT_FILENAME`, matched as a prefix (also covers its temporary files).
const RELCACHE_INIT_PREFIX: &str = "pg_internal.init";

/// Empty directories a restored cluster needs inside `pg_wal`, whose contents are skipped.
/// `summaries` is only used by PG 17+ but harmless before.
pub const PG_WAL_EMPTY_SUBDIRS: [&str; 2] = ["pg_wal/archive_status", "pg_wal/summaries"];

/// Copied last by basebackup.c, so that it reflects the state after all other files.
pub const CONTROL_FILE: &str = "global/pg_control";

fn normalize(path: &str) -> &str {
    let p = path.strip_prefix("./").unwrap_or(path);
    p.strip_suffix('/').unwrap_or(p)
}

fn base_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// Directories whose contents are skipped but which must exist in a restored cluster: pg_wal
/// (with its subdirectories, see [`PG_WAL_EMPTY_SUBDIRS`]), pg_replslot, pg_dynshmem,
/// pg_notify, pg_serial, pg_snapshots, pg_stat_tmp, pg_subtrans, and any `pgsql_tmp*`
/// directory (basebackup.c omits those entirely; an empty one is harmless).
/// PG 13–14's `stats_temp_directory`, if moved inside the data directory, is not covered.
pub fn skip_dir_contents(rel_dir: &str) -> bool {
    let dir = normalize(rel_dir);
    if dir == "pg_wal" || dir.starts_with("pg_wal/") {
        return true;
    }
    let name = base_name(dir);
    EXCLUDE_DIR_CONTENTS.contains(&name) || name.starts_with(TEMP_PREFIX)
}

/// Files never copied: the exclude list above, `pg_internal.init*`, temporary files and
/// anything under a `pgsql_tmp*` directory, temporary relations (`t<backend>_<relfilenode>...`)
/// in database directories, and anything inside a directory whose contents are skipped.
/// Unlogged relations need a directory listing, see [`init_fork_path`].
pub fn skip_file(rel_path: &str) -> bool {
    let path = normalize(rel_path);
    let name = base_name(path);
    if EXCLUDE_FILES.contains(&name)
        || name.starts_with(RELCACHE_INIT_PREFIX)
        || name.starts_with(TEMP_PREFIX)
    {
        return true;
    }
    if let Some((dir, _)) = path.rsplit_once('/') {
        // Any ancestor being skipped hides the file.
        let mut prefix_end = 0;
        for comp in dir.split('/') {
            prefix_end += comp.len();
            if skip_dir_contents(&dir[..prefix_end]) {
                return true;
            }
            prefix_end += 1;
        }
        if database_dir(dir).is_some() && looks_like_temp_rel_name(name) {
            return true;
        }
    }
    false
}

/// A relation fork, as spelled in file name suffixes (`forkNames` in `relpath.c`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Fork {
    Main,
    Fsm,
    VisibilityMap,
    Init,
}

impl Fork {
    /// The `_suffix` in file names; the main fork has none.
    pub fn suffix(self) -> &'static str {
        match self {
            Fork::Main => "",
            Fork::Fsm => "_fsm",
            Fork::VisibilityMap => "_vm",
            Fork::Init => "_init",
        }
    }
}

/// A file of a (non-temporary) relation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RelationFile {
    /// `None` = pg_default (`base/`) or pg_global (`global/`).
    pub tablespace_oid: Option<u32>,
    /// `None` = shared catalogs in `global/`.
    pub database_oid: Option<u32>,
    pub relfilenode: u32,
    pub fork: Fork,
    /// Segment number: 0 for the first 1 GiB, then `.1`, `.2`, ...
    pub segment: u32,
}

impl RelationFile {
    /// Block number (within the fork) of this file's first page, as needed by
    /// `pg_checksum_page`. Saturates for absurd segment numbers instead of overflowing.
    pub fn first_block(&self) -> u32 {
        self.segment.saturating_mul(RELSEG_SIZE_BLOCKS)
    }

    pub fn is_init_fork(&self) -> bool {
        self.fork == Fork::Init
    }

    /// The file name, e.g. `16384_vm.2`.
    pub fn file_name(&self) -> String {
        let seg = if self.segment == 0 {
            String::new()
        } else {
            format!(".{}", self.segment)
        };
        format!("{}{}{}", self.relfilenode, self.fork.suffix(), seg)
    }
}

/// `DEFAULTTABLESPACE_OID`: the tablespace WAL names for files under `base/`.
pub const DEFAULT_TABLESPACE_OID: u32 = 1663;
/// `GLOBALTABLESPACE_OID`: the tablespace WAL names for files under `global/`
/// (with database 0).
pub const GLOBAL_TABLESPACE_OID: u32 = 1664;

impl RelationFile {
    /// The relation as WAL names it (`RelFileLocator`): `base/<db>` is tablespace 1663,
    /// `global/` is tablespace 1664 with database 0.
    pub fn locator(&self) -> super::wal::RelFileLocator {
        super::wal::RelFileLocator {
            spc: self.tablespace_oid.unwrap_or(match self.database_oid {
                Some(_) => DEFAULT_TABLESPACE_OID,
                None => GLOBAL_TABLESPACE_OID,
            }),
            db: self.database_oid.unwrap_or(0),
            rel: self.relfilenode,
        }
    }

    /// The fork as WAL numbers it.
    pub fn wal_fork(&self) -> super::wal::Fork {
        match self.fork {
            Fork::Main => super::wal::Fork::Main,
            Fork::Fsm => super::wal::Fork::FreeSpaceMap,
            Fork::VisibilityMap => super::wal::Fork::VisibilityMap,
            Fork::Init => super::wal::Fork::Init,
        }
    }

    /// Fork blocks `first_block() .. first_block() + RELSEG_SIZE` are in this file.
    pub fn blocks(&self) -> std::ops::Range<u64> {
        let first = u64::from(self.segment) * u64::from(RELSEG_SIZE_BLOCKS);
        first..first + u64::from(RELSEG_SIZE_BLOCKS)
    }
}

/// Name of the init fork of `relfilenode`; its presence in a directory marks the relation as
/// unlogged, and then every other fork of it is skipped (they are reset from `_init` at startup).
pub fn init_fork_name(relfilenode: u32) -> String {
    format!("{relfilenode}_init")
}

/// For a relation file other than an init fork, the path whose existence makes it skippable
/// (`base/5/16391.1` -> `base/5/16391_init`). `None` for init forks and non-relation files.
pub fn init_fork_path(rel_path: &str) -> Option<String> {
    let path = normalize(rel_path);
    let rel = relation_file(path)?;
    if rel.is_init_fork() {
        return None;
    }
    let (dir, _) = path.rsplit_once('/')?;
    Some(format!("{dir}/{}", init_fork_name(rel.relfilenode)))
}

/// Parses `base/<db>/<rel>[_fork][.seg]`, `global/<rel>[_fork][.seg]` and
/// `pg_tblspc/<spc>/<PG_version_dir>/<db>/<rel>[_fork][.seg]`. Anything else
/// (`pg_filenode.map`, `PG_VERSION`, temporary relations, ...) is `None`.
pub fn relation_file(rel_path: &str) -> Option<RelationFile> {
    let path = normalize(rel_path);
    let (dir, name) = path.rsplit_once('/')?;
    let (tablespace_oid, database_oid) = if dir == "global" {
        (None, None)
    } else {
        database_dir(dir)?
    };
    let (relfilenode, fork, segment) = parse_relation_file_name(name)?;
    Some(RelationFile {
        tablespace_oid,
        database_oid,
        relfilenode,
        fork,
        segment,
    })
}

/// `base/<db>` or `pg_tblspc/<spc>/PG_*/<db>`: (tablespace, Some(database)).
fn database_dir(dir: &str) -> Option<(Option<u32>, Option<u32>)> {
    let parts: Vec<&str> = dir.split('/').collect();
    match parts.as_slice() {
        ["base", db] => Some((None, Some(parse_oid(db)?))),
        ["pg_tblspc", spc, ver, db] if ver.starts_with("PG_") => {
            Some((Some(parse_oid(spc)?), Some(parse_oid(db)?)))
        }
        _ => None,
    }
}

/// A positive decimal u32 without a leading zero (so each number has one spelling).
fn parse_oid(s: &str) -> Option<u32> {
    if !s.starts_with(|c: char| matches!(c, '1'..='9')) || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Length of a leading fork name (without the `_`), like `forkname_chars`; "main" never appears.
fn fork_suffix(s: &str) -> Option<(Fork, usize)> {
    [
        ("fsm", Fork::Fsm),
        ("vm", Fork::VisibilityMap),
        ("init", Fork::Init),
    ]
    .into_iter()
    .find(|(n, _)| s.starts_with(n))
    .map(|(n, f)| (f, n.len()))
}

/// `parse_filename_for_nontemp_relation`: `<relfilenode>[_fork][.segment]`, relfilenode and
/// segment positive with no leading zero.
fn parse_relation_file_name(name: &str) -> Option<(u32, Fork, u32)> {
    let digits = name.bytes().take_while(u8::is_ascii_digit).count();
    let relfilenode = parse_oid(&name[..digits])?;
    let mut rest = &name[digits..];
    let mut fork = Fork::Main;
    if let Some(after) = rest.strip_prefix('_') {
        let (f, len) = fork_suffix(after)?;
        fork = f;
        rest = &after[len..];
    }
    let segment = match rest {
        "" => 0,
        _ => parse_oid(rest.strip_prefix('.')?)?,
    };
    Some((relfilenode, fork, segment))
}

/// `looks_like_temp_rel_name`: `t<backend>_<relfilenode>[_fork][.segment]`.
fn looks_like_temp_rel_name(name: &str) -> bool {
    let Some(rest) = name.strip_prefix('t') else {
        return false;
    };
    let backend = rest.bytes().take_while(u8::is_ascii_digit).count();
    let Some(rest) = rest[backend..].strip_prefix('_').filter(|_| backend > 0) else {
        return false;
    };
    let rel = rest.bytes().take_while(u8::is_ascii_digit).count();
    if rel == 0 {
        return false;
    }
    let mut rest = &rest[rel..];
    if let Some(after) = rest.strip_prefix('_') {
        match fork_suffix(after) {
            Some((_, len)) => rest = &after[len..],
            None => return false,
        }
    }
    match rest.strip_prefix('.') {
        None => rest.is_empty(),
        Some(seg) => !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_digit()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPC: &str = "pg_tblspc/16400/PG_15_202209061";

    #[test]
    fn directories_with_skipped_contents() {
        for (dir, skip) in [
            ("pg_wal", true),
            ("./pg_wal/", true),
            ("pg_wal/archive_status", true),
            ("pg_replslot", true),
            ("pg_dynshmem", true),
            ("pg_notify", true),
            ("pg_serial", true),
            ("pg_snapshots", true),
            ("pg_stat_tmp", true),
            ("pg_subtrans", true),
            ("base/pgsql_tmp", true),
            (&format!("{SPC}/pgsql_tmp"), true),
            ("base/pgsql_tmp12", true),
            ("base", false),
            ("base/5", false),
            ("global", false),
            ("pg_stat", false),
            ("pg_xact", false),
            ("pg_multixact/offsets", false),
            ("pg_logical/snapshots", false),
            ("pg_tblspc", false),
            ("base/5/pg_wal", false),
            ("pg_walx", false),
        ] {
            assert_eq!(skip_dir_contents(dir), skip, "{dir}");
        }
    }

    #[test]
    fn files_never_copied() {
        for (path, skip) in [
            ("postmaster.pid", true),
            ("postmaster.opts", true),
            ("standby.signal", true),
            ("recovery.signal", true),
            ("backup_label", true),
            ("tablespace_map", true),
            ("backup_manifest", true),
            ("postgresql.auto.conf.tmp", true),
            ("current_logfiles.tmp", true),
            ("global/pg_internal.init", true),
            ("base/5/pg_internal.init", true),
            ("base/5/pg_internal.init.1234", true),
            ("base/pgsql_tmp/pgsql_tmp1234.0", true),
            ("base/pgsql_tmp/pgsql_tmp1234.0.fileset/x", true),
            (&format!("{SPC}/pgsql_tmp/pgsql_tmp99.1"), true),
            ("base/5/t3_16384", true),
            ("base/5/t3_16384_fsm", true),
            ("base/5/t3_16384.2", true),
            (&format!("{SPC}/5/t12_16500_vm"), true),
            ("pg_wal/000000010000000000000001", true),
            ("pg_wal/archive_status/000000010000000000000001.done", true),
            ("pg_replslot/slot1/state", true),
            ("pg_stat_tmp/global.stat", true),
            ("base/5/.DS_Store", true),
            ("postgresql.auto.conf", false),
            ("postgresql.conf", false),
            ("PG_VERSION", false),
            ("global/pg_control", false),
            ("global/1262", false),
            ("base/5/16384", false),
            ("base/5/16391_init", false),
            ("base/5/pg_filenode.map", false),
            ("pg_xact/0000", false),
            ("pg_stat/pgstat.stat", false),
            ("current_logfiles", false),
            ("global/t3_16384", false), // temp relations only live in database directories
            ("base/5/t3_", false),
            ("base/5/tx_1", false),
            ("log/postgresql.log", false),
        ] {
            assert_eq!(skip_file(path), skip, "{path}");
        }
    }

    #[test]
    fn relation_file_names() {
        let rel = |t, d, r, f, s| {
            Some(RelationFile {
                tablespace_oid: t,
                database_oid: d,
                relfilenode: r,
                fork: f,
                segment: s,
            })
        };
        for (path, want) in [
            ("base/5/16384", rel(None, Some(5), 16384, Fork::Main, 0)),
            ("./base/5/16384.3", rel(None, Some(5), 16384, Fork::Main, 3)),
            ("base/5/16384_fsm", rel(None, Some(5), 16384, Fork::Fsm, 0)),
            (
                "base/5/16384_vm.1",
                rel(None, Some(5), 16384, Fork::VisibilityMap, 1),
            ),
            (
                "base/5/16391_init",
                rel(None, Some(5), 16391, Fork::Init, 0),
            ),
            ("global/1262", rel(None, None, 1262, Fork::Main, 0)),
            (
                "global/1262_vm",
                rel(None, None, 1262, Fork::VisibilityMap, 0),
            ),
            (
                &format!("{SPC}/16401/16402.12"),
                rel(Some(16400), Some(16401), 16402, Fork::Main, 12),
            ),
            (
                "base/5/4294967295",
                rel(None, Some(5), u32::MAX, Fork::Main, 0),
            ),
            ("base/5/4294967296", None),
            ("base/5/016384", None),
            ("base/5/0", None),
            ("base/5/16384.0", None),
            ("base/5/16384.", None),
            ("base/5/16384_main", None),
            ("base/5/16384_fsmx", None),
            ("base/5/16384_", None),
            ("base/5/16384.1.2", None),
            ("base/5/t3_16384", None),
            ("base/5/pg_filenode.map", None),
            ("base/5/PG_VERSION", None),
            ("global/pg_control", None),
            ("base/16384", None),
            ("base/x/16384", None),
            ("pg_xact/0000", None),
            ("pg_tblspc/16400/16401/16402", None),
            (&format!("{SPC}/16401/sub/16402"), None),
            ("16384", None),
            ("", None),
        ] {
            assert_eq!(relation_file(path), want, "{path}");
        }
    }

    #[test]
    fn relation_files_name_the_relation_wal_names() {
        use crate::pg::wal::{Fork as WalFork, RelFileLocator};
        let loc = |spc, db, rel| RelFileLocator { spc, db, rel };
        for (path, want, fork, first) in [
            ("base/5/16384", loc(1663, 5, 16384), WalFork::Main, 0),
            (
                "base/5/16384.2",
                loc(1663, 5, 16384),
                WalFork::Main,
                2 * 131072,
            ),
            (
                "base/5/16384_fsm",
                loc(1663, 5, 16384),
                WalFork::FreeSpaceMap,
                0,
            ),
            (
                "base/5/16384_vm.1",
                loc(1663, 5, 16384),
                WalFork::VisibilityMap,
                131072,
            ),
            ("base/5/16391_init", loc(1663, 5, 16391), WalFork::Init, 0),
            ("global/1262", loc(1664, 0, 1262), WalFork::Main, 0),
            (
                &format!("{SPC}/16401/16402.12"),
                loc(16400, 16401, 16402),
                WalFork::Main,
                12 * 131072,
            ),
        ] {
            let r = relation_file(path).unwrap();
            assert_eq!(r.locator(), want, "{path}");
            assert_eq!(r.wal_fork(), fork, "{path}");
            assert_eq!(r.blocks(), first..first + 131072, "{path}");
        }
        // The last segment a u32 block number reaches ends past it, without overflow.
        let last = relation_file("base/5/1.32767").unwrap();
        assert_eq!(last.blocks().end, 1 << 32);
    }

    #[test]
    fn relation_file_helpers() {
        let r = relation_file("base/5/16384_vm.2").unwrap();
        assert_eq!(r.first_block(), 2 * 131072);
        assert_eq!(r.file_name(), "16384_vm.2");
        assert!(!r.is_init_fork());
        assert!(relation_file("base/5/16391_init").unwrap().is_init_fork());
        assert_eq!(
            relation_file("base/5/1.4294967295").unwrap().first_block(),
            u32::MAX
        );
        assert_eq!(init_fork_name(16391), "16391_init");
        assert_eq!(
            init_fork_path("base/5/16391.1").as_deref(),
            Some("base/5/16391_init")
        );
        assert_eq!(
            init_fork_path(&format!("{SPC}/7/8_fsm")),
            Some(format!("{SPC}/7/8_init"))
        );
        assert_eq!(init_fork_path("base/5/16391_init"), None);
        assert_eq!(init_fork_path("base/5/pg_filenode.map"), None);
    }
}
