//! The scratch directory a drill restores into, and who owns it. Layout:
//!
//! ```text
//! <scratch>/data/             the restored cluster
//! <scratch>/tablespaces/OID/  its tablespaces (never their original places: those are the source's)
//! <scratch>/sock/             the only socket directory of the scratch server (mode 0700)
//! <scratch>/pg_hba.conf       trust for local connections: only the owner reaches sock/
//! <scratch>/server.log
//! ```
//!
//! The directory must be new or empty; what the drill made is removed at the end, on
//! failure too, unless `--keep`.

use std::ffi::CString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, ErrorKind, IoContext, Result};
use crate::repo::manifest::Manifest;
use crate::restore::ownership::{give_to, Owner};
use crate::storage::local::create_dir_durable;
use crate::units::human_bytes;

/// The unprivileged user a drill run as root gives the scratch cluster to: `--run-as`,
/// else the owner of the source's data directory (`--pgdata`/PGDATA/configuration: only
/// its owner is read, the directory is not touched). None when not running as root:
/// everything is the caller's, and the server runs as the caller.
pub fn owner(run_as: Option<&str>, source_pgdata: Option<&Path>) -> Result<Option<Owner>> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    if let Some(name) = run_as {
        let user = user_named(name)?;
        if !root && user.uid != unsafe { libc::geteuid() } {
            return Err(Error::config(format!(
                "--run-as {name}: only root can run the scratch server as another user"
            ))
            .hint("run the drill as that user, or as root"));
        }
        return Ok(root.then_some(user));
    }
    if !root {
        return Ok(None);
    }
    let hint = "pass --run-as USER (the cluster's operating system user, e.g. postgres), or \
                --pgdata naming the source's data directory, whose owner is then used";
    let Some(pgdata) = source_pgdata else {
        return Err(Error::config(
            "drill runs as root, and PostgreSQL refuses to: pgward needs an unprivileged user to run the scratch server as",
        )
        .hint(hint));
    };
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(pgdata).at("reading the owner of", pgdata)?;
    if meta.uid() == 0 {
        return Err(Error::config(format!(
            "the source data directory {} is owned by root, and PostgreSQL cannot run as root",
            pgdata.display()
        ))
        .hint(hint));
    }
    Ok(Some(Owner {
        uid: meta.uid(),
        gid: meta.gid(),
    }))
}

/// uid and primary gid of the operating system user `name`.
fn user_named(name: &str) -> Result<Owner> {
    let c = CString::new(name)
        .map_err(|_| Error::config(format!("--run-as {name:?}: not a user name")))?;
    // SAFETY: getpwnam takes a NUL-terminated string; its result is read at once, before
    // any other call that could reuse its static buffer.
    let pw = unsafe { libc::getpwnam(c.as_ptr()) };
    if pw.is_null() {
        return Err(Error::config(format!("--run-as {name}: no such user")));
    }
    // SAFETY: pw is non-null and points to getpwnam's static struct.
    let (uid, gid) = unsafe { ((*pw).pw_uid, (*pw).pw_gid) };
    if uid == 0 {
        return Err(Error::config(format!(
            "--run-as {name}: that is root, and PostgreSQL refuses to run as root"
        )));
    }
    Ok(Owner { uid, gid })
}

/// The name of the user with `uid`, if it has one.
pub fn user_name(uid: u32) -> Option<String> {
    // SAFETY: getpwuid has no preconditions; its result is read at once.
    unsafe {
        let pw = libc::getpwuid(uid);
        (!pw.is_null()).then(|| {
            std::ffi::CStr::from_ptr((*pw).pw_name)
                .to_string_lossy()
                .into_owned()
        })
    }
}

pub struct Scratch {
    pub root: PathBuf,
    /// The drill made `root` (and removes it); otherwise it was empty and only its
    /// contents go.
    created: bool,
    pub owner: Option<Owner>,
}

impl Scratch {
    /// Makes (or takes, when empty) the scratch directory, after checking that its file
    /// system has room for `backup`.
    pub fn create(
        dir: Option<&Path>,
        stanza: &str,
        owner: Option<Owner>,
        backup: &Manifest,
    ) -> Result<Scratch> {
        let root = match dir {
            Some(d) => std::path::absolute(d).at("resolving", d)?,
            None => std::env::temp_dir().join(format!(
                "pgward-drill-{stanza}-{}-{}",
                backup.label,
                std::process::id()
            )),
        };
        // The server's socket path must fit in sun_path (108 bytes).
        let socket = root.join("sock").join(".s.PGSQL.65535.lock");
        if socket.as_os_str().len() > 107 {
            return Err(Error::config(format!(
                "scratch directory {} is too deep: the scratch server's socket path would be longer than Unix sockets allow",
                root.display()
            ))
            .hint("choose a shorter --scratch DIR"));
        }
        let created = match std::fs::read_dir(&root) {
            Ok(mut entries) => {
                if entries.next().is_some() {
                    return Err(Error::new(
                        ErrorKind::Conflict,
                        format!("scratch directory {} is not empty", root.display()),
                    )
                    .hint("give --scratch a new or empty directory: a drill removes what it restores there"));
                }
                false
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
            Err(e) => return Err(Error::io("opening", &root, e)),
        };
        check_space(
            &root,
            &backup.label,
            backup.database_size,
            needed_space(backup),
        )?;
        if created {
            create_dir_durable(&root).at("creating", &root)?;
        }
        let scratch = Scratch {
            root,
            created,
            owner,
        };
        std::fs::set_permissions(&scratch.root, std::fs::Permissions::from_mode(0o700))
            .at("setting permissions of", &scratch.root)?;
        scratch.give(&scratch.root)?;
        Ok(scratch)
    }

    pub fn data(&self) -> PathBuf {
        self.root.join("data")
    }

    pub fn socket_dir(&self) -> PathBuf {
        self.root.join("sock")
    }

    pub fn log(&self) -> PathBuf {
        self.root.join("server.log")
    }

    pub fn tablespace(&self, oid: u32) -> PathBuf {
        self.root.join("tablespaces").join(oid.to_string())
    }

    /// Gives `path` (a tree) to the owner when there is one.
    pub fn give(&self, path: &Path) -> Result<()> {
        match self.owner {
            Some(owner) => give_to(owner, path, &[]),
            None => Ok(()),
        }
    }

    /// A directory of the drill's own, mode 0700, the owner's.
    pub fn private_dir(&self, path: &Path) -> Result<()> {
        std::fs::create_dir_all(path).at("creating", path)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
            .at("setting permissions of", path)?;
        self.give(path)
    }

    /// A file of the drill's own, mode 0600, the owner's.
    pub fn write_file(&self, path: &Path, content: &str) -> Result<()> {
        std::fs::write(path, content).at("writing", path)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .at("setting permissions of", path)?;
        self.give(path)
    }

    /// Removes what the drill made. Processes of the stopped server may still be
    /// finishing in it for a moment (a restore_command and the prefetcher it started,
    /// whose last file lands or vanishes while the tree is walked): a failed removal is
    /// tried again until it succeeds or `patience` has passed.
    pub async fn remove(&self, patience: std::time::Duration) -> Result<()> {
        let deadline = std::time::Instant::now() + patience;
        loop {
            match self.remove_once() {
                Ok(()) => return Ok(()),
                Err(e) if std::time::Instant::now() < deadline => {
                    tracing::debug!("removing the scratch directory again: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn remove_once(&self) -> Result<()> {
        if !self.root.exists() {
            return Ok(());
        }
        if self.created {
            return std::fs::remove_dir_all(&self.root).at("removing", &self.root);
        }
        for entry in std::fs::read_dir(&self.root).at("listing", &self.root)? {
            let path = entry.at("listing", &self.root)?.path();
            let removed = if path.is_dir() && !path.is_symlink() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            match removed {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(Error::io("removing", &path, e))
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// Room the restored cluster needs: the backup's database size, plus room for the WAL
/// recovery restores and the checks' extension (a tenth, and at least four segments).
fn needed_space(backup: &Manifest) -> u64 {
    backup.database_size + (backup.database_size / 10).max(4 * backup.wal_segment_size)
}

/// Refuses before anything is written when the file system holding `dir` has less room
/// than `needed` (for backup `label` of `size` bytes).
fn check_space(dir: &Path, label: &str, size: u64, needed: u64) -> Result<()> {
    let existing = dir
        .ancestors()
        .find(|a| a.exists())
        .unwrap_or(Path::new("/"));
    let free = free_bytes(existing)?;
    if free < needed {
        return Err(Error::new(
            ErrorKind::Io,
            format!(
                "not enough space for the drill in {}: {} free, backup {label} needs about {} ({} of data plus room for WAL)",
                existing.display(),
                human_bytes(free),
                human_bytes(needed),
                human_bytes(size)
            ),
        )
        .hint("choose a scratch directory on a file system with more room: --scratch DIR"));
    }
    Ok(())
}

fn free_bytes(path: &Path) -> Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| Error::config(format!("{} holds a NUL byte", path.display())))?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: c is NUL-terminated and st is a valid statvfs to fill.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(Error::io(
            "reading the free space of",
            path,
            std::io::Error::last_os_error(),
        ));
    }
    Ok(st.f_bavail as u64 * st.f_frsize as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn too_little_space_is_refused_naming_the_place_and_the_sizes() {
        let dir = tempfile::tempdir().unwrap();
        let scratch = dir.path().join("not/yet/made");
        assert!(check_space(&scratch, "20261129-120000F", 1, 1).is_ok());
        let e = check_space(&scratch, "20261129-120000F", 1 << 50, 1 << 51).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Io);
        let shown = dir.path().display().to_string();
        assert!(e.message.contains(&format!("in {shown}: ")), "{e}");
        assert!(
            e.message
                .contains("backup 20261129-120000F needs about 2048.0 TiB (1024.0 TiB of data"),
            "{e}"
        );
        assert!(e.hint.unwrap().contains("--scratch"));
    }
}
