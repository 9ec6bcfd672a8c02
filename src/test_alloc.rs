//! The unit tests' allocator: the system's, counting the bytes each thread holds, so that
//! a test can tell what a piece of code keeps and its peak, exactly and whatever the
//! other tests running beside it do (each thread counts its own allocations; memory
//! freed on another thread is not seen, so measure single-threaded code).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicIsize, Ordering};

struct Counting;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
    static GROUP: Cell<Option<&'static Group>> = const { Cell::new(None) };
}

fn count(delta: isize) {
    let _ = LIVE.try_with(|live| {
        let now = live.get() + delta;
        live.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
    });
    if let Ok(Some(group)) = GROUP.try_with(Cell::get) {
        let now = group.live.fetch_add(delta, Ordering::Relaxed) + delta;
        group.peak.fetch_max(now, Ordering::Relaxed);
    }
}

// SAFETY: every call goes to the system allocator unchanged; only counters are updated.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size() as isize);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        count(-(layout.size() as isize));
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size() as isize);
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // Counted as the system may do it: the new block before the old one is freed.
        count(new_size as isize);
        count(-(layout.size() as isize));
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

/// Runs `f` and returns its result, the peak of heap bytes it held on this thread above
/// what the thread held before, and the bytes still held after (its result, mostly).
pub fn measure<T>(f: impl FnOnce() -> T) -> (T, usize, usize) {
    let start = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(start));
    let out = f();
    let peak = PEAK.with(Cell::get) - start;
    let held = LIVE.with(Cell::get) - start;
    (out, peak.max(0) as usize, held.max(0) as usize)
}

/// Heap bytes held by a group of threads together: a test's own runtime, whose threads
/// allocate what others free (a manifest parsed on a blocking thread, dropped on a
/// worker). Threads join it as they start (`tokio::runtime::Builder::on_thread_start`);
/// what other tests' threads do is not counted.
pub struct Group {
    live: AtomicIsize,
    peak: AtomicIsize,
}

impl Group {
    pub const fn new() -> Group {
        Group {
            live: AtomicIsize::new(0),
            peak: AtomicIsize::new(0),
        }
    }

    /// Counts the calling thread's allocations and frees in this group from now on.
    pub fn join(&'static self) {
        GROUP.set(Some(self));
    }

    /// Runs `f` and returns its result and the peak of heap bytes the group held above
    /// what it held before.
    pub fn measure<T>(&self, f: impl FnOnce() -> T) -> (T, usize) {
        let start = self.live.load(Ordering::Relaxed);
        self.peak.store(start, Ordering::Relaxed);
        let out = f();
        let peak = self.peak.load(Ordering::Relaxed) - start;
        (out, peak.max(0) as usize)
    }
}

impl Default for Group {
    fn default() -> Self {
        Group::new()
    }
}
