//! Outcome records of the routines that prove a stanza: the last `drill` and the last
//! `verify`. `info` and `metrics` read them (small metadata objects, no bundle or WAL
//! content), so an operator's monitoring sees when a stanza was last proven and how it
//! went. Each is one metadata object through `object.rs` (checksummed, sealed in
//! encrypted stanzas), replaced whole by the next run. Writing one takes no stanza lock:
//! the replacement is atomic and nothing else depends on a record, so of two concurrent
//! runs the last to finish is kept, and no reader sees half of one.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::object::Kind;
use super::Repo;
use crate::error::{ErrorKind, Result};

const LAST_DRILL: &str = "records/last-drill.json";
const LAST_VERIFY: &str = "records/last-verify.json";

/// One check a drill ran on the restored cluster (`pg_amcheck`, `pg_checksums`, an SQL
/// check from the operator's file).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct DrillCheck {
    pub name: String,
    pub passed: bool,
    /// The checker's own words when it failed (trimmed), or a short summary.
    #[serde(default)]
    pub detail: String,
}

/// What the last `pgward drill` of a stanza did and found.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct DrillRecord {
    /// When the drill finished.
    pub time: DateTime<Utc>,
    pub passed: bool,
    /// The backup restored.
    pub backup: String,
    /// The restore target asked for, as the operator would write it (`--target ...`),
    /// or None for the backup's end.
    #[serde(default)]
    pub target: Option<String>,
    /// Where recovery ended: LSN and, when known, the time of the last replayed commit.
    #[serde(default)]
    pub reached_lsn: Option<String>,
    #[serde(default)]
    pub reached_time: Option<DateTime<Utc>>,
    #[serde(default)]
    pub restore_seconds: f64,
    #[serde(default)]
    pub recovery_seconds: f64,
    /// Bytes of WAL replayed (from the backup's start to where recovery ended).
    #[serde(default)]
    pub wal_replayed_bytes: Option<u64>,
    #[serde(default)]
    pub checks: Vec<DrillCheck>,
    /// Why the drill failed, when it did not get as far as the checks.
    #[serde(default)]
    pub error: Option<String>,
}

/// What the last `pgward verify` of a stanza found.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct VerifyRecord {
    /// When the verify finished.
    pub time: DateTime<Utc>,
    pub passed: bool,
    /// Problems found (0 when passed).
    pub problems: u64,
    #[serde(default)]
    pub seconds: f64,
    /// Backups and WAL segments checked.
    #[serde(default)]
    pub backups: u64,
    #[serde(default)]
    pub wal_segments: u64,
}

/// A record that does not read (checksum, envelope, parse): `info` and `metrics` report
/// it and go on, as if there were none; the next run of its routine replaces it.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct DamagedRecord {
    /// Its key in the repository.
    pub record: String,
    pub problem: String,
}

/// A damaged record becomes a warning and an entry of `damaged`; every other error
/// (storage, a newer format) stays one.
fn or_damaged<T>(
    read: Result<Option<T>>,
    key: String,
    damaged: &mut Vec<DamagedRecord>,
) -> Result<Option<T>> {
    match read {
        Err(e) if e.kind == ErrorKind::Corrupt => {
            tracing::warn!("{e}: shown as absent; the next run replaces it");
            damaged.push(DamagedRecord {
                record: key,
                problem: e.to_string(),
            });
            Ok(None)
        }
        other => other,
    }
}

impl Repo {
    /// [`Repo::last_drill`] for reports: a damaged record is noted in `damaged`, not an error.
    pub async fn last_drill_or_damaged(
        &self,
        damaged: &mut Vec<DamagedRecord>,
    ) -> Result<Option<DrillRecord>> {
        or_damaged(self.last_drill().await, self.key(LAST_DRILL), damaged)
    }

    /// [`Repo::last_verify`] for reports: a damaged record is noted in `damaged`, not an error.
    pub async fn last_verify_or_damaged(
        &self,
        damaged: &mut Vec<DamagedRecord>,
    ) -> Result<Option<VerifyRecord>> {
        or_damaged(self.last_verify().await, self.key(LAST_VERIFY), damaged)
    }

    pub async fn last_drill(&self) -> Result<Option<DrillRecord>> {
        self.read_object(&self.key(LAST_DRILL), Kind::DrillRecord)
            .await
    }

    pub async fn save_drill(&self, record: &DrillRecord) -> Result<()> {
        self.write_object(&self.key(LAST_DRILL), Kind::DrillRecord, record)
            .await
    }

    pub async fn last_verify(&self) -> Result<Option<VerifyRecord>> {
        self.read_object(&self.key(LAST_VERIFY), Kind::VerifyRecord)
            .await
    }

    pub async fn save_verify(&self, record: &VerifyRecord) -> Result<()> {
        self.write_object(&self.key(LAST_VERIFY), Kind::VerifyRecord, record)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn records_round_trip_and_a_flipped_byte_is_named() {
        let dir = std::env::temp_dir().join(format!("pgward-records-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let storage = std::sync::Arc::new(crate::storage::LocalStorage::new(dir.join("repo")));
        let repo = Repo::plain_for_tests(storage, "main");
        assert_eq!(repo.last_drill().await.unwrap(), None);
        let drill = DrillRecord {
            time: Utc::now(),
            passed: false,
            backup: "20261129-120000F".into(),
            target: Some("--target random".into()),
            reached_lsn: Some("0/3000060".into()),
            reached_time: None,
            restore_seconds: 1.5,
            recovery_seconds: 0.5,
            wal_replayed_bytes: Some(16 << 20),
            checks: vec![DrillCheck {
                name: "pg_amcheck".into(),
                passed: false,
                detail: "heap table \"public.t\", block 0: invalid".into(),
            }],
            error: None,
        };
        repo.save_drill(&drill).await.unwrap();
        assert_eq!(repo.last_drill().await.unwrap(), Some(drill.clone()));
        let verify = VerifyRecord {
            time: Utc::now(),
            passed: true,
            problems: 0,
            seconds: 0.25,
            backups: 2,
            wal_segments: 10,
        };
        repo.save_verify(&verify).await.unwrap();
        assert_eq!(repo.last_verify().await.unwrap(), Some(verify));

        let path = dir.join("repo").join(repo.key(LAST_VERIFY));
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        let err = repo.last_verify().await.unwrap_err().to_string();
        assert!(err.contains("last-verify.json"), "{err}");
        // Reports go on without it, naming it.
        let mut damaged = Vec::new();
        assert_eq!(
            repo.last_verify_or_damaged(&mut damaged).await.unwrap(),
            None
        );
        assert_eq!(
            repo.last_drill_or_damaged(&mut damaged).await.unwrap(),
            Some(drill)
        );
        assert_eq!(damaged.len(), 1);
        assert!(damaged[0].record.ends_with("records/last-verify.json"));
        assert_eq!(damaged[0].problem, err);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
