//! `expire`: retention. A plan step decides what goes; an execute step removes it in an
//! order that keeps the repository valid if interrupted: manifests of dependent backups
//! before those they depend on (so no listed backup ever lacks its reference), then the
//! bundles nobody references any more, then WAL older than every retained backup.
//!
//! A backup whose manifest is damaged is never removed, nor anything it cannot be proven
//! not to need: its label's type letter is all that is known of it, so a differential or
//! incremental keeps every older backup (it builds on some of them), a full keeps none;
//! the backups that build on it stay, and WAL from the start of the newest backup before
//! it (its own start is not known). The rest of the stanza expires as usual.

use std::collections::BTreeSet;

use serde::Serialize;

use crate::error::Result;
use crate::pg::{Lsn, WalFileName};
use crate::repo::archive::ArchivedFile;
use crate::repo::label::BackupType;
use crate::repo::manifest::{chain, DamagedBackup, Manifest};
use crate::repo::{Repo, ABANDONED_AFTER};

#[derive(Clone, Debug, Default)]
pub struct Retention {
    /// Keep this many full backups (and everything that depends on them).
    pub full: Option<usize>,
    /// Keep this many differential backups.
    pub diff: Option<usize>,
    /// Keep full backups from the last D days, plus the newest full older than that, so
    /// that every point of the last D days stays restorable.
    pub full_days: Option<u64>,
}

impl Retention {
    pub fn is_set(&self) -> bool {
        self.full.is_some() || self.diff.is_some() || self.full_days.is_some()
    }
}

#[derive(Debug, Serialize)]
pub struct ExpirePlan {
    /// Labels to remove, dependents before what they depend on.
    pub backups: Vec<RemovedBackup>,
    /// WAL before this position is needed by no retained backup.
    pub wal_kept_from: Option<Lsn>,
    pub wal_files: Vec<String>,
    /// Backups whose manifest is damaged, kept with what depends on them either way.
    pub damaged_backups: Vec<DamagedBackupKept>,
    #[serde(skip)]
    wal: Vec<ArchivedFile>,
    #[serde(skip)]
    bundles: Vec<String>,
}

/// A backup whose manifest is damaged: kept, and the backups kept because of it.
#[derive(Debug, Serialize)]
pub struct DamagedBackupKept {
    pub label: String,
    pub problem: String,
    /// Backups it may build on and backups that build on it, oldest first.
    pub keeps: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct RemovedBackup {
    pub label: String,
    pub reason: String,
}

pub async fn plan(
    repo: &Repo,
    retention: &Retention,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<ExpirePlan> {
    // Headers only: retention needs labels, chains, LSNs and bundle names, not file lists.
    let stanza = repo.stanza_info().await?;
    let backups = repo.load_backup_headers(Some(&stanza)).await?.backups;
    let pinned = repo.pinned_labels().await?;
    let archived = repo.list_archive().await?;
    let plan = plan_for(
        &backups.healthy,
        &backups.damaged,
        &pinned,
        &archived,
        retention,
        now,
    );
    for d in &plan.damaged_backups {
        tracing::warn!(
            "backup {} has a damaged manifest ({}): expire keeps it{}; \
             `pgward verify` names what is wrong",
            d.label,
            d.problem,
            if d.keeps.is_empty() {
                String::new()
            } else {
                format!(", and {} with it", d.keeps.join(", "))
            }
        );
    }
    Ok(plan)
}

/// The pure decision, for tests and `--dry-run`.
pub fn plan_for(
    manifests: &[Manifest],
    damaged: &[DamagedBackup],
    pinned: &[String],
    archived: &[ArchivedFile],
    retention: &Retention,
    now: chrono::DateTime<chrono::Utc>,
) -> ExpirePlan {
    let fulls: Vec<&Manifest> = manifests
        .iter()
        .filter(|m| m.backup_type == BackupType::Full)
        .collect();
    let mut expired: Vec<(String, String)> = Vec::new(); // (label, reason) of roots whose dependents go too
    let keep_fulls: BTreeSet<&str> = {
        let mut keep = BTreeSet::new();
        let mut any_rule = false;
        if let Some(n) = retention.full {
            any_rule = true;
            keep.extend(fulls.iter().rev().take(n.max(1)).map(|m| m.label.as_str()));
        }
        if let Some(days) = retention.full_days {
            any_rule = true;
            let cutoff = now - chrono::Duration::days(days as i64);
            keep.extend(
                fulls
                    .iter()
                    .filter(|m| m.stop_time >= cutoff)
                    .map(|m| m.label.as_str()),
            );
            if let Some(older) = fulls.iter().rev().find(|m| m.stop_time < cutoff) {
                keep.insert(older.label.as_str());
            }
        }
        if !any_rule {
            keep.extend(fulls.iter().map(|m| m.label.as_str()));
        }
        keep
    };
    for full in &fulls {
        if !keep_fulls.contains(full.label.as_str()) {
            let why = match (retention.full, retention.full_days) {
                (Some(n), None) => format!("more than {n} newer full backup(s)"),
                (None, Some(d)) => {
                    format!("older than {d} day(s) and not needed to reach that far back")
                }
                _ => "outside every retention rule".to_string(),
            };
            expired.push((full.label.clone(), why));
        }
    }
    if let Some(n) = retention.diff {
        let diffs: Vec<&Manifest> = manifests
            .iter()
            .filter(|m| m.backup_type == BackupType::Diff)
            .collect();
        for d in diffs.iter().rev().skip(n) {
            expired.push((
                d.label.clone(),
                format!("more than {n} newer differential backup(s)"),
            ));
        }
    }

    // Everything depending on an expired backup goes with it; pinned backups and every
    // backup they need stay.
    let mut protected: BTreeSet<&str> = pinned
        .iter()
        .flat_map(|p| chain(manifests, p))
        .map(|m| m.label.as_str())
        .collect();
    let damaged_backups: Vec<DamagedBackupKept> = damaged
        .iter()
        .map(|d| DamagedBackupKept {
            label: d.label.clone(),
            problem: d.error.to_string(),
            keeps: kept_for_damaged(manifests, &d.label)
                .map(|m| m.label.clone())
                .collect(),
        })
        .collect();
    for d in damaged {
        protected.extend(kept_for_damaged(manifests, &d.label).map(|m| m.label.as_str()));
    }
    let mut removed: Vec<RemovedBackup> = Vec::new();
    for m in manifests.iter().rev() {
        if protected.contains(m.label.as_str()) {
            continue;
        }
        let needs: Vec<&Manifest> = chain(manifests, &m.label);
        if let Some((root, why)) = expired
            .iter()
            .find(|(root, _)| needs.iter().any(|n| &n.label == root))
        {
            let reason = if root == &m.label {
                why.clone()
            } else {
                format!("depends on expired backup {root}")
            };
            removed.push(RemovedBackup {
                label: m.label.clone(),
                reason,
            });
        }
    }
    let gone: BTreeSet<&str> = removed.iter().map(|r| r.label.as_str()).collect();
    let retained: Vec<&Manifest> = manifests
        .iter()
        .filter(|m| !gone.contains(m.label.as_str()))
        .collect();
    let bundles = manifests
        .iter()
        .filter(|m| gone.contains(m.label.as_str()))
        .flat_map(|m| m.bundles.iter().cloned())
        .collect();

    // WAL: nothing before the oldest retained backup's start is needed by anyone. LSNs
    // are shared by all timelines, so one position bounds them all. History files stay.
    // A damaged backup's own start is unknown: no later than the start of the newest
    // backup before it (when there is none, every WAL file stays).
    let damaged_wal_from = damaged.iter().map(|d| {
        manifests
            .iter()
            .rev()
            .find(|m| m.label < d.label)
            .map_or(Lsn(0), |m| m.start_lsn)
    });
    let wal_kept_from = retained
        .iter()
        .map(|m| m.start_lsn)
        .chain(damaged_wal_from)
        .min();
    let wal: Vec<ArchivedFile> = match (wal_kept_from, retained.first()) {
        (Some(from), Some(any)) => archived
            .iter()
            .filter(|f| match &f.name {
                WalFileName::History(_) => false,
                name => name.segment().is_some_and(|s| {
                    s.start_lsn(any.wal_segment_size).0 + any.wal_segment_size <= from.0
                }),
            })
            .cloned()
            .collect(),
        _ => Vec::new(), // no backups: keep every WAL file
    };
    ExpirePlan {
        backups: removed,
        wal_kept_from,
        wal_files: wal.iter().map(|f| f.name.to_string()).collect(),
        damaged_backups,
        wal,
        bundles,
    }
}

/// The readable backups a backup with a damaged manifest (`damaged`) may build on, and
/// those that build on it: kept as long as it is. Only its label's type letter is
/// known: a full builds on nothing; a differential or incremental on some older
/// backups, which cannot be told apart, so on every one of them.
fn kept_for_damaged<'a>(
    manifests: &'a [Manifest],
    damaged: &'a str,
) -> impl Iterator<Item = &'a Manifest> + 'a {
    let is_full = damaged.ends_with(BackupType::Full.letter());
    manifests.iter().filter(move |m| {
        let may_need = !is_full && m.label.as_str() < damaged;
        let builds_on = chain(manifests, &m.label)
            .first()
            .is_some_and(|first| first.reference.as_deref() == Some(damaged));
        may_need || builds_on
    })
}

pub async fn execute(repo: &Repo, plan: &ExpirePlan) -> Result<()> {
    for b in &plan.backups {
        tracing::info!(label = %b.label, reason = %b.reason, "expiring backup");
        repo.delete_manifest(&b.label).await?;
        test_halt_point();
    }
    for bundle in &plan.bundles {
        repo.delete_bundle(bundle).await?;
    }
    for f in &plan.wal {
        repo.delete_archived(f).await?;
    }
    if !plan.wal.is_empty() {
        tracing::info!(files = plan.wal.len(), kept_from = %plan.wal_kept_from.unwrap_or_default(), "expired WAL no retained backup needs");
    }
    remove_abandoned_archive_writes(repo).await
}

/// A killed archive-push leaves its partly written file behind, invisible but taking
/// space (on object storage, an unfinished upload, which archive-push itself never lists);
/// a killed rekey leaves a key file that never took effect. Neither takes a lock, so only
/// what is older than any run can be goes (`ABANDONED_AFTER`).
async fn remove_abandoned_archive_writes(repo: &Repo) -> Result<()> {
    repo.remove_abandoned_key_files().await?;
    let mut removed = 0;
    for dir in repo.archive_dirs().await? {
        removed += repo
            .remove_incomplete(&format!("archive/{dir}"), Some(ABANDONED_AFTER))
            .await?;
    }
    if removed > 0 {
        tracing::info!(
            removed,
            "removed archive files that killed archive-push runs left"
        );
    }
    Ok(())
}

/// Lets tests kill expire at a known point: with `PGWARD_TEST_EXPIRE_HALT=FILE` (debug
/// builds only), expire creates FILE after removing its first manifest and then waits to
/// be killed, so the test acts on an observable event instead of a guessed delay.
fn test_halt_point() {
    #[cfg(debug_assertions)]
    if let Some(marker) = std::env::var_os("PGWARD_TEST_EXPIRE_HALT") {
        let _ = std::fs::write(&marker, b"halted\n");
        loop {
            std::thread::park();
        }
    }
}

/// Plans (and unless `dry_run`, carries out) retention under the stanza's lock.
pub async fn expire(repo: &Repo, retention: &Retention, dry_run: bool) -> Result<ExpirePlan> {
    let lock = repo.lock("backup").await?;
    let result = async {
        let plan = plan(repo, retention, chrono::Utc::now()).await?;
        if !dry_run {
            execute(repo, &plan).await?;
        }
        Ok(plan)
    }
    .await;
    lock.release().await;
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;

    /// A manifest header as retention sees it: label, reference and start LSN.
    fn backup(label: &str, reference: Option<&str>, start: u64) -> Manifest {
        let kind = match label.as_bytes()[15] {
            b'F' => "full",
            b'D' => "diff",
            _ => "incr",
        };
        serde_json::from_value(serde_json::json!({
            "format_version": 4, "label": label, "type": kind, "reference": reference,
            "system_identifier": "7", "pg_major": 15, "pg_version_num": 150000,
            "timeline": 1, "start_lsn": Lsn(start << 24), "stop_lsn": Lsn((start << 24) + 1),
            "start_time": "2026-11-29T10:00:00Z", "stop_time": "2026-11-29T10:00:01Z",
            "wal_segment_size": 16u64 << 20, "data_checksums": true, "from_standby": false,
            "compression": {"codec": "lz4", "level": 1}, "backup_label": "", "tablespace_map": null,
            "tablespaces": [], "annotations": {}, "directories": [], "files": [],
            "database_size": 0, "stored_size": 0, "bundles": [format!("{label}-0-0.bundle")],
            "checksum_failures": [],
        }))
        .unwrap()
    }

    fn damaged(label: &str) -> DamagedBackup {
        DamagedBackup {
            label: label.into(),
            error: Error::new(crate::error::ErrorKind::Corrupt, "checksum mismatch"),
        }
    }

    fn labels(plan: &ExpirePlan) -> Vec<&str> {
        plan.backups.iter().map(|b| b.label.as_str()).collect()
    }

    #[test]
    fn a_damaged_backup_keeps_what_it_may_need_and_what_builds_on_it() {
        let (f1, i1, f2, i2, i3, f3) = (
            "20261101-000000F",
            "20261102-000000I",
            "20261103-000000F",
            "20261104-000000I",
            "20261105-000000I",
            "20261106-000000F",
        );
        let retention = Retention {
            full: Some(1),
            ..Default::default()
        };
        let now = chrono::Utc::now();
        // The damaged incremental i2 between f2 and i3: i3 builds on it, every older
        // backup may be what it builds on. Nothing goes.
        let healthy = [
            backup(f1, None, 1),
            backup(i1, Some(f1), 2),
            backup(f2, None, 3),
            backup(i3, Some(i2), 5),
            backup(f3, None, 6),
        ];
        let plan = plan_for(&healthy, &[damaged(i2)], &[], &[], &retention, now);
        assert_eq!(labels(&plan), Vec::<&str>::new());
        assert_eq!(plan.damaged_backups[0].keeps, [f1, i1, f2, i3]);
        assert_eq!(plan.wal_kept_from, Some(Lsn(1 << 24)));

        // A damaged full needs nothing older: f1 and i1 go with their bundles; the WAL
        // from i1's start stays, f2's own start being unknown.
        let healthy = [
            backup(f1, None, 1),
            backup(i1, Some(f1), 2),
            backup(i2, Some(f2), 4),
            backup(i3, Some(i2), 5),
            backup(f3, None, 6),
        ];
        let plan = plan_for(&healthy, &[damaged(f2)], &[], &[], &retention, now);
        assert_eq!(labels(&plan), [i1, f1]);
        assert_eq!(plan.damaged_backups[0].keeps, [i2, i3]);
        assert_eq!(plan.wal_kept_from, Some(Lsn(2 << 24)));
        assert!(plan
            .bundles
            .iter()
            .all(|b| b.starts_with(f1) || b.starts_with(i1)));
    }
}
