//! archive-push: validate a WAL file against the stanza, then store it compressed under
//! a name carrying its checksum (`repo::wal`). Idempotent: an identical file already
//! archived is success; a different file under the same name, even from a push running
//! at the same time, is a conflict that must stop the archiver (PostgreSQL keeps the
//! segment and retries).

use std::io::Read;
use std::path::Path;

use bytes::Bytes;

use crate::error::{Error, ErrorKind, IoContext, Result};
use crate::pg::wal::page::{parse_long_page_header, pg_major_for_wal_magic};
use crate::pg::WalFileName;
use crate::pipeline::hash::{checksum_of, HashingReader};
use crate::pipeline::Compression;
use crate::repo::stanza::StanzaInfo;
use crate::repo::wal_map::{PreparedWalMap, PREDECESSOR_TAIL};
use crate::repo::Repo;

/// What a push did: stored the file, or found it archived already.
pub use crate::repo::wal::WalPut as PushOutcome;

/// Files up to this size are read once into memory, for their checks, their checksum,
/// their upload and their block map; larger ones (segments of clusters made with a
/// large --wal-segsize) are streamed from the file, and read again for a map.
const READ_ONCE_MAX: u64 = 64 << 20;

/// At most this many pushes of one process hold their file in memory at once (the async
/// worker runs `--jobs` pushes together): the others stream, so memory stays within the
/// budget whatever `--jobs` is.
const BUFFERED_MAX: usize = 2;
static BUFFERED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// One of the `BUFFERED_MAX` places for a file in memory, given back when dropped.
struct BufferSlot;

impl BufferSlot {
    fn take() -> Option<BufferSlot> {
        use std::sync::atomic::Ordering;
        let before = BUFFERED.fetch_add(1, Ordering::SeqCst);
        if before >= BUFFERED_MAX {
            BUFFERED.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        Some(BufferSlot)
    }
}

impl Drop for BufferSlot {
    fn drop(&mut self) {
        BUFFERED.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// The last bytes of segments a process pushed, for the block maps of their successors:
/// the async worker deletes each file it pushed, and the head of a record straddling
/// into the next segment would otherwise be fetched back from the repository (a
/// download and a decompression of the whole segment).
#[derive(Default)]
pub struct PushedTails(std::sync::Mutex<std::collections::VecDeque<(WalFileName, Bytes)>>);

impl PushedTails {
    /// More than the async worker pushes at once (`--jobs`), in the usual case.
    const KEPT: usize = 16;

    fn get(&self, name: &WalFileName) -> Option<Bytes> {
        let tails = self.0.lock().unwrap_or_else(|e| e.into_inner());
        tails
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t.clone())
    }

    fn keep(&self, name: &WalFileName, segment: &[u8]) {
        let start = segment.len().saturating_sub(PREDECESSOR_TAIL as usize);
        let mut tails = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if tails.len() >= Self::KEPT {
            tails.pop_front();
        }
        tails.push_back((name.clone(), Bytes::copy_from_slice(&segment[start..])));
    }
}

/// Stores the WAL file at `path`; with `block_maps`, a segment's block map too. `tails`:
/// where to find and keep the tails of segments pushed before (the async worker).
/// `stanza`: the stanza's identity when the caller read it while unlocking
/// (`StanzaHandle::open`); None reads it now.
pub async fn archive_push(
    repo: &Repo,
    stanza: Option<&StanzaInfo>,
    path: &Path,
    compression: Compression,
    block_maps: bool,
    tails: Option<&PushedTails>,
) -> Result<PushOutcome> {
    let name = parse_pushed_name(path)?;
    let stanza = match stanza {
        Some(stanza) => stanza.clone(),
        None => repo.stanza_info().await?,
    };
    let slot = BufferSlot::take(); // held until the push is done with the content
    let (content, checksum) = read_validated(path, &name, &stanza, slot.is_some()).await?;
    let known_tail = match (&name, tails) {
        (WalFileName::Segment(seg), Some(tails)) => {
            let segno = seg.segno(stanza.wal_segment_size);
            let previous = segno.checked_sub(1).map(|p| {
                WalFileName::Segment(crate::pg::WalSegment::from_segno(
                    seg.timeline,
                    p,
                    stanza.wal_segment_size,
                ))
            });
            previous.and_then(|p| tails.get(&p))
        }
        _ => None,
    };
    // The map is made, written and synced while the segment is stored (both on
    // blocking threads), and published only once the segment is (`PreparedWalMap`).
    let is_segment = block_maps && matches!(name, WalFileName::Segment(_));
    let started = std::time::Instant::now();
    let put = async {
        match &content {
            Some(bytes) => {
                repo.put_wal_bytes(&name, bytes.clone(), &checksum, compression)
                    .await
            }
            None => repo.put_wal(&name, path, &checksum, compression).await,
        }
    };
    let (outcome, map) = tokio::join!(put, async {
        if is_segment {
            prepare_block_map(
                repo,
                &stanza,
                path,
                content.clone(),
                &name,
                &checksum,
                known_tail,
            )
            .await
        } else {
            None
        }
    });
    let outcome = outcome?;
    tracing::debug!(?outcome, %name, "archive-push");
    if let (Some(tails), Some(content), true) = (tails, &content, is_segment) {
        tails.keep(&name, content);
    }
    if let Some(map) = map {
        let needed = match outcome {
            PushOutcome::Stored { .. } => true,
            PushOutcome::AlreadyArchived => !matches!(repo.read_wal_map(&name).await, Ok(Some(_))),
        };
        if needed {
            if let Err(e) = map.publish().await {
                tracing::warn!(%name, "no block map stored: {e}");
            }
        }
        tracing::debug!(%name, elapsed_us = started.elapsed().as_micros() as u64, "pushed with its block map");
    }
    drop(slot);
    Ok(outcome)
}

/// The segment's block map (`repo::wal_map`), from `content` when it was read already,
/// written and synced, ready to publish. The segment is being archived: a map that
/// cannot be made or stored costs incrementals a page scan, never the push.
async fn prepare_block_map(
    repo: &Repo,
    stanza: &StanzaInfo,
    path: &Path,
    content: Option<Bytes>,
    name: &WalFileName,
    checksum: &str,
    known_tail: Option<Bytes>,
) -> Option<PreparedWalMap> {
    let bytes = match content {
        Some(bytes) => bytes,
        None => match tokio::fs::read(path).await {
            Ok(b) => b.into(),
            Err(e) => {
                tracing::warn!(%name, "no block map: reading {}: {e}", path.display());
                return None;
            }
        },
    };
    let made = repo
        .make_wal_map_of(stanza, name, bytes, checksum, path.parent(), known_tail)
        .await;
    match made {
        Ok(map) => repo.prepare_wal_map(name, &map).await,
        Err(e) => Err(e),
    }
    .inspect_err(|e| tracing::warn!(%name, "no block map: {e}"))
    .ok()
}

/// A segment must come from this stanza's cluster: same system identifier, same major
/// version, same segment size, and its first page must describe its own position.
/// The WAL file name of a path PostgreSQL hands to archive_command.
pub fn parse_pushed_name(path: &Path) -> Result<WalFileName> {
    let file_name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    WalFileName::parse(file_name).map_err(|e| {
        Error::new(ErrorKind::Config, e.to_string())
            .hint("archive_command must pass %p, the path of a file PostgreSQL is archiving")
    })
}

/// Checks a file against the stanza and returns its checksum.
pub async fn validate(path: &Path, name: &WalFileName, stanza: &StanzaInfo) -> Result<String> {
    read_validated(path, name, stanza, false)
        .await
        .map(|(_, sum)| sum)
}

/// Checks a file against the stanza and returns its checksum, and its content when it
/// may be kept (`keep`) and is small enough (`READ_ONCE_MAX`): the file is read once.
async fn read_validated(
    path: &Path,
    name: &WalFileName,
    stanza: &StanzaInfo,
    keep: bool,
) -> Result<(Option<Bytes>, String)> {
    let (path, name, stanza) = (path.to_path_buf(), name.clone(), stanza.clone());
    tokio::task::spawn_blocking(move || -> Result<(Option<Bytes>, String)> {
        let mut file = std::fs::File::open(&path).at("opening", &path)?;
        let size = file.metadata().at("reading metadata of", &path)?.len();
        let is_segment =
            name.segment().is_some() && !matches!(name, WalFileName::BackupHistory { .. });
        if !keep || size > READ_ONCE_MAX {
            if is_segment {
                let mut first_page = vec![0u8; 8192];
                file.read_exact(&mut first_page).at("reading", &path)?;
                check_segment(&path, &first_page, size, &name, &stanza)?;
            }
            return Ok((None, checksum_file(&path)?));
        }
        let mut content = segment_buffer(size as usize);
        file.read_to_end(&mut content).at("reading", &path)?;
        if is_segment {
            let first_page = &content[..8192.min(content.len())];
            check_segment(&path, first_page, content.len() as u64, &name, &stanza)?;
        }
        let sum = checksum_of(&content);
        Ok((Some(content.into()), sum))
    })
    .await
    .unwrap_or_else(crate::error::task_panicked)
}

/// An empty buffer for `len` bytes, backed by huge pages where the kernel gives them on
/// request: filling 16 MiB of fresh 4 KiB pages costs thousands of page faults, a
/// third of a push's time.
fn segment_buffer(len: usize) -> Vec<u8> {
    let buf = Vec::with_capacity(len);
    #[cfg(target_os = "linux")]
    {
        let start = (buf.as_ptr() as usize).next_multiple_of(4096);
        let end = (buf.as_ptr() as usize + len) & !4095;
        if end > start {
            // SAFETY: advice about memory this Vec owns; it changes no content, and a
            // refusal only leaves ordinary pages.
            unsafe {
                libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
            }
        }
    }
    buf
}

/// `first_page`: the file's first 8192 bytes (all of it when shorter); `size`: its size.
pub(crate) fn check_segment(
    path: &Path,
    first_page: &[u8],
    size: u64,
    name: &WalFileName,
    stanza: &StanzaInfo,
) -> Result<()> {
    let header = parse_long_page_header(first_page).map_err(|e| {
        Error::new(
            ErrorKind::Corrupt,
            format!("{}: not a valid WAL segment: {e}", path.display()),
        )
    })?;
    let refuse = |what: String| {
        Err(Error::new(
            ErrorKind::Conflict,
            format!(
                "WAL segment {name} does not belong to stanza {:?}: {what}",
                stanza.stanza
            ),
        )
        .hint("each cluster needs its own stanza; check archive_command's --stanza"))
    };
    if header.system_identifier != stanza.system_identifier {
        return refuse(format!(
            "its system identifier is {}, the stanza's is {}",
            header.system_identifier, stanza.system_identifier
        ));
    }
    if pg_major_for_wal_magic(header.magic) != Some(stanza.pg_major) {
        return refuse(format!(
            "its WAL magic 0x{:04X} is not PostgreSQL {}'s",
            header.magic, stanza.pg_major
        ));
    }
    if header.segment_size as u64 != stanza.wal_segment_size {
        return refuse(format!(
            "its segment size is {}, the stanza's is {}",
            header.segment_size, stanza.wal_segment_size
        ));
    }
    let segment = name.segment().expect("segments have one");
    if header.page_address != segment.start_lsn(stanza.wal_segment_size) {
        return Err(Error::new(
            ErrorKind::Corrupt,
            format!(
                "{}: its first page is for position {}, not for {name}",
                path.display(),
                header.page_address
            ),
        ));
    }
    if matches!(name, WalFileName::Segment(_)) && size != stanza.wal_segment_size {
        return Err(Error::new(
            ErrorKind::Corrupt,
            format!(
                "{}: {size} bytes, a segment has {}",
                path.display(),
                stanza.wal_segment_size
            ),
        ));
    }
    Ok(())
}

pub(crate) fn checksum_file(path: &Path) -> Result<String> {
    let mut reader = HashingReader::new(std::fs::File::open(path).at("opening", path)?);
    std::io::copy(&mut reader, &mut std::io::sink()).at("reading", path)?;
    Ok(reader.finish().0)
}
