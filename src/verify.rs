//! `verify`: re-reads everything stored and checks it against its checksum, and checks
//! that every backup has the WAL it needs from its start to the end of the archive.
//! Metadata objects (stanza.json, the key file, manifests, pins) are read through the
//! checked path, and backups and archived WAL must be of the cluster stanza.json names.
//! Each problem names what it breaks.

use std::collections::HashMap;

use serde::Serialize;

use crate::error::{ErrorKind, Result};
use crate::pg::wal::page::{parse_long_page_header, LONG_HEADER_SIZE as WAL_LONG_PAGE_HEADER_SIZE};
use crate::pg::WalSegment;
use crate::pipeline::compress::Codec;
use crate::repo::archive::ArchivedFile;
use crate::repo::archive_map::{contiguous_end, segments_on};
use crate::repo::frames::FrameReader;
use crate::repo::manifest::{Extent, Manifest, Name};
use crate::repo::read_plan::ReadPlan;
use crate::repo::records::VerifyRecord;
use crate::repo::stanza::StanzaInfo;
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
    pub wal_maps_checked: usize,
    pub bytes_read: u64,
    pub problems: Vec<Problem>,
}

/// Verifies the stanza and records the outcome, passed or not, for `info` and `metrics`
/// (a verify that could not finish counts as one problem).
pub async fn verify(repo: &Repo, jobs: usize) -> Result<VerifyReport> {
    // Expire keeps every backup and WAL file while this runs: one removed mid-check would
    // read as damaged.
    let hold = repo
        .hold("verify", crate::repo::holds::HoldScope::everything())
        .await;
    let started = std::time::Instant::now();
    let result = verify_stanza(repo, jobs).await;
    hold.release().await;
    let record = VerifyRecord {
        time: chrono::Utc::now(),
        passed: matches!(&result, Ok(r) if r.problems.is_empty()),
        problems: result.as_ref().map_or(1, |r| r.problems.len() as u64),
        seconds: started.elapsed().as_secs_f64(),
        backups: result.as_ref().map_or(0, |r| r.backups_checked as u64),
        wal_segments: result.as_ref().map_or(0, |r| r.wal_files_checked as u64),
    };
    // Not into a stanza that does not exist (a mistyped --stanza): that would create it.
    if result.is_ok() || repo.stanza_exists().await.unwrap_or(false) {
        if let Err(e) = repo.save_verify(&record).await {
            tracing::warn!("could not record the outcome of this verify: {e}");
        }
    }
    result
}

async fn verify_stanza(repo: &Repo, jobs: usize) -> Result<VerifyReport> {
    let mut report = VerifyReport::default();
    let metadata = check_metadata(repo, &mut report.problems).await?;
    let manifests = metadata.manifests;
    let seg_size = metadata.wal_segment_size;
    report.backups_checked = manifests.len();
    for m in &manifests {
        let misses = m.reads.as_ref().map_or(&[][..], |r| &r.map_misses[..]);
        if let Some(first) = misses.first() {
            // The backup is whole (those files were scanned), but the maps are wrong.
            report.problems.push(Problem {
                problem: format!(
                    "backup {} found {} changed block(s) in {} file(s) that the WAL block maps did not name (first: {} blocks {:?}): a bug in the block maps",
                    m.label,
                    misses.iter().map(|f| f.blocks.len()).sum::<usize>(),
                    misses.len(),
                    first.path,
                    first.blocks
                ),
                breaks: "nothing in this backup (those files were scanned page by page), but incrementals that trust the maps may miss changes: report it, and take incrementals with --block-map-check all".into(),
            });
        }
    }

    // Every stored frame once, naming every backup that reads from it.
    let labels: std::collections::HashSet<&str> =
        manifests.iter().map(|m| m.label.as_str()).collect();
    let codec_of: HashMap<&str, Codec> = manifests
        .iter()
        .map(|m| (m.label.as_str(), m.compression.codec))
        .collect();
    let mut frames: std::collections::BTreeMap<(Name, u64), (String, &Extent, Vec<&str>)> =
        std::collections::BTreeMap::new();
    // (backup, the missing backup it reads from) -> (files, the first file's path)
    let mut held_by_missing: std::collections::BTreeMap<(&str, &str), (usize, &str)> =
        std::collections::BTreeMap::new();
    for m in &manifests {
        for file in &m.files {
            for extent in &file.extents {
                if !labels.contains(&*extent.backup) {
                    let e = held_by_missing
                        .entry((m.label.as_str(), &*extent.backup))
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
    for (path, extent, users) in frames.into_values() {
        let breaks = format!(
            "backup{} {} cannot be restored",
            if users.len() > 1 { "s" } else { "" },
            users.join(", ")
        );
        let codec = codec_of[&*extent.backup];
        checks.push((Check::Frame(path, extent.clone(), codec), breaks));
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
    report.problems.extend(stored_twice(&archived, &dependants));
    for (claim, problem) in repo.check_wal_claims(&archived).await? {
        report.problems.push(Problem {
            problem: format!("{claim}: {problem}"),
            breaks: "archive-push of that WAL file: a retry is refused as different contents"
                .into(),
        });
    }
    for (i, f) in archived.iter().enumerate() {
        checks.push((Check::Wal(i, f.clone()), dependants(f)));
    }
    report.wal_files_checked = archived.len();

    let progress = std::sync::Arc::new(crate::progress::Progress::default());
    // Progress counts original bytes: frames know theirs; WAL files are about a segment.
    let total: u64 = checks
        .iter()
        .map(|(c, _)| match c {
            Check::Frame(_, extent, _) => extent.frame_length,
            Check::Wal(..) => seg_size,
        })
        .sum();
    let _reporter =
        crate::progress::Reporter::start("verify", total, checks.len() as u64, progress.clone());
    let handle = tokio::runtime::Handle::current();
    // Frames are listed in bundle order: on object storage they are fetched in spans.
    let plan = ReadPlan::new(
        repo,
        handle.clone(),
        checks.iter().filter_map(|(c, _)| match c {
            Check::Frame(_, extent, _) => Some(extent),
            Check::Wal(..) => None,
        }),
    );
    let readers = crate::memory::workers(
        crate::workers::readers(jobs, repo.is_local()),
        crate::workers::READER_MEMORY,
        plan.as_ref().map_or(0, |p| p.memory()),
    );
    let workers = (0..readers)
        .map(|_| Checker {
            plan: plan.clone(),
            repo: repo.clone(),
            handle: handle.clone(),
            scratch: vec![0u8; 256 << 10],
            checked: Vec::new(),
        })
        .collect();
    let mut results: Vec<(usize, Checked)> =
        crate::workers::run(workers, checks.into_iter().enumerate(), progress)
            .await?
            .into_iter()
            .flatten()
            .collect();
    // In the order the checks were listed, whichever worker ran them.
    results.sort_unstable_by_key(|(n, _)| *n);
    let mut wal_systems = Vec::new();
    for (_, (problem, bytes, system)) in results {
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
    report.wal_maps_checked = check_wal_maps(repo, &archived, &mut report.problems).await?;
    Ok(report)
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

enum Check {
    /// A bundle frame: the path of a file it holds, its extent, its backup's codec.
    Frame(String, Extent, Codec),
    /// An archived file, with its index in the archive listing.
    Wal(usize, ArchivedFile),
}

/// Per check: its problem, the bytes read, and (archived index, system identifier) of a
/// WAL segment.
type Checked = (Option<Problem>, u64, Option<(usize, u64)>);

/// A verify worker: its scratch buffer and what its checks found, by check number.
struct Checker {
    plan: Option<std::sync::Arc<ReadPlan>>,
    repo: Repo,
    handle: tokio::runtime::Handle,
    scratch: Vec<u8>,
    checked: Vec<(usize, Checked)>,
}

impl crate::workers::Worker for Checker {
    type Job = (usize, (Check, String));
    type Output = Vec<(usize, Checked)>;

    /// A failed check is a problem to report, not the pool's error: every check runs.
    fn run(&mut self, (n, (check, breaks)): Self::Job) -> Result<u64> {
        let wal = match &check {
            Check::Wal(i, f) => f.name.segment().is_some().then_some(*i),
            Check::Frame(..) => None,
        };
        let checked = match check.run(
            self.plan.as_ref(),
            &self.repo,
            &self.handle,
            &mut self.scratch,
        ) {
            // Which cluster wrote the segment: its first page says.
            Ok((bytes, head)) => (
                None,
                bytes,
                wal.zip(
                    parse_long_page_header(&head)
                        .ok()
                        .map(|h| h.system_identifier),
                ),
            ),
            Err(e) => (
                Some(Problem {
                    problem: e.to_string(),
                    breaks,
                }),
                0,
                None,
            ),
        };
        let bytes = checked.1;
        self.checked.push((n, checked));
        Ok(bytes)
    }

    fn finish(self) -> Result<Self::Output> {
        Ok(self.checked)
    }
}

impl Check {
    /// Reads it whole and checks it; returns its original size and, for WAL, its first
    /// bytes (the long page header naming the cluster). Errors name the object. Runs on
    /// a blocking thread.
    fn run(
        self,
        plan: Option<&std::sync::Arc<ReadPlan>>,
        repo: &Repo,
        handle: &tokio::runtime::Handle,
        scratch: &mut [u8],
    ) -> Result<(u64, Vec<u8>)> {
        match self {
            Check::Frame(path, extent, codec) => {
                FrameReader::open_planned(plan, repo, handle, &extent, codec, &path)?
                    .finish(scratch)
                    .map(|n| (n, Vec::new()))
            }
            Check::Wal(_, file) => {
                let stored = handle.block_on(repo.open_wal(&file))?;
                let mut head = Head(Vec::with_capacity(WAL_LONG_PAGE_HEADER_SIZE));
                let n = stored.copy_to(&mut head)?;
                Ok((n, head.0))
            }
        }
    }
}

/// Keeps the first bytes written to it (a WAL file's long page header) and drops the rest.
struct Head(Vec<u8>);

impl std::io::Write for Head {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let room = WAL_LONG_PAGE_HEADER_SIZE.saturating_sub(self.0.len());
        self.0.extend_from_slice(&buf[..room.min(buf.len())]);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
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

/// What the metadata objects say, as far as they can be read.
struct Metadata {
    stanza: Option<StanzaInfo>,
    /// Manifests that read and name themselves (not yet compared with `stanza`).
    manifests: Vec<Manifest>,
    wal_segment_size: u64,
}

/// Reads every metadata object through the checked path: stanza.json, the key file, the
/// saved PITR settings, every manifest (and its header object) and pin. Each one damaged
/// is a problem naming it.
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
    for m in &backups.healthy {
        match repo.check_backup_header(m).await {
            Ok(()) => {}
            Err(e) if e.kind == ErrorKind::Io => return Err(e),
            Err(e) => problems.push(Problem {
                problem: e.to_string(),
                breaks: "how the next incremental or differential backup chooses what to \
                         build on (removing the header object makes it read the manifest)"
                    .into(),
            }),
        }
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
