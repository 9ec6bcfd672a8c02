//! Copies source files into bundles, in parallel. Each worker owns one bundle at a time
//! and appends every piece it takes as one compressed frame, recording where the frame
//! starts and how long it is. Files larger than `piece_size()` are cut into pieces that
//! different workers copy at once (a 1 GiB relation segment would otherwise keep one
//! worker busy long after the others are done), and the pieces' extents are joined
//! afterwards. Memory per worker: one read buffer and the encoder's.

use std::io::{Read, Seek};
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use super::plan::{BlockMapCheck, FilePlan, MapPlan};
use super::walk::{Listing, SourceFile};
use crate::error::{Error, IoContext, Result};
use crate::pg::page::{is_all_zero, page_lsn, verify_page, PageVerdict, BLCKSZ};
use crate::pg::Lsn;
use crate::pipeline::Compression;
use crate::progress::Progress;
use crate::repo::frames::BundleWriter;
use crate::repo::manifest::{
    merge_extents, BackupReads, ChecksumFailure, Digest, Extent, FileEntry, Manifest, PackedFiles,
};
use crate::repo::piece::{piece_size, PIECE_ALIGN};
use crate::repo::Repo;

mod mapped;

/// Pieces are a multiple of it (`PIECE_ALIGN`), so page-level reads stay whole buffers.
const READ_BUFFER: usize = PIECE_ALIGN as usize;
/// A worker's compression context (zstd's at the default level 3 holds a 2 MiB window,
/// about 2.1 MiB in all) and its 1 MiB bundle write buffer, besides its read buffer.
/// Counted at 1.5 MiB, a local backup --jobs 32 ran 12 workers and peaked at 65 MiB
/// (tests/it/memory.rs).
const COMPRESSOR_MEMORY: u64 = 3 * crate::memory::MIB;

#[derive(Clone)]
pub struct CopySettings {
    pub label: String,
    /// Number of the first worker, so that separate passes name bundles apart.
    pub first_bundle: usize,
    pub compression: Compression,
    /// Verify data checksums of relation pages older than this LSN.
    pub verify_pages_before: Option<Lsn>,
    pub jobs: usize,
    /// The backup this one builds on (incremental and differential backups).
    pub reference: Option<Arc<Reference>>,
    /// What the WAL block maps say changed since the reference (`plan.rs`).
    pub maps: Option<Arc<MapUse>>,
}

/// The block maps' plan and how to cross-check it.
pub struct MapUse {
    pub plan: MapPlan,
    pub check: BlockMapCheck,
    /// This backup's start: a page whose LSN is in `[reference start, this)` changed
    /// in the range the maps describe.
    pub range_end: Lsn,
}

/// What an incremental or differential backup compares the cluster with.
pub struct Reference {
    pub label: String,
    pub start_lsn: Lsn,
    /// Seconds since the epoch when the reference backup started.
    pub start_epoch: i64,
    /// When the reference backup started, to the nanosecond.
    pub start_time: std::time::SystemTime,
    /// Packed, sorted by path, looked up by binary search: held all through a backup,
    /// as parsed entries it was a quarter of a KiB per file of the cluster.
    files: PackedFiles,
}

impl Reference {
    pub fn new(manifest: Manifest<PackedFiles>) -> Reference {
        Reference {
            label: manifest.label,
            start_lsn: manifest.start_lsn,
            start_epoch: manifest.start_time.timestamp(),
            start_time: manifest.start_time.into(),
            files: {
                let mut files = manifest.files;
                files.sort_by_path();
                files
            },
        }
    }

    /// The reference's entry of the file at `path`, if it had one (unpacked).
    pub fn file(&self, path: &str) -> Option<FileEntry> {
        self.files.find(path).map(|i| self.files.get(i))
    }

    /// Same size and mtime as in the reference, and that mtime was already in the past
    /// (by more than the timestamp granularity) when the reference was listed: a write
    /// since then would have moved it.
    fn proves_unchanged(&self, file: &SourceFile, old: &FileEntry) -> bool {
        file.size == old.size && file.mtime == old.mtime && old.mtime < self.start_epoch - 2
    }

    /// A file created after the reference started is new even if its path is old (a
    /// database directory copied with CREATE DATABASE under a reused OID keeps old page
    /// LSNs). Filesystems without birth times fall back to page LSNs alone. Birth times
    /// have nanosecond fields but come from the kernel's coarse clock (a few ms behind):
    /// a second of margin covers that with room to spare, and files created earlier than
    /// that are older than the reference.
    fn created_since(&self, metadata: std::io::Result<std::fs::Metadata>) -> bool {
        let margin = std::time::Duration::from_secs(1);
        metadata
            .and_then(|m| m.created())
            .is_ok_and(|born| born + margin >= self.start_time)
    }
}

#[derive(Default)]
pub struct CopyResult {
    /// In path order.
    pub files: PackedFiles,
    pub bundles: Vec<String>,
    pub stored_size: u64,
    pub checksum_failures: Vec<ChecksumFailure>,
    pub reads: BackupReads,
}

impl CopyResult {
    pub fn merge(&mut self, other: CopyResult) {
        if self.files.is_empty() {
            self.files = other.files;
        } else {
            self.files.append(&other.files);
        }
        self.bundles.extend(other.bundles);
        self.stored_size += other.stored_size;
        self.checksum_failures.extend(other.checksum_failures);
        self.reads.add(other.reads);
        self.files.sort_by_path();
        self.bundles.sort();
        // Pieces of one file report their failures apart: one entry per file.
        let mut by_path: std::collections::BTreeMap<String, Vec<u32>> = Default::default();
        for f in self.checksum_failures.drain(..) {
            by_path.entry(f.path).or_default().extend(f.blocks);
        }
        self.checksum_failures = by_path
            .into_iter()
            .map(|(path, mut blocks)| {
                blocks.sort_unstable();
                ChecksumFailure { path, blocks }
            })
            .collect();
    }
}

/// Copies files `files` (numbers in `listing`, in path order).
pub async fn copy_files(
    repo: &Repo,
    listing: Arc<Listing>,
    files: Vec<u32>,
    settings: CopySettings,
    progress: Arc<Progress>,
) -> Result<CopyResult> {
    let (mut result, pieces) = plan_copy(&listing, files, &settings, &progress);
    let settings = Arc::new(settings);
    let per_worker = READ_BUFFER as u64 + COMPRESSOR_MEMORY + repo.bundle_upload_memory();
    let workers = (0..crate::memory::workers(settings.jobs, per_worker, 0))
        .map(|job| {
            let slot = settings.first_bundle + job;
            Worker::new(repo.clone(), slot, settings.clone(), listing.clone())
        })
        .collect();
    let outputs = crate::workers::run(workers, pieces, progress).await?;
    // Files copied in one piece (nearly all) come as entries; only files cut in pieces
    // are sorted and joined.
    let mut cut = Vec::new();
    for (part, pieces) in outputs {
        result.merge(part);
        cut.extend(pieces);
    }
    for file in join_pieces(cut) {
        result.files.push(&file);
    }
    result.files.sort_by_path();
    result.files.shrink_to_fit();
    Ok(result)
}

/// What an incremental takes from its reference unchanged (entries of the new manifest,
/// packed), and the pieces the workers are to copy, largest first.
fn plan_copy(
    listing: &Listing,
    files: Vec<u32>,
    settings: &CopySettings,
    progress: &Progress,
) -> (CopyResult, Vec<Job>) {
    let mut result = CopyResult::default();
    // A piece a file in a full backup; an incremental copies few of them.
    let mut pieces = Vec::with_capacity(match settings.reference {
        None => files.len(),
        Some(_) => 0,
    });
    for file_no in files {
        let Some(reference) = &settings.reference else {
            // A full backup copies every file.
            pieces.extend(Job::cut(listing.size(file_no as usize), file_no, None));
            continue;
        };
        let file = listing.get(file_no as usize);
        let old = match reference.file(&file.rel_path) {
            Some(mut unchanged) if reference.proves_unchanged(&file, &unchanged) => {
                progress.add(file.size);
                unchanged.mode = file.mode;
                result.files.push(&unchanged);
                continue;
            }
            old => old,
        };
        let how = match (&settings.maps, old) {
            // Copied whole by the worker whatever the maps say (see `copy_one`).
            (Some(_), Some(_))
                if file.page_level
                    && reference.created_since(std::fs::metadata(file.abs_path())) =>
            {
                result.reads.files_whole += 1;
                None
            }
            (Some(maps), Some(old)) if file.page_level => {
                FilePlan::of(&maps.plan, &file.rel_path, file.size, &old)
            }
            _ => None,
        };
        match &how {
            Some(FilePlan::Scan(why)) => {
                *result.reads.files_scanned.entry(why.clone()).or_default() += 1
            }
            Some(_) => result.reads.files_mapped += 1,
            None => {}
        }
        pieces.extend(Job::cut(file.size, file_no, how.map(Arc::new)));
    }
    if let Some(maps) = &settings.maps {
        if matches!(maps.plan, MapPlan::Mapped(_)) {
            result.reads.map_check = Some(maps.check.to_string());
        }
    }
    // Largest first, so the last piece to finish is a small one.
    pieces.sort_by_key(|p| std::cmp::Reverse(p.end - p.start));
    (result, pieces)
}

/// A piece as queued: a full backup holds one a file until it is copied, kept small
/// (the file is a number in the listing).
struct Job {
    /// The file's number in the listing: its pieces are joined by it.
    file_no: u32,
    index: u32,
    /// The file's only piece.
    alone: bool,
    /// For relation files of an incremental with block maps: what to read.
    how: Option<Arc<FilePlan>>,
    start: u64,
    end: u64,
}

impl Job {
    fn cut(size: u64, file_no: u32, how: Option<Arc<FilePlan>>) -> impl Iterator<Item = Job> {
        let piece = piece_size();
        let count = size.div_ceil(piece).max(1);
        (0..count).map(move |i| Job {
            file_no,
            alone: count == 1,
            how: how.clone(),
            index: i as u32,
            start: i * piece,
            end: if i + 1 == count {
                size
            } else {
                (i + 1) * piece
            },
        })
    }
}

/// A byte range of a source file, copied by one worker as one unit.
struct Piece {
    file: SourceFile,
    file_no: u32,
    index: u32,
    alone: bool,
    how: Option<Arc<FilePlan>>,
    start: u64,
    end: u64,
}

impl Piece {
    fn of(job: Job, listing: &Listing) -> Piece {
        Piece {
            file: listing.get(job.file_no as usize),
            file_no: job.file_no,
            index: job.index,
            alone: job.alone,
            how: job.how,
            start: job.start,
            end: job.end,
        }
    }

    fn whole(&self) -> bool {
        self.start == 0 && self.end == self.file.size
    }
}

/// What one piece became: None when the file vanished.
struct CopiedPiece {
    /// `Piece::file_no` (not the path: a copy of every path, held to the end of the copy).
    file_no: u32,
    index: u32,
    /// Bytes the piece was meant to cover.
    planned: u64,
    entry: Option<FileEntry>,
}

/// Joins each file's pieces in order. A file that vanished under any piece is left out
/// (WAL replay removes it); one that shrank ends with its first short piece.
fn join_pieces(mut pieces: Vec<CopiedPiece>) -> Vec<FileEntry> {
    pieces.sort_unstable_by_key(|p| (p.file_no, p.index));
    let mut files = Vec::with_capacity(pieces.len());
    let mut rest = pieces.as_mut_slice();
    while let Some(first) = rest.first() {
        let n = rest
            .iter()
            .take_while(|p| p.file_no == first.file_no)
            .count();
        let (group, tail) = rest.split_at_mut(n);
        rest = tail;
        if group.iter().any(|p| p.entry.is_none()) {
            continue;
        }
        let mut joined: Option<FileEntry> = None;
        for piece in group.iter_mut() {
            let entry = piece.entry.take().expect("checked above");
            let short = entry.size < piece.planned;
            joined = Some(match joined {
                None => entry,
                Some(mut acc) => {
                    acc.size += entry.size;
                    acc.extents.extend(entry.extents);
                    acc.checksum = None; // pieces have no whole-file checksum
                    acc
                }
            });
            if short {
                break;
            }
        }
        if let Some(mut file) = joined {
            file.extents = merge_extents(std::mem::take(&mut file.extents));
            files.push(file);
        }
    }
    files
}

struct Worker {
    settings: Arc<CopySettings>,
    listing: Arc<Listing>,
    slot: BundleWriter,
    /// Files copied in their one piece, as they go in the manifest.
    whole: PackedFiles,
    /// Pieces of files cut in several, to be joined.
    copied: Vec<CopiedPiece>,
    checksum_failures: Vec<ChecksumFailure>,
    reads: BackupReads,
    buffer: Vec<u8>,
}

impl Worker {
    fn new(repo: Repo, job: usize, settings: Arc<CopySettings>, listing: Arc<Listing>) -> Worker {
        let slot = BundleWriter::new(repo, &settings.label, job, settings.compression);
        Worker {
            settings,
            listing,
            slot,
            whole: PackedFiles::new(),
            copied: Vec::new(),
            checksum_failures: Vec::new(),
            reads: BackupReads::default(),
            buffer: vec![0; READ_BUFFER],
        }
    }
}

impl crate::workers::Worker for Worker {
    type Job = Job;
    type Output = (CopyResult, Vec<CopiedPiece>);

    fn run(&mut self, job: Job) -> Result<u64> {
        let piece = Piece::of(job, &self.listing);
        crate::error::test_panic_point("backup");
        let entry = self.copy_one(&piece)?;
        if piece.alone {
            // (None: it vanished; WAL replay removes it.)
            if let Some(entry) = entry {
                self.whole.push(&entry);
            }
        } else {
            self.copied.push(CopiedPiece {
                file_no: piece.file_no,
                index: piece.index,
                planned: piece.end - piece.start,
                entry,
            });
        }
        if self.slot.is_full() {
            self.slot.close()?;
        }
        Ok(piece.end - piece.start)
    }

    fn finish(mut self) -> Result<Self::Output> {
        self.slot.close()?;
        let closed = self.slot.closed();
        let result = CopyResult {
            files: self.whole,
            stored_size: closed.iter().map(|(_, n)| n).sum(),
            bundles: closed.iter().map(|(name, _)| name.clone()).collect(),
            checksum_failures: self.checksum_failures,
            reads: self.reads,
        };
        Ok((result, self.copied))
    }
}

impl Worker {
    /// Stores one piece of a file, or what changed in it since the reference; None when
    /// the file vanished. Unchanged files never get here (see `copy_files`).
    fn copy_one(&mut self, piece: &Piece) -> Result<Option<FileEntry>> {
        let file = &piece.file;
        let reference = self.settings.reference.clone();
        let old = reference
            .as_ref()
            .and_then(|r| r.file(&file.rel_path).map(|old| (r, old)));
        let source = match std::fs::File::open(file.abs_path()) {
            Ok(f) => f,
            // Dropped during the backup; WAL replay removes it from the restored cluster.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io("opening", file.abs_path(), e)),
        };
        match old {
            Some((r, old)) if file.page_level && !r.created_since(source.metadata()) => {
                match piece.how.as_deref() {
                    Some(FilePlan::Blocks { blocks, rest_from }) => self
                        .copy_mapped(piece, &source, r, &old, blocks, *rest_from)
                        .map(Some),
                    Some(FilePlan::Whole) => self.copy_whole(piece, &source).map(Some),
                    _ => self.copy_changed_pages(piece, &source, r, &old).map(Some),
                }
            }
            Some((_, old))
                if old.size == file.size
                    && old.checksum.is_some()
                    && file.first_block.is_none()
                    && piece.whole() =>
            {
                // Small non-relation files: read once to compare before storing.
                let mut hasher = blake3::Hasher::new();
                self.reads.bytes_read += std::io::copy(&mut (&source).take(file.size), &mut hasher)
                    .at("reading", file.abs_path())?;
                if Some(Digest::from(hasher.finalize())) == old.checksum {
                    return Ok(Some(FileEntry {
                        mode: file.mode,
                        mtime: file.mtime,
                        ..old
                    }));
                }
                (&source)
                    .seek(std::io::SeekFrom::Start(0))
                    .at("reading", file.abs_path())?;
                self.copy_whole(piece, &source).map(Some)
            }
            _ => self.copy_whole(piece, &source).map(Some),
        }
    }

    /// The piece as one frame.
    fn copy_whole(&mut self, piece: &Piece, source: &std::fs::File) -> Result<FileEntry> {
        let file = &piece.file;
        let settings = &self.settings;
        let mut frame = self.slot.frame()?;
        let size = read_chunks(
            settings,
            &mut self.buffer,
            &mut self.checksum_failures,
            piece,
            source,
            |chunk, _| {
                frame
                    .write(chunk)
                    .map_err(|e| Error::io("writing bundle", &file.rel_path, e))
            },
        )?;
        self.reads.bytes_read += size;
        let extent = frame
            .finish()
            .at("writing bundle", &file.rel_path)?
            .extent(piece.start);
        Ok(FileEntry {
            path: file.rel_path.clone(),
            size,
            mtime: file.mtime,
            mode: file.mode,
            // A frame that is the whole file has the file's checksum.
            checksum: piece.whole().then_some(extent.frame_checksum),
            extents: if size > 0 { vec![extent] } else { Vec::new() },
        })
    }

    /// Page level: pages whose LSN is at or after the reference's start, all-zero pages,
    /// and pages past the reference's length are stored (a frame per run of them within
    /// a read chunk); every other byte range points at the reference's extents.
    fn copy_changed_pages(
        &mut self,
        piece: &Piece,
        source: &std::fs::File,
        r: &Reference,
        old: &FileEntry,
    ) -> Result<FileEntry> {
        let file = &piece.file;
        let settings = &self.settings;
        let old_pages = old.size / BLCKSZ as u64;
        let bundle = &mut self.slot;
        let mut stored: Vec<Extent> = Vec::new();
        let size = read_chunks(
            settings,
            &mut self.buffer,
            &mut self.checksum_failures,
            piece,
            source,
            |chunk, chunk_offset| {
                let changed = |i: usize, page: &[u8]| {
                    page.len() < BLCKSZ
                        || (chunk_offset / BLCKSZ as u64) + i as u64 >= old_pages
                        || is_all_zero(page)
                        || page_lsn(page) >= r.start_lsn
                };
                let pages: Vec<&[u8]> = chunk.chunks(BLCKSZ).collect();
                let mut i = 0;
                while i < pages.len() {
                    if !changed(i, pages[i]) {
                        i += 1;
                        continue;
                    }
                    let run_start = i;
                    while i < pages.len() && changed(i, pages[i]) {
                        i += 1;
                    }
                    let from = run_start * BLCKSZ;
                    let to = (i * BLCKSZ).min(chunk.len());
                    let io = |e| Error::io("writing bundle", &file.rel_path, e);
                    let mut frame = bundle.frame()?;
                    frame.write(&chunk[from..to]).map_err(io)?;
                    let frame = frame.finish().map_err(io)?;
                    stored.push(frame.extent(chunk_offset + from as u64));
                }
                Ok(())
            },
        )?;
        self.reads.bytes_read += size;
        page_level_entry(piece, size, stored, r, old)
    }
}

/// The entry of a piece stored at page level: the `stored` runs (in file order)
/// interleaved with the reference's extents for the gaps.
fn page_level_entry(
    piece: &Piece,
    size: u64,
    stored: Vec<Extent>,
    r: &Reference,
    old: &FileEntry,
) -> Result<FileEntry> {
    let file = &piece.file;
    let mut extents = Vec::new();
    let fill = |from: u64, to: u64, extents: &mut Vec<Extent>| {
        extents.extend(old.extents.iter().filter_map(|e| e.slice(from, to)))
    };
    let mut cursor = piece.start;
    for e in stored {
        fill(cursor, e.offset, &mut extents);
        cursor = e.offset + e.length;
        extents.push(e);
    }
    fill(cursor, piece.start + size, &mut extents);
    let extents = merge_extents(extents);
    let covered: u64 = extents.iter().map(|e| e.length).sum();
    if covered != size {
        return Err(Error::corrupt(format!("{}: page-level copy covers {covered} of {size} bytes; reference backup {} lacks the rest", file.rel_path, r.label)));
    }
    Ok(FileEntry {
        path: file.rel_path.clone(),
        size,
        mtime: file.mtime,
        mode: file.mode,
        checksum: None,
        extents,
    })
}

/// Reads the piece, up to the file's listed size, in page-aligned chunks, verifying page
/// checksums, and hands each chunk to `each` with its file offset. Returns the bytes read.
fn read_chunks(
    settings: &CopySettings,
    buffer: &mut [u8],
    failures: &mut Vec<ChecksumFailure>,
    piece: &Piece,
    source: &std::fs::File,
    mut each: impl FnMut(&[u8], u64) -> Result<()>,
) -> Result<u64> {
    let file = &piece.file;
    let verify_before = settings
        .verify_pages_before
        .filter(|_| file.first_block.is_some());
    let mut bad_blocks = Vec::new();
    // No more than the size seen when listing: growth after that is in the WAL.
    let mut handle = source;
    if piece.start > 0 {
        handle
            .seek(std::io::SeekFrom::Start(piece.start))
            .at("reading", file.abs_path())?;
    }
    let mut reader = handle.take(piece.end - piece.start);
    let mut offset = piece.start;
    loop {
        let n = read_full(&mut reader, buffer).at("reading", file.abs_path())?;
        if n == 0 {
            break;
        }
        if let Some(start_lsn) = verify_before {
            let first_block = file.first_block.unwrap_or(0) + (offset / BLCKSZ as u64) as u32;
            check_pages(
                source,
                &mut buffer[..n],
                offset,
                first_block,
                start_lsn,
                &mut bad_blocks,
            );
        }
        each(&buffer[..n], offset)?;
        offset += n as u64;
    }
    if !bad_blocks.is_empty() {
        tracing::warn!(path = %file.rel_path, blocks = ?bad_blocks, "page checksum verification failed");
        failures.push(ChecksumFailure {
            path: file.rel_path.clone(),
            blocks: bad_blocks,
        });
    }
    Ok(offset - piece.start)
}

/// Verifies every whole page in `chunk`. A page that fails is read again once: the
/// server may have been writing it while we read (a torn read). If the second copy
/// passes, it replaces the torn one in what is stored.
fn check_pages(
    source: &std::fs::File,
    chunk: &mut [u8],
    chunk_offset: u64,
    first_block: u32,
    start_lsn: Lsn,
    bad: &mut Vec<u32>,
) {
    for (i, page) in chunk.chunks_exact_mut(BLCKSZ).enumerate() {
        let blkno = first_block + i as u32;
        if let PageVerdict::ChecksumMismatch { .. } = verify_page(page, blkno, start_lsn) {
            let mut again = vec![0u8; BLCKSZ];
            let offset = chunk_offset + (i * BLCKSZ) as u64;
            let passes_now = source.read_exact_at(&mut again, offset).is_ok()
                && !matches!(
                    verify_page(&again, blkno, start_lsn),
                    PageVerdict::ChecksumMismatch { .. }
                );
            if passes_now {
                page.copy_from_slice(&again);
            } else {
                bad.push(blkno);
            }
        }
    }
}

/// Fills `buf` unless the reader ends first; returns how much was read.
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn piece(path: &str, index: u32, planned: u64, size: Option<u64>) -> CopiedPiece {
        let start = u64::from(index) * planned;
        CopiedPiece {
            file_no: path.as_bytes()[0].into(),
            index,
            planned,
            entry: size.map(|size| FileEntry {
                path: path.into(),
                size,
                mtime: 0,
                mode: 0o600,
                checksum: Some(Digest([1; 32])),
                extents: vec![Extent {
                    offset: start,
                    length: size,
                    backup: "b".into(),
                    bundle: "x.bundle".into(),
                    bundle_offset: index as u64,
                    stored_length: 1,
                    frame_offset: 0,
                    frame_length: size,
                    frame_checksum: Digest::default(),
                }],
            }),
        }
    }

    #[test]
    fn pieces_join_in_order_and_a_file_that_shrank_ends_at_its_first_short_piece() {
        let joined = join_pieces(vec![
            piece("a", 2, 10, Some(10)),
            piece("a", 0, 10, Some(10)),
            piece("a", 1, 10, Some(4)), // shrank while read: piece 2 is not the file's
            piece("b", 0, 10, Some(10)),
        ]);
        assert_eq!(joined.len(), 2);
        let a = &joined[0];
        assert_eq!((a.path.as_str(), a.size), ("a", 14));
        assert_eq!(
            a.extents
                .iter()
                .map(|e| (e.offset, e.length))
                .collect::<Vec<_>>(),
            [(0, 10), (10, 4)]
        );
        assert_eq!(a.checksum, None, "no whole-file checksum for pieces");
        assert_eq!(joined[1].checksum, Some(Digest([1; 32])));
    }

    /// Heap bytes per file of the cluster that planning an incremental holds at its
    /// peak: the reference's file list and the new one, both packed. The old code held
    /// both as parsed entries (a `Vec<FileEntry>` sorted for lookups, and clones of its
    /// entries for the new list): about 590 bytes a file in this test, which took an
    /// incremental of 100,000 files to 76 MiB.
    const PLANNED_BYTES_PER_FILE: usize = 220;

    #[test]
    fn planning_an_incremental_holds_little_per_file_of_the_cluster() {
        use crate::repo::manifest::{parse_manifest, PackedFiles};
        let bytes = include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/format-v1/manifest.json"
        ));
        let mut m = parse_manifest(bytes).unwrap();
        let template = m.files[1].clone();
        let count = 20_000;
        let mtime = m.start_time.timestamp() - 100;
        m.files = (0..count)
            .map(|i| {
                let mut f = template.clone();
                f.path = format!("base/16384/{}", 100_000 + i);
                f.mtime = mtime;
                let e = &mut f.extents[0];
                e.bundle = format!("{}-01-{:04}.bundle", m.label, i / 1000).into();
                e.bundle_offset = i as u64 * 300;
                f
            })
            .collect();
        let stored = serde_json::to_vec(&m).unwrap();
        let root: Arc<std::path::Path> = std::path::Path::new("/nonexistent").into();
        let mut listing = Listing::default();
        for f in &m.files {
            listing.push(SourceFile {
                root: root.clone(),
                rel_path: f.path.clone(),
                size: f.size,
                mtime: f.mtime,
                mode: f.mode,
                first_block: Some(0),
                page_level: true,
            });
        }
        drop(m);

        let progress = Progress::default();
        let ((result, pieces), peak, _) = crate::test_alloc::measure(|| {
            let reference: Manifest<PackedFiles> = serde_json::from_slice(&stored).unwrap();
            let settings = CopySettings {
                label: "20250101-000000F_20250102-000000I".into(),
                first_bundle: 0,
                compression: crate::pipeline::Compression {
                    codec: crate::pipeline::compress::Codec::Lz4,
                    level: 0,
                },
                verify_pages_before: None,
                jobs: 2,
                reference: Some(Arc::new(Reference::new(reference))),
                maps: None,
            };
            plan_copy(&listing, (0..count as u32).collect(), &settings, &progress)
        });
        assert!(pieces.is_empty(), "every file is unchanged");
        assert_eq!(result.files.len(), count);
        assert_eq!(
            serde_json::to_value(result.files.get(count - 1)).unwrap()["path"],
            "base/16384/119999"
        );
        assert!(
            peak < count * PLANNED_BYTES_PER_FILE,
            "peak {peak} bytes for {count} files: {} a file",
            peak / count
        );
    }

    #[test]
    fn a_file_that_vanished_under_any_piece_is_left_out() {
        let joined = join_pieces(vec![
            piece("a", 0, 10, Some(10)),
            piece("a", 1, 10, None),
            piece("b", 0, 10, Some(3)),
        ]);
        assert_eq!(
            joined.iter().map(|f| f.path.as_str()).collect::<Vec<_>>(),
            ["b"]
        );
    }
}
