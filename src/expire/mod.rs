//! `expire`: retention. A plan step decides what goes; an execute step removes it in an
//! order that keeps the repository valid if interrupted: manifests of dependent backups
//! before those they depend on (so no listed backup ever lacks its reference), then the
//! bundles nobody references any more, then WAL older than every retained backup.
//!
//! A backup a running restore, drill or verify holds (`repo/holds.rs`) is kept, with its
//! chain and the WAL the hold names; holds are listed again after the manifests are
//! removed, and what a hold taken meanwhile names is kept too (the argument is in
//! `repo/holds.rs`).
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
use crate::repo::holds::{held_wal_from, Hold, Holder};
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
    /// Backups retention would remove, kept because a running reader holds them.
    pub held_backups: Vec<HeldBackupKept>,
    /// Readers whose holds keep WAL older than every retained backup needs.
    pub wal_held_by: Vec<Holder>,
    #[serde(skip)]
    wal: Vec<ArchivedFile>,
    #[serde(skip)]
    wal_segment_size: u64,
    /// (label, bundle) of every bundle of the removed backups.
    #[serde(skip)]
    bundles: Vec<(String, String)>,
}

/// A backup kept because a running restore, drill or verify reads it.
#[derive(Debug, Serialize)]
pub struct HeldBackupKept {
    pub label: String,
    /// Why retention would have removed it.
    pub reason: String,
    pub held_by: Vec<Holder>,
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
    // Read only (a dry run writes nothing); execute removes dead readers' holds.
    let holds = repo.live_holds(false).await?;
    let plan = plan_for(
        &backups.healthy,
        &backups.damaged,
        &pinned,
        &holds,
        &archived,
        retention,
        now,
    );
    for h in &plan.held_backups {
        tracing::info!(
            "backup {} is kept while {} reads it",
            h.label,
            describe(&h.held_by)
        );
    }
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
    holds: &[Hold],
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
    // A held backup keeps its chain, whether or not the hold names it all.
    let mut held: std::collections::BTreeMap<&str, Vec<&Holder>> = Default::default();
    for hold in holds {
        for named in manifests
            .iter()
            .filter(|m| hold.scope.holds_backup(&m.label))
        {
            for m in chain(manifests, &named.label) {
                let holders = held.entry(m.label.as_str()).or_default();
                if !holders.contains(&&hold.holder) {
                    holders.push(&hold.holder);
                }
            }
        }
    }
    let mut removed: Vec<RemovedBackup> = Vec::new();
    let mut held_backups: Vec<HeldBackupKept> = Vec::new();
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
            if let Some(holders) = held.get(m.label.as_str()) {
                held_backups.push(HeldBackupKept {
                    label: m.label.clone(),
                    reason,
                    held_by: holders.iter().map(|h| (*h).clone()).collect(),
                });
                continue;
            }
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
        .flat_map(|m| m.bundles.iter().map(|b| (m.label.clone(), b.clone())))
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
    let backups_wal_from = retained
        .iter()
        .map(|m| m.start_lsn)
        .chain(damaged_wal_from)
        .min();
    let wal_held_by: Vec<Holder> = holds
        .iter()
        .filter(|h| match (h.scope.wal_from, backups_wal_from) {
            (Some(held), Some(needed)) => held < needed,
            _ => false,
        })
        .map(|h| h.holder.clone())
        .collect();
    let wal_kept_from = match (backups_wal_from, held_wal_from(holds)) {
        (Some(needed), Some(held)) => Some(needed.min(held)),
        (needed, _) => needed, // no backups: every WAL file stays anyway
    };
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
        held_backups,
        wal_held_by,
        wal,
        wal_segment_size: retained.first().map_or(0, |m| m.wal_segment_size),
        bundles,
    }
}

/// "restore (pid 7 on host db1, started ...)", joined.
pub fn describe(holders: &[Holder]) -> String {
    holders
        .iter()
        .map(|h| h.to_string())
        .collect::<Vec<_>>()
        .join(" and ")
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
    // The manifests are gone (the commit point): a reader that has not read them yet
    // will find them missing and stop; one that has holds them by now, so its hold is
    // in this listing and what it reads stays (the argument is in repo/holds.rs).
    let holds = repo.live_holds(true).await?;
    for (label, bundle) in &plan.bundles {
        let holders: Vec<Holder> = holds
            .iter()
            .filter(|h| h.scope.holds_backup(label))
            .map(|h| h.holder.clone())
            .collect();
        if !holders.is_empty() {
            tracing::warn!(
                "kept bundle {bundle} of expired backup {label}: {} started reading it \
                 while this expire ran (the next backup removes it)",
                describe(&holders)
            );
            continue;
        }
        repo.delete_bundle(bundle).await?;
    }
    let wal_held_from = held_wal_from(&holds);
    let mut wal_kept = 0;
    for f in &plan.wal {
        let end = f
            .name
            .segment()
            .map(|s| s.start_lsn(plan.wal_segment_size).0 + plan.wal_segment_size);
        if let (Some(end), Some(from)) = (end, wal_held_from) {
            if end > from.0 {
                wal_kept += 1;
                continue;
            }
        }
        repo.delete_archived(f).await?;
    }
    if wal_kept > 0 {
        tracing::warn!(
            files = wal_kept,
            "kept archived WAL that a reader started reading while this expire ran"
        );
    }
    if plan.wal.len() > wal_kept {
        tracing::info!(files = plan.wal.len() - wal_kept, kept_from = %plan.wal_kept_from.unwrap_or_default(), "expired WAL no retained backup needs");
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

/// Lets tests start a reader between expire's plan and its removals: with
/// `PGWARD_TEST_EXPIRE_PAUSE=FILE` (debug builds only), expire creates FILE once it has
/// planned and goes on when the test removes it.
async fn test_pause_point() {
    #[cfg(debug_assertions)]
    if let Some(marker) = std::env::var_os("PGWARD_TEST_EXPIRE_PAUSE") {
        let _ = std::fs::write(&marker, b"planned\n");
        while std::path::Path::new(&marker).exists() {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}

/// Plans (and unless `dry_run`, carries out) retention under the stanza's lock.
pub async fn expire(repo: &Repo, retention: &Retention, dry_run: bool) -> Result<ExpirePlan> {
    let lock = repo.lock("backup").await?;
    let result = async {
        let plan = plan(repo, retention, chrono::Utc::now()).await?;
        if !dry_run {
            test_pause_point().await;
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
        let plan = plan_for(&healthy, &[damaged(i2)], &[], &[], &[], &retention, now);
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
        let plan = plan_for(&healthy, &[damaged(f2)], &[], &[], &[], &retention, now);
        assert_eq!(labels(&plan), [i1, f1]);
        assert_eq!(plan.damaged_backups[0].keeps, [i2, i3]);
        assert_eq!(plan.wal_kept_from, Some(Lsn(2 << 24)));
        assert!(plan
            .bundles
            .iter()
            .all(|(_, b)| b.starts_with(f1) || b.starts_with(i1)));
    }

    fn hold(pid: u32, backups: &[&str], wal_from: Option<Lsn>) -> Hold {
        let now = chrono::Utc::now();
        Hold {
            holder: Holder {
                command: "restore".into(),
                pid,
                host: "db1".into(),
                started: now,
            },
            heartbeat: now,
            scope: crate::repo::holds::HoldScope {
                backups: backups.iter().map(|b| b.to_string()).collect(),
                every_backup: false,
                wal_from,
            },
        }
    }

    #[test]
    fn a_held_backup_keeps_its_chain_and_the_wal_its_hold_names() {
        let (f1, i1, f2, i2, f3) = (
            "20261101-000000F",
            "20261102-000000I",
            "20261103-000000F",
            "20261104-000000I",
            "20261106-000000F",
        );
        let healthy = [
            backup(f1, None, 1),
            backup(i1, Some(f1), 2),
            backup(f2, None, 3),
            backup(i2, Some(f2), 4),
            backup(f3, None, 6),
        ];
        let retention = Retention {
            full: Some(1),
            ..Default::default()
        };
        let now = chrono::Utc::now();
        // A restore of i1 names only i1 here: f1 stays with it; f2's chain goes.
        let holds = [hold(7, &[i1], Some(Lsn(2 << 24)))];
        let plan = plan_for(&healthy, &[], &[], &holds, &[], &retention, now);
        assert_eq!(labels(&plan), [i2, f2]);
        let held: Vec<&str> = plan.held_backups.iter().map(|h| h.label.as_str()).collect();
        assert_eq!(held, [i1, f1]);
        assert_eq!(plan.held_backups[0].held_by[0].pid, 7);
        assert_eq!(
            plan.held_backups[1].reason,
            "more than 1 newer full backup(s)"
        );
        assert_eq!(plan.wal_kept_from, Some(Lsn(1 << 24)));
        assert!(plan.wal_held_by.is_empty(), "f1's own start keeps that WAL");

        // A hold of WAL alone (older than any retained backup) keeps that WAL.
        let holds = [hold(8, &[], Some(Lsn(1 << 24)))];
        let plan = plan_for(&healthy, &[], &[], &holds, &[], &retention, now);
        assert_eq!(labels(&plan), [i2, f2, i1, f1]);
        assert_eq!(plan.wal_kept_from, Some(Lsn(1 << 24)));
        assert_eq!(plan.wal_held_by[0].pid, 8);

        // A verify holds every backup and every WAL file.
        let mut verify = hold(9, &[], None);
        verify.scope = crate::repo::holds::HoldScope::everything();
        let plan = plan_for(&healthy, &[], &[], &[verify], &[], &retention, now);
        assert!(plan.backups.is_empty());
        assert_eq!(plan.held_backups.len(), 4);
        assert_eq!(plan.wal_kept_from, Some(Lsn(0)));

        // Without holds, everything but f3 goes.
        let plan = plan_for(&healthy, &[], &[], &[], &[], &retention, now);
        assert_eq!(labels(&plan), [i2, f2, i1, f1]);
        assert!(plan.held_backups.is_empty());
        assert_eq!(plan.wal_kept_from, Some(Lsn(6 << 24)));
    }
}
