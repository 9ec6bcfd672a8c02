//! Copies a backup's files into the data directory, in parallel, each byte written once,
//! in order, from the extents that hold it (large files in parts that several workers
//! write at once). Extents may be slices of frames written by older backups; each frame
//! is read once, front to back, and drained to its end so that its checksum is checked
//! whole before the file counts as restored.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::runtime::Handle;

use crate::error::{Error, IoContext, Result};
use crate::pipeline::compress::Codec;
use crate::repo::frames::FrameReader;
use crate::repo::manifest::{Digest, Extent, FileEntry, Manifest};
use crate::repo::read_plan::ReadPlan;
use crate::repo::Repo;

use super::output::{OutputFile, WriteBehind};

/// Writes `files` of backup `manifest` under `pgdata`. With `sync_each`, each file is
/// fsynced as it is finished; without, the caller makes them durable at once
/// (`sync_filesystem`).
pub async fn restore_files(
    repo: &Repo,
    manifest: &Manifest,
    files: Vec<FileEntry>,
    pgdata: &Path,
    jobs: usize,
    sync_each: bool,
) -> Result<()> {
    let codecs = codec_by_backup(repo, manifest, &files).await?;
    let files = Arc::new(files);
    let progress = Arc::new(crate::progress::Progress::default());
    let _reporter = crate::progress::Reporter::start(
        "restore",
        files.iter().map(|f| f.size).sum(),
        files.len() as u64,
        progress.clone(),
    );
    let mut parts = Vec::new();
    for index in 0..files.len() {
        let file = FileRef {
            all: files.clone(),
            index,
        };
        let cut = Part::cut(&file);
        if cut.len() > 1 {
            // Created here so that every part can open it, with its blocks allocated:
            // direct writes that extend a file serialise on the inode.
            let dest = pgdata.join(&file.path);
            let created = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&dest)
                .at("creating", &dest)?;
            use std::os::fd::AsRawFd;
            // SAFETY: allocating space for our own new file; failure only costs speed.
            unsafe { libc::fallocate(created.as_raw_fd(), 0, 0, file.size as i64) };
        }
        parts.extend(cut);
    }
    // Largest first, so the last part to finish is a small one. On object storage,
    // where the reads are planned, in bundle order instead: workers then take frames
    // in the order the spans are fetched ahead.
    parts.sort_by_key(|p| std::cmp::Reverse(p.end - p.start));
    let plan = if repo.is_local() {
        None
    } else {
        parts.sort_by(|a, b| a.first_frame().cmp(&b.first_frame()));
        ReadPlan::new(
            repo,
            Handle::current(),
            parts.iter().flat_map(|p| p.frames()),
        )
    };
    // Readers of object storage wait on the network more than on the disk, so each
    // keeps fewer chunks in memory.
    let readers = crate::memory::workers(
        crate::workers::readers(jobs, repo.is_local()),
        crate::workers::READER_MEMORY,
        plan.as_ref().map_or(0, |p| p.memory()),
    );
    let chunks_each = if repo.is_local() {
        super::output::CHUNKS
    } else {
        2
    };
    let frames = Arc::new(Frames {
        handle: Handle::current(),
        repo: repo.clone(),
        codecs,
        plan: plan.clone(),
        sync_each,
    });
    let workers = (0..readers)
        .map(|_| PartWriter {
            frames: frames.clone(),
            pgdata: pgdata.to_path_buf(),
            // Only the skipped parts of frames go through here (restored bytes are
            // decoded straight into the output's chunks): a block of lz4 is plenty.
            buf: vec![0u8; 256 << 10],
            chunks: WriteBehind::new(chunks_each),
        })
        .collect();
    crate::workers::run(workers, parts, progress).await?;
    if let Some(plan) = plan {
        tracing::debug!(requests = plan.requests(), "planned reads");
    }
    Ok(())
}

/// A restore worker: its scratch buffer and its output chunks with their write-behind
/// thread, kept from part to part.
struct PartWriter {
    frames: Arc<Frames>,
    pgdata: std::path::PathBuf,
    buf: Vec<u8>,
    chunks: WriteBehind,
}

impl crate::workers::Worker for PartWriter {
    type Job = Part;
    type Output = ();

    fn run(&mut self, part: Part) -> Result<u64> {
        restore_part(
            &self.frames,
            &part,
            &self.pgdata.join(&part.file.path),
            &mut self.buf,
            &mut self.chunks,
        )?;
        Ok(part.end - part.start)
    }

    fn finish(self) -> Result<()> {
        Ok(())
    }
}

/// The codec of every backup an extent of `files` (of backup `manifest`) may point to
/// (their manifests streamed past their file lists, which are not needed).
pub(super) async fn codec_by_backup(
    repo: &Repo,
    manifest: &Manifest,
    files: &[FileEntry],
) -> Result<HashMap<String, Codec>> {
    let mut codecs = HashMap::new();
    codecs.insert(manifest.label.clone(), manifest.compression.codec);
    let needed: std::collections::BTreeSet<&str> = files
        .iter()
        .flat_map(|f| f.extents.iter().map(|e| &*e.backup))
        .filter(|b| *b != manifest.label)
        .collect();
    if needed.is_empty() {
        return Ok(codecs);
    }
    // Only the backups the extents name, each by its header, a few at once.
    use futures::stream::{StreamExt, TryStreamExt};
    let stanza = repo.stanza_info().await?;
    let stanza = &stanza;
    // Each read streams its manifest for the codec alone: a few at once hold little.
    let headers: Vec<(&str, Codec)> = futures::stream::iter(needed)
        .map(|label| async move {
            let other = repo.backup_compression(label, stanza).await.map_err(|e| {
                Error::corrupt(format!(
                    "backup {} needs backup {label}, which cannot be read: {e}",
                    manifest.label
                ))
            })?;
            Ok::<_, Error>((label, other.codec))
        })
        .buffered(crate::repo::manifest_head::HEADERS_AT_ONCE)
        .try_collect()
        .await?;
    for (label, codec) in headers {
        codecs.insert(label.to_string(), codec);
    }
    Ok(codecs)
}

/// Reads `len` bytes of `frame` straight into the output file's chunk buffer.
fn copy_out(frame: &mut FrameReader, mut len: u64, out: &mut OutputFile) -> Result<()> {
    while len > 0 {
        let room = out.spare();
        let want = room.len().min(len as usize);
        let n = frame.read(&mut room[..want])?;
        out.commit(n)
            .map_err(|e| Error::io("writing", frame.what(), e))?;
        len -= n as u64;
    }
    Ok(())
}

/// One file of the restore's list, which parts share (a large cluster's list is most of
/// a restore's memory: never copied, nor boxed again file by file).
#[derive(Clone)]
struct FileRef {
    all: Arc<Vec<FileEntry>>,
    index: usize,
}

impl std::ops::Deref for FileRef {
    type Target = FileEntry;

    fn deref(&self) -> &FileEntry {
        &self.all[self.index]
    }
}

/// A run of a file's extents that one worker restores: the whole file, or, for large
/// files stored in several frames, a range that begins and ends between frames, so
/// that workers share the file and each frame is still read once, front to back.
struct Part {
    file: FileRef,
    extents: std::ops::Range<usize>,
    start: u64,
    end: u64,
    /// Parts of the file not yet written (None: the part is the whole file).
    pending: Option<Arc<AtomicUsize>>,
}

impl Part {
    /// Where its first frame is stored, for reading in bundle order.
    fn first_frame(&self) -> Option<(&str, &str, u64)> {
        self.file.extents[self.extents.clone()]
            .first()
            .map(|e| (&*e.backup, &*e.bundle, e.bundle_offset))
    }

    /// The frames it opens, each once, in the order it opens them.
    fn frames(&self) -> impl Iterator<Item = &Extent> {
        let mut seen = std::collections::HashSet::new();
        self.file.extents[self.extents.clone()]
            .iter()
            .filter(move |e| seen.insert(e.frame_key()))
    }

    /// Parts are cut once they reach the size of the pieces backups store large files in.
    fn cut(file: &FileRef) -> Vec<Part> {
        let part_size = crate::repo::piece::piece_size();
        let whole = |file: &FileRef| Part {
            file: file.clone(),
            extents: 0..file.extents.len(),
            start: 0,
            end: file.size,
            pending: None,
        };
        // A whole-file checksum needs one pass over the whole file.
        if file.checksum.is_some() || file.size <= part_size {
            return vec![whole(file)];
        }
        let mut last_use: HashMap<(&str, u64), usize> = HashMap::new();
        for (i, e) in file.extents.iter().enumerate() {
            last_use.insert(e.frame_key(), i);
        }
        let mut bounds = Vec::new();
        let (mut first, mut reach) = (0, 0);
        for (i, e) in file.extents.iter().enumerate() {
            reach = reach.max(last_use[&e.frame_key()]);
            let start = file.extents[first].offset;
            if reach == i && e.offset + e.length - start >= part_size {
                bounds.push((first, i + 1));
                first = i + 1;
            }
        }
        if first < file.extents.len() {
            bounds.push((first, file.extents.len()));
        }
        if bounds.len() <= 1 {
            return vec![whole(file)];
        }
        let pending = Arc::new(AtomicUsize::new(bounds.len()));
        let count = bounds.len();
        // Each part starts where the one before ends, so a gap between them is caught
        // like any other; the last one ends at the file's size.
        let mut start = 0;
        bounds
            .into_iter()
            .enumerate()
            .map(|(n, (a, b))| {
                let last = &file.extents[b - 1];
                let end = if n + 1 == count {
                    file.size
                } else {
                    last.offset + last.length
                };
                let part = Part {
                    file: file.clone(),
                    extents: a..b,
                    start,
                    end,
                    pending: Some(pending.clone()),
                };
                start = end;
                part
            })
            .collect()
    }
}

/// Where a restore's frames come from: the repository, the codec of each backup of the
/// chain, and on object storage the planned reads.
struct Frames {
    handle: Handle,
    repo: Repo,
    codecs: HashMap<String, Codec>,
    plan: Option<Arc<ReadPlan>>,
    /// fsync each file when done (else the caller syncs the file system at the end).
    sync_each: bool,
}

impl Frames {
    fn open<'a>(&self, extent: &'a Extent, path: &'a str) -> Result<FrameReader<'a>> {
        FrameReader::open_planned(
            self.plan.as_ref(),
            &self.repo,
            &self.handle,
            extent,
            self.codecs[&*extent.backup],
            path,
        )
    }
}

fn restore_part(
    frames: &Frames,
    part: &Part,
    dest: &Path,
    buf: &mut [u8],
    chunks: &mut WriteBehind,
) -> Result<()> {
    let file = &*part.file;
    let extents = &file.extents[part.extents.clone()];
    // Every byte comes from a frame whose checksum is checked whole. A file that is one
    // whole frame carries that frame's checksum; only files assembled from several
    // extents need hashing again to prove the pieces were put together right.
    let one_whole_frame = matches!(file.extents.as_slice(), [e]
        if e.frame_offset == 0 && e.frame_length == file.size
            && file.checksum.as_ref() == Some(&e.frame_checksum));
    let mut writer = match part.pending {
        None => OutputFile::create(
            dest,
            file.checksum.is_some() && !one_whole_frame,
            file.size,
            chunks,
        ),
        Some(_) => OutputFile::open_at(dest, part.start, chunks),
    }
    .at("creating", dest)?;
    // After its last slice, a frame is drained, checked and dropped: at most one frame
    // per backup of the chain is open at a time.
    let mut last_use: HashMap<(&str, u64), usize> = HashMap::new();
    for (i, e) in extents.iter().enumerate() {
        last_use.insert(e.frame_key(), i);
    }
    let mut open: HashMap<(&str, u64), FrameReader> = HashMap::new();
    for (i, extent) in extents.iter().enumerate() {
        if extent.offset != part.start + writer.written {
            return Err(Error::corrupt(format!(
                "{}: extents leave a gap at byte {}",
                file.path,
                part.start + writer.written
            )));
        }
        let key = extent.frame_key();
        let frame = match open.entry(key) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(frames.open(extent, &file.path)?)
            }
        };
        if extent.frame_offset < frame.position() {
            return Err(Error::corrupt(format!(
                "{}: slices of one frame out of order",
                frame.what()
            )));
        }
        frame.skip(extent.frame_offset - frame.position(), buf)?;
        copy_out(frame, extent.length, &mut writer)?;
        if last_use[&key] == i {
            open.remove(&key).expect("open").finish(buf)?;
        }
    }
    if part.start + writer.written != part.end {
        return Err(Error::corrupt(format!(
            "{}: extents cover {} bytes, the file has {}",
            file.path,
            part.start + writer.written,
            file.size
        )));
    }
    if let (Some(expected), Some(actual)) = (file.checksum, writer.checksum()) {
        if Digest::from(actual) != expected {
            return Err(Error::corrupt(format!(
                "{} restored from backup does not match its checksum",
                file.path
            )));
        }
    }
    let out = writer.finish().map_err(|e| Error::io("writing", dest, e))?;
    // The file is complete once its last part is written: that part's worker finishes it.
    if let Some(pending) = &part.pending {
        if pending.fetch_sub(1, Ordering::AcqRel) != 1 {
            return Ok(());
        }
    }
    use std::os::unix::fs::PermissionsExt;
    out.set_permissions(std::fs::Permissions::from_mode(file.mode))
        .at("setting permissions of", dest)?;
    let mtime = std::time::UNIX_EPOCH + std::time::Duration::from_secs(file.mtime.max(0) as u64);
    out.set_modified(mtime).at("setting mtime of", dest)?;
    if frames.sync_each {
        out.sync_all().at("syncing", dest)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn extent(offset: u64, length: u64, frame: u64, frame_offset: u64) -> Extent {
        Extent {
            offset,
            length,
            backup: "b".into(),
            bundle: "x.bundle".into(),
            bundle_offset: frame,
            stored_length: 1,
            frame_offset,
            frame_length: length,
            frame_checksum: Digest::default(),
        }
    }

    fn file(size: u64, extents: Vec<Extent>) -> FileRef {
        one(FileEntry {
            path: "base/1/2".into(),
            size,
            mtime: 0,
            mode: 0o600,
            checksum: None,
            extents,
        })
    }

    fn one(file: FileEntry) -> FileRef {
        FileRef {
            all: Arc::new(vec![file]),
            index: 0,
        }
    }

    fn ranges(parts: &[Part]) -> Vec<(u64, u64)> {
        parts.iter().map(|p| (p.start, p.end)).collect()
    }

    #[test]
    fn a_large_file_in_whole_frames_is_cut_between_frames() {
        let piece = crate::repo::piece::piece_size();
        let f = file(
            2 * piece + MIB,
            vec![
                extent(0, piece, 0, 0),
                extent(piece, piece, 1, 0),
                extent(2 * piece, MIB, 2, 0),
            ],
        );
        let parts = Part::cut(&f);
        assert_eq!(
            ranges(&parts),
            [(0, piece), (piece, 2 * piece), (2 * piece, 2 * piece + MIB)]
        );
        assert_eq!(parts[0].pending.as_ref().unwrap().load(Ordering::SeqCst), 3);
    }

    #[test]
    fn slices_of_one_frame_stay_in_one_part() {
        let piece = crate::repo::piece::piece_size();
        // Frame 0 holds the first 2 pieces' bytes but for a changed page in between.
        let f = file(
            2 * piece,
            vec![
                extent(0, piece, 0, 0),
                extent(piece, 8192, 9, 0),
                extent(piece + 8192, piece - 8192, 0, piece + 8192),
            ],
        );
        assert_eq!(ranges(&Part::cut(&f)), [(0, 2 * piece)]);
        assert!(
            Part::cut(&f)[0].pending.is_none(),
            "one part: the whole file"
        );
    }

    #[test]
    fn files_with_a_whole_file_checksum_or_small_ones_are_not_cut() {
        let piece = crate::repo::piece::piece_size();
        let big = vec![extent(0, piece, 0, 0), extent(piece, piece, 1, 0)];
        let mut checked = (*file(2 * piece, big.clone())).clone();
        checked.checksum = Some(Digest([1; 32]));
        assert_eq!(Part::cut(&one(checked)).len(), 1);
        assert_eq!(Part::cut(&file(MIB, vec![extent(0, MIB, 0, 0)])).len(), 1);
        assert_eq!(Part::cut(&file(2 * piece, big)).len(), 2);
    }
}
