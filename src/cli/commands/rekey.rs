//! `rekey`: change the passphrase of an encrypted stanza.

use super::{Outcome, Report};
use crate::cli::Resolved;
use crate::error::{Error, Result};

pub async fn run(resolved: &Resolved, new_cipher_pass: &str) -> Result<Outcome> {
    let repo = resolved.stanza_handle().await?;
    let old = resolved.passphrase()?.ok_or_else(|| {
        Error::config("rekey needs the current passphrase")
            .hint("pass --cipher-pass or PGWARD_CIPHER_PASS")
    })?;
    repo.rekey(&old, new_cipher_pass.as_bytes()).await?;
    Ok(Outcome::report(Rekeyed {
        stanza: repo.stanza().to_string(),
    }))
}

struct Rekeyed {
    stanza: String,
}

impl Report for Rekeyed {
    fn text(&self) -> String {
        format!(
            "stanza {:?}: passphrase changed; the old one no longer opens it\n",
            self.stanza
        )
    }
}
