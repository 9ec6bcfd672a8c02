//! `verify`: re-reads everything stored and checks it against its checksum, and checks
//! that every backup has the WAL it needs from its start to the end of the archive.
//! Metadata objects (stanza.json, the key file, manifests, pins) are read through the
//! checked path, and backups and archived WAL must be of the cluster stanza.json names.
//! Each problem names what it breaks.
//!
//! Backups are read one manifest at a time (`backups.rs`): what verify holds does not
//! grow with the number of backups stored. The archive is checked last (`wal.rs`), from
//! what was kept of each backup's head.

mod backups;
mod checks;
mod wal;

#[cfg(test)]
mod tests;

use serde::Serialize;

use crate::error::{ErrorKind, Result};
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
    let stanza = check_stanza(repo, &mut report.problems).await?;
    let backups = backups::check_backups(repo, jobs, &mut report.problems).await?;
    check_pins(repo, &backups, &mut report.problems).await?;
    report.backups_checked = backups.healthy.len();
    report.extents_checked = backups.extents_checked;
    report.bytes_read = backups.bytes_read;
    let seg_size = stanza
        .as_ref()
        .map(|s| s.wal_segment_size)
        .or_else(|| backups.healthy.first().map(|b| b.wal_segment_size))
        .unwrap_or(16 << 20);
    let archive = wal::check_archive(
        repo,
        jobs,
        stanza.as_ref(),
        &backups.healthy,
        seg_size,
        &mut report.problems,
    )
    .await?;
    report.wal_files_checked = archive.wal_files;
    report.wal_maps_checked = archive.wal_maps;
    report.bytes_read += archive.bytes_read;
    Ok(report)
}

/// Reads the stanza's own metadata objects through the checked path: stanza.json, the
/// key file, the saved PITR settings. Each one damaged is a problem naming it.
async fn check_stanza(repo: &Repo, problems: &mut Vec<Problem>) -> Result<Option<StanzaInfo>> {
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
    Ok(stanza)
}

/// Every pin must name a backup that has a manifest, and itself.
async fn check_pins(
    repo: &Repo,
    backups: &backups::Backups,
    problems: &mut Vec<Problem>,
) -> Result<()> {
    for label in repo.pinned_labels().await? {
        let listed =
            backups.healthy.iter().any(|b| b.label == label) || backups.damaged.contains(&label);
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
    Ok(())
}
