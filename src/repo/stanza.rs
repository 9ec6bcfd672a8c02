//! `stanza.json`: which cluster a stanza belongs to. Every command that writes checks
//! the cluster it talks to against this before touching anything. Also the stanza's other
//! small objects: the settings `pitr enable` replaced.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::object::{self, Contents, Kind};
use super::{Repo, StanzaHandle, FORMAT_VERSION};
use crate::error::{Error, ErrorKind, Result};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StanzaInfo {
    pub format_version: u32,
    pub stanza: String,
    /// Kept as a string: JSON readers in other languages lose precision above 2^53.
    #[serde(with = "u64_string")]
    pub system_identifier: u64,
    pub pg_major: u32,
    pub data_checksums: bool,
    pub wal_segment_size: u64,
    pub created: chrono::DateTime<chrono::Utc>,
}

/// What the running cluster says about itself.
#[derive(Clone, Debug)]
pub struct ClusterIdentity {
    pub system_identifier: u64,
    pub pg_major: u32,
    pub data_checksums: bool,
    pub wal_segment_size: u64,
}

pub(super) const FILE: &str = "stanza.json";
const PITR_SETTINGS: &str = "pitr-previous-settings.json";

impl Repo {
    /// Reads the stanza's identity; a clear error when the stanza was never created, and a
    /// Corrupt one when `stanza.json` is damaged or names another stanza.
    pub async fn stanza_info(&self) -> Result<StanzaInfo> {
        let stored = object::get(&self.storage, &self.key(FILE)).await?;
        self.stanza_info_from(stored).await
    }

    /// `stanza_info` of the stored bytes of `stanza.json` read already (None: absent).
    async fn stanza_info_from(&self, stored: Option<Vec<u8>>) -> Result<StanzaInfo> {
        let key = self.key(FILE);
        let contents = match stored {
            None => None,
            Some(stored) => Some(object::decode(
                self.sealing_key(Kind::Stanza),
                Kind::Stanza,
                &stored,
                &key,
            )?),
        };
        let contents = match contents {
            None if self.holds_anything().await? => {
                return Err(object::damaged(
                    &key,
                    "is missing, but the stanza holds backups, archived WAL or a key file",
                ))
            }
            None => {
                return Err(Error::new(
                    ErrorKind::Config,
                    format!(
                        "stanza {:?} does not exist in repository {}",
                        self.stanza,
                        self.location()
                    ),
                )
                .hint("run `pgward stanza-create` first, or check --repo and --stanza"))
            }
            Some(c) => c,
        };
        parse_stanza(contents, &key, &self.stanza)
    }

    /// Whether anything but `stanza.json` was stored for this stanza.
    async fn holds_anything(&self) -> Result<bool> {
        let top = self.storage.list(&self.stanza).await?;
        Ok(top.files.iter().any(|f| f.name == super::cipher::KEY_FILE)
            || top.dirs.iter().any(|d| d == "backups" || d == "archive"))
    }

    /// Whether `stanza.json` exists (whatever it holds).
    pub async fn stanza_exists(&self) -> Result<bool> {
        Ok(object::get(&self.storage, &self.key(FILE)).await?.is_some())
    }

    /// Records the cluster, or confirms it is the one already recorded (and brings an
    /// existing stanza of an older format up to this one).
    pub async fn stanza_create(&self, cluster: &ClusterIdentity) -> Result<(StanzaInfo, bool)> {
        if self.stanza_exists().await? {
            let existing = self.stanza_info().await?;
            check_same_cluster(&existing, cluster)?;
            let existing = self.upgrade_metadata().await?.unwrap_or(existing);
            return Ok((existing, false));
        }
        let info = StanzaInfo {
            format_version: FORMAT_VERSION,
            stanza: self.stanza.clone(),
            system_identifier: cluster.system_identifier,
            pg_major: cluster.pg_major,
            data_checksums: cluster.data_checksums,
            wal_segment_size: cluster.wal_segment_size,
            created: chrono::Utc::now(),
        };
        self.write_stanza_info(&info).await?;
        Ok((info, true))
    }

    pub(super) async fn write_stanza_info(&self, info: &StanzaInfo) -> Result<()> {
        self.write_object(&self.key(FILE), Kind::Stanza, info).await
    }

    /// The settings `pitr enable` replaced, if saved.
    pub async fn saved_pitr_settings<T: DeserializeOwned>(&self) -> Result<Option<T>> {
        self.read_object(&self.key(PITR_SETTINGS), Kind::PitrSettings)
            .await
    }

    pub async fn save_pitr_settings<T: Serialize>(&self, settings: &T) -> Result<()> {
        self.write_object(&self.key(PITR_SETTINGS), Kind::PitrSettings, settings)
            .await
    }

    pub async fn delete_pitr_settings(&self) -> Result<()> {
        self.storage.delete(&self.key(PITR_SETTINGS)).await
    }

    /// Checks the saved PITR settings, for `verify`; absent is fine.
    pub async fn check_pitr_settings(&self) -> Result<Option<String>> {
        let key = self.key(PITR_SETTINGS);
        self.read_object::<serde_json::Value>(&key, Kind::PitrSettings)
            .await
            .map(|v| v.map(|_| key))
    }
}

impl StanzaHandle {
    /// Unlocks the stanza and reads its identity (the checks of `unlock`, then of
    /// `Repo::stanza_info`) in one round trip: what the commands PostgreSQL runs for
    /// every WAL file need first. With a passphrase, the key file and `stanza.json` are
    /// read at once. Without one, `stanza.json` alone decides: an encrypted stanza's is
    /// always sealed, so a plain one is a plain stanza and the key file is not read; a
    /// sealed or missing one takes the full path, for its precise error.
    pub async fn open(self, passphrase: Option<&[u8]>) -> Result<(Repo, StanzaInfo)> {
        let key = self.key(FILE);
        let (key_file, stored) = match passphrase {
            Some(_) => {
                let (key_file, stored) =
                    tokio::try_join!(self.key_file(), object::get(&self.storage, &key))?;
                (key_file, stored)
            }
            None => {
                // The key file is asked for beside stanza.json (no extra wait): a plain
                // stanza.json planted in an encrypted stanza must not make pgward read
                // or, worse, write that stanza unencrypted.
                let (key_file, stored) =
                    tokio::try_join!(self.key_file(), object::get(&self.storage, &key))?;
                match (&key_file, &stored) {
                    (None, Some(bytes)) if !crate::pipeline::encrypt::is_encrypted(bytes) => {
                        let contents = object::decode(None, Kind::Stanza, bytes, &key)?;
                        let info = parse_stanza(contents, &key, &self.stanza)?;
                        return Ok((self.into_repo(super::Sealing::Plain), info));
                    }
                    _ => (key_file, stored),
                }
            }
        };
        let repo = self.unlock_with(key_file, passphrase).await?;
        let info = repo.stanza_info_from(stored).await?;
        Ok((repo, info))
    }
}

/// Parses and checks stored `stanza.json` contents found under stanza `stanza`.
pub(super) fn parse_stanza(contents: Contents, key: &str, stanza: &str) -> Result<StanzaInfo> {
    let (info, legacy): (StanzaInfo, bool) = match contents {
        Contents::Checked(p) => (object::parse_json(&p, key)?, false),
        Contents::Legacy(raw) => (object::parse_json(&raw, key)?, true),
    };
    if info.format_version > FORMAT_VERSION {
        return Err(Error::new(
            ErrorKind::Config,
            format!(
                "stanza {stanza:?} uses repository format {}, this pgward reads up to {FORMAT_VERSION}",
                info.format_version
            ),
        )
        .hint("upgrade pgward"));
    }
    if legacy && info.format_version >= 4 {
        return Err(object::damaged(
            key,
            format!("says format {} but has no envelope", info.format_version),
        ));
    }
    if !crate::pg::control::is_valid_wal_segment_size(info.wal_segment_size) {
        return Err(object::damaged(
            key,
            format!(
                "names WAL segment size {}, which PostgreSQL cannot have",
                info.wal_segment_size
            ),
        ));
    }
    if info.stanza != stanza {
        return Err(object::damaged(
            key,
            format!(
                "names stanza {:?}: it was copied from another stanza",
                info.stanza
            ),
        ));
    }
    Ok(info)
}

pub fn check_same_cluster(stanza: &StanzaInfo, cluster: &ClusterIdentity) -> Result<()> {
    if stanza.system_identifier != cluster.system_identifier || stanza.pg_major != cluster.pg_major
    {
        return Err(Error::new(
            ErrorKind::Conflict,
            format!(
                "stanza {:?} belongs to cluster {} (PostgreSQL {}), but this cluster is {} (PostgreSQL {})",
                stanza.stanza, stanza.system_identifier, stanza.pg_major, cluster.system_identifier, cluster.pg_major
            ),
        )
        .hint("each cluster needs its own stanza: pick another --stanza, or point --pg-host/--pgdata at the right cluster"));
    }
    Ok(())
}

pub(crate) mod u64_string {
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(v)
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stanza_json(segment_size: u64) -> Vec<u8> {
        format!(
            r#"{{"format_version":4,"stanza":"main","system_identifier":"7","pg_major":15,"data_checksums":true,"wal_segment_size":{segment_size},"created":"2026-11-29T10:00:00Z"}}"#
        )
        .into_bytes()
    }

    #[tokio::test]
    async fn open_reads_the_identity_with_the_unlock_and_a_sealed_stanza_needs_its_passphrase() {
        let tmp = tempfile::tempdir().unwrap();
        let storage: crate::storage::SharedStorage =
            std::sync::Arc::new(crate::storage::LocalStorage::new(tmp.path()));
        let handle = |name: &str| StanzaHandle::new(storage.clone(), name).unwrap();
        let cluster = ClusterIdentity {
            system_identifier: 7,
            pg_major: 15,
            data_checksums: true,
            wal_segment_size: 16 << 20,
        };
        let plain = handle("plain").unlock(None).await.unwrap();
        plain.stanza_create(&cluster).await.unwrap();
        let (repo, info) = handle("plain").open(None).await.unwrap();
        assert!(!repo.is_encrypted());
        assert_eq!(info.system_identifier, 7);

        let sealed = handle("sealed").create_key(b"pw").await.unwrap();
        sealed.stanza_create(&cluster).await.unwrap();
        let e = handle("sealed").open(None).await.unwrap_err();
        assert!(e.message.contains("no passphrase was given"), "{e}");
        let (repo, info) = handle("sealed").open(Some(b"pw")).await.unwrap();
        assert!(repo.is_encrypted());
        assert_eq!(info.stanza, "sealed");
        assert!(handle("sealed").open(Some(b"wrong")).await.is_err());

        let e = handle("absent").open(None).await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::Config, "{e}");
        assert!(e.message.contains("does not exist"), "{e}");
    }

    #[test]
    fn a_wal_segment_size_postgresql_cannot_have_is_damage_not_a_later_division_by_zero() {
        let ok = parse_stanza(Contents::Checked(stanza_json(16 << 20)), "k", "main").unwrap();
        assert_eq!(ok.wal_segment_size, 16 << 20);
        for bad in [0, 3 << 20, 1 << 19, 2 << 30] {
            let e = parse_stanza(Contents::Checked(stanza_json(bad)), "k", "main").unwrap_err();
            assert_eq!(e.kind, ErrorKind::Corrupt, "{bad}: {e}");
            assert!(e.to_string().contains("segment size"), "{e}");
        }
    }
}
