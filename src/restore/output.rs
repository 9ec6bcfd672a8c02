//! A restored file being written front to back, hashed on the way.
//!
//! Writes go around the page cache (O_DIRECT) where the file system allows it: a restore
//! writes each byte once and never reads it back, and copying gigabytes into the page
//! cache only for the kernel to write them out again cost more CPU than decompression
//! and hashing together. A direct write waits for the device, so full chunks are
//! written by a thread of their own while the next chunk is decoded. The unaligned tail
//! of a file, files smaller than a chunk, and file systems that refuse O_DIRECT (tmpfs,
//! some network file systems), use ordinary writes with early writeback: a direct write
//! waits for the device, and a cluster of 100,000 small relation files paid that wait
//! once per file (the restore syncs the file system once at the end instead).

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;

/// O_DIRECT needs buffers, offsets and lengths aligned to the device's logical block
/// size; 4096 covers every device in use.
const ALIGN: usize = 4096;
/// Bytes gathered before each write.
const CHUNK: usize = 1 << 20;
/// Chunks per worker: one being filled while the others are written.
pub const CHUNKS: usize = 3;
/// Buffered mode: start writeback every this many bytes, so the final fsync does not
/// find the whole file still dirty.
const WRITEBACK_EVERY: u64 = 8 << 20;

/// A `CHUNK`-byte buffer starting at an `ALIGN` boundary, reused from file to file
/// (a fresh megabyte per file cost more in page faults and zeroing than the copy itself).
pub struct ChunkBuffer {
    storage: Vec<u8>,
    start: usize,
}

impl Default for ChunkBuffer {
    fn default() -> Self {
        let storage = vec![0u8; CHUNK + ALIGN];
        let start = storage.as_ptr().align_offset(ALIGN);
        ChunkBuffer { storage, start }
    }
}

impl ChunkBuffer {
    fn bytes(&mut self) -> &mut [u8] {
        &mut self.storage[self.start..self.start + CHUNK]
    }
}

struct WriteJob {
    file: Arc<File>,
    offset: u64,
    buffer: ChunkBuffer,
}

struct Written {
    buffer: ChunkBuffer,
    result: std::io::Result<()>,
}

/// One restore worker's chunks and the thread that writes them behind it.
pub struct WriteBehind {
    jobs: Option<SyncSender<WriteJob>>,
    written: Receiver<Written>,
    free: Vec<ChunkBuffer>,
    in_flight: usize,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Default for WriteBehind {
    fn default() -> Self {
        Self::new(CHUNKS)
    }
}

impl WriteBehind {
    /// With `chunks` buffers (at least 2: one filled while one is written).
    pub fn new(chunks: usize) -> Self {
        let chunks = chunks.max(2);
        let (jobs, queue) = sync_channel::<WriteJob>(chunks);
        let (done, written) = sync_channel::<Written>(chunks);
        let thread = std::thread::spawn(move || {
            for mut job in queue {
                let result = job.file.write_all_at(job.buffer.bytes(), job.offset);
                if done
                    .send(Written {
                        buffer: job.buffer,
                        result,
                    })
                    .is_err()
                {
                    return;
                }
            }
        });
        WriteBehind {
            jobs: Some(jobs),
            written,
            free: (0..chunks).map(|_| ChunkBuffer::default()).collect(),
            in_flight: 0,
            thread: Some(thread),
        }
    }

    fn send(&mut self, job: WriteJob) -> std::io::Result<()> {
        let jobs = self.jobs.as_ref().expect("open until dropped");
        jobs.send(job)
            .map_err(|_| std::io::Error::other("restore writer thread stopped"))?;
        self.in_flight += 1;
        Ok(())
    }

    /// A free chunk, waiting for a write to end if none is.
    fn take(&mut self) -> std::io::Result<ChunkBuffer> {
        if let Some(buffer) = self.free.pop() {
            return Ok(buffer);
        }
        self.wait_one()?;
        Ok(self.free.pop().expect("just returned"))
    }

    fn wait_one(&mut self) -> std::io::Result<()> {
        let Written { buffer, result } = self
            .written
            .recv()
            .map_err(|_| std::io::Error::other("restore writer thread stopped"))?;
        self.in_flight -= 1;
        self.free.push(buffer);
        result
    }

    /// Waits for every write handed over; the first error wins.
    fn wait_all(&mut self) -> std::io::Result<()> {
        let mut first = Ok(());
        while self.in_flight > 0 {
            if let Err(e) = self.wait_one() {
                if first.is_ok() {
                    first = Err(e);
                }
            }
        }
        first
    }
}

impl Drop for WriteBehind {
    fn drop(&mut self) {
        self.jobs.take();
        let _ = self.wait_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

pub struct OutputFile<'a> {
    file: Arc<File>,
    direct: bool,
    chunks: &'a mut WriteBehind,
    buffer: Option<ChunkBuffer>,
    filled: usize,
    /// Bytes handed to the kernel or to the writer thread.
    flushed: u64,
    /// Buffered mode: bytes already sent to writeback.
    synced: u64,
    /// A direct write went through: later chunks may go to the writer thread.
    direct_proven: bool,
    hasher: Option<blake3::Hasher>,
    /// Bytes taken since `create` or `open_at`.
    pub written: u64,
}

impl<'a> OutputFile<'a> {
    /// Creates `path`, which must not exist, for `size` bytes. With `hash`, the bytes
    /// written are hashed.
    pub fn create(
        path: &Path,
        hash: bool,
        size: u64,
        chunks: &'a mut WriteBehind,
    ) -> std::io::Result<OutputFile<'a>> {
        let mut out = Self::open(path, true, 0, size >= CHUNK as u64, chunks)?;
        out.hasher = hash.then(blake3::Hasher::new);
        Ok(out)
    }

    /// Opens `path`, which exists, to write from `offset` on (one part of a file that
    /// several workers write).
    pub fn open_at(
        path: &Path,
        offset: u64,
        chunks: &'a mut WriteBehind,
    ) -> std::io::Result<OutputFile<'a>> {
        Self::open(path, false, offset, true, chunks)
    }

    fn open(
        path: &Path,
        create: bool,
        offset: u64,
        direct: bool,
        chunks: &'a mut WriteBehind,
    ) -> std::io::Result<OutputFile<'a>> {
        let open = |flags| {
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(create)
                .custom_flags(flags)
                .open(path)
        };
        let aligned = direct && offset.is_multiple_of(ALIGN as u64);
        let (file, direct) = match open(if aligned { libc::O_DIRECT } else { 0 }) {
            Ok(file) => (file, aligned),
            Err(e) if aligned && e.raw_os_error() == Some(libc::EINVAL) => (open(0)?, false),
            Err(e) => return Err(e),
        };
        let buffer = chunks.take()?;
        Ok(OutputFile {
            file: Arc::new(file),
            direct,
            chunks,
            buffer: Some(buffer),
            filled: 0,
            flushed: offset,
            synced: offset,
            direct_proven: false,
            hasher: None,
            written: 0,
        })
    }

    fn bytes(&mut self) -> &mut [u8] {
        self.buffer.as_mut().expect("held between writes").bytes()
    }

    /// Room for the next bytes: fill a prefix of it, then `commit` that many. Decoding
    /// straight into it saves a copy of every restored byte.
    pub fn spare(&mut self) -> &mut [u8] {
        let filled = self.filled;
        &mut self.bytes()[filled..]
    }

    /// Takes the first `n` bytes of `spare` as written.
    pub fn commit(&mut self, n: usize) -> std::io::Result<()> {
        let filled = self.filled;
        if let Some(mut h) = self.hasher.take() {
            h.update(&self.bytes()[filled..filled + n]);
            self.hasher = Some(h);
        }
        self.filled += n;
        self.written += n as u64;
        if self.filled == CHUNK {
            self.write_full_chunk()?;
        }
        Ok(())
    }

    pub fn checksum(&self) -> Option<blake3::Hash> {
        self.hasher.as_ref().map(|h| h.finalize())
    }

    fn write_full_chunk(&mut self) -> std::io::Result<()> {
        if self.direct && self.direct_proven {
            // The file took a direct write already: hand this one to the writer thread.
            let buffer = self.buffer.take().expect("held between writes");
            let job = WriteJob {
                file: self.file.clone(),
                offset: self.flushed,
                buffer,
            };
            let sent = self.chunks.send(job);
            self.buffer = Some(self.chunks.take()?);
            sent?;
            self.flushed += CHUNK as u64;
            self.filled = 0;
            return Ok(());
        }
        self.write_here(CHUNK)
    }

    /// Writes the first `len` gathered bytes on this thread.
    fn write_here(&mut self, len: usize) -> std::io::Result<()> {
        let (offset, filled) = (self.flushed, self.filled);
        let file = self.file.clone();
        let mut result = file.write_all_at(&self.bytes()[..len], offset);
        if self.direct && matches!(&result, Err(e) if e.raw_os_error() == Some(libc::EINVAL)) {
            // Some file systems accept O_DIRECT at open and refuse it at write, or
            // want a coarser alignment than ours.
            self.leave_direct()?;
            result = file.write_all_at(&self.bytes()[..len], offset);
        }
        result?;
        self.direct_proven = self.direct;
        self.bytes().copy_within(len..filled, 0);
        self.flushed += len as u64;
        self.filled -= len;
        if !self.direct && self.flushed - self.synced >= WRITEBACK_EVERY {
            self.start_writeback();
        }
        Ok(())
    }

    fn start_writeback(&mut self) {
        // SAFETY: a writeback hint about a range of our own open file.
        unsafe {
            libc::sync_file_range(
                self.file.as_raw_fd(),
                self.synced as i64,
                (self.flushed - self.synced) as i64,
                libc::SYNC_FILE_RANGE_WRITE,
            );
        }
        self.synced = self.flushed;
    }

    fn leave_direct(&mut self) -> std::io::Result<()> {
        let fd = self.file.as_raw_fd();
        // SAFETY: reading and updating the status flags of our own open file.
        let ok = unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFL);
            flags >= 0 && libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_DIRECT) == 0
        };
        if !ok {
            return Err(std::io::Error::last_os_error());
        }
        self.direct = false;
        self.synced = self.flushed;
        Ok(())
    }

    /// Writes what is left and returns the file, not yet synced.
    pub fn finish(mut self) -> std::io::Result<Arc<File>> {
        let behind = self.chunks.wait_all();
        let tail = self.filled;
        let aligned = if self.direct {
            tail - tail % ALIGN
        } else {
            tail
        };
        if aligned > 0 {
            self.write_here(aligned)?;
        }
        if self.filled > 0 {
            self.leave_direct()?;
            let rest = self.filled;
            self.write_here(rest)?;
        }
        // The tail of a large file goes to the device now; a small file's bytes wait for
        // the file system's sync at the end: a writeback request per file made a restore
        // of 100,000 small files wait on the device queue for each.
        if !self.direct && self.flushed > self.synced && self.flushed >= CHUNK as u64 {
            self.start_writeback();
        }
        behind?;
        Ok(self.file.clone())
    }
}

impl Drop for OutputFile<'_> {
    fn drop(&mut self) {
        if let Some(buffer) = self.buffer.take() {
            self.chunks.free.push(buffer);
        }
    }
}

impl Write for OutputFile<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let spare = self.spare();
        let n = buf.len().min(spare.len());
        spare[..n].copy_from_slice(&buf[..n]);
        self.commit(n)?;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(()) // only `finish` may write an unaligned tail
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(dir: &Path, chunks: &mut WriteBehind, len: usize) {
        let data: Vec<u8> = (0..len).map(|i| (i * 7 + i / 4093) as u8).collect();
        let path = dir.join(format!("f{len}"));
        let mut out = OutputFile::create(&path, true, len as u64, chunks).unwrap();
        assert!(
            len >= CHUNK || !out.direct,
            "files under a chunk are written buffered"
        );
        // Uneven pieces, as a decoder hands them over.
        for piece in data.chunks(333_333) {
            out.write_all(piece).unwrap();
        }
        assert_eq!(out.written, len as u64);
        assert_eq!(out.checksum().unwrap(), blake3::hash(&data));
        out.finish().unwrap().sync_all().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), data);
    }

    #[test]
    fn writes_every_length_exactly_whatever_the_alignment() {
        let dir = tempfile::tempdir().unwrap();
        let mut chunks = WriteBehind::default();
        for len in [
            0,
            1,
            4095,
            4096,
            8192 * 3,
            CHUNK - 1,
            CHUNK,
            CHUNK + 1,
            3 * CHUNK + 8192 + 17,
            7 * CHUNK,
        ] {
            round_trip(dir.path(), &mut chunks, len);
        }
        assert_eq!(chunks.free.len(), CHUNKS, "every chunk comes back");
    }

    #[test]
    fn parts_written_apart_at_their_offsets_make_the_whole_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("parts");
        let data: Vec<u8> = (0..5 * CHUNK + 123).map(|i| (i % 251) as u8).collect();
        std::fs::File::create(&path).unwrap();
        let mut chunks = WriteBehind::default();
        // Later parts first, one of them at an offset O_DIRECT cannot take.
        for (from, to) in [(3 * CHUNK, data.len()), (4097, 3 * CHUNK), (0, 4097)] {
            let mut out = OutputFile::open_at(&path, from as u64, &mut chunks).unwrap();
            out.write_all(&data[from..to]).unwrap();
            out.finish().unwrap();
        }
        assert_eq!(std::fs::read(&path).unwrap(), data);
    }

    #[test]
    fn refuses_an_existing_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x");
        std::fs::write(&path, b"old").unwrap();
        assert!(OutputFile::create(&path, false, 3, &mut WriteBehind::default()).is_err());
    }
}
