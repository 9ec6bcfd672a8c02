//! Progress of long work (backup, restore, verify): a bar when stderr is a terminal,
//! otherwise a log line every ten seconds. Workers only bump two atomic counters.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Default, Debug)]
pub struct Progress {
    pub bytes_done: AtomicU64,
    pub files_done: AtomicU64,
}

impl Progress {
    pub fn add(&self, bytes: u64) {
        self.bytes_done.fetch_add(bytes, Ordering::Relaxed);
        self.files_done.fetch_add(1, Ordering::Relaxed);
    }
}

/// Shows `progress` until dropped.
pub struct Reporter {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Reporter {
    pub fn start(
        what: &'static str,
        total_bytes: u64,
        total_files: u64,
        progress: Arc<Progress>,
    ) -> Reporter {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let started = Instant::now();
            let bar = std::io::stderr().is_terminal().then(|| {
                let bar = indicatif::ProgressBar::new(total_bytes);
                bar.set_style(
                    indicatif::ProgressStyle::with_template("{prefix} [{bar:30}] {bytes}/{total_bytes} {msg} {binary_bytes_per_sec} eta {eta}")
                        .expect("valid template")
                        .progress_chars("=> "),
                );
                bar.set_prefix(what);
                bar
            });
            let mut last_line = Instant::now();
            while !flag.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(100));
                let bytes = progress.bytes_done.load(Ordering::Relaxed);
                let files = progress.files_done.load(Ordering::Relaxed);
                match &bar {
                    Some(bar) => {
                        bar.set_position(bytes.min(total_bytes));
                        bar.set_message(format!("{files}/{total_files} files"));
                    }
                    None if last_line.elapsed() >= Duration::from_secs(10) => {
                        last_line = Instant::now();
                        let secs = started.elapsed().as_secs_f64();
                        let rate = bytes as f64 / secs.max(0.001);
                        let left = (total_bytes.saturating_sub(bytes)) as f64 / rate.max(1.0);
                        tracing::info!(
                            "{what}: {} of {} ({:.0}%), {files} of {total_files} files, {}/s, about {left:.0}s left",
                            crate::units::human_bytes(bytes),
                            crate::units::human_bytes(total_bytes),
                            100.0 * bytes as f64 / total_bytes.max(1) as f64,
                            crate::units::human_bytes(rate as u64)
                        );
                    }
                    None => {}
                }
            }
            if let Some(bar) = bar {
                bar.finish_and_clear();
            }
        });
        Reporter {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Reporter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
