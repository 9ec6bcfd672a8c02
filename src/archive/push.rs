//! archive-push: validate a WAL file against the stanza, then store it compressed under
//! a name carrying its checksum (`repo::wal`). Idempotent: an identical file already
//! archived is success; a different file under the same name, even from a push running
//! at the same time, is a conflict that must stop the archiver (PostgreSQL keeps the
//! segment and retries).

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::error::{Error, ErrorKind, IoContext, Result};
use crate::pg::wal::page::{parse_long_page_header, pg_major_for_wal_magic};
use crate::pg::WalFileName;
use crate::pipeline::hash::HashingReader;
use crate::pipeline::Compression;
use crate::repo::stanza::StanzaInfo;
use crate::repo::Repo;

/// What a push did: stored the file, or found it archived already.
pub use crate::repo::wal::WalPut as PushOutcome;

/// Stores the WAL file at `path`; with `block_maps`, a segment's block map too.
pub async fn archive_push(
    repo: &Repo,
    path: &Path,
    compression: Compression,
    block_maps: bool,
) -> Result<PushOutcome> {
    let name = parse_pushed_name(path)?;
    let stanza = repo.stanza_info().await?;
    let checksum = validate(path, &name, &stanza).await?;
    // The map is made while the segment is stored (both on blocking threads), and
    // stored only once the segment is.
    let is_segment = block_maps && matches!(name, WalFileName::Segment(_));
    let started = std::time::Instant::now();
    let (outcome, map) = tokio::join!(repo.put_wal(&name, path, &checksum, compression), async {
        if is_segment {
            make_block_map(repo, path, &name, &checksum).await
        } else {
            None
        }
    });
    let outcome = outcome?;
    tracing::debug!(?outcome, %name, "archive-push");
    if let Some(map) = map {
        let needed = match outcome {
            PushOutcome::Stored { .. } => true,
            PushOutcome::AlreadyArchived => !matches!(repo.read_wal_map(&name).await, Ok(Some(_))),
        };
        if needed {
            if let Err(e) = repo.put_wal_map(&name, &map).await {
                tracing::warn!(%name, "no block map stored: {e}");
            }
        }
        tracing::debug!(%name, elapsed_us = started.elapsed().as_micros() as u64, "pushed with its block map");
    }
    Ok(outcome)
}

/// The segment's block map (`repo::wal_map`). The segment is being archived: a map
/// that cannot be made or stored costs incrementals a page scan, never the push.
async fn make_block_map(
    repo: &Repo,
    path: &Path,
    name: &WalFileName,
    checksum: &str,
) -> Option<crate::repo::blockmap::BlockMap> {
    let bytes = match tokio::fs::read(path).await {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(%name, "no block map: reading {}: {e}", path.display());
            return None;
        }
    };
    match repo
        .make_wal_map(name, bytes, checksum, path.parent())
        .await
    {
        Ok(map) => Some(map),
        Err(e) => {
            tracing::warn!(%name, "no block map: {e}");
            None
        }
    }
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
    let (path, name, stanza) = (path.to_path_buf(), name.clone(), stanza.clone());
    tokio::task::spawn_blocking(move || -> Result<String> {
        if name.segment().is_some() && !matches!(name, WalFileName::BackupHistory { .. }) {
            check_segment(&path, &name, &stanza)?;
        }
        checksum_file(&path)
    })
    .await
    .unwrap_or_else(crate::error::task_panicked)
}

pub(crate) fn check_segment(path: &PathBuf, name: &WalFileName, stanza: &StanzaInfo) -> Result<()> {
    let mut file = std::fs::File::open(path).at("opening", path)?;
    let size = file.metadata().at("reading metadata of", path)?.len();
    let mut first_page = vec![0u8; 8192.min(size as usize)];
    file.read_exact(&mut first_page).at("reading", path)?;
    let header = parse_long_page_header(&first_page).map_err(|e| {
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
