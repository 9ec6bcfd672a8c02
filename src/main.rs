use std::ffi::OsString;
use std::sync::atomic::{AtomicI32, Ordering};

use clap::Parser;

use pgward::cli::args::{Cli, Command, LogFormat, LogLevel};
use pgward::cli::usage::command_line_error;
use pgward::cli::{resolve, run, EXIT_ARCHIVE_GET_FATAL};
use pgward::error::{Error, ErrorKind, INTERNAL_HINT};

fn main() {
    keep_freed_memory();
    // Until the command line is parsed, guess from the words on it.
    let fetching = std::env::args().any(|a| a == "archive-get" || a == "wal-fetch");
    end_process_on_panic(fetching);
    let argv: Vec<OsString> = std::env::args_os().collect();
    let cli = match Cli::try_parse_from(&argv) {
        Ok(cli) => cli,
        // --help, --version: printed to stdout, exit 0.
        Err(e) if !e.use_stderr() => e.exit(),
        Err(e) => {
            if e.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                let _ = e.print(); // `pgward`, `pgward pitr`: the help, then why it ends so
            }
            let code = report(&command_line_error(&e, &argv));
            // A malformed restore_command must stop recovery, not read as "not found".
            std::process::exit(if fetching {
                EXIT_ARCHIVE_GET_FATAL
            } else {
                code
            });
        }
    };
    if matches!(cli.command, Command::Verify) {
        pgward::memory::share_arenas(2);
    }
    let is_archive_get = matches!(cli.command, Command::ArchiveGet { .. });
    end_process_on_panic(is_archive_get);
    if matches!(
        cli.command,
        Command::ArchiveGet { .. } | Command::ArchivePush { .. }
    ) {
        start_tls_quickly();
    }
    let code = match resolve(cli.global.clone()) {
        Err(e) => report(&e),
        Ok(resolved) => {
            init_logging(
                resolved.global.log_level.unwrap_or_default(),
                resolved.global.log_format.unwrap_or_default(),
            );
            // archive-get fetches one file, its CPU work on a blocking thread: worker
            // threads would only be started and stopped again, once per segment.
            let runtime = if is_archive_get {
                tokio::runtime::Builder::new_current_thread()
            } else {
                tokio::runtime::Builder::new_multi_thread()
            }
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

/// PostgreSQL starts archive-get and archive-push once per WAL file, so what a process
/// pays once is paid per segment. rustls's default provider, aws-lc, seeds its random
/// generator from CPU jitter at the first TLS handshake: 20-30 ms of CPU, half of a
/// whole archive-get over HTTPS. ring seeds from the kernel (getrandom), as OpenSSL
/// does. What it lacks is aws-lc's post-quantum key exchange (X25519MLKEM768), which
/// the longer commands keep, where the seeding is lost in the run.
fn start_tls_quickly() {
    // Fails only when a provider is installed already, which nothing did before main.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The exit status a panic ends the process with; see `end_process_on_panic`.
static PANIC_EXIT_CODE: AtomicI32 = AtomicI32::new(0);

/// A panic is a bug, and on whichever thread it happens it ends the whole process at
/// once with the command's documented status: archive-get's "unusable" 126 (above 125,
/// so recovery stops), the internal-error code elsewhere. Left to Rust, a worker's panic
/// would either surface as exit 101 after unwinding, which restore_command's contract
/// reads as "not in the archive" (recovery would end early), or be swallowed while the
/// other workers carry on. Temporary files it leaves are invisible and removed later,
/// as after a crash.
fn end_process_on_panic(archive_get: bool) {
    let code = if archive_get {
        EXIT_ARCHIVE_GET_FATAL
    } else {
        ErrorKind::Internal.exit_code()
    };
    if PANIC_EXIT_CODE.swap(code, Ordering::SeqCst) != 0 {
        return; // installed already; only the code changes
    }
    std::panic::set_hook(Box::new(|info| {
        // The first panicking thread reports and exits; any other waits here for it.
        static EXITING: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _exiting = EXITING.lock();
        let payload = info.payload();
        let message = payload
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("(no message)");
        let location = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        // Not eprintln!, which panics when stderr is gone: this must reach the exit.
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "pgward: error [{}]: {message}{location}\nHINT: {INTERNAL_HINT}",
            ErrorKind::Internal.name()
        );
        std::process::exit(PANIC_EXIT_CODE.load(Ordering::SeqCst));
    }));
}

fn report(e: &Error) -> i32 {
    eprintln!("pgward: error [{}]: {e}", e.kind.name());
    if let Some(hint) = &e.hint {
        eprintln!("HINT: {hint}");
    }
    e.kind.exit_code()
}

fn init_logging(level: LogLevel, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::new(format!("pgward={}", level.directive()));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal());
    if format == LogFormat::Json {
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
