//! archive-get: fetch a WAL file for recovery. "Not in the archive" and "in the archive
//! but unusable" must never look alike: the first ends recovery's archive phase
//! normally, the second must stop recovery (main maps it to an exit status above 125).

use std::path::{Path, PathBuf};

use crate::error::{Error, ErrorKind, IoContext, Result};
use crate::pg::WalFileName;
use crate::pipeline::encrypt::MasterKey;
use crate::pipeline::hash::HashingWriter;
use crate::repo::archive::ArchivedFile;
use crate::repo::cipher::stored_read_error;
use crate::repo::Repo;
use crate::storage::{self, local::sync_dir};

/// Finds `name`, falling back to the `.partial` copy of a segment (the end of a timeline
/// left behind at a promotion).
pub async fn find_for_get(repo: &Repo, name: &WalFileName) -> Result<Option<ArchivedFile>> {
    let found = repo.find_archived(name).await?;
    if let Some(file) = found.into_iter().next() {
        return Ok(Some(file));
    }
    if let WalFileName::Segment(seg) = name {
        return Ok(repo
            .find_archived(&WalFileName::Partial(*seg))
            .await?
            .into_iter()
            .next());
    }
    Ok(None)
}

pub async fn archive_get(repo: &Repo, wal_name: &str, dest: &Path) -> Result<ArchivedFile> {
    let name = WalFileName::parse(wal_name).map_err(|e| {
        Error::config(e.to_string()).hint("restore_command must pass %f and \"%p\"")
    })?;
    let Some(file) = find_for_get(repo, &name).await? else {
        return Err(Error::new(
            ErrorKind::NotFound,
            format!("{name} is not in the archive of stanza {:?}", repo.stanza),
        ));
    };
    fetch(repo, &file, dest, Durability::Visible).await?;
    Ok(file)
}

/// How much a fetched file must survive.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Complete when it appears, not synced: what restore_command hands to PostgreSQL,
    /// which fetches again after a crash (pgBackRest does not sync it either, and two
    /// fsyncs were half of each call's time on a busy disk).
    Visible,
    /// Synced before and after the rename: prefetched files outlive the command and are
    /// trusted later without a second check.
    Synced,
}

/// Writes an archived file to `dest` atomically, checked against its checksum. The file
/// exists: every failure, even a vanished file, must stop recovery rather than read as
/// the end of the archive, so none is reported as NotFound.
pub async fn fetch(
    repo: &Repo,
    file: &ArchivedFile,
    dest: &Path,
    durability: Durability,
) -> Result<()> {
    let fetched = async {
        let reader = repo.data_storage().read(&repo.archived_file_key(file)).await?;
        let (file, dest, master) = (file.clone(), dest.to_path_buf(), repo.shared_key());
        tokio::task::spawn_blocking(move || {
            restore_file(reader, master.as_deref(), &file, &dest, durability)
        })
        .await
        .unwrap_or_else(crate::error::task_panicked)
    };
    fetched.await.map_err(|e| {
        if e.is_not_found() {
            e.with_kind(ErrorKind::Io)
        } else {
            e
        }
    })
}

fn restore_file(
    reader: storage::Reader,
    master: Option<&MasterKey>,
    file: &ArchivedFile,
    dest: &Path,
    durability: Durability,
) -> Result<()> {
    let dir = dest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let temp = PathBuf::from(format!("{}.pgward-tmp", dest.display()));
    crate::error::test_panic_point("archive-get");
    let out = crate::storage::local::replace_file(&temp, 0o640)?; // group: as PostgreSQL's umask says
    let result = (|| {
        let mut writer = HashingWriter::new(std::io::BufWriter::with_capacity(1 << 20, out));
        let what = format!("archived {}", file.file_name());
        let mut decoder = crate::pipeline::unseal(master, storage::blocking_reader(reader))
            .and_then(|r| file.codec.decoder(r))
            .map_err(|e| stored_read_error(&what, e))?;
        std::io::copy(&mut decoder, &mut writer).map_err(|e| stored_read_error(&what, e))?;
        let (buffered, checksum, _) = writer.finish();
        if checksum != file.checksum {
            return Err(Error::corrupt(format!(
                "archived {} does not match its checksum (content hashes to {checksum})",
                file.file_name()
            )));
        }
        let out = buffered
            .into_inner()
            .map_err(|e| Error::io("writing", &temp, e.into_error()))?;
        if durability == Durability::Visible {
            return std::fs::rename(&temp, dest).at("renaming into place", dest);
        }
        out.sync_all().at("syncing", &temp)?;
        std::fs::rename(&temp, dest).at("renaming into place", dest)?;
        sync_dir(dir).at("syncing directory", dir)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result
}

/// Reads a small archived file (a history file) into memory, checked against its checksum.
pub async fn read_archived(repo: &Repo, file: &ArchivedFile) -> Result<Vec<u8>> {
    let stored = repo.data_storage().read_all(&repo.archived_file_key(file)).await?;
    let codec = file.codec;
    let master = repo.shared_key();
    let name = file.file_name();
    let checksum = file.checksum.clone();
    tokio::task::spawn_blocking(move || -> Result<Vec<u8>> {
        let mut out = Vec::new();
        crate::pipeline::unseal(master.as_deref(), &stored[..])
            .and_then(|r| codec.decoder(r))
            .and_then(|mut d| std::io::Read::read_to_end(&mut d, &mut out))
            .map_err(|e| stored_read_error(format!("archived {name}"), e))?;
        if blake3::hash(&out).to_hex().as_str() != checksum {
            return Err(Error::corrupt(format!(
                "archived {name} does not match its checksum"
            )));
        }
        Ok(out)
    })
    .await
    .unwrap_or_else(crate::error::task_panicked)
}
