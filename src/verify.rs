//! `verify`: re-reads everything stored and checks it against its checksum, and checks
//! that every backup has the WAL it needs from its start to the end of the archive.
//! Each problem names what it breaks.

use std::collections::HashMap;

use futures::stream::{self, StreamExt};
use serde::Serialize;

use crate::error::Result;
use crate::info::{contiguous_end, segments_on};
use crate::pg::WalSegment;
use crate::pipeline::compress::Codec;
use crate::repo::archive::ArchivedFile;
use crate::repo::frames::FrameReader;
use crate::repo::manifest::{Extent, Manifest};
use crate::repo::Repo;

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
    let stanza = repo.stanza_info().await?;
    let mut manifests = Vec::new();
    for label in repo.backup_labels().await? {
        match repo.load_manifest(&label).await {
            Ok(m) => manifests.push(m),
            Err(e) => report.problems.push(Problem {
                problem: e.to_string(),
                breaks: format!("backup {label} cannot be restored"),
            }),
        }
    }
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
    for m in &manifests {
        for file in &m.files {
            for extent in &file.extents {
                if !labels.contains(extent.backup.as_str()) {
                    report.problems.push(Problem {
                        problem: format!(
                            "{} in backup {} is held by backup {}, which is missing",
                            file.path, m.label, extent.backup
                        ),
                        breaks: format!("backup {} cannot be restored", m.label),
                    });
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
    let mut checks = Vec::new();
    for (path, extent, users) in frames.into_values() {
        let breaks = format!(
            "backup{} {} cannot be restored",
            if users.len() > 1 { "s" } else { "" },
            users.join(", ")
        );
        let codec = codec_of[extent.backup.as_str()];
        checks.push((Check::Frame(path, extent.clone(), codec), breaks));
    }
    report.extents_checked = checks.len();

    // Every archived file.
    let archived = repo.list_archive().await?;
    let dependants = |f: &ArchivedFile| -> String {
        let Some(seg) = f.name.segment() else {
            return "following this timeline switch during recovery".into();
        };
        let lsn = seg.start_lsn(stanza.wal_segment_size);
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
    report.problems.extend(stored_twice(&archived, &dependants));
    for f in &archived {
        checks.push((Check::Wal(f.clone()), dependants(f)));
    }
    report.wal_files_checked = archived.len();

    let progress = std::sync::Arc::new(crate::progress::Progress::default());
    // Progress counts original bytes: frames know theirs; WAL files are about a segment.
    let total: u64 = checks
        .iter()
        .map(|(c, _)| match c {
            Check::Frame(_, extent, _) => extent.frame_length,
            Check::Wal(_) => stanza.wal_segment_size,
        })
        .sum();
    let _reporter =
        crate::progress::Reporter::start("verify", total, checks.len() as u64, progress.clone());
    let results: Vec<(Option<Problem>, u64)> = stream::iter(checks)
        .map(|(check, breaks)| {
            let progress = progress.clone();
            async move {
                match check.run(repo).await {
                    Ok(bytes) => {
                        progress.add(bytes);
                        (None, bytes)
                    }
                    Err(e) => (
                        Some(Problem {
                            problem: e.to_string(),
                            breaks,
                        }),
                        0,
                    ),
                }
            }
        })
        .buffer_unordered(if repo.storage.local_root().is_some() {
            jobs.max(1)
        } else {
            (jobs.max(1) * 4).min(32)
        })
        .collect()
        .await;
    for (problem, bytes) in results {
        report.bytes_read += bytes;
        report.problems.extend(problem);
    }

    check_wal_continuity(
        &manifests,
        &archived,
        stanza.wal_segment_size,
        &mut report.problems,
    );
    Ok(report)
}

/// One stored thing to read through and check.
enum Check {
    /// A bundle frame: the path of a file it holds, its extent, its backup's codec.
    Frame(String, Extent, Codec),
    Wal(ArchivedFile),
}

impl Check {
    /// Reads it whole and checks it; returns its original size. Errors name the object.
    async fn run(self, repo: &Repo) -> Result<u64> {
        match self {
            Check::Frame(path, extent, codec) => {
                let repo = repo.clone();
                tokio::task::spawn_blocking(move || {
                    let handle = tokio::runtime::Handle::current();
                    let mut scratch = vec![0u8; 256 << 10];
                    FrameReader::open(&repo, &handle, &extent, codec, &path)?.finish(&mut scratch)
                })
                .await
                .expect("verify task panicked")
            }
            Check::Wal(file) => repo.check_wal(&file).await,
        }
    }
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
