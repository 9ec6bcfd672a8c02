//! Restoring as root. PostgreSQL refuses to start on a data directory it does not own,
//! and refuses to run as root, so files root writes would leave a cluster that cannot
//! start. Run as root, restore gives everything it wrote to the user who owns the data
//! directory (or, for a new one, its parent directory), and refuses when that is root
//! itself: there is no right owner to guess.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

/// Who the restored files must belong to: None when not running as root (files are then
/// the caller's, as for any program).
pub fn cluster_owner(pgdata: &Path) -> Result<Option<Owner>> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    let (meta, which) = match std::fs::metadata(pgdata) {
        Ok(m) => (m, pgdata.to_path_buf()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let parent = pgdata
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            (
                std::fs::metadata(parent).at("reading the owner of", parent)?,
                parent.to_path_buf(),
            )
        }
        Err(e) => return Err(Error::io("reading the owner of", pgdata, e)),
    };
    if meta.uid() == 0 {
        return Err(Error::config(format!(
            "restoring as root into {}, but {} is owned by root: PostgreSQL cannot run as root, so the restored cluster could not start",
            pgdata.display(),
            which.display()
        ))
        .hint(format!(
            "create the data directory owned by the cluster's user first (install -d -o postgres -g postgres -m 700 {}), or run restore as that user",
            pgdata.display()
        )));
    }
    Ok(Some(Owner {
        uid: meta.uid(),
        gid: meta.gid(),
    }))
}

/// Gives the restored tree (and the tablespace directories) to `owner`, without
/// following links (a tablespace link itself is changed, its target is walked as its
/// own tree).
pub fn give_to(owner: Owner, pgdata: &Path, tablespaces: &[(u32, PathBuf)]) -> Result<()> {
    fn walk(owner: Owner, path: &Path) -> Result<()> {
        std::os::unix::fs::lchown(path, Some(owner.uid), Some(owner.gid))
            .at("changing the owner of", path)?;
        let meta = std::fs::symlink_metadata(path).at("reading", path)?;
        if meta.is_dir() {
            for entry in std::fs::read_dir(path).at("listing", path)? {
                walk(owner, &entry.at("listing", path)?.path())?;
            }
        }
        Ok(())
    }
    walk(owner, pgdata)?;
    for (_, location) in tablespaces {
        walk(owner, location)?;
    }
    Ok(())
}
