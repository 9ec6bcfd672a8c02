//! One memory budget for the whole process (issue 13). What a command holds grows with
//! its workers (each has read and write buffers and a compression context), with the
//! parts an upload keeps in flight, and with the reads fetched ahead from object storage.
//! Rather than bound each of those alone, a command asks here how many workers its
//! budget affords, after what it shares among them (read-ahead), so that `--jobs 32`
//! cannot take more memory than `--jobs 8`: past the budget, more workers would only
//! queue on the same cores and the same network.
//!
//! The budget (`--memory-budget`, MiB) covers those buffers; the process itself (code,
//! runtime, allocator, HTTP client) takes about 20 MiB more. The default keeps every command under
//! 64 MiB of resident memory. Outside the budget too: the file lists a command works on
//! (manifests stream in and out of the repository, never held as JSON:
//! `repo/streamed.rs`). Restore holds its backup's list parsed, about a quarter of a KiB
//! per file. Backup holds the data directory's listing compactly (`backup/walk.rs`,
//! about 70 bytes a file) and, packed (`repo/manifest/packed.rs`, about 90 bytes a
//! file), an incremental's reference list and the new list as it is copied. Measured at
//! 100,000 files (PostgreSQL 15, `--jobs 2`, lz4, local repository): a full backup 49-50
//! MiB and an incremental 48-49 MiB (with parsed lists they were 66-72 and 75-81);
//! restore 54-55 MiB. With one allocator arena (`MALLOC_ARENA_MAX=1`) backup took 40-42
//! and restore 51: memory freed on one thread is not reused by another's arena.

use std::sync::atomic::{AtomicU64, Ordering};

pub const MIB: u64 = 1 << 20;
/// Buffers of all workers together, by default.
pub const DEFAULT_BUDGET: u64 = 32 * MIB;

static BUDGET: AtomicU64 = AtomicU64::new(DEFAULT_BUDGET);

/// Sets the process's budget (`--memory-budget`), at start-up.
pub fn set_budget(bytes: u64) {
    BUDGET.store(bytes.max(8 * MIB), Ordering::Relaxed);
}

pub fn budget() -> u64 {
    BUDGET.load(Ordering::Relaxed)
}

/// Workers to run for `jobs` asked: as many as the budget affords at `per_worker` bytes
/// each after `shared`, never more than asked and never fewer than one.
pub fn workers(jobs: usize, per_worker: u64, shared: u64) -> usize {
    let room = budget().saturating_sub(shared);
    let affordable = (room / per_worker.max(1)) as usize;
    let n = jobs.max(1).min(affordable.max(1));
    if n < jobs {
        tracing::debug!(
            jobs,
            workers = n,
            budget_mib = budget() / MIB,
            "the memory budget runs fewer workers than --jobs"
        );
    }
    n
}

/// Spans of `span` bytes that shared read-ahead may hold: a quarter of the budget at
/// most (at least one), the rest is for the workers that decode them.
pub fn read_ahead_spans(asked: usize, span: u64) -> usize {
    asked.min((budget() / 4 / span).max(1) as usize)
}

/// Limits the allocator to `n` arenas. A command that reads large structures one after
/// the other on whichever blocking thread is free (verify: a manifest per backup) would
/// otherwise leave each one's memory in the arena of the thread that parsed it, kept for
/// reuse by that thread alone (`main.rs`): measured on 100,000 files, verify's peak grew
/// by 12 MiB from one backup to six with the default (8 per core), by nothing with 2.
/// Call before any thread exists.
pub fn share_arenas(n: i32) {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only tunes the allocator, before any thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, n);
    }
    let _ = n;
}

/// Hands memory freed after a large, short-lived structure (a parsed manifest) back to
/// the system. The process keeps freed memory for reuse (`main.rs`), but per thread arena:
/// a manifest parsed on one blocking thread and the next on another would each keep
/// their arena's share, and the peak would grow with the manifests read one after the
/// other.
pub fn release_freed() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only returns free memory to the system.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_fit_the_budget_and_never_exceed_jobs() {
        let b = budget();
        assert_eq!(workers(4, MIB, 0), 4);
        assert_eq!(workers(1000, MIB, 0), (b / MIB) as usize);
        assert_eq!(workers(1000, MIB, b - 3 * MIB), 3);
        assert_eq!(workers(8, b * 2, 0), 1, "at least one");
        assert_eq!(workers(0, MIB, 0), 1);
        assert_eq!(
            read_ahead_spans(100, 4 * MIB),
            (b / 4 / (4 * MIB)).max(1) as usize
        );
        assert_eq!(read_ahead_spans(100, b), 1);
        assert_eq!(read_ahead_spans(2, 4 * MIB), 2);
    }
}
