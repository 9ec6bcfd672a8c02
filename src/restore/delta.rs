//! `restore --delta`: bring an existing data directory of the backup's cluster (a stale
//! replica, a diverged old primary, an earlier restore) to the backup, reading what is
//! there and writing only what differs (pgBackRest's `--delta`). Its phases, before the
//! ones every restore shares:
//!
//! 1. validate: the directory is no running server's (`postmaster.pid` naming a live
//!    postgres process), it is of the backup's cluster (`global/pg_control`'s system
//!    identifier; `--force` overrides), and it is a data directory at all unless empty;
//! 2. mark: [`MARKER`] names the backup and the cluster, and only then is
//!    `global/pg_control` removed: from here to the end the directory cannot start as a
//!    cluster, half old and half restored, and a rerun after a crash still knows whose
//!    directory it is (`pg_control` is restored last, by `restore`, then the marker goes);
//! 3. clean: every file, directory and link the backup does not have is removed; a
//!    tablespace link is kept only when it points where the restore puts the tablespace
//!    (`--tablespace-map` as for any restore); inside a tablespace directory only the
//!    entries the backup has are looked at (others may be other clusters'), and other
//!    links are followed where the backup has a directory (`pg_wal` on another disk, as
//!    backup follows it), otherwise removed, never what they point to;
//! 4. lay out the backup's directories and links, then compare and rewrite the files
//!    (`delta_files`).
//!
//! Which files are kept: those whose bytes match the backup, checked by reading them
//! (pgBackRest's default, size and checksum). Size and mtime alone are never trusted:
//! manifests keep mtimes in whole seconds, so a write in the same second as the backup
//! read the file would go unseen, and WAL replay from the backup's start does not repair
//! a block the diverged cluster changed afterwards.

use std::collections::{BTreeMap, HashSet};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, IoContext, Result};
use crate::pg::datadir::CONTROL_FILE;
use crate::repo::manifest::Manifest;
use crate::storage::local::{create_dir_durable, sync_dir};

/// Present in the data directory from before `pg_control` is removed until after it is
/// restored: a delta restore is under way (or was interrupted) for this backup.
pub const MARKER: &str = "pgward.delta-restore";

#[derive(Serialize, Deserialize)]
struct Marker {
    label: String,
    #[serde(with = "crate::repo::stanza::u64_string")]
    system_identifier: u64,
}

/// What a delta restore did, in bytes.
#[derive(Clone, Debug, Default, Serialize)]
pub struct DeltaStats {
    /// Read from the files already in the data directory, to compare them.
    pub read: u64,
    /// Written into files (only the ranges that differed, or were missing).
    pub written: u64,
    /// Read from the repository (stored, compressed bytes of the frames opened).
    pub fetched: u64,
    /// Of files removed, and cut off files longer than the backup's.
    pub removed: u64,
    pub files_kept: u64,
    pub files_rewritten: u64,
    pub files_removed: u64,
}

impl DeltaStats {
    pub fn add(&mut self, other: &DeltaStats) {
        self.read += other.read;
        self.written += other.written;
        self.fetched += other.fetched;
        self.removed += other.removed;
        self.files_kept += other.files_kept;
        self.files_rewritten += other.files_rewritten;
        self.files_removed += other.files_removed;
    }
}

/// Phases 1 to 3 and the layout of phase 4: on return, the data directory has the
/// backup's directories and links, no file the backup lacks, and no `pg_control`.
pub fn prepare(
    pgdata: &Path,
    manifest: &Manifest,
    tablespaces: &[(u32, PathBuf)],
    force: bool,
) -> Result<DeltaStats> {
    validate(pgdata, manifest, force)?;
    mark(pgdata, manifest)?;
    let mut stats = DeltaStats::default();
    let wanted = Wanted {
        files: manifest.files.iter().map(|f| f.path.as_str()).collect(),
        dirs: manifest
            .directories
            .iter()
            .map(|d| d.path.as_str())
            .collect(),
        links: tablespaces
            .iter()
            .map(|(oid, loc)| (format!("pg_tblspc/{oid}"), loc.as_path()))
            .collect(),
    };
    clean_dir(pgdata, "", &wanted, false, &mut stats)?;
    // A tablespace directory linked only now may hold an older copy of the same
    // tablespace: its entries the backup has are cleaned like the rest.
    for (rel, location) in layout(pgdata, manifest, tablespaces)? {
        clean_dir(&location, &rel, &wanted, true, &mut stats)?;
    }
    Ok(stats)
}

/// The last step, once `pg_control` is back and synced: the restore is whole.
pub fn finish(pgdata: &Path) -> Result<()> {
    let marker = pgdata.join(MARKER);
    std::fs::remove_file(&marker).at("removing", &marker)?;
    sync_dir(pgdata).at("syncing", pgdata)
}

fn validate(pgdata: &Path, manifest: &Manifest, force: bool) -> Result<()> {
    let mut entries = match std::fs::read_dir(pgdata) {
        Ok(entries) => entries,
        // Nothing there: the delta restore is a plain one that fetches every byte.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io("opening", pgdata, e)),
    };
    if entries.next().is_none() {
        return Ok(());
    }
    if let Some(pid) = running_postmaster(pgdata)? {
        return Err(Error::new(
            ErrorKind::Conflict,
            format!(
                "{} belongs to a running server (postmaster.pid names process {pid}, a postgres)",
                pgdata.display()
            ),
        )
        .hint(format!(
            "stop it first: pg_ctl -D {} stop -m fast",
            pgdata.display()
        )));
    }
    let found = match read_marker(pgdata)? {
        // An interrupted delta restore: pg_control is gone or half written by design.
        Some(marker) => Some(marker.system_identifier),
        None => match std::fs::read(pgdata.join(CONTROL_FILE)) {
            Ok(bytes) => crate::pg::control::parse_control_file(&bytes)
                .ok()
                .map(|c| c.system_identifier),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(Error::io("reading", pgdata.join(CONTROL_FILE), e)),
        },
    };
    let is_data_dir = pgdata.join("PG_VERSION").is_file() || found.is_some();
    if !is_data_dir {
        return Err(Error::new(
            ErrorKind::Conflict,
            format!(
                "{} is not empty and is not a PostgreSQL data directory (no PG_VERSION)",
                pgdata.display()
            ),
        )
        .hint("a delta restore only replaces a data directory; give an empty or new directory, or the cluster's own data directory"));
    }
    match found {
        Some(id) if id == manifest.system_identifier => Ok(()),
        _ if force => {
            tracing::warn!(pgdata = %pgdata.display(), "--force: restoring over a data directory of another or an unknown cluster");
            Ok(())
        }
        Some(id) => Err(Error::new(
            ErrorKind::Conflict,
            format!(
                "{} is a data directory of cluster {id}, but backup {} is of cluster {}",
                pgdata.display(),
                manifest.label,
                manifest.system_identifier
            ),
        )
        .hint("a delta restore keeps what matches, which is next to nothing of another cluster; to overwrite it anyway, add --force")),
        None => Err(Error::new(
            ErrorKind::Conflict,
            format!(
                "{}: global/pg_control is missing or unreadable, so whose cluster this is cannot be told",
                pgdata.display()
            ),
        )
        .hint("to restore over it anyway, add --force")),
    }
}

/// The pid in `postmaster.pid` when that process is alive and is a postgres; a stale
/// file (a crash, or a pid reused by another program) is not a running server.
fn running_postmaster(pgdata: &Path) -> Result<Option<i32>> {
    let path = pgdata.join("postmaster.pid");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("reading", &path, e)),
    };
    // The first line; a negative pid is a single-user backend's (postgres --single).
    let Some(pid) = text
        .lines()
        .next()
        .and_then(|l| l.trim().parse::<i32>().ok())
        .map(i32::abs)
        .filter(|p| *p > 0)
    else {
        return Ok(None);
    };
    // SAFETY: signal 0 only asks whether the process exists; it sends nothing.
    let alive = unsafe { libc::kill(pid, 0) } == 0
        || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
    if !alive {
        return Ok(None);
    }
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    // Without /proc to tell, a live process is taken for the server.
    let postgres =
        comm.is_empty() || comm.trim().starts_with("postgres") || comm.trim() == "postmaster";
    Ok(postgres.then_some(pid))
}

fn read_marker(pgdata: &Path) -> Result<Option<Marker>> {
    let path = pgdata.join(MARKER);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            Error::new(
                ErrorKind::Conflict,
                format!("{} does not parse: {e}", path.display()),
            )
            .hint("it is left by an interrupted delta restore; remove it and restore with --force")
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io("reading", &path, e)),
    }
}

fn mark(pgdata: &Path, manifest: &Manifest) -> Result<()> {
    if !pgdata.exists() {
        create_dir_durable(pgdata).at("creating", pgdata)?;
    }
    std::fs::set_permissions(pgdata, std::fs::Permissions::from_mode(0o700))
        .at("setting permissions of", pgdata)?;
    let marker = Marker {
        label: manifest.label.clone(),
        system_identifier: manifest.system_identifier,
    };
    let path = pgdata.join(MARKER);
    let tmp = pgdata.join(format!("{MARKER}.tmp"));
    let bytes = serde_json::to_vec(&marker).expect("marker serializes");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp).at("creating", &tmp)?;
        f.write_all(&bytes).at("writing", &tmp)?;
        f.sync_all().at("syncing", &tmp)?;
    }
    std::fs::rename(&tmp, &path).at("renaming", &tmp)?;
    sync_dir(pgdata).at("syncing", pgdata)?;
    let control = pgdata.join(CONTROL_FILE);
    match std::fs::remove_file(&control) {
        Ok(()) => {
            let global = control.parent().expect("global/");
            sync_dir(global).at("syncing", global)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("removing", &control, e)),
    }
}

/// What the backup has, by path relative to the data directory.
struct Wanted<'a> {
    files: HashSet<&'a str>,
    dirs: HashSet<&'a str>,
    /// `pg_tblspc/<oid>` to where the restore puts the tablespace.
    links: BTreeMap<String, &'a Path>,
}

/// Removes what `dir` (the data directory's `rel`) holds that the backup lacks. In a
/// tablespace's own directory (`only_known`) entries the backup lacks are left alone.
fn clean_dir(
    dir: &Path,
    rel: &str,
    wanted: &Wanted,
    only_known: bool,
    stats: &mut DeltaStats,
) -> Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io("listing", dir, e)),
    };
    for entry in entries {
        let entry = entry.at("listing", dir)?;
        let path = entry.path();
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            remove(&path, stats)?;
            continue;
        };
        let child = if rel.is_empty() {
            name.clone()
        } else {
            format!("{rel}/{name}")
        };
        if rel.is_empty() && (name == MARKER) {
            continue;
        }
        let known = wanted.files.contains(child.as_str()) || wanted.dirs.contains(child.as_str());
        if only_known && !known {
            continue;
        }
        let file_type = entry.file_type().at("reading", &path)?;
        if let Some(location) = wanted.links.get(&child) {
            let points_there = file_type.is_symlink()
                && std::fs::read_link(&path).ok().as_deref() == Some(*location);
            if points_there {
                clean_dir(&path, &child, wanted, true, stats)?;
            } else {
                // Only the link (or an in-place tablespace directory inside pgdata) goes:
                // what a link pointed to is not this restore's to remove.
                remove(&path, stats)?;
            }
            continue;
        }
        if file_type.is_symlink() {
            let target_is_dir = std::fs::metadata(&path).is_ok_and(|m| m.is_dir());
            if wanted.dirs.contains(child.as_str()) && target_is_dir {
                clean_dir(&path, &child, wanted, false, stats)?;
            } else {
                remove(&path, stats)?;
            }
        } else if file_type.is_dir() {
            if wanted.dirs.contains(child.as_str()) {
                clean_dir(&path, &child, wanted, false, stats)?;
            } else {
                remove(&path, stats)?;
            }
        } else if !(file_type.is_file() && wanted.files.contains(child.as_str())) {
            remove(&path, stats)?;
        }
    }
    Ok(())
}

/// Removes a file, a link (never its target) or a directory tree, counting the bytes of
/// the regular files in it.
fn remove(path: &Path, stats: &mut DeltaStats) -> Result<()> {
    let meta = std::fs::symlink_metadata(path).at("reading", path)?;
    if meta.is_dir() {
        for entry in std::fs::read_dir(path).at("listing", path)? {
            remove(&entry.at("listing", path)?.path(), stats)?;
        }
        std::fs::remove_dir(path).at("removing", path)?;
    } else {
        if meta.is_file() {
            stats.removed += meta.len();
            stats.files_removed += 1;
        }
        std::fs::remove_file(path).at("removing", path)?;
    }
    tracing::debug!(path = %path.display(), "removed: not in the backup");
    Ok(())
}

/// The backup's directories and tablespace links, made where missing (what `clean_dir`
/// kept is right already); returns the links it made (`pg_tblspc/<oid>`, location).
fn layout(
    pgdata: &Path,
    manifest: &Manifest,
    tablespaces: &[(u32, PathBuf)],
) -> Result<Vec<(String, PathBuf)>> {
    let mut linked = Vec::new();
    let links: BTreeMap<String, &PathBuf> = tablespaces
        .iter()
        .map(|(oid, loc)| (format!("pg_tblspc/{oid}"), loc))
        .collect();
    let mut dirs: Vec<_> = manifest.directories.iter().collect();
    dirs.sort_by(|a, b| a.path.cmp(&b.path));
    for dir in dirs {
        let path = pgdata.join(&dir.path);
        if let Some(location) = links.get(&dir.path) {
            if std::fs::symlink_metadata(&path).is_err() {
                if !location.exists() {
                    create_dir_durable(location).at("creating", location)?;
                    std::fs::set_permissions(location, std::fs::Permissions::from_mode(0o700))
                        .at("setting permissions of", location)?;
                }
                std::os::unix::fs::symlink(location, &path)
                    .at("creating tablespace link", &path)?;
                linked.push((dir.path.clone(), location.to_path_buf()));
            }
            continue;
        }
        match std::fs::create_dir(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(Error::io("creating", &path, e)),
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(dir.mode))
            .at("setting permissions of", &path)?;
    }
    Ok(linked)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stale_or_reused_pid_is_no_running_server() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(running_postmaster(dir.path()).unwrap(), None);
        // A pid no process has (pid_max is at most 2^22).
        std::fs::write(dir.path().join("postmaster.pid"), "99999999\n/x\n").unwrap();
        assert_eq!(running_postmaster(dir.path()).unwrap(), None);
        // Our own process is alive but no postgres: a reused pid.
        let me = std::process::id() as i32;
        std::fs::write(dir.path().join("postmaster.pid"), format!("{me}\n/x\n")).unwrap();
        assert_eq!(running_postmaster(dir.path()).unwrap(), None);
        std::fs::write(dir.path().join("postmaster.pid"), "garbage\n").unwrap();
        assert_eq!(running_postmaster(dir.path()).unwrap(), None);
    }

    #[test]
    fn clean_keeps_what_the_backup_has_and_never_follows_a_foreign_link() {
        let root = tempfile::tempdir().unwrap();
        let pgdata = root.path().join("data");
        let outside = root.path().join("outside");
        std::fs::create_dir_all(pgdata.join("base/1")).unwrap();
        std::fs::create_dir_all(pgdata.join("extra/deep")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("keep"), b"not ours").unwrap();
        std::fs::write(pgdata.join("base/1/1259"), b"kept").unwrap();
        std::fs::write(pgdata.join("base/1/99999"), b"gone").unwrap();
        std::fs::write(pgdata.join("extra/deep/f"), b"gone too").unwrap();
        std::fs::write(pgdata.join(MARKER), b"{}").unwrap();
        std::os::unix::fs::symlink(&outside, pgdata.join("link")).unwrap();
        let manifest_json = serde_json::json!({
            "directories": [{"path": "base", "mode": 448}, {"path": "base/1", "mode": 448}],
            "files": [{"path": "base/1/1259", "size": 4, "mtime": 0, "mode": 384, "checksum": null, "extents": []}],
        });
        let wanted = Wanted {
            files: manifest_json["files"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| f["path"].as_str().unwrap())
                .collect(),
            dirs: manifest_json["directories"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d["path"].as_str().unwrap())
                .collect(),
            links: BTreeMap::new(),
        };
        let mut stats = DeltaStats::default();
        clean_dir(&pgdata, "", &wanted, false, &mut stats).unwrap();
        assert!(pgdata.join("base/1/1259").is_file());
        assert!(!pgdata.join("base/1/99999").exists());
        assert!(!pgdata.join("extra").exists());
        assert!(std::fs::symlink_metadata(pgdata.join("link")).is_err());
        assert!(pgdata.join(MARKER).is_file(), "the marker stays");
        assert_eq!(std::fs::read(outside.join("keep")).unwrap(), b"not ours");
        assert_eq!((stats.removed, stats.files_removed), (12, 2));
    }
}
