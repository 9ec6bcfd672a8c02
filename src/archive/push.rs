//! archive-push: validate a WAL file against the stanza, then store it compressed under
//! a name carrying its checksum. Idempotent: an identical file already archived is
//! success; a different file under the same name is a conflict that must stop the
//! archiver (PostgreSQL keeps the segment and retries).

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::error::{Error, ErrorKind, IoContext, Result};
use crate::pg::walheader::{parse_long_page_header, pg_major_for_wal_magic};
use crate::pg::WalFileName;
use crate::pipeline::hash::HashingReader;
use crate::pipeline::Compression;
use crate::repo::archive::{stored_name, ArchivedFile};
use crate::repo::stanza::StanzaInfo;
use crate::repo::Repo;
use crate::storage;

#[derive(Debug, PartialEq, Eq)]
pub enum PushOutcome {
    Stored { stored_size: u64 },
    AlreadyArchived,
}

pub async fn archive_push(
    repo: &Repo,
    path: &Path,
    compression: Compression,
) -> Result<PushOutcome> {
    let name = parse_pushed_name(path)?;
    let stanza = repo.stanza_info().await?;
    let checksum = validate(path, &name, &stanza).await?;

    let existing = repo.find_archived(&name).await?;
    if existing.iter().any(|f| f.checksum == checksum) {
        return Ok(PushOutcome::AlreadyArchived);
    }
    if !existing.is_empty() {
        return Err(Error::new(
            ErrorKind::Conflict,
            format!("WAL file {name} is already archived in stanza {:?} with different contents", repo.stanza),
        )
        .hint("two clusters may be archiving into one stanza, or a restored cluster kept the old archive_command; give each cluster its own stanza"));
    }

    let file = ArchivedFile {
        name: name.clone(),
        checksum: checksum.clone(),
        codec: compression.codec,
        stored_size: 0,
        archived_at: 0,
    };
    let key = repo.archived_file_key(&file);
    let source = path.to_path_buf();
    let master = repo.shared_key();
    let stored_size = storage::write_blocking(repo.data_storage().as_ref(), &key, move |out| {
        let mut counting = crate::pipeline::CountingWriter { inner: out, written: 0 };
        let mut reader = HashingReader::new(std::fs::File::open(&source).at("opening", &source)?);
        let sealed = crate::pipeline::seal(master.as_deref(), &mut counting).at("encrypting", &source)?;
        let mut encoder = compression.encoder(sealed).at("compressing", &source)?;
        std::io::copy(&mut reader, &mut encoder).at("archiving", &source)?;
        encoder.finish().and_then(|sealed| sealed.finish()).at("compressing", &source)?;
        let (second_checksum, _) = reader.finish();
        if second_checksum != checksum {
            return Err(Error::new(ErrorKind::Conflict, format!("{} changed while it was being archived", source.display()))
                .hint("PostgreSQL must not modify a file it hands to archive_command; the push will be retried"));
        }
        Ok(counting.written)
    })
    .await?;
    tracing::debug!(stored = %stored_name(&name, &file.checksum, compression.codec), "archived");
    Ok(PushOutcome::Stored { stored_size })
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
