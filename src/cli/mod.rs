//! The command-line layer: parse, resolve configuration (`options.rs`, `config.rs`),
//! then one handler per command (`commands/`) calls the library and returns what to print.

pub mod args;
mod commands;
pub mod config;
mod generated;
pub mod options;
pub mod usage;

use args::{Cli, GlobalArgs, OutputFormat};

use crate::archive::spool::Background;
use crate::db::ConnOptions;
use crate::error::{Error, ErrorKind, Result};
use crate::pipeline::compress::{Codec, Compression};
use crate::repo::{shell_quote, Repo, StanzaHandle};

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
    async fn stanza_handle(&self) -> Result<StanzaHandle> {
        let url = self.global.repo.as_deref().ok_or_else(|| {
            Error::config("no repository given")
                .hint("pass --repo DIR, set PGWARD_REPO, or set repo in the configuration file")
        })?;
        let stanza = self.global.stanza.as_deref().ok_or_else(|| {
            Error::config("no stanza given").hint(
                "pass --stanza NAME, set PGWARD_STANZA, or set stanza in the configuration file",
            )
        })?;
        StanzaHandle::new(
            crate::storage::open(url, &self.store_options()?).await?,
            stanza,
        )
    }

    fn store_options(&self) -> Result<crate::storage::StoreOptions> {
        let g = &self.global;
        Ok(crate::storage::StoreOptions {
            s3: self.s3_options()?,
            gcs: crate::storage::gcs::GcsOptions {
                endpoint: g.gcs_endpoint.clone(),
                key_file: g.gcs_key_file.clone(),
            },
            azure: crate::storage::azure::AzureOptions {
                account: g.azure_account.clone(),
                key: g.azure_key.clone(),
                sas: g.azure_sas.clone(),
                endpoint: g.azure_endpoint.clone(),
            },
        })
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
            access_key: g.s3_key.clone(),
            secret_key: g.s3_key_secret.clone(),
            transport: crate::storage::object::Transport {
                retry_seconds: g.s3_retry_seconds,
                timeout_seconds: g.s3_timeout,
                ca_file: g.s3_ca_file.clone(),
                read_ahead: g.repo_read_ahead,
            },
        })
    }

    /// The stanza, unlocked when it is encrypted.
    async fn repo(&self) -> Result<Repo> {
        let repo = self.unlocked().await?;
        if !repo.is_encrypted() {
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
        self.warn_cipher_flags(&repo);
        Ok(repo)
    }

    /// `repo_run_by_server` with the stanza's identity, both read at once
    /// (`StanzaHandle::open`).
    async fn stanza_run_by_server(
        &self,
        handle: StanzaHandle,
    ) -> Result<(Repo, crate::repo::stanza::StanzaInfo)> {
        let pass = self.passphrase()?;
        let (repo, info) = handle.open(pass.as_deref()).await?;
        self.warn_cipher_flags(&repo);
        Ok((repo, info))
    }

    fn warn_cipher_flags(&self, repo: &Repo) {
        if !repo.is_encrypted() {
            if let Err(e) = self.refuse_cipher_flags(repo) {
                tracing::warn!("{}: ignored", e.message);
            }
        }
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

    /// The standby's primary, when --primary-host or --primary-port is given: user and
    /// database as for the server backed up.
    fn primary_conn(&self) -> Option<ConnOptions> {
        let g = &self.global;
        (g.primary_host.is_some() || g.primary_port.is_some()).then(|| ConnOptions {
            host: g.primary_host.clone().or_else(|| g.pg_host.clone()),
            port: g.primary_port.or(g.pg_port),
            ..self.conn()
        })
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

    /// Whether archive-push builds block maps (`--wal-maps`, on unless set off).
    fn wal_maps(&self) -> bool {
        self.global.wal_maps != Some(args::WalMaps::Off)
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
        let args = self.command_args(repo).invocation(options::COMMAND).args;
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
        if !repo.is_encrypted() {
            // Set by the configuration file for other stanzas; as the worker's own
            // options they would be refused.
            (global.cipher, global.cipher_pass, global.cipher_pass_file) = (None, None, None);
        }
        let mut background = global.invocation(options::WORKER);
        background
            .args
            .extend(command.iter().map(|a| a.to_string()));
        background
    }

    /// `args` naming the handle's repository and stanza, whatever set them: the commands
    /// and workers pgward starts always name them, as `check` expects of archive_command.
    fn with_handle(&self, mut args: GlobalArgs, repo: &Repo) -> GlobalArgs {
        args.repo = Some(repo.location());
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

/// Flags (parsed by clap with the `PGWARD_*` variables), then libpq's variables, then the
/// configuration file.
pub fn resolve(global: GlobalArgs) -> Result<Resolved> {
    resolve_with_env(global, |name| std::env::var(name).ok())
}

fn resolve_with_env(
    mut global: GlobalArgs,
    var: impl Fn(&str) -> Option<String>,
) -> Result<Resolved> {
    global.fill_unset_from_libpq_env(var)?;
    let explicit = global.clone();
    config::apply_config_file(&mut global)?;
    if global.jobs == Some(0) {
        return Err(Error::config("--jobs must be at least 1"));
    }
    if let Some(mib) = global.memory_budget {
        if mib < 8 {
            return Err(Error::config(format!(
                "--memory-budget {mib} is too small: give at least 8 (MiB)"
            )));
        }
        crate::memory::set_budget(mib * crate::memory::MIB);
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

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    async fn resolved_with(extra: &[&str]) -> (Resolved, Repo) {
        let mut argv = vec!["pgward", "--config", "/nonexistent/pgward.toml"];
        argv.extend(["--repo", "/srv/pgward-repo", "--stanza", "main"]);
        argv.extend(extra);
        argv.push("info");
        let cli = Cli::try_parse_from(argv).unwrap();
        // As resolve() leaves it when no configuration file exists (none is read here).
        let resolved = Resolved {
            explicit: cli.global.clone(),
            global: cli.global,
        };
        let repo = resolved.stanza_handle().await.unwrap();
        (resolved, repo.unlock(None).await.unwrap())
    }

    #[test]
    fn archive_push_builds_block_maps_unless_told_off() {
        let maps = |argv: &[&str]| {
            let cli = Cli::try_parse_from(argv).unwrap();
            Resolved {
                explicit: cli.global.clone(),
                global: cli.global,
            }
            .wal_maps()
        };
        assert!(maps(&["pgward", "info"]));
        assert!(maps(&["pgward", "--wal-maps", "on", "info"]));
        assert!(!maps(&["pgward", "--wal-maps", "off", "info"]));
    }

    #[test]
    fn restore_pgdata_after_the_command_is_the_global_option() {
        for argv in [
            ["pgward", "restore", "--pgdata", "/srv/new"],
            ["pgward", "--pgdata", "/srv/new", "restore"],
        ] {
            let cli = Cli::try_parse_from(argv).unwrap();
            assert_eq!(cli.global.pgdata.as_deref(), Some("/srv/new".as_ref()));
        }
    }

    #[test]
    fn libpq_variables_beat_the_configuration_file_and_lose_to_flags() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("pgward.toml");
        std::fs::write(
            &config,
            "[global]\npg-host = \"file-host\"\npg-port = 5433\npg-user = \"file-user\"\n",
        )
        .unwrap();
        let config = config.display().to_string();
        let cli = Cli::try_parse_from([
            "pgward",
            "--config",
            &config,
            "--pg-user",
            "flag-user",
            "info",
        ])
        .unwrap();
        let env = |name: &str| match name {
            "PGHOST" => Some("env-host".to_string()),
            "PGPORT" => Some(String::new()), // empty: unset, as in libpq
            "PGUSER" => Some("env-user".to_string()),
            _ => None,
        };
        let resolved = resolve_with_env(cli.global, env).unwrap();
        let conn = resolved.conn();
        assert_eq!(conn.host.as_deref(), Some("env-host"));
        assert_eq!(conn.port, Some(5433));
        assert_eq!(conn.user.as_deref(), Some("flag-user"));

        let cli = Cli::try_parse_from(["pgward", "--config", &config, "info"]).unwrap();
        let bad_port = |name: &str| (name == "PGPORT").then(|| "fivefourthreetwo".to_string());
        let e = resolve_with_env(cli.global, bad_port)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("PGPORT=\"fivefourthreetwo\""), "{e}");
    }

    #[tokio::test]
    async fn generated_commands_repeat_every_repository_option_and_no_secret() {
        let (resolved, repo) = resolved_with(&[
            "--s3-ca-file",
            "/etc/pgward/ca.pem",
            "--s3-retry-seconds",
            "9",
            "--cipher-pass-file",
            "/etc/pgward/pass",
            "--cipher-pass",
            "sekrit",
            "--s3-key-secret",
            "hush",
            "--jobs",
            "3",
        ])
        .await;
        let restore = resolved.restore_command(&repo);
        let archive = resolved.archive_command(&repo);
        for command in [&restore, &archive] {
            for part in [
                "--config /nonexistent/pgward.toml",
                "--repo /srv/pgward-repo --stanza main",
                "--s3-ca-file /etc/pgward/ca.pem",
                "--s3-retry-seconds 9",
                "--cipher-pass-file /etc/pgward/pass",
            ] {
                assert!(command.contains(part), "{part:?} missing from {command}");
            }
            assert!(
                !command.contains("sekrit") && !command.contains("hush"),
                "{command}"
            );
            assert!(!command.contains("--jobs"), "{command}");
        }
        assert!(restore.ends_with(" archive-get %f \"%p\""), "{restore}");
        assert!(archive.ends_with(" archive-push %p"), "{archive}");
    }

    #[tokio::test]
    async fn workers_get_every_worker_option_and_secrets_only_in_their_environment() {
        let (resolved, repo) = resolved_with(&[
            "--s3-ca-file",
            "/etc/pgward/ca.pem",
            "--s3-retry-seconds",
            "9",
            "--cipher-pass",
            "sekrit",
            "--s3-key",
            "id",
            "--jobs",
            "3",
        ])
        .await;
        // A plain stanza's workers get no encryption options (set for other stanzas).
        let plain = resolved.background(&repo, &["archive-push-worker"]);
        assert!(!plain.env.iter().any(|(k, _)| k == "PGWARD_CIPHER_PASS"));
        let dir = tempfile::tempdir().unwrap();
        let storage = std::sync::Arc::new(crate::storage::LocalStorage::new(
            dir.path().to_str().unwrap(),
        ));
        let repo = StanzaHandle::new(storage, "main")
            .unwrap()
            .create_key(b"sekrit")
            .await
            .unwrap();
        let worker = resolved.background(&repo, &["archive-push-worker"]);
        let line = worker.args.join(" ");
        for part in [
            "--stanza main",
            "--s3-ca-file /etc/pgward/ca.pem",
            "--s3-retry-seconds 9",
            "--jobs 3",
        ] {
            assert!(line.contains(part), "{part:?} missing from {line}");
        }
        assert!(line.ends_with(" archive-push-worker"), "{line}");
        assert!(
            !line.contains("sekrit") && !line.contains("--s3-key"),
            "{line}"
        );
        assert!(worker
            .env
            .contains(&("PGWARD_CIPHER_PASS".into(), "sekrit".into())));
        assert!(worker.env.contains(&("PGWARD_S3_KEY".into(), "id".into())));
    }
}
