//! Reads of object storage planned up front (issue 13). A restore or a verify knows every
//! frame it will read before it reads one. On object storage a request costs a round
//! trip however few bytes it asks for, so frames that lie next to each other in a bundle
//! (or a small gap apart, read through) are fetched as one ranged GET of up to
//! [`SPAN_MAX`] — a span — and the spans next in line are fetched ahead of the readers,
//! `ahead` at a time, so that the network stays busy while workers decode. Frames larger
//! than a span are not planned: they are streamed as before, already one request per
//! `SPAN_MAX` or more.
//!
//! Memory: the spans fetched (or in flight) and not yet wholly handed out, at most
//! `ahead` of them in plan order, plus any a reader needed out of order (one per
//! worker at most); each is at most `SPAN_MAX`. A span is dropped once every frame of it
//! was opened and its readers are done.
//!
//! Local repositories are not planned: they read the bundle file directly.

use std::collections::HashMap;
use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use bytes::Bytes;
use tokio::io::AsyncReadExt;
use tokio::runtime::Handle;

use super::manifest::{bundle_key, Extent, Name};
use super::Repo;
use crate::storage::SharedStorage;

/// Largest span: one ranged GET.
pub const SPAN_MAX: u64 = 4 << 20;
/// Bytes between two frames read through rather than split into two requests: a
/// request's round trip costs more than this many bytes on any link worth using.
const GAP_MAX: u64 = 256 << 10;
/// Spans fetched ahead by default (`--repo-read-ahead`), as far as a quarter of the
/// memory budget allows (`crate::memory`).
pub const DEFAULT_AHEAD: usize = 8;

/// Where a span's bytes are.
enum Slot {
    /// Not asked for yet.
    Idle,
    InFlight,
    Ready(Bytes),
    /// The GET failed: readers stream their frames directly, which retries and reports
    /// the error as a frame read would (a missing bundle is damage, named).
    Failed,
    /// Every frame of it was handed out.
    Done,
}

struct Span {
    key: String,
    offset: u64,
    len: u64,
}

struct State {
    slots: Vec<Slot>,
    /// Frames of each span not yet handed out.
    uses: Vec<usize>,
    /// Spans before this one, in plan order, have been asked for.
    next: usize,
    /// Spans asked for and not yet done: what the plan holds in memory.
    live: usize,
}

/// The planned reads of one command; shared by its workers.
pub struct ReadPlan {
    storage: SharedStorage,
    handle: Handle,
    spans: Vec<Span>,
    /// (bundle, offset in it) of every planned frame → its span and its offset in it.
    frames: HashMap<(Name, u64), (usize, u64)>,
    ahead: usize,
    state: Mutex<State>,
    changed: Condvar,
    requests: AtomicU64,
}

impl ReadPlan {
    /// Plans the reads of `frames`, given in the order the workers will take them (a
    /// frame listed twice is opened twice). None for local repositories.
    /// The number of spans fetched ahead is the storage's (`--repo-read-ahead`).
    pub fn new<'a>(
        repo: &Repo,
        handle: Handle,
        frames: impl IntoIterator<Item = &'a Extent>,
    ) -> Option<Arc<ReadPlan>> {
        let ahead = crate::memory::read_ahead_spans(repo.storage.read_ahead(), SPAN_MAX);
        if repo.is_local() || ahead == 0 {
            return None;
        }
        let planned = plan(frames);
        let uses = planned.spans.iter().map(|s| s.uses).collect();
        let spans = planned
            .spans
            .into_iter()
            .map(|s| Span {
                key: bundle_key(repo, &s.bundle),
                offset: s.offset,
                len: s.len,
            })
            .collect::<Vec<_>>();
        Some(Arc::new(ReadPlan {
            storage: repo.storage.clone(),
            handle,
            state: Mutex::new(State {
                slots: spans.iter().map(|_| Slot::Idle).collect(),
                uses,
                next: 0,
                live: 0,
            }),
            spans,
            frames: planned.frames,
            ahead,
            changed: Condvar::new(),
            requests: AtomicU64::new(0),
        }))
    }

    /// Memory the spans fetched ahead may take (part of the process's budget).
    pub fn memory(&self) -> u64 {
        self.ahead as u64 * SPAN_MAX
    }

    /// Ranged GETs issued so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// The stored bytes of `extent`'s frame, from its span; None when the frame is not
    /// planned or its span could not be fetched (the caller reads it directly). Call on
    /// a blocking thread: it waits for the span.
    pub fn open(self: &Arc<Self>, extent: &Extent) -> Option<Box<dyn Read + Send>> {
        let &(span, at) = self
            .frames
            .get(&(extent.bundle.clone(), extent.bundle_offset))?;
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if matches!(state.slots[span], Slot::Idle) {
            self.request(&mut state, span);
        }
        self.pump(&mut state);
        loop {
            match &state.slots[span] {
                Slot::Idle | Slot::InFlight => {
                    state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner())
                }
                Slot::Ready(bytes) => {
                    let frame = bytes.slice(at as usize..(at + extent.stored_length) as usize);
                    self.used(&mut state, span);
                    return Some(Box::new(std::io::Cursor::new(frame)));
                }
                Slot::Failed | Slot::Done => {
                    self.used(&mut state, span);
                    return None;
                }
            }
        }
    }

    /// One frame of `span` handed out; the span is dropped after its last.
    fn used(self: &Arc<Self>, state: &mut State, span: usize) {
        state.uses[span] = state.uses[span].saturating_sub(1);
        if state.uses[span] == 0 && !matches!(state.slots[span], Slot::Done) {
            state.slots[span] = Slot::Done;
            state.live -= 1;
            self.pump(state);
        }
    }

    /// Asks for the spans next in plan order while fewer than `ahead` are held.
    fn pump(self: &Arc<Self>, state: &mut State) {
        while state.next < self.spans.len() && state.live < self.ahead {
            let next = state.next;
            state.next += 1;
            if matches!(state.slots[next], Slot::Idle) {
                self.request(state, next);
            }
        }
    }

    fn request(self: &Arc<Self>, state: &mut State, span: usize) {
        state.slots[span] = Slot::InFlight;
        state.live += 1;
        self.requests.fetch_add(1, Ordering::Relaxed);
        let plan = self.clone();
        self.handle.spawn(async move {
            let s = &plan.spans[span];
            let fetched = async {
                let mut reader = plan.storage.read_range(&s.key, s.offset, s.len).await?;
                let mut bytes = Vec::with_capacity(s.len as usize);
                reader
                    .read_to_end(&mut bytes)
                    .await
                    .map_err(|e| crate::error::Error::io("reading", &s.key, e))?;
                Ok::<_, crate::error::Error>(bytes)
            }
            .await;
            let mut state = plan.state.lock().unwrap_or_else(|e| e.into_inner());
            state.slots[span] = match fetched {
                Ok(bytes) if bytes.len() as u64 == s.len => Slot::Ready(Bytes::from(bytes)),
                Ok(_) | Err(_) => Slot::Failed,
            };
            plan.changed.notify_all();
        });
    }
}

/// A span as planned, before its bundle is turned into a storage key.
#[derive(Debug, PartialEq)]
struct PlannedSpan {
    bundle: Name,
    offset: u64,
    len: u64,
    uses: usize,
    /// Where its first frame comes in the order the workers take frames.
    first_use: usize,
}

struct Planned {
    spans: Vec<PlannedSpan>,
    frames: HashMap<(Name, u64), (usize, u64)>,
}

/// Groups the frames into spans and orders the spans by when they are first needed.
fn plan<'a>(frames: impl IntoIterator<Item = &'a Extent>) -> Planned {
    // Per frame: its stored length, first use and number of uses.
    let mut seen: HashMap<(&Name, u64), (u64, usize, usize)> = HashMap::new();
    for (n, e) in frames.into_iter().enumerate() {
        if e.stored_length == 0 || e.stored_length > SPAN_MAX {
            continue;
        }
        seen.entry((&e.bundle, e.bundle_offset))
            .or_insert((e.stored_length, n, 0))
            .2 += 1;
    }
    let mut sorted: Vec<_> = seen.into_iter().collect();
    sorted.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    let mut spans: Vec<PlannedSpan> = Vec::new();
    let mut members: Vec<Vec<(u64, u64)>> = Vec::new();
    for ((bundle, offset), (len, first_use, uses)) in sorted {
        let joins = spans.last().is_some_and(|s| {
            s.bundle == *bundle
                && offset >= s.offset + s.len
                && offset - (s.offset + s.len) <= GAP_MAX
                && offset + len - s.offset <= SPAN_MAX
        });
        if joins {
            let s = spans.last_mut().expect("joins a span");
            s.len = offset + len - s.offset;
            s.uses += uses;
            s.first_use = s.first_use.min(first_use);
            members
                .last_mut()
                .expect("span")
                .push((offset, offset - s.offset));
        } else {
            spans.push(PlannedSpan {
                bundle: bundle.clone(),
                offset,
                len,
                uses,
                first_use,
            });
            members.push(vec![(offset, 0)]);
        }
    }
    let mut order: Vec<usize> = (0..spans.len()).collect();
    order.sort_by_key(|&i| spans[i].first_use);
    let mut frames = HashMap::new();
    for (new, &old) in order.iter().enumerate() {
        for &(offset, at) in &members[old] {
            frames.insert((spans[old].bundle.clone(), offset), (new, at));
        }
    }
    let mut slots: Vec<Option<PlannedSpan>> = spans.into_iter().map(Some).collect();
    let spans = order
        .iter()
        .map(|&i| slots[i].take().expect("each span once"))
        .collect();
    Planned { spans, frames }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(bundle: &str, at: u64, len: u64) -> Extent {
        Extent {
            offset: 0,
            length: len,
            backup: "b".into(),
            bundle: bundle.into(),
            bundle_offset: at,
            stored_length: len,
            frame_offset: 0,
            frame_length: len,
            frame_checksum: Default::default(),
        }
    }

    #[test]
    fn adjacent_frames_share_a_span_up_to_its_size_and_gaps_are_read_through() {
        let mib = 1 << 20;
        let frames = vec![
            frame("a", 0, mib),
            frame("a", mib, mib),
            frame("a", 2 * mib + 1000, mib), // small gap: read through
            frame("a", 3 * mib + 1000, 2 * mib), // would pass SPAN_MAX: a new span
            frame("a", 6 * mib, 1000),       // large gap: a new span
            frame("b", 0, 10),               // another bundle
            frame("a", 20 * mib, 5 * mib),   // larger than a span: not planned
        ];
        let planned = plan(&frames);
        let got: Vec<_> = planned
            .spans
            .iter()
            .map(|s| (&*s.bundle, s.offset, s.len, s.uses))
            .collect();
        assert_eq!(
            got,
            [
                ("a", 0, 3 * mib + 1000, 3),
                ("a", 3 * mib + 1000, 2 * mib, 1),
                ("a", 6 * mib, 1000, 1),
                ("b", 0, 10, 1),
            ]
        );
        assert_eq!(
            planned.frames[&("a".into(), 2 * mib + 1000)],
            (0, 2 * mib + 1000)
        );
        assert!(!planned.frames.contains_key(&("a".into(), 20 * mib)));
    }

    #[test]
    fn spans_come_in_the_order_their_first_frame_is_needed_and_repeats_count() {
        let frames = vec![
            frame("z", 0, 10),
            frame("a", 0, 10),
            frame("z", 0, 10),
            frame("m", 0, 10),
        ];
        let planned = plan(&frames);
        let order: Vec<_> = planned.spans.iter().map(|s| (&*s.bundle, s.uses)).collect();
        assert_eq!(order, [("z", 2), ("a", 1), ("m", 1)]);
        assert_eq!(planned.frames[&("m".into(), 0)], (2, 0));
    }
}
