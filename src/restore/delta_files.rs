//! The files of a delta restore, compared with the backup and rewritten in place where
//! they differ, in parallel, one file per job, largest first.
//!
//! Per extent, the cheapest comparison that is still proof:
//! - an extent that is a whole frame: BLAKE3 of the file's bytes in its range against
//!   the frame's checksum. Equal: kept, the frame is never read. Different: as below.
//! - otherwise (a slice of a frame, whose checksum covers bytes the file no longer has, or
//!   a whole frame that differs): the frame is read front to back as restore reads it,
//!   and each 8 KiB block of the extent is compared with the file's and written only
//!   when it differs, so a table with a few changed pages costs a few page writes.
//!
//! Every frame opened is drained and checked whole before the file counts as restored,
//! as in `files.rs`; a damaged frame fails the restore, which leaves the directory
//! without `pg_control` (see `delta.rs`), so it never starts half restored.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::runtime::Handle;

use super::delta::DeltaStats;
use crate::error::{Error, IoContext, Result};
use crate::pipeline::compress::Codec;
use crate::repo::frames::FrameReader;
use crate::repo::manifest::{Digest, Extent, FileEntry, Manifest};
use crate::repo::Repo;

/// The unit blocks are compared and written in: PostgreSQL's page.
const BLOCK: usize = 8192;
/// Bytes compared at a time (a multiple of `BLOCK`).
const WINDOW: usize = 32 * BLOCK;

/// Compares and rewrites `files` (of `manifest`) under `pgdata`.
pub async fn rewrite(
    repo: &Repo,
    manifest: &Manifest,
    files: Vec<FileEntry>,
    pgdata: &Path,
    jobs: usize,
) -> Result<DeltaStats> {
    let codecs = Arc::new(super::files::codec_by_backup(repo, manifest, &files).await?);
    let mut files: Vec<Arc<FileEntry>> = files.into_iter().map(Arc::new).collect();
    files.sort_by_key(|f| std::cmp::Reverse(f.size));
    let progress = Arc::new(crate::progress::Progress::default());
    let _reporter = crate::progress::Reporter::start(
        "restore --delta",
        files.iter().map(|f| f.size).sum(),
        files.len() as u64,
        progress.clone(),
    );
    let handle = Handle::current();
    let workers = (0..crate::workers::readers(jobs, repo.is_local()))
        .map(|_| DeltaWriter {
            handle: handle.clone(),
            repo: repo.clone(),
            codecs: codecs.clone(),
            pgdata: pgdata.to_path_buf(),
            frame_bytes: vec![0u8; WINDOW],
            file_bytes: vec![0u8; WINDOW],
            stats: DeltaStats::default(),
        })
        .collect();
    let mut total = DeltaStats::default();
    for stats in crate::workers::run(workers, files, progress).await? {
        total.add(&stats);
    }
    Ok(total)
}

struct DeltaWriter {
    handle: Handle,
    repo: Repo,
    codecs: Arc<HashMap<String, Codec>>,
    pgdata: PathBuf,
    frame_bytes: Vec<u8>,
    file_bytes: Vec<u8>,
    stats: DeltaStats,
}

impl crate::workers::Worker for DeltaWriter {
    type Job = Arc<FileEntry>;
    type Output = DeltaStats;

    fn run(&mut self, file: Arc<FileEntry>) -> Result<u64> {
        if self.rewrite_file(&file)? {
            self.stats.files_rewritten += 1;
            test_halt_point();
        } else {
            self.stats.files_kept += 1;
        }
        Ok(file.size)
    }

    fn finish(self) -> Result<DeltaStats> {
        Ok(self.stats)
    }
}

impl DeltaWriter {
    /// Brings one file to the backup's bytes; returns whether it changed.
    fn rewrite_file(&mut self, file: &FileEntry) -> Result<bool> {
        let dest = self.pgdata.join(&file.path);
        let out = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&dest)
            .at("opening", &dest)?;
        let before = out.metadata().at("reading", &dest)?;
        let existing = before.len();
        let written_before = self.stats.written;
        if existing != file.size {
            // Longer: the tail is not the backup's. Shorter: the new tail reads as zeros
            // and is compared like any other bytes.
            self.stats.removed += existing.saturating_sub(file.size);
            out.set_len(file.size).at("setting the length of", &dest)?;
        }
        let mut open: HashMap<(&str, u64), FrameReader> = HashMap::new();
        let mut last_use: HashMap<(&str, u64), usize> = HashMap::new();
        for (i, e) in file.extents.iter().enumerate() {
            last_use.insert(e.frame_key(), i);
        }
        let mut covered = 0;
        for (i, extent) in file.extents.iter().enumerate() {
            if extent.offset != covered {
                return Err(Error::corrupt(format!(
                    "{}: extents leave a gap at byte {covered}",
                    file.path
                )));
            }
            covered += extent.length;
            let whole_frame = extent.frame_offset == 0 && extent.length == extent.frame_length;
            let key = extent.frame_key();
            // A range hashed already is in the page cache: read again, it counts once.
            let hashed = whole_frame && !open.contains_key(&key);
            if hashed && self.range_matches(&out, &dest, extent)? {
                continue;
            }
            let frame = match open.entry(key) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(slot) => {
                    self.stats.fetched += extent.stored_length;
                    slot.insert(FrameReader::open(
                        &self.repo,
                        &self.handle,
                        extent,
                        self.codecs[&*extent.backup],
                        &file.path,
                    )?)
                }
            };
            if extent.frame_offset < frame.position() {
                return Err(Error::corrupt(format!(
                    "{}: slices of one frame out of order",
                    frame.what()
                )));
            }
            frame.skip(
                extent.frame_offset - frame.position(),
                &mut self.frame_bytes,
            )?;
            let (mut at, end) = (extent.offset, extent.offset + extent.length);
            while at < end {
                let len = ((end - at) as usize).min(WINDOW);
                read_frame_exactly(frame, &mut self.frame_bytes[..len])?;
                read_file_exactly(&out, &mut self.file_bytes[..len], at).at("reading", &dest)?;
                if !hashed {
                    self.stats.read += len as u64;
                }
                self.stats.written +=
                    write_differing(&out, at, &self.frame_bytes[..len], &self.file_bytes[..len])
                        .at("writing", &dest)?;
                at += len as u64;
            }
            if last_use[&key] == i {
                open.remove(&key)
                    .expect("open")
                    .finish(&mut self.frame_bytes)?;
            }
        }
        if covered != file.size {
            return Err(Error::corrupt(format!(
                "{}: extents cover {covered} bytes, the file has {}",
                file.path, file.size
            )));
        }
        // Metadata already right is left alone: setting it anyway would dirty the inode
        // of every kept file for the fsync below to write out.
        use std::os::unix::fs::PermissionsExt;
        if before.permissions().mode() & 0o7777 != file.mode {
            out.set_permissions(std::fs::Permissions::from_mode(file.mode))
                .at("setting permissions of", &dest)?;
        }
        let mtime =
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(file.mtime.max(0) as u64);
        let changed = existing != file.size || self.stats.written > written_before;
        if changed || before.modified().ok() != Some(mtime) {
            out.set_modified(mtime).at("setting mtime of", &dest)?;
        }
        // Even an unchanged file is synced: what it was compared against may be a killed
        // run's writes, still only in the page cache.
        out.sync_all().at("syncing", &dest)?;
        Ok(changed)
    }

    /// Whether the file's bytes in the range of `extent` (a whole frame) hash to the
    /// frame's checksum.
    fn range_matches(&mut self, out: &File, dest: &Path, extent: &Extent) -> Result<bool> {
        let mut hasher = blake3::Hasher::new();
        let (mut at, end) = (extent.offset, extent.offset + extent.length);
        while at < end {
            let len = ((end - at) as usize).min(WINDOW);
            read_file_exactly(out, &mut self.file_bytes[..len], at).at("reading", dest)?;
            hasher.update(&self.file_bytes[..len]);
            at += len as u64;
        }
        self.stats.read += extent.length;
        Ok(Digest::from(hasher.finalize()) == extent.frame_checksum)
    }
}

fn read_frame_exactly(frame: &mut FrameReader, buf: &mut [u8]) -> Result<()> {
    let mut at = 0;
    while at < buf.len() {
        at += frame.read(&mut buf[at..])?;
    }
    Ok(())
}

/// The file has been set to its final length, so every range asked for is there.
fn read_file_exactly(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    file.read_exact_at(buf, offset)
}

/// Writes the `BLOCK`s of `wanted` that differ from `found` (the file's bytes at
/// `offset`), runs of them at once; returns the bytes written.
fn write_differing(file: &File, offset: u64, wanted: &[u8], found: &[u8]) -> std::io::Result<u64> {
    let mut written = 0;
    let mut run: Option<usize> = None;
    let blocks = wanted.len().div_ceil(BLOCK);
    for b in 0..=blocks {
        let differs = b < blocks && {
            let r = b * BLOCK..((b + 1) * BLOCK).min(wanted.len());
            wanted[r.clone()] != found[r]
        };
        match (differs, run) {
            (true, None) => run = Some(b),
            (false, Some(first)) => {
                let r = first * BLOCK..(b * BLOCK).min(wanted.len());
                file.write_all_at(&wanted[r.clone()], offset + r.start as u64)?;
                written += r.len() as u64;
                run = None;
            }
            _ => {}
        }
    }
    Ok(written)
}

/// Lets tests kill a delta restore at a known point: with `PGWARD_TEST_DELTA_HALT=FILE`
/// (debug builds only), the first file rewritten creates FILE and its worker waits to be
/// killed, so the test acts on an observable event instead of a guessed delay.
fn test_halt_point() {
    #[cfg(debug_assertions)]
    if let Some(marker) = std::env::var_os("PGWARD_TEST_DELTA_HALT") {
        let _ = std::fs::write(&marker, b"halted\n");
        loop {
            std::thread::park();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_differing_blocks_are_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let old: Vec<u8> = (0..5 * BLOCK + 100).map(|i| (i % 251) as u8).collect();
        let mut new = old.clone();
        new[BLOCK + 3] ^= 1; // block 1
        new[2 * BLOCK] ^= 1; // block 2: one run with block 1
        new[5 * BLOCK + 99] ^= 1; // the short last block
        std::fs::write(&path, &old).unwrap();
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let written = write_differing(&f, 0, &new, &old).unwrap();
        assert_eq!(written, 2 * BLOCK as u64 + 100);
        assert_eq!(std::fs::read(&path).unwrap(), new);
        assert_eq!(write_differing(&f, 0, &new, &new).unwrap(), 0);
    }
}
