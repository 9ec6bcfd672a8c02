//! The command-line layer: parse, resolve configuration (`options.rs`, `config.rs`),
//! then one handler per command (`commands/`) calls the library and returns what to print.

pub mod args;
mod commands;
pub mod config;
mod generated;
pub mod options;

use args::{Cli, GlobalArgs, OutputFormat};

use crate::archive::spool::Background;
use crate::db::ConnOptions;
use crate::error::{Error, ErrorKind, Result};
use crate::pipeline::compress::{Codec, Compression};
use crate::repo::{shell_quote, Repo};

/// Exit status of archive-get when a file exists but cannot be used: above 125, so
/// PostgreSQL stops recovery instead of treating it as the end of the archive.
pub const EXIT_ARCHIVE_GET_FATAL: i32 = 126;

pub struct Resolved {
    pub global: GlobalArgs,
    /// What the command line and environment set, before the configuration file: the
    /// commands pgward writes for PostgreSQL repeat only these next to `--config`.
    explicit: GlobalArgs,
}

impl Resolved {
    /// The stanza named by the options, without unlocking it.
    async fn stanza_handle(&self) -> Result<Repo> {
        let url = self.global.repo.as_deref().ok_or_else(|| {
            Error::config("no repository given")
                .hint("pass --repo DIR, set PGWARD_REPO, or set repo in the configuration file")
        })?;
        let stanza = self.global.stanza.as_deref().ok_or_else(|| {
            Error::config("no stanza given").hint(
                "pass --stanza NAME, set PGWARD_STANZA, or set stanza in the configuration file",
            )
        })?;
        Repo::new(
            crate::storage::open(url, &self.s3_options()?).await?,
            stanza,
        )
    }

    fn s3_options(&self) -> Result<crate::storage::s3::S3Options> {
        let g = &self.global;
        let uri_style_path = match g.s3_uri_style.as_deref() {
            None => None,
            Some("host") => Some(false),
            Some("path") => Some(true),
            Some(other) => {
                return Err(Error::config(format!(
                    "--s3-uri-style {other:?}: expected host or path"
                )))
            }
        };
        Ok(crate::storage::s3::S3Options {
            endpoint: g.s3_endpoint.clone(),
            region: g.s3_region.clone(),
            uri_style_path,
            storage_class: g.s3_storage_class.clone(),
            ca_file: g.s3_ca_file.clone(),
            retry_seconds: g.s3_retry_seconds,
            access_key: g.s3_key.clone(),
            secret_key: g.s3_key_secret.clone(),
        })
    }

    /// The stanza, unlocked when it is encrypted.
    async fn repo(&self) -> Result<Repo> {
        let repo = self.unlocked().await?;
        if repo.key.is_none() {
            self.refuse_cipher_flags(&repo)?;
        }
        Ok(repo)
    }

    /// The stanza for the commands PostgreSQL runs (archive-push, archive-get and their
    /// workers): encryption options on an unencrypted stanza are a warning there, not an
    /// error. Their command line was written earlier, by an operator or an older pgward,
    /// and failing it would stop archiving or recovery over an option that does no harm.
    async fn repo_run_by_server(&self) -> Result<Repo> {
        let repo = self.unlocked().await?;
        if repo.key.is_none() {
            if let Err(e) = self.refuse_cipher_flags(&repo) {
                tracing::warn!("{}: ignored", e.message);
            }
        }
        Ok(repo)
    }

    async fn unlocked(&self) -> Result<Repo> {
        let pass = self.passphrase()?;
        self.stanza_handle().await?.unlock(pass.as_deref()).await
    }

    fn passphrase(&self) -> Result<Option<Vec<u8>>> {
        passphrase_of(&self.global)
    }

    /// Encryption options given on the command line or in the environment for a stanza
    /// that is not encrypted: a mistake (the wrong stanza, or a forgotten `--cipher` at
    /// stanza-create), never silently ignored. The configuration file may set them in
    /// `[global]` for stanzas of both kinds, so what it sets is not an error.
    fn refuse_cipher_flags(&self, repo: &Repo) -> Result<()> {
        let e = &self.explicit;
        let given: Vec<&str> = [
            (e.cipher_pass.is_some(), "--cipher-pass/PGWARD_CIPHER_PASS"),
            (
                e.cipher_pass_file.is_some(),
                "--cipher-pass-file/PGWARD_CIPHER_PASS_FILE",
            ),
            (
                e.cipher.as_deref().is_some_and(|c| c != "none"),
                "--cipher/PGWARD_CIPHER",
            ),
        ]
        .into_iter()
        .filter_map(|(set, name)| set.then_some(name))
        .collect();
        if given.is_empty() {
            return Ok(());
        }
        Err(Error::config(format!(
            "stanza {:?} is not encrypted, but {} given",
            repo.stanza,
            given.join(" and ")
        ))
        .hint(
            "encryption is chosen when a stanza is created (stanza-create --cipher aes-256-gcm); \
             check --stanza, or drop the encryption options for this stanza",
        ))
    }

    fn cipher_requested(&self) -> Result<bool> {
        match self.global.cipher.as_deref() {
            None | Some("none") => Ok(false),
            Some("aes-256-gcm") => Ok(true),
            Some(other) => {
                Err(Error::config(format!("unknown cipher {other:?}"))
                    .hint("use aes-256-gcm or none"))
            }
        }
    }

    fn conn(&self) -> ConnOptions {
        ConnOptions {
            host: self.global.pg_host.clone(),
            port: self.global.pg_port,
            user: self.global.pg_user.clone(),
            database: self.global.pg_database.clone(),
        }
    }

    fn retention(&self) -> crate::expire::Retention {
        crate::expire::Retention {
            full: self.global.retain_full,
            diff: self.global.retain_diff,
            full_days: self.global.retain_full_days,
        }
    }

    fn jobs(&self) -> usize {
        self.global
            .jobs
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
    }

    fn compression(&self) -> Result<Compression> {
        let codec: Codec = self
            .global
            .compress
            .as_deref()
            .unwrap_or("zstd")
            .parse()
            .map_err(|e: String| Error::config(e))?;
        Compression::new(codec, self.global.compress_level).map_err(Error::config)
    }

    /// This binary with this configuration, repository and stanza, for commands that
    /// PostgreSQL runs (archive_command, restore_command): the options marked `COMMAND`
    /// that the command line or environment set (the rest it reads from `--config`).
    fn self_command(&self, repo: &Repo) -> String {
        let exe = std::env::current_exe()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| "pgward".into());
        let args = self.command_args(repo).background(options::COMMAND).args;
        std::iter::once(exe)
            .chain(args)
            .map(|a| shell_quote(&a))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// How to start a background pgward that acts like this one: the options marked
    /// `WORKER`, secrets in its environment.
    fn background(&self, repo: &Repo, command: &[&str]) -> Background {
        let mut global = self.with_handle(self.global.clone(), repo);
        if repo.key.is_none() {
            // Set by the configuration file for other stanzas; as the worker's own
            // options they would be refused.
            (global.cipher, global.cipher_pass, global.cipher_pass_file) = (None, None, None);
        }
        let mut background = global.background(options::WORKER);
        background
            .args
            .extend(command.iter().map(|a| a.to_string()));
        background
    }

    /// The repository and stanza as the handle resolved them (a local path made
    /// absolute): the process that reads them may run elsewhere.
    fn with_handle(&self, mut args: GlobalArgs, repo: &Repo) -> GlobalArgs {
        args.repo = Some(repo.storage.location());
        args.stanza = Some(repo.stanza.clone());
        args
    }

    fn restore_command(&self, repo: &Repo) -> String {
        format!("{} archive-get %f \"%p\"", self.self_command(repo))
    }

    fn archive_command(&self, repo: &Repo) -> String {
        format!("{} archive-push %p", self.self_command(repo))
    }

    fn output(&self) -> OutputFormat {
        self.global.output.unwrap_or_default()
    }
}

pub fn resolve(mut global: GlobalArgs) -> Result<Resolved> {
    let explicit = global.clone();
    config::apply_config_file(&mut global)?;
    if global.jobs == Some(0) {
        return Err(Error::config("--jobs must be at least 1"));
    }
    Ok(Resolved { global, explicit })
}

pub async fn run(cli: Cli, resolved: Resolved) -> Result<()> {
    commands::run(cli.command, &resolved)
        .await?
        .print(resolved.output())
}

/// The passphrase `args` give: `cipher-pass`, else the contents of `cipher-pass-file`
/// (one trailing newline dropped).
fn passphrase_of(args: &GlobalArgs) -> Result<Option<Vec<u8>>> {
    if let Some(p) = &args.cipher_pass {
        return Ok(Some(p.as_bytes().to_vec()));
    }
    let Some(f) = &args.cipher_pass_file else {
        return Ok(None);
    };
    // A missing or unreadable file is a configuration error (exit 3), not "not found"
    // (exit 1, which restore_command's caller reads as the end of the archive).
    let text = std::fs::read(f).map_err(|e| {
        Error::io("reading the passphrase file", f, e)
            .with_kind(ErrorKind::Config)
            .hint("check --cipher-pass-file / cipher-pass-file: the file must exist and be readable by this user")
    })?;
    Ok(Some(text.strip_suffix(b"\n").unwrap_or(&text).to_vec()))
}
