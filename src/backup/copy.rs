//! Copies source files into bundles, in parallel. Each worker owns one bundle at a time
//! and appends every file it takes as one compressed frame, recording where the frame
//! starts and how long it is. Memory per worker: one read buffer and the encoder's.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::runtime::Handle;
use tokio_util::io::SyncIoBridge;

use super::walk::SourceFile;
use crate::error::{Error, IoContext, Result};
use crate::pg::page::{verify_page, PageVerdict, BLCKSZ};
use crate::pg::Lsn;
use crate::pipeline::hash::CountingWriter;
use crate::pipeline::Compression;
use crate::repo::manifest::{bundle_key, ChecksumFailure, Extent, FileEntry};
use crate::repo::Repo;
use crate::storage::ObjectWriter;

/// A bundle is closed and a new one started past this many stored bytes.
const BUNDLE_TARGET_SIZE: u64 = 1 << 30;
const READ_BUFFER: usize = 1 << 20;

#[derive(Clone)]
pub struct CopySettings {
    pub label: String,
    /// Number of the first worker, so that separate passes name bundles apart.
    pub first_bundle: usize,
    pub compression: Compression,
    /// Verify data checksums of relation pages older than this LSN.
    pub verify_pages_before: Option<Lsn>,
    pub jobs: usize,
}

#[derive(Default)]
pub struct CopyResult {
    pub files: Vec<FileEntry>,
    pub bundles: Vec<String>,
    pub stored_size: u64,
    pub checksum_failures: Vec<ChecksumFailure>,
}

impl CopyResult {
    pub fn merge(&mut self, other: CopyResult) {
        self.files.extend(other.files);
        self.bundles.extend(other.bundles);
        self.stored_size += other.stored_size;
        self.checksum_failures.extend(other.checksum_failures);
        self.files.sort_by(|a, b| a.path.cmp(&b.path));
        self.bundles.sort();
        self.checksum_failures.sort_by(|a, b| a.path.cmp(&b.path));
    }
}

#[derive(Default)]
pub struct Progress {
    pub bytes_done: AtomicU64,
    pub files_done: AtomicU64,
}

pub async fn copy_files(
    repo: &Repo,
    mut files: Vec<SourceFile>,
    settings: CopySettings,
    progress: Arc<Progress>,
) -> Result<CopyResult> {
    // Largest first, so the last file to finish is a small one.
    files.sort_by_key(|f| std::cmp::Reverse(f.size));
    let queue = Arc::new(Mutex::new(VecDeque::from(files)));
    let settings = Arc::new(settings);
    let mut workers = Vec::new();
    for job in 0..settings.jobs.max(1) {
        let (repo, queue, settings, progress) = (
            repo.clone(),
            queue.clone(),
            settings.clone(),
            progress.clone(),
        );
        let job = settings.first_bundle + job;
        workers.push(tokio::task::spawn_blocking(move || {
            Worker::new(repo, job, settings).run(&queue, &progress)
        }));
    }
    let mut result = CopyResult::default();
    let mut first_error = None;
    for worker in workers {
        match worker.await.expect("copy worker panicked") {
            Ok(part) => result.merge(part),
            Err(e) => {
                queue.lock().unwrap().clear(); // stop the others soon
                first_error.get_or_insert(e);
            }
        }
    }
    first_error.map_or(Ok(result), Err)
}

type BundleSink = CountingWriter<std::io::BufWriter<SyncIoBridge<Box<dyn ObjectWriter>>>>;

struct OpenBundle {
    name: String,
    sink: BundleSink,
}

struct Worker {
    repo: Repo,
    job: usize,
    settings: Arc<CopySettings>,
    handle: Handle,
    bundle: Option<OpenBundle>,
    sequence: usize,
    result: CopyResult,
    buffer: Vec<u8>,
}

impl Worker {
    fn new(repo: Repo, job: usize, settings: Arc<CopySettings>) -> Worker {
        Worker {
            repo,
            job,
            settings,
            handle: Handle::current(),
            bundle: None,
            sequence: 0,
            result: CopyResult::default(),
            buffer: vec![0; READ_BUFFER],
        }
    }

    fn run(
        mut self,
        queue: &Mutex<VecDeque<SourceFile>>,
        progress: &Progress,
    ) -> Result<CopyResult> {
        loop {
            let next = queue.lock().unwrap().pop_front();
            let Some(file) = next else { break };
            if let Some(entry) = self.copy_one(&file)? {
                progress.bytes_done.fetch_add(entry.size, Ordering::Relaxed);
                self.result.files.push(entry);
            }
            progress.files_done.fetch_add(1, Ordering::Relaxed);
            if self
                .bundle
                .as_ref()
                .is_some_and(|b| b.sink.written >= BUNDLE_TARGET_SIZE)
            {
                self.close_bundle()?;
            }
        }
        self.close_bundle()?;
        Ok(self.result)
    }

    fn bundle(&mut self) -> Result<&mut OpenBundle> {
        if self.bundle.is_none() {
            let name = format!(
                "{}-{:02}-{:04}.bundle",
                self.settings.label, self.job, self.sequence
            );
            self.sequence += 1;
            let key = bundle_key(&self.repo, &name);
            let writer = self.handle.block_on(self.repo.storage.create(&key))?;
            let sink = CountingWriter {
                inner: std::io::BufWriter::with_capacity(1 << 20, SyncIoBridge::new(writer)),
                written: 0,
            };
            self.bundle = Some(OpenBundle { name, sink });
        }
        Ok(self.bundle.as_mut().expect("just opened"))
    }

    fn close_bundle(&mut self) -> Result<()> {
        let Some(bundle) = self.bundle.take() else {
            return Ok(());
        };
        let written = bundle.sink.written;
        let bridge = bundle
            .sink
            .inner
            .into_inner()
            .map_err(|e| Error::io("writing bundle", &bundle.name, e.into_error()))?;
        self.handle.block_on(bridge.into_inner().finish())?;
        self.result.bundles.push(bundle.name);
        self.result.stored_size += written;
        Ok(())
    }

    /// Copies one file as a frame of the current bundle; None when it vanished.
    fn copy_one(&mut self, file: &SourceFile) -> Result<Option<FileEntry>> {
        let source = match std::fs::File::open(&file.abs_path) {
            Ok(f) => f,
            // Dropped during the backup; WAL replay removes it from the restored cluster.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io("opening", &file.abs_path, e)),
        };
        let mut entry = FileEntry {
            path: file.rel_path.clone(),
            size: 0,
            mtime: file.mtime,
            mode: file.mode,
            checksum: String::new(),
            extents: Vec::new(),
        };
        let verify_before = self
            .settings
            .verify_pages_before
            .filter(|_| file.first_block.is_some());
        let compression = self.settings.compression;
        let mut buffer = std::mem::take(&mut self.buffer);
        let mut bad_blocks = Vec::new();
        let mut hasher = blake3::Hasher::new();
        let bundle = self.bundle()?;
        let frame_start = bundle.sink.written;
        let mut encoder = compression
            .encoder(&mut bundle.sink)
            .at("compressing", &file.abs_path)?;
        // Copy no more than the size seen when listing: growth after that is in the WAL.
        let mut reader = (&source).take(file.size);
        let mut size = 0u64;
        loop {
            let n = read_full(&mut reader, &mut buffer).at("reading", &file.abs_path)?;
            if n == 0 {
                break;
            }
            if let Some(start_lsn) = verify_before {
                let first_block = file.first_block.unwrap_or(0) + (size / BLCKSZ as u64) as u32;
                check_pages(
                    &source,
                    &buffer[..n],
                    size,
                    first_block,
                    start_lsn,
                    &mut bad_blocks,
                );
            }
            hasher.update(&buffer[..n]);
            encoder
                .write_all(&buffer[..n])
                .at("writing bundle", &bundle.name)?;
            size += n as u64;
        }
        encoder.finish().at("writing bundle", &bundle.name)?;
        let stored_length = bundle.sink.written - frame_start;
        let bundle_name = bundle.name.clone();
        self.buffer = buffer;
        entry.size = size;
        entry.checksum = hasher.finalize().to_hex().to_string();
        if size > 0 {
            entry.extents.push(Extent {
                offset: 0,
                length: size,
                backup: self.settings.label.clone(),
                bundle: bundle_name,
                bundle_offset: frame_start,
                stored_length,
                checksum: entry.checksum.clone(),
            });
        }
        if !bad_blocks.is_empty() {
            tracing::warn!(path = %file.rel_path, blocks = ?bad_blocks, "page checksum verification failed");
            self.result.checksum_failures.push(ChecksumFailure {
                path: file.rel_path.clone(),
                blocks: bad_blocks,
            });
        }
        Ok(Some(entry))
    }
}

/// Verifies every whole page in `chunk`. A page that fails is read again once: the
/// server may have been writing it while we read (a torn read), and the second copy
/// then passes or carries an LSN newer than the backup's start.
fn check_pages(
    source: &std::fs::File,
    chunk: &[u8],
    chunk_offset: u64,
    first_block: u32,
    start_lsn: Lsn,
    bad: &mut Vec<u32>,
) {
    for (i, page) in chunk.chunks_exact(BLCKSZ).enumerate() {
        let blkno = first_block + i as u32;
        if let PageVerdict::ChecksumMismatch { .. } = verify_page(page, blkno, start_lsn) {
            let mut again = vec![0u8; BLCKSZ];
            let offset = chunk_offset + (i * BLCKSZ) as u64;
            let passes_now = source.read_exact_at(&mut again, offset).is_ok()
                && !matches!(
                    verify_page(&again, blkno, start_lsn),
                    PageVerdict::ChecksumMismatch { .. }
                );
            if !passes_now {
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
