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

/// The files a backup copies, in path order, held compactly: one string of all their
/// paths and a few numbers a file (about 70 bytes a file; as a `SourceFile` each, with
/// its own path, it was about 130, held all through a backup of 100,000 files). Copy
/// makes a `SourceFile` of an entry when it needs one.
#[derive(Debug, Default)]
pub struct Listing {
    roots: Vec<Arc<Path>>,
    paths: String,
    entries: Vec<Entry>,
}

#[derive(Debug)]
struct Entry {
    path_start: usize,
    path_len: u32,
    root: u32,
    mode: u32,
    size: u64,
    mtime: i64,
    first_block: Option<u32>,
    page_level: bool,
}

impl Listing {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn path_of(&self, e: &Entry) -> &str {
        &self.paths[e.path_start..e.path_start + e.path_len as usize]
    }

    /// The path of file `i`, relative to the data directory.
    pub fn path(&self, i: usize) -> &str {
        self.path_of(&self.entries[i])
    }

    pub fn size(&self, i: usize) -> u64 {
        self.entries[i].size
    }

    /// File `i`.
    pub fn get(&self, i: usize) -> SourceFile {
        let e = &self.entries[i];
        SourceFile {
            root: self.roots[e.root as usize].clone(),
            rel_path: self.path_of(e).to_string(),
            size: e.size,
            mtime: e.mtime,
            mode: e.mode,
            first_block: e.first_block,
            page_level: e.page_level,
        }
    }

    pub fn push(&mut self, file: SourceFile) {
        let root = match self.roots.iter().position(|r| *r == file.root) {
            Some(at) => at,
            None => {
                self.roots.push(file.root.clone());
                self.roots.len() - 1
            }
        };
        self.entries.push(Entry {
            path_start: self.paths.len(),
            // Paths are shorter than PATH_MAX.
            path_len: file.rel_path.len() as u32,
            root: root as u32,
            mode: file.mode,
            size: file.size,
            mtime: file.mtime,
            first_block: file.first_block,
            page_level: file.page_level,
        });
        self.paths.push_str(&file.rel_path);
    }

    fn sort(&mut self) {
        let mut entries = std::mem::take(&mut self.entries);
        entries.sort_by(|a, b| self.path_of(a).cmp(self.path_of(b)));
        entries.shrink_to_fit();
        self.entries = entries;
        self.paths.shrink_to_fit();
    }
}

#[derive(Debug, Default)]
pub struct DataDirListing {
    pub dirs: Vec<DirEntry>,
    pub files: Listing,
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
    listing.files.sort();
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
            out.files.push(SourceFile {
                root: root.clone(),
                rel_path: rel,
                size: meta.len(),
                mtime: meta.mtime(),
                mode: meta.permissions().mode() & 0o7777,
                page_level: relation
                    .as_ref()
                    .is_some_and(|r| matches!(r.fork, Fork::Main | Fork::Init)),
                first_block: relation.map(|r| r.first_block()),
            });
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listing_gives_back_its_files_in_path_order() {
        let (a, b): (Arc<Path>, Arc<Path>) = (Path::new("/d").into(), Path::new("/t").into());
        let mut listing = Listing::default();
        for (root, path, size) in [
            (&a, "base/1/x", 1),
            (&b, "base/1.5", 2),
            (&a, "PG_VERSION", 3),
        ] {
            listing.push(SourceFile {
                root: root.clone(),
                rel_path: path.into(),
                size,
                mtime: -(size as i64),
                mode: 0o600,
                first_block: (size == 1).then_some(7),
                page_level: size == 1,
            });
        }
        listing.sort();
        let files: Vec<SourceFile> = (0..listing.len()).map(|i| listing.get(i)).collect();
        let paths: Vec<&str> = files.iter().map(|f| f.rel_path.as_str()).collect();
        assert_eq!(paths, ["PG_VERSION", "base/1.5", "base/1/x"]);
        assert_eq!(files[1].abs_path(), Path::new("/t/base/1.5"));
        let x = &files[2];
        assert_eq!(
            (x.size, x.mtime, x.first_block, x.page_level),
            (1, -1, Some(7), true)
        );
        assert_eq!(listing.path(0), "PG_VERSION");
        assert_eq!(listing.size(1), 2);
    }
}
