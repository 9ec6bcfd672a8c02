//! The commands pgward writes for PostgreSQL (archive_command, restore_command) run in
//! the server's environment, not pgward's. A passphrase or S3 key that pgward got from a
//! flag or from its own environment (`--cipher-pass`, `PGWARD_CIPHER_PASS`, `--s3-key`,
//! ...) is never written into them (the server's configuration is readable by every
//! database superuser) and will not be there when PostgreSQL runs them. What such a
//! command has is its own arguments (the options marked `COMMAND`) and the
//! configuration file. `pitr enable` and `restore` check with exactly that, before they
//! change anything, that the command can unlock the stanza and reach the store: an
//! archive_command that cannot decrypt fails every segment while WAL piles up, and a
//! restore_command that cannot stops recovery.

use std::path::PathBuf;

use super::options::{COMMAND, SECRET};
use super::{config, passphrase_of, GlobalArgs, Resolved};
use crate::error::{Error, Result};
use crate::repo::Repo;

impl Resolved {
    /// The options a generated command carries: what the command line and environment
    /// set (the rest the command reads again from the configuration file), with the
    /// repository as the handle resolved it and file names made absolute (PostgreSQL runs
    /// the command in its data directory).
    pub(super) fn command_args(&self, repo: &Repo) -> GlobalArgs {
        let mut given = self.explicit.clone();
        given.config.clone_from(&self.global.config);
        for path in [
            &mut given.config,
            &mut given.cipher_pass_file,
            &mut given.s3_ca_file,
        ] {
            if let Some(p) = path.as_mut() {
                *p = std::path::absolute(&*p).unwrap_or_else(|_| p.clone());
            }
        }
        self.with_handle(given, repo)
    }

    /// The options as the generated command will resolve them in the server: its own
    /// arguments and the configuration file, and nothing from pgward's environment.
    fn server_view(&self, repo: &Repo) -> Result<GlobalArgs> {
        let mut view = self
            .command_args(repo)
            .only(|o| o.has(COMMAND) && !o.has(SECRET));
        config::apply_config_file(&mut view)?;
        Ok(view)
    }

    /// Refuses (exit 3) when the command PostgreSQL will run as `what` ("archive_command",
    /// "restore_command") could not unlock this stanza or lacks the S3 keys pgward used.
    /// `repo` is this process's, unlocked.
    pub(super) async fn check_generated_command(&self, repo: &Repo, what: &str) -> Result<()> {
        let view = self.server_view(repo)?;
        let nothing_changed = match what {
            "archive_command" => "nothing was changed",
            _ => "nothing was restored",
        };
        if !repo.is_local() {
            self.check_s3_keys(&view, what, nothing_changed)?;
        }
        if !repo.is_encrypted() {
            return Ok(());
        }
        let ours = self.passphrase()?;
        let theirs = passphrase_of(&view).map_err(|e| {
            let message = format!("the {what} pgward would write cannot read its passphrase: {e}");
            Error::config(message).hint(e.hint.unwrap_or_default())
        })?;
        let Some(theirs) = theirs else {
            return Err(Error::config(format!(
                "the {what} pgward would write could not decrypt stanza {:?}: the passphrase \
                 comes from {}, which PostgreSQL will not have when it runs the command; {nothing_changed}",
                repo.stanza,
                self.passphrase_source(),
            ))
            .hint(format!(
                "put the passphrase in a file readable only by the server's user and pass \
                 --cipher-pass-file FILE (pgward writes it into the {what}), or set \
                 cipher-pass-file = \"FILE\" in the configuration file and pass --config FILE"
            )));
        };
        if Some(&theirs) != ours.as_ref() {
            self.stanza_handle()
                .await?
                .unlock(Some(&theirs))
                .await
                .map_err(|e| {
                    Error::config(format!(
                        "the {what} pgward would write could not decrypt stanza {:?} with \
                         the passphrase of {}: {e}; {nothing_changed}",
                        repo.stanza,
                        self.file_passphrase_source(&view),
                    ))
                    .hint("the configuration file and --cipher-pass-file must hold the stanza's passphrase")
                })?;
        }
        Ok(())
    }

    fn check_s3_keys(&self, view: &GlobalArgs, what: &str, nothing_changed: &str) -> Result<()> {
        if self.global.s3_key.is_some() && (view.s3_key.is_none() || view.s3_key_secret.is_none()) {
            return Err(Error::config(format!(
                "the {what} pgward would write would have no S3 keys: they come from \
                 --s3-key/--s3-key-secret or PGWARD_S3_KEY/PGWARD_S3_KEY_SECRET, which \
                 PostgreSQL will not have when it runs the command; {nothing_changed}"
            ))
            .hint(
                "set s3-key and s3-key-secret in a configuration file readable only by the \
                 server's user and pass --config FILE, or give the server's user AWS \
                 credentials of its own (a profile, an instance role) and drop --s3-key",
            ));
        }
        if view.s3_key.is_none() && std::env::var_os("AWS_ACCESS_KEY_ID").is_some() {
            // PostgreSQL's service environment may carry them too, and a profile or an
            // instance role may serve the server: pgward cannot see either, so it warns.
            tracing::warn!(
                "the {what} will not get this shell's AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY: \
                 PostgreSQL must have S3 credentials of its own (its environment, a profile of \
                 its user, an instance role), or set s3-key/s3-key-secret in the configuration file"
            );
        }
        Ok(())
    }

    /// Where this process's passphrase came from, for the message.
    fn passphrase_source(&self) -> &'static str {
        let env = std::env::var("PGWARD_CIPHER_PASS").ok();
        match &self.explicit.cipher_pass {
            Some(p) if env.as_ref() == Some(p) => "PGWARD_CIPHER_PASS",
            Some(_) => "--cipher-pass",
            None => "this process's options",
        }
    }

    fn file_passphrase_source(&self, view: &GlobalArgs) -> String {
        match (&view.cipher_pass, &view.cipher_pass_file, &view.config) {
            (None, Some(file), _) => file.display().to_string(),
            (_, _, Some(config)) => config.display().to_string(),
            _ => PathBuf::from(config::DEFAULT_CONFIG).display().to_string(),
        }
    }
}

impl Resolved {
    /// What a server's archive_command (pgward archive-push, perhaps one another pgward
    /// wrote) would meet when it unlocks this stanza: its own arguments, parsed as pgward
    /// parses them, and the configuration file, without anything from this process's
    /// environment. `check` runs this before it switches WAL, so that a command that
    /// cannot decrypt is named, not waited for until the timeout. `repo` is this
    /// process's, unlocked.
    pub(super) async fn check_archive_command(&self, repo: &Repo, command: String) -> Result<()> {
        use clap::parser::ValueSource;
        use clap::{CommandFactory, FromArgMatches};
        if !repo.is_encrypted() {
            return Ok(());
        }
        let Some(words) = shlex::split(&command) else {
            return Ok(()); // not a command pgward wrote; command_problem judged it
        };
        // From the program (pgward, or a path ending in it) to archive-push.
        let Some(start) = words.iter().position(|w| w.ends_with("pgward")) else {
            return Ok(());
        };
        let matches = match super::args::Cli::command().try_get_matches_from(&words[start..]) {
            Ok(m) => m,
            Err(_) => return Ok(()),
        };
        let Ok(cli) = super::args::Cli::from_arg_matches(&matches) else {
            return Ok(());
        };
        // clap also read this process's environment: not the server's.
        let mut view = cli
            .global
            .only(|o| matches.value_source(o.field) == Some(ValueSource::CommandLine));
        config::apply_config_file(&mut view).map_err(|e| {
            Error::config(format!(
                "archive_command {command:?} cannot read its configuration file: {e}"
            ))
        })?;
        let hint = "pass --cipher-pass-file FILE in the archive_command (a file the server's \
                    user can read), or set cipher-pass-file in its configuration file; \
                    `pgward pitr enable` with --cipher-pass-file writes such a command";
        let pass = match passphrase_of(&view) {
            Ok(Some(pass)) => pass,
            Ok(None) => {
                return Err(Error::config(format!(
                    "archive_command {command:?} cannot decrypt stanza {:?}: it names no \
                     passphrase (no --cipher-pass-file, and its configuration file sets none), \
                     so every archive-push fails and WAL piles up in pg_wal",
                    repo.stanza
                ))
                .hint(hint))
            }
            Err(e) => {
                return Err(Error::config(format!(
                    "archive_command {command:?} cannot decrypt stanza {:?}: {e}",
                    repo.stanza
                ))
                .hint(hint))
            }
        };
        if Some(&pass) != self.passphrase()?.as_ref() {
            self.stanza_handle()
                .await?
                .unlock(Some(&pass))
                .await
                .map_err(|e| {
                    Error::config(format!(
                        "archive_command {command:?} cannot decrypt stanza {:?}: {e}",
                        repo.stanza
                    ))
                    .hint(hint)
                })?;
        }
        Ok(())
    }
}
