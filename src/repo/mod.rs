//! The repository format (documented in docs/repository-format.md). Everything about
//! where things live in a repository, and how they are named, is here.
//!
//! ```text
//! <stanza>/stanza.json                                   cluster identity + format version
//! <stanza>/archive/<TTTTTTTTLLLLLLLL>/<wal name>-<blake3>[.ext]   segments, .partial, .backup
//! <stanza>/archive/<dir>/<wal name>.claim                 the one content a name may hold
//! <stanza>/archive/history/<TTTTTTTT>.history-<blake3>[.ext]
//! <stanza>/backups/<label>.manifest                      written last: a backup exists iff this does
//! <stanza>/bundles/<label>-<job>-<seq>.bundle            compressed frames of the backup's files
//! <stanza>/lock/                                         host-local lock files (local repositories)
//! ```

pub mod archive;
pub mod cipher;
pub mod frames;
pub mod label;
pub mod lock;
pub mod manifest;
pub mod stanza;
pub mod wal;

use crate::error::{Error, Result};
use crate::storage::SharedStorage;

/// Version of the layout and file formats this build writes and reads.
pub const FORMAT_VERSION: u32 = 3;

/// A stanza within a repository: the handle every command works through.
#[derive(Clone, Debug)]
pub struct Repo {
    pub storage: SharedStorage,
    pub stanza: String,
    /// Set when the stanza is encrypted (unlocked with the passphrase).
    pub key: Option<std::sync::Arc<crate::pipeline::encrypt::MasterKey>>,
}

impl Repo {
    pub fn new(storage: SharedStorage, stanza: &str) -> Result<Repo> {
        let valid = !stanza.is_empty()
            && stanza.len() <= 64
            && stanza
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
            && !stanza.starts_with('.');
        if !valid {
            return Err(Error::config(format!("invalid stanza name {stanza:?}"))
                .hint("use letters, digits, '-', '_' or '.', for example --stanza main"));
        }
        Ok(Repo {
            storage,
            stanza: stanza.to_string(),
            key: None,
        })
    }

    /// The stanza's master key when it is encrypted (and unlocked).
    pub(crate) fn master_key(&self) -> Option<&crate::pipeline::encrypt::MasterKey> {
        self.key.as_deref()
    }

    pub fn key(&self, rest: &str) -> String {
        format!("{}/{rest}", self.stanza)
    }

    /// Repository URL and stanza as command-line options, for generated commands.
    pub fn cli_options(&self) -> String {
        format!(
            "--repo {} --stanza {}",
            shell_quote(&self.storage.location()),
            shell_quote(&self.stanza)
        )
    }
}

/// Quotes for a POSIX shell when needed.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-+=:,@".contains(&b))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}
