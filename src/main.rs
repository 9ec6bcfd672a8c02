use clap::Parser;

use pgward::cli::args::{Cli, Command};
use pgward::cli::{resolve, run, EXIT_ARCHIVE_GET_FATAL};
use pgward::error::Error;

fn main() {
    keep_freed_memory();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // A malformed restore_command must stop recovery, not read as "not found".
            let fetching = std::env::args().any(|a| a == "archive-get" || a == "wal-fetch");
            if fetching && e.use_stderr() {
                let _ = e.print();
                std::process::exit(EXIT_ARCHIVE_GET_FATAL);
            }
            e.exit()
        }
    };
    let is_archive_get = matches!(cli.command, Command::ArchiveGet { .. });
    let code = match resolve(cli.global.clone()) {
        Err(e) => report(&e),
        Ok(resolved) => {
            init_logging(
                resolved.global.log_level.as_deref(),
                resolved.global.log_format.as_deref(),
            );
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            match runtime.block_on(run(cli, resolved)) {
                Ok(()) => 0,
                // The normal end of archive recovery: not an error worth alarming anyone.
                Err(e) if is_archive_get && e.is_not_found() => {
                    eprintln!("pgward: {e}");
                    1
                }
                Err(e) => report(&e),
            }
        }
    };
    // restore_command: "not there" (1) ends archive recovery; anything else must stop it.
    let code = if is_archive_get && code != 0 && code != 1 {
        EXIT_ARCHIVE_GET_FATAL
    } else {
        code
    };
    std::process::exit(code);
}

fn report(e: &Error) -> i32 {
    eprintln!("pgward: error [{}]: {e}", e.kind.name());
    if let Some(hint) = &e.hint {
        eprintln!("HINT: {hint}");
    }
    e.kind.exit_code()
}

fn init_logging(level: Option<&str>, format: Option<&str>) {
    let filter =
        tracing_subscriber::EnvFilter::try_new(format!("pgward={}", level.unwrap_or("info")))
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("pgward=info"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal());
    if format == Some("json") {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Every stored frame gets its own decoder (or encoder), whose buffers glibc would hand
/// back to the kernel when the frame ends and fault in afresh for the next: that churn
/// cost a chain restore half again its system time. Freed memory is kept for reuse
/// (bounded by the peak) except for blocks over 4 MiB, such as the key derivation's
/// 19 MiB: kept in the main thread's heap, workers could not reuse it and it would add
/// to the peak.
fn keep_freed_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only tunes the allocator, before any thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
    }
}
