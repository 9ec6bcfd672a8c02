//! The archive: every archived file read whole and checked, names stored twice, claims,
//! the cluster each segment and backup is of, WAL continuity from each backup on, and the
//! block maps. What it needs of the backups is their heads (`backups::Backup`).

use std::collections::HashMap;
use std::sync::Arc;

use super::backups::Backup;
use super::checks::{self, Source};
use super::Problem;
use crate::error::{ErrorKind, Result};
use crate::pg::WalSegment;
use crate::repo::archive::ArchivedFile;
use crate::repo::archive_map::{contiguous_end, segments_on};
use crate::repo::stanza::StanzaInfo;
use crate::repo::Repo;

/// What checking the archive counted.
pub(super) struct Checked {
    pub wal_files: usize,
    pub wal_maps: usize,
    pub bytes_read: u64,
}

/// Checks the archive against `backups` (healthy, oldest first) and `stanza`.
pub(super) async fn check_archive(
    repo: &Repo,
    jobs: usize,
    stanza: Option<&StanzaInfo>,
    backups: &[Backup],
    seg_size: u64,
    problems: &mut Vec<Problem>,
) -> Result<Checked> {
    let archived: Arc<[ArchivedFile]> = repo.list_archive().await?.into();
    let dependants = |f: &ArchivedFile| -> String {
        let Some(seg) = f.name.segment() else {
            return "following this timeline switch during recovery".into();
        };
        let lsn = seg.start_lsn(seg_size);
        let needing: Vec<&str> = backups
            .iter()
            .filter(|b| b.timeline == seg.timeline && b.stop_lsn > lsn)
            .map(|b| b.label.as_str())
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
    problems.extend(stored_twice(&archived, &dependants));
    for (claim, problem) in repo.check_wal_claims(&archived).await? {
        problems.push(Problem {
            problem: format!("{claim}: {problem}"),
            breaks: "archive-push of that WAL file: a retry is refused as different contents"
                .into(),
        });
    }
    // Progress counts original bytes: a WAL file is about a segment.
    let total = archived.len() as u64 * seg_size;
    let found = checks::run(
        repo,
        jobs,
        Source::Wal(archived.clone()),
        (0..archived.len()).map(|i| (i, 0)).collect(),
        total,
    )
    .await?;
    for ((i, _), problem) in found.failed {
        problems.push(Problem {
            problem,
            breaks: dependants(&archived[i]),
        });
    }
    let wal_systems: Vec<(&ArchivedFile, u64)> = found
        .systems
        .iter()
        .map(|&(i, id)| (&archived[i], id))
        .collect();
    if let Some(stanza) = stanza {
        check_cluster_identity(stanza, backups, &wal_systems, &dependants, problems);
    }
    check_wal_continuity(backups, &archived, seg_size, problems);
    let wal_maps = check_wal_maps(repo, &archived, problems).await?;
    Ok(Checked {
        wal_files: archived.len(),
        wal_maps,
        bytes_read: found.bytes_read,
    })
}

/// Every block map, read through the checked path and matched to its segment's checksum.
async fn check_wal_maps(
    repo: &Repo,
    archived: &[ArchivedFile],
    problems: &mut Vec<Problem>,
) -> Result<usize> {
    let names = repo.wal_map_names().await?;
    let checksums: HashMap<_, _> = archived.iter().map(|f| (&f.name, &f.checksum)).collect();
    for name in &names {
        let breaks = format!("incremental backups over {name} fall back to a page scan");
        let problem = match repo.read_wal_map(name).await {
            Err(e) if e.kind == ErrorKind::Corrupt => e.to_string(),
            Err(e) => return Err(e),
            Ok(None) => continue,
            Ok(Some(map)) => match checksums.get(name) {
                Some(sum)
                    if blake3::Hash::from_hex(sum.as_str()).ok()
                        != Some(blake3::Hash::from(map.segment_checksum)) =>
                {
                    format!("the block map of {name} was built from other content than the archived segment")
                }
                _ => continue,
            },
        };
        problems.push(Problem { problem, breaks });
    }
    Ok(names.len())
}

/// Names stored twice with different contents: recovery could be handed either one.
fn stored_twice(
    archived: &[ArchivedFile],
    breaks: &dyn Fn(&ArchivedFile) -> String,
) -> Vec<Problem> {
    let mut problems = Vec::new();
    for group in archived.chunk_by(|a, b| a.name == b.name) {
        if group.iter().all(|f| f.checksum == group[0].checksum) {
            continue;
        }
        let names: Vec<String> = group.iter().map(|f| f.file_name()).collect();
        problems.push(Problem {
            problem: format!(
                "WAL file {} is stored {} times with different contents: {}; archive-get refuses it",
                group[0].name,
                group.len(),
                names.join(", ")
            ),
            breaks: breaks(&group[0]),
        });
    }
    problems
}

/// Backups and archived WAL must be of the cluster stanza.json names. When none of them
/// is, stanza.json is the one that changed; otherwise each stray object is named.
fn check_cluster_identity(
    stanza: &StanzaInfo,
    backups: &[Backup],
    wal: &[(&ArchivedFile, u64)],
    dependants: &dyn Fn(&ArchivedFile) -> String,
    problems: &mut Vec<Problem>,
) {
    let expected = stanza.system_identifier;
    let stray_backups: Vec<&Backup> = backups
        .iter()
        .filter(|m| m.system_identifier != expected)
        .collect();
    let stray_wal: Vec<&(&ArchivedFile, u64)> =
        wal.iter().filter(|(_, id)| *id != expected).collect();
    let total = backups.len() + wal.len();
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

/// From each backup's start to the newest archived segment of its timeline, no segment
/// may be missing.
fn check_wal_continuity(
    backups: &[Backup],
    archived: &[ArchivedFile],
    seg_size: u64,
    problems: &mut Vec<Problem>,
) {
    let mut by_timeline: HashMap<_, Vec<u64>> = HashMap::new();
    for m in backups {
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
