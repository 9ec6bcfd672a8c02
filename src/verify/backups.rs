//! The backups, one manifest at a time (issue 13: memory must not grow with the backups
//! stored). Each frame is stored by exactly one backup, the one its extents name, so a
//! backup's own frames are checked while its manifest is in memory, and then it is
//! dropped. What is kept of a backup is its head (for the WAL checks) and, per backup
//! it reads from, how many extents and the first file: a few hundred bytes.
//!
//! An extent that another backup holds needs that backup to be healthy, which is known
//! at the end. It must also be a frame that backup stores: each backup's stored frames
//! are kept as sorted 8-byte fingerprints while it is in the chain of the backup just
//! read (backups are read oldest first, and a chain reads only from older backups), so
//! what is held is one chain's frames at 8 bytes each. An extent into a backup outside
//! that chain (which backup never writes) is checked for health only.
//!
//! Which backups a damaged frame breaks (its own and every one that reads it) is found by
//! a second pass over the manifests that read from the damaged backup, only when some
//! frame was damaged.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use super::checks::{self, Source};
use super::Problem;
use crate::error::{ErrorKind, Result};
use crate::pg::{Lsn, TimelineId};
use crate::repo::manifest::{Extent, Manifest, Name};
use crate::repo::Repo;

/// What verify keeps of a healthy backup once its manifest is dropped.
pub(super) struct Backup {
    pub label: String,
    pub reference: Option<String>,
    pub timeline: TimelineId,
    pub start_lsn: Lsn,
    pub stop_lsn: Lsn,
    pub system_identifier: u64,
    pub wal_segment_size: u64,
    /// Backups whose frames this one's extents name: how many extents, the first path.
    reads_from: BTreeMap<String, (usize, String)>,
}

/// A frame whose check failed.
struct Damaged {
    /// The backup that stores it.
    backup: String,
    bundle: String,
    bundle_offset: u64,
    problem: String,
}

/// The outcome of reading every backup.
pub(super) struct Backups {
    /// Healthy backups, oldest first.
    pub healthy: Vec<Backup>,
    /// Labels whose manifest is there but does not read (each one a problem already).
    pub damaged: Vec<String>,
    pub extents_checked: usize,
    pub bytes_read: u64,
}

/// Reads every backup's manifest, one at a time, and checks it, its header object and
/// the frames it stores; then what each backup reads from the others.
pub(super) async fn check_backups(
    repo: &Repo,
    jobs: usize,
    problems: &mut Vec<Problem>,
) -> Result<Backups> {
    let mut out = Backups {
        healthy: Vec::new(),
        damaged: Vec::new(),
        extents_checked: 0,
        bytes_read: 0,
    };
    // Sorted fingerprints of the frames each backup of the current chain stores.
    let mut stored: HashMap<String, Vec<u64>> = HashMap::new();
    // (backup, the backup it reads from) -> (extents not stored there, the first path)
    let mut not_stored: BTreeMap<(String, String), (usize, String)> = BTreeMap::new();
    let mut damaged_frames = Vec::new();
    let mut map_problems = Vec::new();
    for label in repo.backup_labels().await? {
        let m = match repo.read_manifest(&label).await {
            Ok(m) => m,
            Err(e) if e.kind == ErrorKind::Io => return Err(e),
            // Expired between the listing and the read: no longer a backup.
            Err(e) if e.is_not_found() => continue,
            Err(e) => {
                problems.push(Problem {
                    problem: e.to_string(),
                    breaks: format!("backup {label} cannot be restored"),
                });
                out.damaged.push(label);
                continue;
            }
        };
        match repo.check_backup_header(&m).await {
            Ok(()) => {}
            Err(e) if e.kind == ErrorKind::Io => return Err(e),
            Err(e) => problems.push(Problem {
                problem: e.to_string(),
                breaks: "how the next incremental or differential backup chooses what to \
                         build on (removing the header object makes it read the manifest)"
                    .into(),
            }),
        }
        map_problems.extend(map_misses(&m));

        let own = Frames::of(&m, &stored, &mut not_stored);
        let total = own
            .checks
            .iter()
            .map(|&(f, e)| m.files[f].extents[e].frame_length)
            .sum();
        out.extents_checked += own.checks.len();
        let m = Arc::new(m);
        let found = checks::run(repo, jobs, Source::Frames(m.clone()), own.checks, total).await?;
        out.bytes_read += found.bytes_read;
        for ((f, e), problem) in found.failed {
            let extent = &m.files[f].extents[e];
            damaged_frames.push(Damaged {
                backup: m.label.clone(),
                bundle: extent.bundle.to_string(),
                bundle_offset: extent.bundle_offset,
                problem,
            });
        }
        let backup = Backup {
            label: m.label.clone(),
            reference: m.reference.clone(),
            timeline: m.timeline,
            start_lsn: m.start_lsn,
            stop_lsn: m.stop_lsn,
            system_identifier: m.system_identifier,
            wal_segment_size: m.wal_segment_size,
            reads_from: own.reads_from,
        };
        drop(m);
        crate::memory::release_freed();
        // Only the chain of this backup is kept to check references against.
        let chain = chain(&out.healthy, &backup);
        stored.retain(|label, _| chain.contains(label));
        stored.insert(backup.label.clone(), own.fingerprints);
        out.healthy.push(backup);
    }
    drop(stored);
    problems.extend(map_problems);

    problems.extend(reference_problems(&out.healthy, not_stored));
    if !damaged_frames.is_empty() {
        let users = readers_of(repo, &out.healthy, &damaged_frames).await?;
        for (frame, users) in damaged_frames.into_iter().zip(users) {
            problems.push(Problem {
                problem: frame.problem,
                breaks: format!(
                    "backup{} {} cannot be restored",
                    if users.len() > 1 { "s" } else { "" },
                    users.join(", ")
                ),
            });
        }
    }
    Ok(out)
}

/// Extents into a backup that is not healthy, or into a frame its backup does not store.
fn reference_problems(
    healthy: &[Backup],
    not_stored: BTreeMap<(String, String), (usize, String)>,
) -> Vec<Problem> {
    let mut problems = Vec::new();
    let labels: HashSet<&str> = healthy.iter().map(|b| b.label.as_str()).collect();
    for b in healthy {
        for (from, (extents, first)) in &b.reads_from {
            if labels.contains(from.as_str()) {
                continue;
            }
            problems.push(Problem {
                problem: format!(
                    "{first}{} in backup {} {} held by backup {from}, which is missing or damaged",
                    more(*extents),
                    b.label,
                    if *extents > 1 { "are" } else { "is" },
                ),
                breaks: format!("backup {} cannot be restored", b.label),
            });
        }
    }
    for ((label, from), (extents, first)) in not_stored {
        problems.push(Problem {
            problem: format!(
                "{first}{} in backup {label} {} held by backup {from}, which does not store {}: a bug in the backup that wrote {label}",
                more(extents),
                if extents > 1 { "are" } else { "is" },
                if extents > 1 { "those frames" } else { "that frame" },
            ),
            breaks: format!("backup {label} cannot be restored"),
        });
    }
    problems
}

fn more(extents: usize) -> String {
    if extents > 1 {
        format!(" and {} more file(s)", extents - 1)
    } else {
        String::new()
    }
}

/// A backup found changed blocks the WAL block maps did not name: the backup is whole
/// (those files were scanned), but the maps are wrong.
fn map_misses(m: &Manifest) -> Option<Problem> {
    let misses = m.reads.as_ref().map_or(&[][..], |r| &r.map_misses[..]);
    let first = misses.first()?;
    Some(Problem {
        problem: format!(
            "backup {} found {} changed block(s) in {} file(s) that the WAL block maps did not name (first: {} blocks {:?}): a bug in the block maps",
            m.label,
            misses.iter().map(|f| f.blocks.len()).sum::<usize>(),
            misses.len(),
            first.path,
            first.blocks
        ),
        breaks: "nothing in this backup (those files were scanned page by page), but incrementals that trust the maps may miss changes: report it, and take incrementals with --block-map-check all".into(),
    })
}

/// `backup` and the backups it builds on, as far as they are healthy.
fn chain(older: &[Backup], backup: &Backup) -> HashSet<String> {
    let mut out = HashSet::from([backup.label.clone()]);
    let mut next = backup.reference.as_deref();
    while let Some(label) = next {
        let Some(b) = older.iter().rev().find(|b| b.label == label) else {
            break;
        };
        if !out.insert(b.label.clone()) {
            break; // a loop (damage): stop
        }
        next = b.reference.as_deref();
    }
    out
}

/// Identifies a stored frame and what an extent says of it, in 8 bytes.
fn fingerprint(e: &Extent) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (
        &*e.bundle,
        e.bundle_offset,
        e.stored_length,
        e.frame_checksum.0,
    )
        .hash(&mut h);
    h.finish()
}

/// A backup's own frames, and what it reads from other backups.
struct Frames {
    /// (file, extent) of each frame it stores, once, in bundle order.
    checks: Vec<checks::Check>,
    /// Sorted fingerprints of those frames.
    fingerprints: Vec<u64>,
    reads_from: BTreeMap<String, (usize, String)>,
}

impl Frames {
    fn of(
        m: &Manifest,
        stored: &HashMap<String, Vec<u64>>,
        not_stored: &mut BTreeMap<(String, String), (usize, String)>,
    ) -> Frames {
        // A backup writes a handful of bundles: they are numbered, and sorted by name below.
        let mut bundles: Vec<&Name> = Vec::new();
        let mut own = Vec::new();
        let mut fingerprints = Vec::new();
        let mut reads_from: BTreeMap<String, (usize, String)> = BTreeMap::new();
        for (f, file) in m.files.iter().enumerate() {
            for (x, e) in file.extents.iter().enumerate() {
                if *e.backup == *m.label {
                    let bundle = match bundles.iter().position(|b| **b == e.bundle) {
                        Some(i) => i,
                        None => {
                            bundles.push(&e.bundle);
                            bundles.len() - 1
                        }
                    };
                    own.push((bundle as u32, e.bundle_offset, f as u32, x as u32));
                    fingerprints.push(fingerprint(e));
                    continue;
                }
                match reads_from.get_mut(&*e.backup) {
                    Some(from) => from.0 += 1,
                    None => {
                        reads_from.insert(e.backup.to_string(), (1, file.path.clone()));
                    }
                }
                if let Some(frames) = stored.get(&*e.backup) {
                    if frames.binary_search(&fingerprint(e)).is_err() {
                        not_stored
                            .entry((m.label.clone(), e.backup.to_string()))
                            .or_insert_with(|| (0, file.path.clone()))
                            .0 += 1;
                    }
                }
            }
        }
        let mut by_name: Vec<usize> = (0..bundles.len()).collect();
        by_name.sort_unstable_by_key(|&i| bundles[i]);
        let mut rank = vec![0u32; bundles.len()];
        for (r, &i) in by_name.iter().enumerate() {
            rank[i] = r as u32;
        }
        for c in &mut own {
            c.0 = rank[c.0 as usize];
        }
        own.sort_unstable();
        own.dedup_by_key(|c| (c.0, c.1));
        fingerprints.sort_unstable();
        fingerprints.dedup();
        Frames {
            checks: own
                .into_iter()
                .map(|(_, _, f, x)| (f as usize, x as usize))
                .collect(),
            fingerprints,
            reads_from,
        }
    }
}

/// For each damaged frame, the backups that cannot be restored without it: the one that
/// stores it, and every healthy one whose extents name it, oldest first. Reads again the
/// manifests of the backups that read from a backup with a damaged frame.
async fn readers_of(
    repo: &Repo,
    healthy: &[Backup],
    damaged: &[Damaged],
) -> Result<Vec<Vec<String>>> {
    let mut users: Vec<Vec<String>> = damaged.iter().map(|d| vec![d.backup.clone()]).collect();
    let index: HashMap<(&str, u64), usize> = damaged
        .iter()
        .enumerate()
        .map(|(i, d)| ((d.bundle.as_str(), d.bundle_offset), i))
        .collect();
    let storers: HashSet<&str> = damaged.iter().map(|d| d.backup.as_str()).collect();
    for b in healthy {
        if !b.reads_from.keys().any(|l| storers.contains(l.as_str())) {
            continue;
        }
        let m = match repo.read_manifest(&b.label).await {
            Ok(m) => m,
            Err(e) if e.kind == ErrorKind::Io => return Err(e),
            // Gone or changed since it was read: its problem, if any, was reported then.
            Err(_) => continue,
        };
        for file in &m.files {
            for e in &file.extents {
                if *e.backup == *m.label || !storers.contains(&*e.backup) {
                    continue;
                }
                if let Some(&i) = index.get(&(&*e.bundle, e.bundle_offset)) {
                    if users[i].last() != Some(&b.label) {
                        users[i].push(b.label.clone());
                    }
                }
            }
        }
    }
    Ok(users)
}
