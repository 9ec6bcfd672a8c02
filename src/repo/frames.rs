//! Bundle frames: the one path for the bytes of backed-up files. A bundle is a
//! concatenation of independent frames; a frame is one run of a file's bytes, compressed
//! with the backup's codec and, in an encrypted stanza, sealed on its own, so that a
//! frame is read back with one ranged read. Writing a frame yields where it went and
//! what it holds (`StoredFrame`); reading one (`FrameReader`) hashes every byte it hands
//! out and proves the whole frame against its checksum at the end.
//!
//! Both sides run on blocking threads (compression and hashing are CPU work); the async
//! storage is reached through a runtime handle.

use std::io::{Read, Write};
use std::sync::Arc;

use tokio::runtime::Handle;
use tokio_util::io::SyncIoBridge;

use super::cipher::stored_read_error;
use super::manifest::{bundle_key, Digest, Extent, Name};
use super::read_plan::ReadPlan;
use super::Repo;
use crate::error::{Error, Result};
use crate::pipeline::compress::{Codec, Encoder};
use crate::pipeline::{seal, Compression, CountingWriter, Sealed};
use crate::storage::{self, ObjectWriter};

/// A bundle is closed and a new one started past this many stored bytes.
pub const BUNDLE_TARGET_SIZE: u64 = 1 << 30;

/// `<label>-<job>-<seq>.bundle`: each copy worker writes its own bundles.
pub fn bundle_name(label: &str, job: usize, sequence: usize) -> String {
    format!("{label}-{job:02}-{sequence:04}.bundle")
}

type BundleSink = CountingWriter<std::io::BufWriter<SyncIoBridge<Box<dyn ObjectWriter>>>>;

struct OpenBundle {
    name: Name,
    sink: BundleSink,
}

/// The bundles one backup worker writes, one at a time. A bundle is opened on the first
/// frame, so a worker with nothing to store writes no bundle at all.
pub struct BundleWriter {
    repo: Repo,
    handle: Handle,
    label: Name,
    job: usize,
    compression: Compression,
    sequence: usize,
    open: Option<OpenBundle>,
    closed: Vec<(String, u64)>,
}

impl BundleWriter {
    /// Must be created on a blocking thread of the runtime (it keeps the current handle).
    pub fn new(repo: Repo, label: &str, job: usize, compression: Compression) -> BundleWriter {
        BundleWriter {
            repo,
            handle: Handle::current(),
            label: label.into(),
            job,
            compression,
            sequence: 0,
            open: None,
            closed: Vec::new(),
        }
    }

    /// Starts a frame at the end of the current bundle.
    pub fn frame(&mut self) -> Result<FrameWriter<'_>> {
        if self.open.is_none() {
            let name = bundle_name(&self.label, self.job, self.sequence);
            self.sequence += 1;
            let writer = self.handle.block_on(
                self.repo
                    .storage
                    .create_large(&bundle_key(&self.repo, &name)),
            )?;
            let sink = CountingWriter {
                inner: std::io::BufWriter::with_capacity(1 << 20, SyncIoBridge::new(writer)),
                written: 0,
            };
            self.open = Some(OpenBundle {
                name: name.into(),
                sink,
            });
        }
        let bundle = self.open.as_mut().expect("just opened");
        let bundle_offset = bundle.sink.written;
        let io = |e| Error::io("writing bundle", &*bundle.name, e);
        let sealed = seal(self.repo.master_key(), &mut bundle.sink).map_err(io)?;
        let encoder = self.compression.encoder(sealed).map_err(io)?;
        Ok(FrameWriter {
            encoder,
            backup: &self.label,
            bundle: &bundle.name,
            bundle_offset,
            length: 0,
            hasher: blake3::Hasher::new(),
        })
    }

    /// Whether the current bundle has reached its target size (`close` it then).
    pub fn is_full(&self) -> bool {
        self.open
            .as_ref()
            .is_some_and(|b| b.sink.written >= BUNDLE_TARGET_SIZE)
    }

    /// Makes the current bundle durable and visible; the next frame starts a new one.
    pub fn close(&mut self) -> Result<()> {
        let Some(bundle) = self.open.take() else {
            return Ok(());
        };
        let written = bundle.sink.written;
        if written == 0 {
            return Ok(()); // nothing stored: dropping the writer leaves no object
        }
        let bridge = bundle
            .sink
            .inner
            .into_inner()
            .map_err(|e| Error::io("writing bundle", &*bundle.name, e.into_error()))?;
        self.handle.block_on(bridge.into_inner().finish())?;
        self.closed.push((bundle.name.to_string(), written));
        Ok(())
    }

    /// The bundles closed so far, with their sizes.
    pub fn closed(&self) -> &[(String, u64)] {
        &self.closed
    }
}

/// One frame being appended to a bundle: call `finish` to end it (dropping it unfinished
/// leaves the bundle unusable, which the backup then fails with).
pub struct FrameWriter<'a> {
    encoder: Encoder<Sealed<&'a mut BundleSink>>,
    backup: &'a Name,
    bundle: &'a Name,
    bundle_offset: u64,
    length: u64,
    hasher: blake3::Hasher,
}

impl FrameWriter<'_> {
    pub fn write(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.hasher.update(data);
        self.length += data.len() as u64;
        self.encoder.write_all(data)
    }

    /// Copies all of `reader` into the frame; returns how many bytes that was.
    pub fn write_from(&mut self, reader: &mut dyn Read) -> std::io::Result<u64> {
        let mut buf = vec![0u8; 256 << 10];
        let mut total = 0;
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => return Ok(total),
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            self.write(&buf[..n])?;
            total += n as u64;
        }
    }

    pub fn finish(self) -> std::io::Result<StoredFrame> {
        let sink = self.encoder.finish()?.finish()?;
        Ok(StoredFrame {
            backup: self.backup.clone(),
            bundle: self.bundle.clone(),
            bundle_offset: self.bundle_offset,
            stored_length: sink.written - self.bundle_offset,
            frame_length: self.length,
            frame_checksum: self.hasher.finalize().into(),
        })
    }
}

/// Where a frame went and what it holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredFrame {
    /// The backup writing it, and its bundle (shared by all the frames of the bundle).
    pub backup: Name,
    pub bundle: Name,
    pub bundle_offset: u64,
    pub stored_length: u64,
    pub frame_length: u64,
    /// BLAKE3 of the frame's original bytes.
    pub frame_checksum: Digest,
}

impl StoredFrame {
    /// The extent whose bytes are the whole frame, at `file_offset`.
    pub fn extent(self, file_offset: u64) -> Extent {
        Extent {
            offset: file_offset,
            length: self.frame_length,
            backup: self.backup,
            bundle: self.bundle,
            bundle_offset: self.bundle_offset,
            stored_length: self.stored_length,
            frame_offset: 0,
            frame_length: self.frame_length,
            frame_checksum: self.frame_checksum,
        }
    }
}

/// One stored frame being read front to back. Every byte handed out is hashed; `finish`
/// reads the rest and fails unless the whole frame has its recorded length and checksum,
/// so a caller must not trust what it read before `finish` returns Ok. Errors name the
/// file, the backup, the bundle and the frame's offset (formatted only on failure: a
/// restore opens a frame per stored page run).
pub struct FrameReader<'a> {
    decoder: Box<dyn Read>,
    position: u64,
    hasher: blake3::Hasher,
    extent: &'a Extent,
    path: &'a str,
}

impl<'a> FrameReader<'a> {
    /// Opens the frame `extent` is a slice of, written with `codec`, for the file `path`.
    /// Call on a blocking thread; local repositories read the bundle file directly.
    pub fn open(
        repo: &Repo,
        handle: &Handle,
        extent: &'a Extent,
        codec: Codec,
        path: &'a str,
    ) -> Result<FrameReader<'a>> {
        Self::open_planned(None, repo, handle, extent, codec, path)
    }

    /// As `open`, taking the frame's stored bytes from `plan` when it holds them (object
    /// storage: see `read_plan`); they are checked the same way.
    pub fn open_planned(
        plan: Option<&Arc<ReadPlan>>,
        repo: &Repo,
        handle: &Handle,
        extent: &'a Extent,
        codec: Codec,
        path: &'a str,
    ) -> Result<FrameReader<'a>> {
        let mut frame = FrameReader {
            decoder: Box::new(std::io::empty()),
            position: 0,
            hasher: blake3::Hasher::new(),
            extent,
            path,
        };
        let planned = plan.and_then(|p| p.open(extent));
        let reader = match planned {
            Some(reader) => reader,
            None => storage::read_range_blocking(
                &repo.storage,
                handle,
                &bundle_key(repo, &extent.bundle),
                extent.bundle_offset,
                extent.stored_length,
            )
            .map_err(|e| {
                if e.is_not_found() {
                    // A bundle a manifest names is part of the backup: its absence is damage
                    // to the repository (exit 5), never "not found" (no such backup).
                    Error::corrupt(format!(
                        "{}: bundle {} named by backup {} is missing",
                        frame.what(),
                        extent.bundle,
                        extent.backup
                    ))
                    .source(e)
                    .hint("run `pgward verify` to see every backup this breaks")
                } else {
                    naming(&frame.what(), e)
                }
            })?,
        };
        frame.decoder = crate::pipeline::unseal(repo.master_key(), reader)
            .and_then(|r| codec.decoder(r))
            .map_err(|e| stored_read_error(frame.what(), e))?;
        Ok(frame)
    }

    /// Bytes of the frame read so far.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// What this frame is, for messages.
    pub fn what(&self) -> String {
        format!(
            "{} (backup {}, bundle {} at {})",
            self.path, self.extent.backup, self.extent.bundle, self.extent.bundle_offset
        )
    }

    /// Reads the frame's next bytes into `buf`: at least one, at most `buf.len()`.
    /// Asking past the recorded length, or a frame that ends before it, is an error.
    pub fn read(&mut self, buf: &mut [u8]) -> Result<usize> {
        let frame_length = self.extent.frame_length;
        let want = (buf.len() as u64).min(frame_length - self.position) as usize;
        if want == 0 {
            return Err(Error::corrupt(format!(
                "{}: the manifest reads past the frame's {frame_length} bytes",
                self.what()
            )));
        }
        let n = loop {
            match self.decoder.read(&mut buf[..want]) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                result => break result.map_err(|e| stored_read_error(self.what(), e))?,
            }
        };
        if n == 0 {
            return Err(Error::corrupt(format!(
                "{}: the stored frame ends after {} of its {frame_length} bytes",
                self.what(),
                self.position
            )));
        }
        self.hasher.update(&buf[..n]);
        self.position += n as u64;
        Ok(n)
    }

    /// Reads and hashes `len` bytes nobody needs, through `scratch`.
    pub fn skip(&mut self, mut len: u64, scratch: &mut [u8]) -> Result<()> {
        while len > 0 {
            let want = scratch.len().min(len as usize);
            len -= self.read(&mut scratch[..want])? as u64;
        }
        Ok(())
    }

    /// Reads to the frame's end and checks its length and checksum; returns its length.
    pub fn finish(mut self, scratch: &mut [u8]) -> Result<u64> {
        let frame_length = self.extent.frame_length;
        self.skip(frame_length - self.position, scratch)?;
        let mut extra = [0u8; 1];
        let more = loop {
            match self.decoder.read(&mut extra) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                result => break result.map_err(|e| stored_read_error(self.what(), e))?,
            }
        };
        if more != 0 {
            return Err(Error::corrupt(format!(
                "{}: the stored frame is longer than its recorded {frame_length} bytes",
                self.what()
            )));
        }
        let found = Digest::from(self.hasher.finalize());
        if found != self.extent.frame_checksum {
            return Err(Error::corrupt(format!(
                "{}: does not match its checksum (expected {}, found {found})",
                self.what(),
                self.extent.frame_checksum
            )));
        }
        Ok(frame_length)
    }
}

/// `e`, prefixed with what was being read.
pub(super) fn naming(what: &str, e: Error) -> Error {
    let hint = e.hint.clone();
    let mut named = Error::new(e.kind, what).source(e);
    named.hint = hint;
    named
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;
    use crate::pipeline::encrypt::{KdfParams, KeyFile};
    use crate::repo::Sealing;

    fn repo(name: &str, encrypted: bool) -> (Repo, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("pgward-frames-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let storage = std::sync::Arc::new(crate::storage::LocalStorage::new(&dir));
        let sealing = if encrypted {
            let fast = KdfParams {
                m_cost_kib: 64,
                t_cost: 1,
                p_cost: 1,
            };
            Sealing::Encrypted(std::sync::Arc::new(
                KeyFile::create_with(b"pw", fast).unwrap().1,
            ))
        } else {
            Sealing::Plain
        };
        (Repo::for_tests(storage, "main", sealing), dir)
    }

    fn data(len: usize, seed: u64) -> Vec<u8> {
        (0..len as u64)
            .map(|i| ((i ^ seed).wrapping_mul(2654435761) >> 13) as u8 % 7)
            .collect()
    }

    /// Writes `contents` as frames of one bundle (the last through `write_from`).
    fn write(repo: &Repo, codec: Codec, contents: &[Vec<u8>]) -> Vec<Extent> {
        let compression = Compression::new(codec, None).unwrap();
        let mut bundles = BundleWriter::new(repo.clone(), "20260101-000000F", 3, compression);
        let mut extents = Vec::new();
        for (i, content) in contents.iter().enumerate() {
            let mut frame = bundles.frame().unwrap();
            if i + 1 == contents.len() {
                assert_eq!(
                    frame.write_from(&mut &content[..]).unwrap(),
                    content.len() as u64
                );
            } else {
                for part in content.chunks(10_000) {
                    frame.write(part).unwrap();
                }
            }
            extents.push(frame.finish().unwrap().extent(0));
        }
        bundles.close().unwrap();
        let closed = bundles.closed();
        assert_eq!(closed.len(), 1);
        assert_eq!(closed[0].0, "20260101-000000F-03-0000.bundle");
        let last = extents.last().unwrap();
        assert_eq!(closed[0].1, last.bundle_offset + last.stored_length);
        extents
    }

    fn read_all(repo: &Repo, extent: &Extent, codec: Codec) -> Result<Vec<u8>> {
        let mut frame = FrameReader::open(repo, &Handle::current(), extent, codec, "base/1/2")?;
        let mut out = vec![0u8; extent.frame_length as usize];
        let mut at = 0;
        while at < out.len() {
            at += frame.read(&mut out[at..])?;
        }
        frame.finish(&mut [0u8; 4096])?;
        Ok(out)
    }

    #[test]
    fn frames_round_trip_with_every_codec_plain_and_encrypted() {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let _entered = runtime.enter();
        let contents = [data(300_000, 1), data(1, 2), data(70_000, 3)];
        for encrypted in [false, true] {
            let (repo, dir) = repo(&format!("round-{encrypted}"), encrypted);
            for codec in [Codec::None, Codec::Lz4, Codec::Zstd, Codec::Gzip] {
                let _ = std::fs::remove_dir_all(dir.join("main"));
                let extents = write(&repo, codec, &contents);
                for (extent, content) in extents.iter().zip(&contents) {
                    assert_eq!(extent.frame_length, content.len() as u64);
                    assert_eq!(extent.frame_checksum, blake3::hash(content).into());
                    let back = read_all(&repo, extent, codec).unwrap();
                    assert!(back == *content, "{codec} encrypted={encrypted}");
                }
                // A slice: skip into the frame, read a little, then finish checks it all.
                let extent = &extents[0];
                let mut frame =
                    FrameReader::open(&repo, &Handle::current(), extent, codec, "f").unwrap();
                frame.skip(123_457, &mut [0u8; 1000]).unwrap();
                let mut some = [0u8; 10];
                let n = frame.read(&mut some).unwrap();
                assert_eq!(some[..n], contents[0][123_457..123_457 + n]);
                assert_eq!(frame.finish(&mut [0u8; 1000]).unwrap(), 300_000);
            }
            let _ = std::fs::remove_dir_all(dir);
        }
    }

    #[test]
    fn a_damaged_frame_fails_naming_its_file_bundle_and_offset() {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let _entered = runtime.enter();
        for encrypted in [false, true] {
            let (repo, dir) = repo(&format!("corrupt-{encrypted}"), encrypted);
            let contents = [data(50_000, 4), data(200_000, 5)];
            let extents = write(&repo, Codec::Lz4, &contents);
            let second = &extents[1];
            let bundle = dir.join("main/bundles").join(&*second.bundle);
            let mut bytes = std::fs::read(&bundle).unwrap();
            bytes[(second.bundle_offset + second.stored_length / 2) as usize] ^= 0x10;
            std::fs::write(&bundle, &bytes).unwrap();
            let err = read_all(&repo, second, Codec::Lz4).unwrap_err();
            assert_eq!(err.kind, ErrorKind::Corrupt, "{err}");
            let named = format!(
                "base/1/2 (backup 20260101-000000F, bundle {} at {})",
                second.bundle, second.bundle_offset
            );
            assert!(err.to_string().contains(&named), "{err}");
            // The first frame is untouched and still reads.
            assert_eq!(
                read_all(&repo, &extents[0], Codec::Lz4).unwrap(),
                contents[0]
            );

            // A manifest that disagrees with an intact frame: checksum, then length.
            let mut wrong = extents[0].clone();
            wrong.frame_checksum = Digest([0; 32]);
            let err = read_all(&repo, &wrong, Codec::Lz4).unwrap_err();
            assert!(
                err.to_string().contains("does not match its checksum"),
                "{err}"
            );
            let mut longer = extents[0].clone();
            longer.frame_length += 1;
            let err = read_all(&repo, &longer, Codec::Lz4).unwrap_err();
            assert!(err.to_string().contains("ends after 50000"), "{err}");
            let mut shorter = extents[0].clone();
            shorter.frame_length -= 1;
            let err = read_all(&repo, &shorter, Codec::Lz4).unwrap_err();
            assert!(
                err.to_string().contains("longer than its recorded"),
                "{err}"
            );
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
