//! `verify`: re-reads everything stored and checks it against its checksum, and checks
//! that every backup has the WAL it needs from its start to the end of the archive.
//! Metadata objects (stanza.json, the key file, manifests, pins) are read through the
//! checked path, and backups and archived WAL must be of the cluster stanza.json names.
//! Each problem names what it breaks.

use std::collections::HashMap;

use futures::stream::{self, StreamExt};
use serde::Serialize;

use crate::error::{Error, ErrorKind, Result};
use crate::pg::walheader::{parse_long_page_header, WAL_LONG_PAGE_HEADER_SIZE};
use crate::pg::WalSegment;
use crate::pipeline::compress::Codec;
use crate::pipeline::encrypt::MasterKey;
use crate::repo::archive::ArchivedFile;
use crate::repo::archive_map::{contiguous_end, segments_on};
use crate::repo::cipher::stored_read_error;
use crate::repo::manifest::{bundle_key, Extent, Manifest};
use crate::repo::stanza::StanzaInfo;
use crate::repo::Repo;
use crate::storage::{self, Reader};

#[derive(Debug, Serialize)]
pub struct Problem {
    pub problem: String,
    pub breaks: String,
}

#[derive(Debug, Serialize, Default)]
pub struct VerifyReport {
    pub backups_checked: usize,
    pub extents_checked: usize,
    pub wal_files_checked: usize,
    pub bytes_read: u64,
    pub problems: Vec<Problem>,
}

pub async fn verify(repo: &Repo, jobs: usize) -> Result<VerifyReport> {
    let mut report = VerifyReport::default();
    let metadata = check_metadata(repo, &mut report.problems).await?;
    let manifests = metadata.manifests;
    let seg_size = metadata.wal_segment_size;
    report.backups_checked = manifests.len();

    // Every stored frame once, naming every backup that reads from it.
    let labels: std::collections::HashSet<&str> =
        manifests.iter().map(|m| m.label.as_str()).collect();
    let codec_of: HashMap<&str, Codec> = manifests
        .iter()
        .map(|m| (m.label.as_str(), m.compression.codec))
        .collect();
    let mut frames: std::collections::BTreeMap<(String, u64), (String, &Extent, Vec<&str>)> =
        std::collections::BTreeMap::new();
    // (backup, the missing backup it reads from) -> (files, the first file's path)
    let mut held_by_missing: std::collections::BTreeMap<(&str, &str), (usize, &str)> =
        std::collections::BTreeMap::new();
    for m in &manifests {
        for file in &m.files {
            for extent in &file.extents {
                if !labels.contains(extent.backup.as_str()) {
                    let e = held_by_missing
                        .entry((m.label.as_str(), extent.backup.as_str()))
                        .or_insert((0, file.path.as_str()));
                    e.0 += 1;
                    continue;
                }
                let entry = frames
                    .entry((extent.bundle.clone(), extent.bundle_offset))
                    .or_insert_with(|| (file.path.clone(), extent, Vec::new()));
                if !entry.2.contains(&m.label.as_str()) {
                    entry.2.push(&m.label);
                }
            }
        }
    }
    for ((label, missing), (files, first)) in held_by_missing {
        report.problems.push(Problem {
            problem: format!(
                "{first}{} in backup {label} {} held by backup {missing}, which is missing or damaged",
                if files > 1 { format!(" and {} more file(s)", files - 1) } else { String::new() },
                if files > 1 { "are" } else { "is" },
            ),
            breaks: format!("backup {label} cannot be restored"),
        });
    }
    let mut checks = Vec::new();
    for ((bundle, offset), (path, extent, users)) in &frames {
        let what = format!(
            "{path} (backup {}, bundle {bundle} at {offset})",
            extent.backup
        );
        let breaks = format!(
            "backup{} {} cannot be restored",
            if users.len() > 1 { "s" } else { "" },
            users.join(", ")
        );
        checks.push((
            what,
            breaks,
            bundle_key(repo, bundle),
            Some((*offset, extent.stored_length)),
            codec_of[extent.backup.as_str()],
            extent.frame_checksum.clone(),
            Some(extent.frame_length),
            None,
        ));
    }
    report.extents_checked = checks.len();

    // Every archived file.
    let archived = repo.list_archive().await?;
    let dependants = |f: &ArchivedFile| -> String {
        let Some(seg) = f.name.segment() else {
            return "following this timeline switch during recovery".into();
        };
        let lsn = seg.start_lsn(seg_size);
        let needing: Vec<&str> = manifests
            .iter()
            .filter(|m| m.timeline == seg.timeline && m.stop_lsn > lsn)
            .map(|m| m.label.as_str())
            .collect();
        format!(
            "point-in-time recovery past {lsn} on timeline {}{}",
            seg.timeline,
            if needing.is_empty() {
                String::new()
            } else {
                format!(" (backups {})", needing.join(", "))
            }
        )
    };
    for (i, f) in archived.iter().enumerate() {
        checks.push((
            format!("archived {}", f.file_name()),
            dependants(f),
            repo.archived_file_key(f),
            None,
            f.codec,
            f.checksum.clone(),
            None,
            f.name.segment().is_some().then_some(i),
        ));
    }
    report.wal_files_checked = archived.len();

    let progress = std::sync::Arc::new(crate::progress::Progress::default());
    // Progress counts original bytes: frames know theirs; WAL files are about a segment.
    let total: u64 = checks.iter().map(|c| c.6.unwrap_or(seg_size)).sum();
    let _reporter =
        crate::progress::Reporter::start("verify", total, checks.len() as u64, progress.clone());
    // Per check: its problem, the bytes read, and (archived index, system identifier)
    // of a WAL segment.
    type Checked = (Option<Problem>, u64, Option<(usize, u64)>);
    let results: Vec<Checked> = stream::iter(checks)
        .map(|(what, breaks, key, range, codec, checksum, length, wal)| {
            let storage = repo.data_storage().clone();
            let master = repo.shared_key();
            let progress = progress.clone();
            async move {
                let reader = match range {
                    Some((offset, len)) => storage.read_range(&key, offset, len).await,
                    None => storage.read(&key).await,
                };
                let result = match reader {
                    Ok(reader) => tokio::task::spawn_blocking(move || {
                        check_content(reader, master.as_deref(), codec, &checksum, length)
                    })
                    .await
                    .unwrap_or_else(crate::error::task_panicked),
                    Err(e) => Err(e),
                };
                match result {
                    Ok((bytes, head)) => {
                        progress.add(bytes);
                        // Which cluster wrote the segment: its first page says.
                        let system = wal.zip(
                            parse_long_page_header(&head)
                                .ok()
                                .map(|h| h.system_identifier),
                        );
                        (None, bytes, system)
                    }
                    Err(e) => (
                        Some(Problem {
                            problem: format!("{what}: {e}"),
                            breaks,
                        }),
                        0,
                        None,
                    ),
                }
            }
        })
        .buffer_unordered(if repo.is_local() {
            jobs.max(1)
        } else {
            (jobs.max(1) * 4).min(32)
        })
        .collect()
        .await;
    let mut wal_systems = Vec::new();
    for (problem, bytes, system) in results {
        report.bytes_read += bytes;
        report.problems.extend(problem);
        wal_systems.extend(system.map(|(i, id)| (&archived[i], id)));
    }
    if let Some(stanza) = &metadata.stanza {
        check_cluster_identity(
            stanza,
            &manifests,
            &wal_systems,
            &dependants,
            &mut report.problems,
        );
    }

    check_wal_continuity(&manifests, &archived, seg_size, &mut report.problems);
    Ok(report)
}

/// What the metadata objects say, as far as they can be read.
struct Metadata {
    stanza: Option<StanzaInfo>,
    /// Manifests that read and name themselves (not yet compared with `stanza`).
    manifests: Vec<Manifest>,
    wal_segment_size: u64,
}

/// Reads every metadata object through the checked path: stanza.json, the key file, the
/// saved PITR settings, every manifest and pin. Each one damaged is a problem naming it.
async fn check_metadata(repo: &Repo, problems: &mut Vec<Problem>) -> Result<Metadata> {
    let stanza = match repo.stanza_info().await {
        Ok(s) => Some(s),
        Err(e) if e.kind == ErrorKind::Corrupt => {
            problems.push(Problem {
                problem: e.to_string(),
                breaks: format!(
                    "every command on stanza {:?}: archiving, backups and restores refuse it",
                    repo.stanza
                ),
            });
            None
        }
        Err(e) => return Err(e),
    };
    if let Err(e) = repo.check_key_file().await {
        problems.push(Problem {
            problem: e.to_string(),
            breaks: format!("unlocking stanza {:?}: no command can read it", repo.stanza),
        });
    }
    if let Err(e) = repo.check_pitr_settings().await {
        problems.push(Problem {
            problem: e.to_string(),
            breaks: "`pgward pitr disable` cannot put back the settings `pitr enable` replaced"
                .into(),
        });
    }
    let backups = repo.load_backups(None).await?;
    for d in &backups.damaged {
        problems.push(Problem {
            problem: d.error.to_string(),
            breaks: format!("backup {} cannot be restored", d.label),
        });
    }
    for label in repo.pinned_labels().await? {
        let listed = backups.healthy.iter().any(|m| m.label == label)
            || backups.damaged.iter().any(|d| d.label == label);
        if !listed {
            problems.push(Problem {
                problem: format!(
                    "{} pins backup {label}, which has no manifest (deleted?)",
                    repo.key(&format!("backups/{label}.pin"))
                ),
                breaks: format!("backup {label} cannot be restored"),
            });
            continue;
        }
        if let Err(e) = repo.check_pin(&label).await {
            problems.push(Problem {
                problem: e.to_string(),
                breaks: format!(
                    "the pin of backup {label} cannot be trusted (expire still keeps it)"
                ),
            });
        }
    }
    let wal_segment_size = stanza
        .as_ref()
        .map(|s| s.wal_segment_size)
        .or_else(|| backups.healthy.first().map(|m| m.wal_segment_size))
        .unwrap_or(16 << 20);
    Ok(Metadata {
        stanza,
        manifests: backups.healthy,
        wal_segment_size,
    })
}

/// Backups and archived WAL must be of the cluster stanza.json names. When none of them
/// is, stanza.json is the one that changed; otherwise each stray object is named.
fn check_cluster_identity(
    stanza: &StanzaInfo,
    manifests: &[Manifest],
    wal: &[(&ArchivedFile, u64)],
    dependants: &dyn Fn(&ArchivedFile) -> String,
    problems: &mut Vec<Problem>,
) {
    let expected = stanza.system_identifier;
    let stray_backups: Vec<&Manifest> = manifests
        .iter()
        .filter(|m| m.system_identifier != expected)
        .collect();
    let stray_wal: Vec<&(&ArchivedFile, u64)> =
        wal.iter().filter(|(_, id)| *id != expected).collect();
    let total = manifests.len() + wal.len();
    let mut others: Vec<u64> = stray_backups
        .iter()
        .map(|m| m.system_identifier)
        .chain(stray_wal.iter().map(|(_, id)| *id))
        .collect();
    others.sort_unstable();
    others.dedup();
    if total > 0 && stray_backups.len() + stray_wal.len() == total && others.len() == 1 {
        problems.push(Problem {
            problem: format!(
                "{}/stanza.json names cluster {expected}, but every backup and archived WAL file is of cluster {}",
                stanza.stanza,
                others[0]
            ),
            breaks: "archive-push and backup refuse the cluster as another one, and restore refuses every backup".into(),
        });
        return;
    }
    for m in stray_backups {
        problems.push(Problem {
            problem: format!(
                "backup {} is of cluster {}, but stanza.json names cluster {expected}",
                m.label, m.system_identifier
            ),
            breaks: format!("backup {} cannot be restored", m.label),
        });
    }
    for (f, id) in stray_wal {
        problems.push(Problem {
            problem: format!(
                "archived {} is WAL of cluster {id}, but stanza.json names cluster {expected}",
                f.file_name()
            ),
            breaks: dependants(f),
        });
    }
}

/// Checks stored content against its checksum; returns its length and first bytes.
fn check_content(
    reader: Reader,
    master: Option<&MasterKey>,
    codec: Codec,
    checksum: &str,
    length: Option<u64>,
) -> Result<(u64, Vec<u8>)> {
    let mut decoder = crate::pipeline::unseal(master, storage::blocking_reader(reader))
        .and_then(|r| codec.decoder(r))
        .map_err(|e| stored_read_error("stored data", e))?;
    let mut hasher = blake3::Hasher::new();
    let mut head = vec![0u8; WAL_LONG_PAGE_HEADER_SIZE];
    let mut got = 0;
    while got < head.len() {
        match std::io::Read::read(&mut decoder, &mut head[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(stored_read_error("stored data", e)),
        }
    }
    head.truncate(got);
    hasher.update(&head);
    let n = got as u64
        + std::io::copy(&mut decoder, &mut hasher)
            .map_err(|e| stored_read_error("stored data", e))?;
    if length.is_some_and(|l| l != n) {
        return Err(Error::corrupt(format!(
            "holds {n} bytes, the manifest says {}",
            length.unwrap()
        )));
    }
    let found = hasher.finalize().to_hex();
    if found.as_str() != checksum {
        return Err(Error::corrupt(format!(
            "checksum mismatch (expected {checksum}, found {found})"
        )));
    }
    Ok((n, head))
}

/// From each backup's start to the newest archived segment of its timeline, no segment
/// may be missing.
fn check_wal_continuity(
    manifests: &[Manifest],
    archived: &[ArchivedFile],
    seg_size: u64,
    problems: &mut Vec<Problem>,
) {
    let mut by_timeline: HashMap<_, Vec<u64>> = HashMap::new();
    for m in manifests {
        let segs = by_timeline
            .entry(m.timeline)
            .or_insert_with(|| segments_on(archived, m.timeline, seg_size));
        let first = m.start_lsn.segment_number(seg_size);
        let needed = m.stop_lsn.prev_segment_number(seg_size);
        let newest = segs.last().copied().unwrap_or(0).max(needed);
        let end = contiguous_end(segs, first);
        let missing_from = match end {
            Some(end) if end >= newest => continue,
            Some(end) => end + 1,
            None => first,
        };
        let seg = WalSegment::from_segno(m.timeline, missing_from, seg_size);
        let breaks = if missing_from <= needed {
            format!(
                "backup {} cannot be restored at all (it needs WAL up to {})",
                m.label, m.stop_lsn
            )
        } else {
            format!(
                "backup {} cannot be recovered past {}",
                m.label,
                seg.start_lsn(seg_size)
            )
        };
        problems.push(Problem {
            problem: format!("WAL segment {seg} is missing from the archive"),
            breaks,
        });
    }
}
