//! Copying a relation file piece from the block maps' plan (`plan.rs`): positioned reads
//! of the named blocks and of everything from `rest_from` on, so the bytes read follow
//! the change, not the file's size; every other range points at the reference.
//!
//! Before that, the cross-check (`--block-map-check`) reads a sample of the blocks the
//! maps leave out: one whose page LSN lies in `[reference start, this backup's start)`
//! changed in the range, so the maps missed it. That is a bug; the piece is then copied
//! by the page-LSN scan instead, and the backup records the miss.

use std::os::unix::fs::FileExt;

use super::{check_pages, page_level_entry, Piece, Reference, Worker};
use crate::error::{Error, IoContext, Result};
use crate::pg::page::{page_lsn, BLCKSZ};
use crate::repo::manifest::{ChecksumFailure, Extent, FileEntry};

const PAGE: u64 = BLCKSZ as u64;

impl Worker {
    pub(super) fn copy_mapped(
        &mut self,
        piece: &Piece,
        source: &std::fs::File,
        r: &Reference,
        old: &FileEntry,
        blocks: &[u32],
        rest_from: u64,
    ) -> Result<FileEntry> {
        let file = &piece.file;
        let missed = self.cross_check(piece, source, r, blocks, rest_from)?;
        if !missed.is_empty() {
            tracing::warn!(
                path = %file.rel_path,
                blocks = ?missed,
                "BUG: the WAL block maps missed changed blocks; this file is scanned page by \
                 page instead (please report it)"
            );
            self.reads.map_misses.push(ChecksumFailure {
                path: file.rel_path.clone(),
                blocks: missed,
            });
            return self.copy_changed_pages(piece, source, r, old);
        }
        let ranges = read_ranges(piece.start, piece.end, blocks, rest_from);
        let verify_before = self
            .settings
            .verify_pages_before
            .filter(|_| file.first_block.is_some());
        let mut stored: Vec<Extent> = Vec::new();
        let mut bad_blocks = Vec::new();
        let mut size = piece.end - piece.start;
        'ranges: for (from, to) in ranges {
            let mut offset = from;
            while offset < to {
                let want = ((to - offset) as usize).min(self.buffer.len());
                let n = read_at_most(source, &mut self.buffer[..want], offset)
                    .at("reading", file.abs_path())?;
                self.reads.bytes_read += n as u64;
                if n > 0 {
                    let chunk = &mut self.buffer[..n];
                    if let Some(start_lsn) = verify_before {
                        let first = file.first_block.unwrap_or(0) + (offset / PAGE) as u32;
                        check_pages(source, chunk, offset, first, start_lsn, &mut bad_blocks);
                    }
                    let io = |e| Error::io("writing bundle", &file.rel_path, e);
                    let mut frame = self.slot.frame()?;
                    frame.write(chunk).map_err(io)?;
                    let frame = frame.finish().map_err(io)?;
                    stored.push(frame.extent(offset));
                }
                if n < want {
                    // The file shrank while we read: WAL replay brings it to its size.
                    size = offset + n as u64 - piece.start;
                    break 'ranges;
                }
                offset += n as u64;
            }
        }
        if !bad_blocks.is_empty() {
            tracing::warn!(path = %file.rel_path, blocks = ?bad_blocks, "page checksum verification failed");
            self.checksum_failures.push(ChecksumFailure {
                path: file.rel_path.clone(),
                blocks: bad_blocks,
            });
        }
        page_level_entry(piece, size, stored, r, old)
    }

    /// Reads the sample of the piece's unmapped blocks; returns those that changed in
    /// the range (fork block numbers).
    fn cross_check(
        &mut self,
        piece: &Piece,
        source: &std::fs::File,
        r: &Reference,
        blocks: &[u32],
        rest_from: u64,
    ) -> Result<Vec<u32>> {
        let Some(maps) = self.settings.maps.clone() else {
            return Ok(Vec::new());
        };
        let file = &piece.file;
        // The fraction is of the files the maps make the backup read: one whose maps
        // name nothing (its mtime moved by hint bits or a checkpoint) is not read at
        // all, but in `all` mode.
        let nothing_read = blocks.is_empty() && rest_from.saturating_mul(PAGE) >= file.size;
        if nothing_read && maps.check != crate::backup::plan::BlockMapCheck::All {
            return Ok(Vec::new());
        }
        let lo = piece.start / PAGE;
        let hi = (piece.end / PAGE).min(rest_from);
        if lo >= hi {
            return Ok(Vec::new());
        }
        let mapped = |b: u64| blocks.binary_search(&(b as u32)).is_ok();
        let named = blocks
            .iter()
            .filter(|&&b| (lo..hi).contains(&u64::from(b)))
            .count() as u64;
        let unmapped = hi - lo - named;
        // Different blocks each backup: seeded by the file and the range.
        let seed = blake3::hash(
            format!("{}:{}:{}", file.rel_path, piece.index, maps.range_end).as_bytes(),
        );
        let mut state = u64::from_le_bytes(seed.as_bytes()[..8].try_into().expect("8"));
        let wanted = maps.check.sample_size(unmapped, splitmix64(&mut state));
        let sample: Vec<u64> = if wanted == unmapped {
            (lo..hi).filter(|&b| !mapped(b)).collect()
        } else {
            let mut picked = std::collections::BTreeSet::new();
            for _ in 0..wanted * 4 {
                if picked.len() as u64 == wanted {
                    break;
                }
                let b = lo + splitmix64(&mut state) % (hi - lo);
                if !mapped(b) {
                    picked.insert(b);
                }
            }
            picked.into_iter().collect()
        };
        let mut missed = Vec::new();
        let mut page = vec![0u8; BLCKSZ];
        for b in sample {
            let n = read_at_most(source, &mut page, b * PAGE).at("reading", file.abs_path())?;
            self.reads.bytes_read += n as u64;
            self.reads.map_checked_blocks += 1;
            if n < BLCKSZ {
                break;
            }
            let lsn = page_lsn(&page);
            if lsn >= r.start_lsn && lsn < maps.range_end {
                missed.push(file.first_block.unwrap_or(0) + b as u32);
            }
        }
        Ok(missed)
    }
}

/// The byte ranges of `[start, end)` to read: runs of the named blocks, and everything
/// from block `rest_from` on; sorted, joined when they touch.
fn read_ranges(start: u64, end: u64, blocks: &[u32], rest_from: u64) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    let mut push = |from: u64, to: u64| {
        let (from, to) = (from.max(start), to.min(end));
        if from >= to {
            return;
        }
        match out.last_mut() {
            Some(last) if last.1 >= from => last.1 = last.1.max(to),
            _ => out.push((from, to)),
        }
    };
    for &b in blocks {
        let b = u64::from(b);
        if b < rest_from {
            push(b * PAGE, (b + 1) * PAGE);
        }
    }
    push(rest_from.saturating_mul(PAGE), end);
    out
}

/// `pread` until `buf` is full or the file ends; how much was read.
fn read_at_most(source: &std::fs::File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match source.read_at(&mut buf[filled..], offset + filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_join_runs_of_named_blocks_and_the_rest_within_the_piece() {
        let p = PAGE;
        assert_eq!(
            read_ranges(0, 100 * p, &[1, 2, 3, 7, 40, 95], 90),
            [
                (p, 4 * p),
                (7 * p, 8 * p),
                (40 * p, 41 * p),
                (90 * p, 100 * p)
            ]
        );
        // A piece sees only its part; a partial last page is read to the end.
        assert_eq!(
            read_ranges(8 * p, 20 * p + 100, &[7, 8, 19], 19),
            [(8 * p, 9 * p), (19 * p, 20 * p + 100)]
        );
        assert_eq!(read_ranges(0, 10 * p, &[], 10), []);
        assert_eq!(read_ranges(0, 10 * p, &[2], u64::MAX), [(2 * p, 3 * p)]);
    }
}
