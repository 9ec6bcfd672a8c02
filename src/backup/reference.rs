//! Which backup an incremental or differential builds on, and when it must be a full
//! instead: nothing to build on, the chain is as long as allowed, or the reference lies
//! on a history the cluster no longer follows (page LSNs on a newer timeline can be
//! lower than the reference's start and still describe different contents).

use crate::error::Result;
use crate::pg::history::parse_history;
use crate::pg::{TimelineId, WalFileName};
use crate::repo::label::BackupType;
use crate::repo::manifest::{chain, Manifest};
use crate::repo::Repo;

pub struct Choice {
    pub backup_type: BackupType,
    pub reference: Option<Manifest>,
    /// Why a full was taken instead of what was asked, to tell the operator.
    pub fallback: Option<String>,
}

pub async fn choose(
    repo: &Repo,
    manifests: &[Manifest],
    requested: BackupType,
    max_chain: Option<usize>,
    timeline: TimelineId,
) -> Result<Choice> {
    let full = |why: String| Choice {
        backup_type: BackupType::Full,
        reference: None,
        fallback: Some(why),
    };
    let candidate = match requested {
        BackupType::Full => {
            return Ok(Choice {
                backup_type: BackupType::Full,
                reference: None,
                fallback: None,
            })
        }
        BackupType::Incr => manifests.last(),
        BackupType::Diff => manifests
            .iter()
            .rev()
            .find(|m| m.backup_type == BackupType::Full),
    };
    let Some(reference) = candidate else {
        return Ok(full(format!(
            "no full backup to build a {requested} backup on"
        )));
    };
    // Dependent backups in the chain once this one is added.
    let dependents = chain(manifests, &reference.label).len();
    if let Some(max) = max_chain {
        if dependents > max {
            return Ok(full(format!(
                "the chain already has {} dependent backup(s), --max-chain is {max}",
                dependents - 1
            )));
        }
    }
    if reference.timeline != timeline {
        if let Some(why) = off_history(repo, reference, timeline).await? {
            return Ok(full(why));
        }
    }
    Ok(Choice {
        backup_type: requested,
        reference: Some(reference.clone()),
        fallback: None,
    })
}

/// Some(reason) unless the reference ended on the cluster's current history.
async fn off_history(
    repo: &Repo,
    reference: &Manifest,
    timeline: TimelineId,
) -> Result<Option<String>> {
    let name = WalFileName::History(timeline);
    let Some(file) = repo.find_archived(&name).await?.into_iter().next() else {
        return Ok(Some(format!("the cluster is on timeline {timeline}, the reference backup on {}, and {name} is not archived", reference.timeline)));
    };
    let bytes = repo.read_wal(&file).await?;
    let text = String::from_utf8_lossy(&bytes);
    let history = match parse_history(&text) {
        Ok(h) => h,
        Err(e) => return Ok(Some(format!("{name} cannot be read ({e})"))),
    };
    Ok(
        match history.iter().find(|e| e.timeline == reference.timeline) {
            Some(entry) if reference.stop_lsn <= entry.switch_point => None,
            Some(entry) => Some(format!(
                "reference backup {} ends at {} on timeline {}, after that timeline was left at {}",
                reference.label, reference.stop_lsn, reference.timeline, entry.switch_point
            )),
            None => Some(format!(
                "timeline {} of the reference backup is not an ancestor of timeline {timeline}",
                reference.timeline
            )),
        },
    )
}
