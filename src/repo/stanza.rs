//! `stanza.json`: which cluster a stanza belongs to. Every command that writes checks
//! the cluster it talks to against this before touching anything.

use serde::{Deserialize, Serialize};

use super::{Repo, FORMAT_VERSION};
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

const FILE: &str = "stanza.json";

impl Repo {
    /// Reads the stanza's identity; a clear error when the stanza was never created.
    pub async fn stanza_info(&self) -> Result<StanzaInfo> {
        let bytes = match self.get_object(&self.key(FILE)).await {
            Err(e) if e.is_not_found() => {
                return Err(Error::new(
                    ErrorKind::Config,
                    format!(
                        "stanza {:?} does not exist in repository {}",
                        self.stanza,
                        self.storage.location()
                    ),
                )
                .hint("run `pgward stanza-create` first, or check --repo and --stanza"))
            }
            other => other?,
        };
        let info: StanzaInfo = serde_json::from_slice(&bytes).map_err(|e| {
            Error::corrupt(format!("{}/{FILE} does not parse", self.stanza)).source(e)
        })?;
        if info.format_version > FORMAT_VERSION {
            return Err(Error::new(
                ErrorKind::Config,
                format!("stanza {:?} uses repository format {}, this pgward reads up to {FORMAT_VERSION}", self.stanza, info.format_version),
            )
            .hint("upgrade pgward"));
        }
        Ok(info)
    }

    /// Records the cluster, or confirms it is the one already recorded.
    pub async fn stanza_create(&self, cluster: &ClusterIdentity) -> Result<(StanzaInfo, bool)> {
        match self.stanza_info().await {
            Ok(existing) => {
                check_same_cluster(&existing, cluster)?;
                Ok((existing, false))
            }
            Err(e) if e.kind == ErrorKind::Config && e.message.contains("does not exist") => {
                let info = StanzaInfo {
                    format_version: FORMAT_VERSION,
                    stanza: self.stanza.clone(),
                    system_identifier: cluster.system_identifier,
                    pg_major: cluster.pg_major,
                    data_checksums: cluster.data_checksums,
                    wal_segment_size: cluster.wal_segment_size,
                    created: chrono::Utc::now(),
                };
                let json = serde_json::to_vec_pretty(&info).expect("stanza info serializes");
                self.put_object(&self.key(FILE), &json).await?;
                Ok((info, true))
            }
            Err(e) => Err(e),
        }
    }
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
