//! Prefetching for archive-get. When recovery asks for segment S, the next segments of
//! the same timeline are fetched in parallel, verified, into `pg_wal/pgward-prefetch/`
//! (on the same filesystem as `%p`, so handing one over is a rename). A later request
//! served from there costs a rename, not a repository round trip. Files there are only
//! ever complete and checked, so using one is as safe as fetching it. The directory is
//! pgward's own (0700, this user's, closed to others: checked before every use), so
//! nobody else can put a file there for recovery to take.

use std::path::{Path, PathBuf};

use futures::stream::{self, StreamExt};

use super::get::{fetch, find_for_get, Durability};
use crate::error::{Error, IoContext, Result};
use crate::pg::{WalFileName, WalSegment};
use crate::repo::Repo;
use crate::storage::local::{ensure_private_dir, sync_dir, try_flock};

pub const DIR_NAME: &str = "pgward-prefetch";

/// The prefetch directory beside a restore_command destination (`pg_wal/RECOVERYXLOG`).
pub fn dir_for(dest: &Path) -> PathBuf {
    dest.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .join(DIR_NAME)
}

/// Hands over a prefetched `name` if there is one.
pub fn take(dir: &Path, name: &WalFileName, dest: &Path) -> Result<bool> {
    if !dir.exists() {
        return Ok(false);
    }
    ensure_private_dir(dir, "prefetch directory")?;
    let file = dir.join(name.to_string());
    match std::fs::symlink_metadata(&file) {
        Ok(meta) if meta.is_file() => {}
        Ok(_) => {
            return Err(Error::config(format!(
                "prefetched {} is not a regular file",
                file.display()
            ))
            .hint("pgward only ever puts files there; remove it"))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(Error::io("inspecting prefetched", &file, e)),
    }
    match std::fs::rename(&file, dest) {
        Ok(()) => {
            let parent = dest
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            sync_dir(parent).at("syncing", parent)?;
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(Error::io("using prefetched", &file, e)),
    }
}

/// Background: fetch the `count` segments after `after` that are not there yet, stopping
/// at the first one the archive does not have; drop anything outside that window.
pub async fn run(
    repo: &Repo,
    after: WalSegment,
    dir: &Path,
    count: usize,
    jobs: usize,
) -> Result<()> {
    // The cluster's pg_wal is gone (a drill's scratch copy removed after its server
    // stopped): there is nothing to prefetch for, and creating the directory with its
    // parents would bring a removed tree back.
    if !dir.parent().is_some_and(Path::is_dir) {
        return Ok(());
    }
    ensure_private_dir(dir, "prefetch directory")?;
    let lock_path = dir.join(".lock");
    let Ok(_lock) = try_flock(&lock_path)? else {
        return Ok(()); // another prefetcher is on it
    };
    let segment_size = repo.stanza_info().await?.wal_segment_size;
    let mut window = Vec::new();
    let mut next = after;
    for _ in 0..count {
        next = next.next(segment_size);
        window.push(next);
    }
    let wanted: Vec<String> = window.iter().map(|s| s.to_string()).collect();
    for entry in std::fs::read_dir(dir).at("listing", dir)?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with('.') && !wanted.contains(&name) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    // Find what exists first (stop at a gap: recovery cannot go past it anyway).
    let mut present = Vec::new();
    for seg in &window {
        if dir.join(seg.to_string()).exists() {
            continue;
        }
        match find_for_get(repo, &WalFileName::Segment(*seg)).await? {
            Some(file) if matches!(file.name, WalFileName::Segment(_)) => present.push(file),
            _ => break,
        }
    }
    let results: Vec<Result<()>> = stream::iter(present)
        .map(|file| async move {
            let dest = dir.join(file.name.to_string());
            fetch(repo, &file, &dest, Durability::Synced).await
        })
        .buffer_unordered(jobs.max(1))
        .collect()
        .await;
    for r in results {
        if let Err(e) = r {
            tracing::warn!("prefetch failed: {e}"); // the foreground fetches it again and reports
        }
    }
    Ok(())
}
