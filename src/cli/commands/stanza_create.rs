//! `stanza-create`: record the cluster in the repository, creating its key when asked
//! to encrypt.

use super::{Outcome, Report};
use crate::cli::Resolved;
use crate::error::{Error, ErrorKind, Result};
use crate::repo::stanza::StanzaInfo;

pub async fn run(resolved: &Resolved) -> Result<Outcome> {
    let handle = resolved.stanza_handle().await?;
    let pass = resolved.passphrase()?;
    let repo = if resolved.cipher_requested()? {
        let pass = pass.ok_or_else(|| {
            Error::config("--cipher aes-256-gcm needs a passphrase")
                .hint("pass --cipher-pass, PGWARD_CIPHER_PASS or --cipher-pass-file")
        })?;
        if handle.exists().await? && !handle.is_encrypted().await? {
            return Err(Error::new(
                ErrorKind::Conflict,
                format!("stanza {:?} exists unencrypted", handle.stanza()),
            )
            .hint("encryption is chosen when a stanza is created; create a new stanza"));
        }
        handle.create_key(&pass).await?
    } else {
        let repo = handle.unlock(pass.as_deref()).await?;
        if !repo.is_encrypted() {
            resolved.refuse_cipher_flags(&repo)?;
        }
        repo
    };
    let client = crate::db::connect(&resolved.conn()).await?;
    let server = crate::db::server_info(&client).await?;
    let (info, created) = repo.stanza_create(&server.identity).await?;
    Ok(Outcome::report(StanzaCreated { info, created }))
}

struct StanzaCreated {
    info: StanzaInfo,
    created: bool,
}

impl Report for StanzaCreated {
    fn text(&self) -> String {
        let info = &self.info;
        format!(
            "stanza {:?} {} (system identifier {}, PostgreSQL {}, data checksums {})\n",
            info.stanza,
            if self.created {
                "created"
            } else {
                "already exists for this cluster"
            },
            info.system_identifier,
            info.pg_major,
            if info.data_checksums { "on" } else { "off" }
        )
    }
}
