//! Reading stored objects whole and checking them: the frames one backup stores, or the
//! archived WAL, on the worker pool. A pool runs per backup, so that what it holds is
//! that backup's manifest and a few words per frame, never every backup's at once.

use std::sync::Arc;

use crate::error::Result;
use crate::pg::wal::page::{parse_long_page_header, LONG_HEADER_SIZE as WAL_LONG_PAGE_HEADER_SIZE};
use crate::repo::archive::ArchivedFile;
use crate::repo::frames::FrameReader;
use crate::repo::manifest::Manifest;
use crate::repo::read_plan::ReadPlan;
use crate::repo::Repo;

/// What a pool reads.
#[derive(Clone)]
pub(super) enum Source {
    /// Frames a backup stores, named by (file, extent) indices into its manifest.
    Frames(Arc<Manifest>),
    /// Archived files, named by their index in the archive listing.
    Wal(Arc<[ArchivedFile]>),
}

/// A check: (file, extent) of a frame, or (index, 0) of an archived file.
pub(super) type Check = (usize, usize);

/// What a pool found.
#[derive(Default)]
pub(super) struct Outcome {
    pub bytes_read: u64,
    /// Checks that failed, in the order they were listed, with what went wrong.
    pub failed: Vec<(Check, String)>,
    /// (archived index, system identifier) of each WAL segment read.
    pub systems: Vec<(usize, u64)>,
}

/// Runs `checks` of `source` on `jobs` readers. Frames are listed in bundle order: on
/// object storage they are fetched in spans (`ReadPlan`).
pub(super) async fn run(
    repo: &Repo,
    jobs: usize,
    source: Source,
    checks: Vec<Check>,
    total_bytes: u64,
) -> Result<Outcome> {
    let handle = tokio::runtime::Handle::current();
    let plan = match &source {
        Source::Frames(m) => ReadPlan::new(
            repo,
            handle.clone(),
            checks.iter().map(|&(f, e)| &m.files[f].extents[e]),
        ),
        Source::Wal(_) => None,
    };
    let readers = crate::memory::workers(
        crate::workers::readers(jobs, repo.is_local()),
        crate::workers::READER_MEMORY,
        plan.as_ref().map_or(0, |p| p.memory()),
    );
    let progress = Arc::new(crate::progress::Progress::default());
    let _reporter = crate::progress::Reporter::start(
        "verify",
        total_bytes,
        checks.len() as u64,
        progress.clone(),
    );
    let workers = (0..readers)
        .map(|_| Checker {
            source: source.clone(),
            plan: plan.clone(),
            repo: repo.clone(),
            handle: handle.clone(),
            scratch: vec![0u8; 256 << 10],
            found: Vec::new(),
            outcome: Outcome::default(),
        })
        .collect();
    let mut out = Outcome::default();
    let mut failed = Vec::new();
    for found in crate::workers::run(workers, checks.into_iter().enumerate(), progress).await? {
        out.bytes_read += found.1.bytes_read;
        out.systems.extend(found.1.systems);
        failed.extend(found.0);
    }
    // In the order the checks were listed, whichever worker ran them.
    failed.sort_unstable_by_key(|(n, ..)| *n);
    out.failed = failed.into_iter().map(|(_, c, e)| (c, e)).collect();
    out.systems.sort_unstable();
    Ok(out)
}

/// A verify worker: its scratch buffer and what its checks found.
struct Checker {
    source: Source,
    plan: Option<Arc<ReadPlan>>,
    repo: Repo,
    handle: tokio::runtime::Handle,
    scratch: Vec<u8>,
    /// Failed checks: (number in the list, check, problem).
    found: Vec<(usize, Check, String)>,
    outcome: Outcome,
}

impl crate::workers::Worker for Checker {
    type Job = (usize, Check);
    type Output = (Vec<(usize, Check, String)>, Outcome);

    /// A failed check is a problem to report, not the pool's error: every check runs.
    fn run(&mut self, (n, check): Self::Job) -> Result<u64> {
        match self.check(check) {
            Ok(bytes) => {
                self.outcome.bytes_read += bytes;
                Ok(bytes)
            }
            Err(e) => {
                self.found.push((n, check, e.to_string()));
                Ok(0)
            }
        }
    }

    fn finish(self) -> Result<Self::Output> {
        Ok((self.found, self.outcome))
    }
}

impl Checker {
    /// Reads one object whole and checks it; returns its original size. Errors name the
    /// object. Runs on a blocking thread.
    fn check(&mut self, (item, part): Check) -> Result<u64> {
        match &self.source {
            Source::Frames(m) => {
                let file = &m.files[item];
                FrameReader::open_planned(
                    self.plan.as_ref(),
                    &self.repo,
                    &self.handle,
                    &file.extents[part],
                    m.compression.codec,
                    &file.path,
                )?
                .finish(&mut self.scratch)
            }
            Source::Wal(archived) => {
                let file = &archived[item];
                let stored = self.handle.block_on(self.repo.open_wal(file))?;
                let mut head = Head(Vec::with_capacity(WAL_LONG_PAGE_HEADER_SIZE));
                let n = stored.copy_to(&mut head)?;
                // Which cluster wrote the segment: its first page says.
                if file.name.segment().is_some() {
                    if let Ok(h) = parse_long_page_header(&head.0) {
                        self.outcome.systems.push((item, h.system_identifier));
                    }
                }
                Ok(n)
            }
        }
    }
}

/// Keeps the first bytes written to it (a WAL file's long page header) and drops the rest.
struct Head(Vec<u8>);

impl std::io::Write for Head {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let room = WAL_LONG_PAGE_HEADER_SIZE.saturating_sub(self.0.len());
        self.0.extend_from_slice(&buf[..room.min(buf.len())]);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
