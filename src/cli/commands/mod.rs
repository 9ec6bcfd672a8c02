//! One module per command. Each has a `run` that does the work through the library and
//! returns an [`Outcome`], and a [`Report`] impl for what it returns: the only code that
//! formats output (text, and `--output json` where the command has a JSON form). The
//! library returns data; nothing under `src/` but this prints to stdout.

mod archive_get;
mod archive_push;
mod backup;
mod check;
mod completions;
mod describe;
mod drill;
mod expire;
mod info;
mod metrics;
mod pin;
mod pitr;
mod rekey;
mod restore;
mod serve;
mod stanza_create;
mod verify;
mod wal;

use std::io::Write as _;

use super::args::{Command, OutputFormat, PitrCommand, WalCommand};
use super::Resolved;
use crate::error::{Error, Result};

/// What a command prints.
pub trait Report {
    /// For a person: whole lines.
    fn text(&self) -> String;
    /// For a program; `None`: the command has no JSON form and prints its text.
    fn json(&self) -> Option<String> {
        None
    }
}

/// JSON of a report, one value over several lines.
fn pretty(value: &impl serde::Serialize) -> Option<String> {
    Some(serde_json::to_string_pretty(value).expect("report serializes") + "\n")
}

/// What a command leaves: a report to print, then possibly an error to end with (verify
/// prints its problems and then fails).
pub struct Outcome {
    report: Option<Box<dyn Report>>,
    failure: Option<Error>,
}

impl Outcome {
    fn quiet() -> Outcome {
        Outcome {
            report: None,
            failure: None,
        }
    }

    fn report(report: impl Report + 'static) -> Outcome {
        Outcome {
            report: Some(Box::new(report)),
            failure: None,
        }
    }

    fn then_fail(self, failure: Option<Error>) -> Outcome {
        Outcome { failure, ..self }
    }

    /// Prints the report to stdout ignoring write errors: a reader that went away
    /// (`pgward info | head`) must not turn into a panic. (SIGPIPE stays ignored, as Rust
    /// sets it: with its default action a dropped network connection would kill the
    /// process mid-write.)
    pub fn print(self, format: OutputFormat) -> Result<()> {
        if let Some(report) = &self.report {
            let out = match format {
                OutputFormat::Json => report.json().unwrap_or_else(|| report.text()),
                OutputFormat::Text => report.text(),
            };
            let _ = std::io::stdout().write_all(out.as_bytes());
        }
        self.failure.map_or(Ok(()), Err)
    }
}

pub async fn run(command: Command, resolved: &Resolved) -> Result<Outcome> {
    match command {
        Command::StanzaCreate => stanza_create::run(resolved).await,
        Command::ArchivePush {
            path,
            asynchronous,
            spool_path,
            archive_push_queue_max,
        } => {
            archive_push::run(
                resolved,
                &path,
                asynchronous.then_some(&*spool_path),
                archive_push_queue_max,
            )
            .await
        }
        Command::ArchivePushWorker { spool_path } => {
            archive_push::worker(resolved, &spool_path).await
        }
        Command::ArchiveGet {
            name,
            dest,
            archive_get_queue_max,
        } => archive_get::run(resolved, &name, &dest, archive_get_queue_max).await,
        Command::ArchiveGetPrefetch { after, dir, count } => {
            archive_get::prefetch(resolved, &after, &dir, count).await
        }
        Command::Backup(args) => backup::run(resolved, args).await,
        Command::Restore(args) => restore::run(resolved, args).await,
        Command::BackupFetch { dir, label } => restore::fetch(resolved, dir, &label).await,
        Command::Drill(args) => drill::run(resolved, args).await,
        Command::Info => info::run(resolved).await,
        Command::Verify => verify::run(resolved).await,
        Command::Expire { dry_run } => expire::run(resolved, dry_run).await,
        Command::Check { archive_timeout } => check::run(resolved, archive_timeout).await,
        Command::Pitr(PitrCommand::Enable) => pitr::enable(resolved).await,
        Command::Pitr(PitrCommand::Disable) => pitr::disable(resolved).await,
        Command::Pitr(PitrCommand::Status) => pitr::status(resolved).await,
        Command::Wal(WalCommand::List) => wal::list(resolved).await,
        Command::Wal(WalCommand::Stats) => wal::stats(resolved).await,
        Command::Wal(WalCommand::Maps { backfill }) => wal::maps(resolved, backfill).await,
        Command::Completions { shell } => Ok(completions::run(shell)),
        Command::Rekey { new_cipher_pass } => rekey::run(resolved, &new_cipher_pass).await,
        Command::Metrics(args) => metrics::run(resolved, &args).await,
        Command::Serve { listen, metrics } => serve::run(resolved, listen, metrics).await,
        Command::Pin { label } => pin::run(resolved, label, true).await,
        Command::Unpin { label } => pin::run(resolved, label, false).await,
    }
}
