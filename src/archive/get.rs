//! archive-get: fetch a WAL file for recovery. "Not in the archive" and "in the archive
//! but unusable" must never look alike: the first ends recovery's archive phase
//! normally, the second must stop recovery (main maps it to an exit status above 125).

use std::path::{Path, PathBuf};

use crate::error::{Error, ErrorKind, IoContext, Result};
use crate::pg::WalFileName;
use crate::repo::archive::ArchivedFile;
use crate::repo::wal::StoredWal;
use crate::repo::Repo;
use crate::storage::local::sync_dir;

/// Finds `name`, falling back to the `.partial` copy of a segment (the end of a timeline
/// left behind at a promotion). Two versions of one name cannot both be right: that stops
/// recovery rather than serve either.
pub async fn find_for_get(repo: &Repo, name: &WalFileName) -> Result<Option<ArchivedFile>> {
    choose(repo, name, repo.archived_for_get(name).await?)
}

/// `find_for_get` over what `archived_for_get` listed.
fn choose(
    repo: &Repo,
    name: &WalFileName,
    found: Vec<ArchivedFile>,
) -> Result<Option<ArchivedFile>> {
    let (exact, partial): (Vec<_>, Vec<_>) = found.into_iter().partition(|f| &f.name == name);
    match one_version(repo, exact)? {
        Some(file) => Ok(Some(file)),
        None => one_version(repo, partial),
    }
}

fn one_version(repo: &Repo, found: Vec<ArchivedFile>) -> Result<Option<ArchivedFile>> {
    if let Some(other) = found.iter().find(|f| f.checksum != found[0].checksum) {
        return Err(Error::corrupt(format!(
            "{} is archived twice with different contents in stanza {:?}: {} and {}",
            other.name,
            repo.stanza,
            found[0].file_name(),
            other.file_name()
        ))
        .hint("two clusters archived into one stanza; `pgward verify` names what each version breaks, remove the one that does not belong"));
    }
    Ok(found.into_iter().next())
}

/// `listed`: what `StanzaHandle::archived_for_get` found for `name`, when the caller
/// listed while it unlocked the stanza; None lists now.
pub async fn archive_get(
    repo: &Repo,
    name: &WalFileName,
    listed: Option<Vec<ArchivedFile>>,
    dest: &Path,
) -> Result<ArchivedFile> {
    let found = match listed {
        Some(found) => choose(repo, name, found)?,
        None => find_for_get(repo, name).await?,
    };
    let Some(file) = found else {
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
        let stored = repo.open_wal(file).await?;
        let dest = dest.to_path_buf();
        tokio::task::spawn_blocking(move || write_file(stored, &dest, durability))
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

fn write_file(stored: StoredWal, dest: &Path, durability: Durability) -> Result<()> {
    let dir = dest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let temp = PathBuf::from(format!("{}.pgward-tmp", dest.display()));
    crate::error::test_panic_point("archive-get");
    let out = crate::storage::local::replace_file(&temp, 0o640)?; // group: as PostgreSQL's umask says
    let result = (|| {
        let mut buffered = std::io::BufWriter::with_capacity(1 << 20, out);
        stored.copy_to(&mut buffered)?;
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
