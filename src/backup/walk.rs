//! Walks the data directory (and the tablespaces linked from `pg_tblspc`) and decides
//! what a base backup copies, following PostgreSQL's rules in `pg::datadir`.

use std::collections::HashSet;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, IoContext, Result};
use crate::pg::datadir::{relation_file, skip_dir_contents, skip_file, Fork, PG_WAL_EMPTY_SUBDIRS};
use crate::repo::manifest::{DirEntry, Tablespace};

#[derive(Clone, Debug)]
pub struct SourceFile {
    /// The data directory (shared by every file: a path of its own per file was
    /// megabytes held all through a backup of 100,000 files).
    pub root: Arc<Path>,
    pub rel_path: String,
    pub size: u64,
    pub mtime: i64,
    pub mode: u32,
    /// Block number of the file's first page, for relation files (page checksums).
    pub first_block: Option<u32>,
    /// Changes can be found by page LSN: main and init forks. The free space map and
    /// visibility map change without a new LSN, so they are compared whole.
    pub page_level: bool,
}

impl SourceFile {
    /// Where it is: under the data directory (tablespace files through their link).
    pub fn abs_path(&self) -> PathBuf {
        self.root.join(&self.rel_path)
    }
}

#[derive(Debug, Default)]
pub struct DataDirListing {
    pub dirs: Vec<DirEntry>,
    /// Shared with the pieces copy cuts them into: each file is held once, and the list
    /// itself is only a pointer a file.
    pub files: Vec<Arc<SourceFile>>,
    pub tablespaces: Vec<Tablespace>,
}

pub fn walk_data_dir(pgdata: &Path) -> Result<DataDirListing> {
    let mut listing = DataDirListing::default();
    walk(&pgdata.into(), pgdata, "", &mut listing)?;
    // pg_wal/summaries exists from PostgreSQL 17 on; older servers get none.
    let major: u32 = std::fs::read_to_string(pgdata.join("PG_VERSION"))
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    if major < 17 {
        listing.dirs.retain(|d| d.path != "pg_wal/summaries");
    }
    listing.files.sort_by(|a, b| a.rel_path.cmp(&b.rel_path));
    listing.files.shrink_to_fit();
    Ok(listing)
}

fn walk(root: &Arc<Path>, dir: &Path, rel_dir: &str, out: &mut DataDirListing) -> Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        // A database dropped during the backup: WAL replay removes it anyway.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !rel_dir.is_empty() => return Ok(()),
        Err(e) => return Err(Error::io("listing", dir, e)),
    };
    let mut names: Vec<String> = Vec::new();
    for entry in entries {
        let entry = entry.at("listing", dir)?;
        match entry.file_name().into_string() {
            Ok(name) => names.push(name),
            Err(name) => {
                return Err(Error::config(format!(
                    "{}: file name {name:?} is not UTF-8",
                    dir.display()
                )))
            }
        }
    }
    names.sort();
    let unlogged = unlogged_relfilenodes(&names);
    for name in names {
        let rel = if rel_dir.is_empty() {
            name.clone()
        } else {
            format!("{rel_dir}/{name}")
        };
        let path = dir.join(&name);
        let link_meta = match std::fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io("reading metadata of", &path, e)),
        };
        if link_meta.file_type().is_symlink() && rel_dir == "pg_tblspc" {
            let oid: u32 = name.parse().map_err(|_| {
                Error::config(format!("{}: unexpected entry in pg_tblspc", path.display()))
            })?;
            let target = std::fs::read_link(&path).at("reading link", &path)?;
            out.tablespaces.push(Tablespace {
                oid,
                location: target.display().to_string(),
            });
            let meta = std::fs::metadata(&path).at("reading metadata of", &path)?;
            out.dirs.push(DirEntry {
                path: rel.clone(),
                mode: meta.permissions().mode() & 0o7777,
            });
            walk(root, &path, &rel, out)?;
            continue;
        }
        // Other links (pg_wal on another disk, linked config files) are followed.
        let meta = match std::fs::metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io("reading metadata of", &path, e)),
        };
        if meta.is_dir() {
            out.dirs.push(DirEntry {
                path: rel.clone(),
                mode: meta.permissions().mode() & 0o7777,
            });
            if skip_dir_contents(&rel) {
                if rel == "pg_wal" {
                    for sub in PG_WAL_EMPTY_SUBDIRS {
                        out.dirs.push(DirEntry {
                            path: sub.into(),
                            mode: meta.permissions().mode() & 0o7777,
                        });
                    }
                }
                continue;
            }
            walk(root, &path, &rel, out)?;
        } else if meta.is_file() {
            if skip_file(&rel) {
                continue;
            }
            let relation = relation_file(&rel);
            if let Some(r) = &relation {
                if unlogged.contains(&r.relfilenode) && !matches!(r.fork, Fork::Init) {
                    continue;
                }
            }
            out.files.push(Arc::new(SourceFile {
                root: root.clone(),
                rel_path: rel,
                size: meta.len(),
                mtime: meta.mtime(),
                mode: meta.permissions().mode() & 0o7777,
                page_level: relation
                    .as_ref()
                    .is_some_and(|r| matches!(r.fork, Fork::Main | Fork::Init)),
                first_block: relation.map(|r| r.first_block()),
            }));
        }
    }
    Ok(())
}

/// Relations with an init fork are unlogged: only the init fork is backed up.
fn unlogged_relfilenodes(names: &[String]) -> HashSet<u32> {
    names
        .iter()
        .filter_map(|n| n.strip_suffix("_init"))
        .filter_map(|n| n.parse().ok())
        .collect()
}
