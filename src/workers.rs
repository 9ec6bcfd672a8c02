//! The one worker pool of backup, restore and verify (pgBackRest's `protocol/parallel`):
//! N workers on blocking threads take jobs from one queue, front to back, until it is
//! empty. Each worker keeps its own state between jobs (backup: the bundle it appends
//! to; restore: its output chunks and write-behind thread), and `finish` hands that state
//! back as the worker's output, still on its own thread (a bundle is closed, and
//! uploaded, in parallel with the others).
//!
//! It lives beside `progress.rs`, not in `pipeline/`: it schedules work, it is not a
//! stage bytes flow through. It is blocking, not async, because the work is: reading,
//! compressing, hashing and writing files; an async step inside a job uses the runtime's
//! `Handle` (as `FrameReader` does).
//!
//! The first error stops the pool: no worker takes another job, the ones under way
//! finish, and that error is returned (later ones are dropped: they are usually the
//! same failure seen again). A worker's panic is an internal error
//! (`error::task_panicked`), and stops the others too. The queue is the only shared
//! state: taking a job is one lock and a pop, with no allocation per job.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};
use crate::progress::Progress;

/// One worker's state and what it does with a job.
pub trait Worker: Send + 'static {
    type Job: Send + 'static;
    type Output: Send + 'static;

    /// Does one job; returns the bytes it covered, for progress.
    fn run(&mut self, job: Self::Job) -> Result<u64>;

    /// After the last job (not called once the pool has failed).
    fn finish(self) -> Result<Self::Output>;
}

/// The queue and the first error, under one lock: a failed pool hands out nothing more.
struct Queue<J> {
    jobs: VecDeque<J>,
    failed: Option<Error>,
}

impl<J> Queue<J> {
    fn fail(&mut self, e: Error) {
        self.jobs.clear();
        self.failed.get_or_insert(e);
    }
}

/// A worker that panicked held no lock (it panics only inside `Worker` calls), so a
/// poisoned queue is still consistent.
fn lock<J>(queue: &Mutex<Queue<J>>) -> std::sync::MutexGuard<'_, Queue<J>> {
    queue.lock().unwrap_or_else(|p| p.into_inner())
}

/// Stops the pool if its worker unwinds: the others need not finish a doomed run.
struct StopOnPanic<'a, J>(&'a Mutex<Queue<J>>);

impl<J> Drop for StopOnPanic<'_, J> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            lock(self.0).jobs.clear();
        }
    }
}

/// How many workers read from a repository: `jobs` on a local disk; on object storage,
/// which answers each read after a round trip, more of them in flight hide the latency
/// (a local disk gains nothing from them).
pub fn readers(jobs: usize, local: bool) -> usize {
    if local {
        jobs.max(1)
    } else {
        (jobs.max(1) * 4).min(32)
    }
}

/// Memory a reading worker (restore, verify) holds: its decoder (zstd's context keeps a
/// 2 MiB window at the default level, about 2.5 MiB in all, for a frame or an archived
/// segment), the 1 MiB buffer a local read goes through, scratch and output buffers.
/// Counted at 4 MiB, verify at --jobs 8 peaked at 66 MiB (release) and 71 MiB (debug)
/// on a repository with archived WAL (tests/it/memory.rs): its workers held 5 to 5.5
/// MiB each once they reached the segments, after 21 to 30 MiB for the rest of the
/// process. The allocator's arenas were ruled out: limiting them changed nothing.
pub const READER_MEMORY: u64 = 6 * crate::memory::MIB;

/// Runs `jobs` on `workers` (one blocking thread each), reporting each finished job to
/// `progress`. Returns the workers' outputs, in the order the workers were given.
pub async fn run<W: Worker>(
    workers: Vec<W>,
    jobs: impl IntoIterator<Item = W::Job>,
    progress: Arc<Progress>,
) -> Result<Vec<W::Output>> {
    let queue = Arc::new(Mutex::new(Queue {
        jobs: jobs.into_iter().collect(),
        failed: None,
    }));
    let mut handles = Vec::with_capacity(workers.len());
    for mut worker in workers {
        let (queue, progress) = (queue.clone(), progress.clone());
        handles.push(tokio::task::spawn_blocking(move || -> Option<W::Output> {
            let _stop = StopOnPanic(&queue);
            loop {
                let next = {
                    let mut q = lock(&queue);
                    if q.failed.is_some() {
                        return None;
                    }
                    q.jobs.pop_front()
                };
                let Some(job) = next else { break };
                match worker.run(job) {
                    Ok(bytes) => progress.add(bytes),
                    Err(e) => {
                        lock(&queue).fail(e);
                        return None;
                    }
                }
            }
            match worker.finish() {
                Ok(out) => Some(out),
                Err(e) => {
                    lock(&queue).fail(e);
                    None
                }
            }
        }));
    }
    let mut outputs = Vec::with_capacity(handles.len());
    let mut panicked = None;
    for handle in handles {
        match handle.await {
            Ok(Some(out)) => outputs.push(out),
            Ok(None) => {}
            Err(e) => {
                if panicked.is_none() {
                    panicked = crate::error::task_panicked::<()>(e).err();
                }
            }
        }
    }
    let failed = lock(&queue).failed.take();
    match failed.or(panicked) {
        Some(e) => Err(e),
        None => Ok(outputs),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Records the jobs it ran; fails on `fail_on`.
    struct Recorder {
        ran: Vec<usize>,
        fail_on: Option<usize>,
        started: Arc<AtomicUsize>,
    }

    impl Worker for Recorder {
        type Job = usize;
        type Output = Vec<usize>;

        fn run(&mut self, job: usize) -> Result<u64> {
            self.started.fetch_add(1, Ordering::SeqCst);
            if self.fail_on == Some(job) {
                return Err(Error::corrupt(format!("job {job} failed")));
            }
            self.ran.push(job);
            Ok(job as u64)
        }

        fn finish(self) -> Result<Vec<usize>> {
            Ok(self.ran)
        }
    }

    fn recorders(n: usize, fail_on: Option<usize>) -> (Vec<Recorder>, Arc<AtomicUsize>) {
        let started = Arc::new(AtomicUsize::new(0));
        let workers = (0..n)
            .map(|_| Recorder {
                ran: Vec::new(),
                fail_on,
                started: started.clone(),
            })
            .collect();
        (workers, started)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_job_runs_exactly_once_and_progress_counts_each() {
        let (workers, _) = recorders(4, None);
        let progress = Arc::new(Progress::default());
        let outputs = run(workers, 0..1000, progress.clone()).await.unwrap();
        assert_eq!(outputs.len(), 4);
        let mut all: Vec<usize> = outputs.into_iter().flatten().collect();
        all.sort_unstable();
        assert_eq!(all, (0..1000).collect::<Vec<_>>());
        assert_eq!(progress.files_done.load(Ordering::SeqCst), 1000);
        assert_eq!(
            progress.bytes_done.load(Ordering::SeqCst),
            (0..1000u64).sum::<u64>()
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_first_error_is_returned_and_no_job_is_taken_after_it() {
        let (workers, started) = recorders(1, Some(3));
        let err = run(workers, 0..100, Arc::default()).await.unwrap_err();
        assert_eq!(err.to_string(), "job 3 failed");
        assert_eq!(started.load(Ordering::SeqCst), 4, "jobs 0 to 3, then none");
    }

    /// Two workers: job 0 panics once job 1 is under way; job 1 ends only after the
    /// panicking worker is gone. Its worker must then find the queue closed.
    struct Pair {
        started: Arc<AtomicUsize>,
        job1_started: Arc<Mutex<std::sync::mpsc::Receiver<()>>>,
        job1_started_tx: std::sync::mpsc::Sender<()>,
        gone: Arc<Mutex<std::sync::mpsc::Receiver<()>>>,
        gone_tx: std::sync::mpsc::Sender<()>,
        panicking: bool,
    }

    impl Drop for Pair {
        fn drop(&mut self) {
            if self.panicking {
                let _ = self.gone_tx.send(());
            }
        }
    }

    impl Worker for Pair {
        type Job = usize;
        type Output = ();

        fn run(&mut self, job: usize) -> Result<u64> {
            self.started.fetch_add(1, Ordering::SeqCst);
            match job {
                0 => {
                    self.job1_started.lock().unwrap().recv().unwrap();
                    self.panicking = true;
                    panic!("job 0 panics");
                }
                1 => {
                    self.job1_started_tx.send(()).unwrap();
                    self.gone.lock().unwrap().recv().unwrap();
                }
                _ => {}
            }
            Ok(0)
        }

        fn finish(self) -> Result<()> {
            Ok(())
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panicking_worker_is_an_internal_error_and_stops_the_others() {
        let started = Arc::new(AtomicUsize::new(0));
        let (job1_started_tx, job1_started) = std::sync::mpsc::channel();
        let (gone_tx, gone) = std::sync::mpsc::channel();
        let (job1_started, gone) = (
            Arc::new(Mutex::new(job1_started)),
            Arc::new(Mutex::new(gone)),
        );
        let workers = (0..2)
            .map(|_| Pair {
                started: started.clone(),
                job1_started: job1_started.clone(),
                job1_started_tx: job1_started_tx.clone(),
                gone: gone.clone(),
                gone_tx: gone_tx.clone(),
                panicking: false,
            })
            .collect();
        let err = run(workers, 0..100, Arc::default()).await.unwrap_err();
        assert_eq!(err.kind, crate::error::ErrorKind::Internal);
        assert!(err.to_string().contains("panicked"), "{err}");
        assert_eq!(started.load(Ordering::SeqCst), 2, "jobs 0 and 1, then none");
    }
}
