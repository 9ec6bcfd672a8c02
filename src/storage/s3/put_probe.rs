//! The conditional-put probe's answer, remembered on this host per bucket URL (endpoint
//! and bucket) for `REMEMBERED_FOR`, so that archive-push, one process per WAL file,
//! does not spend two PUTs and a DELETE on it every time. Kept in
//! `$TMPDIR/pgward-state-<uid>`, checked like the lock fallback's directory (`repo::lock`)
//! to be private to pgward's user: a planted "supported" would make WAL claims trust a
//! server that may ignore the condition and let two versions of one segment in
//! (`repo::wal`). The uid in its name keeps a directory another user made first (root
//! running a command by hand) from disabling it.
//! The time limit bounds how long a server swapped for one that ignores the condition
//! goes unnoticed. Any trouble with the file means probing again, never an error.

use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::error::{Error, IoContext, Result};
use crate::storage::local::{ensure_private_dir, open_nofollow, replace_file};

pub(super) const REMEMBERED_FOR: Duration = Duration::from_secs(3600);

const SUPPORTED: &str = "supported";
const IGNORED: &str = "ignored";

/// Where the answer for `bucket_url` is kept.
pub(super) fn answer_path(bucket_url: &str) -> PathBuf {
    let id = blake3::hash(bucket_url.as_bytes()).to_hex();
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    std::env::temp_dir()
        .join(format!("pgward-state-{me}"))
        .join(format!("conditional-put-{}", &id[..16]))
}

/// The remembered answer, if one younger than `REMEMBERED_FOR` is there, in a private
/// directory, written by pgward's user and by nobody else.
pub(super) fn recall(path: &Path) -> Option<bool> {
    let dir = path.parent()?;
    let dir_meta = std::fs::symlink_metadata(dir).ok()?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if !dir_meta.is_dir() || dir_meta.uid() != me || dir_meta.mode() & 0o022 != 0 {
        return None;
    }
    let file = open_nofollow(path).ok()?;
    let meta = file.metadata().ok()?;
    if !meta.is_file() || meta.uid() != me || meta.mode() & 0o022 != 0 {
        return None;
    }
    // A time in the future (clock set back) is as untrusted as an old one.
    let age = SystemTime::now()
        .duration_since(meta.modified().ok()?)
        .ok()?;
    if age > REMEMBERED_FOR {
        return None;
    }
    let mut answer = String::new();
    file.take(64).read_to_string(&mut answer).ok()?;
    match answer.trim() {
        SUPPORTED => Some(true),
        IGNORED => Some(false),
        _ => None,
    }
}

/// Remembers a probe's answer; a failure costs only the next process a probe.
pub(super) fn remember(path: &Path, supported: bool) {
    if let Err(e) = write_answer(path, supported) {
        tracing::debug!("conditional-put probe answer not remembered: {e}");
    }
}

fn write_answer(path: &Path, supported: bool) -> Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| Error::config("no directory for the probe's answer"))?;
    ensure_private_dir(dir, "host-local state directory")?;
    // Written whole under a name of its own, then renamed: readers see all or nothing.
    let temp = PathBuf::from(format!("{}.{}.tmp", path.display(), std::process::id()));
    let mut file = replace_file(&temp, 0o600)?;
    let answer = if supported { SUPPORTED } else { IGNORED };
    let written = file
        .write_all(answer.as_bytes())
        .at("writing", &temp)
        .and_then(|()| std::fs::rename(&temp, path).at("renaming into place", path));
    if written.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    written
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn an_answer_is_recalled_only_while_young_private_and_well_formed() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("pgward-state-0");
        let path = dir.join("conditional-put-0123456789abcdef");
        assert_eq!(recall(&path), None, "nothing remembered yet");
        remember(&path, true);
        assert_eq!(std::fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
        assert_eq!(recall(&path), Some(true));
        remember(&path, false);
        assert_eq!(recall(&path), Some(false));

        let file = std::fs::File::options().write(true).open(&path).unwrap();
        let old = SystemTime::now() - REMEMBERED_FOR - Duration::from_secs(1);
        file.set_modified(old).unwrap();
        assert_eq!(recall(&path), None, "too old: probe again");
        let future = SystemTime::now() + Duration::from_secs(600);
        file.set_modified(future).unwrap();
        assert_eq!(recall(&path), None, "from the future: probe again");

        remember(&path, true);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        assert_eq!(recall(&path), None, "others could have written it");
        remember(&path, true);
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert_eq!(recall(&path), None, "others could have planted it");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();

        std::fs::write(&path, "maybe").unwrap();
        assert_eq!(recall(&path), None);
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink(tmp.path().join("elsewhere"), &path).unwrap();
        std::fs::write(tmp.path().join("elsewhere"), SUPPORTED).unwrap();
        assert_eq!(recall(&path), None, "a link is not followed");
    }
}
