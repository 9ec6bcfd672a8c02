//! Assembles records from a stream of WAL pages, following `XLogDecodeNextRecord` and
//! `XLogFindNextRecord` (`xlogreader.c`): records start MAXALIGNed after the page header;
//! a record longer than the rest of its page continues on pages flagged
//! `XLP_FIRST_IS_CONTRECORD` whose `xlp_rem_len` must equal what is still missing; a page
//! flagged `XLP_FIRST_IS_OVERWRITE_CONTRECORD` abandons the record in progress and starts
//! afresh; after `XLOG_SWITCH` the rest of the segment is skipped unread.

use super::page::{parse_page_header, PageHeader};
use super::record::{
    check_crc, check_total_len, decode_record, RecordError, RecordHeader, WalRecord,
    RECORD_HEADER_SIZE,
};
use super::special::{is_switch, Special};
use super::{WalError, WalErrorKind, XLOG_BLCKSZ};
use crate::pg::lsn::Lsn;

/// What the reader found, in WAL order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WalEvent {
    Record(WalRecord),
    /// Reading began inside a record whose start was not fed; its tail ends at `end`.
    HeadMissing {
        end: Lsn,
    },
    /// The record at `lsn` never finished: the page at `overwritten_at` says a new
    /// record was written over its continuation (`XLP_FIRST_IS_OVERWRITE_CONTRECORD`).
    Aborted {
        lsn: Lsn,
        overwritten_at: Lsn,
    },
}

/// A streaming WAL reader: feed it consecutive `XLOG_BLCKSZ` pages, it returns the
/// events each page completes. No I/O and no allocation beyond the record in progress.
#[derive(Debug)]
pub struct WalReader {
    segment_size: u64,
    /// Fixed by the first page: every later page must carry the same magic.
    magic: Option<u16>,
    system_identifier: Option<u64>,
    latest_timeline: u32,
    /// The page the next `feed` must be (contiguity).
    next_page: Option<Lsn>,
    /// Pages before this one are skipped unread (rest of a segment after XLOG_SWITCH).
    skip_until: Lsn,
    state: State,
    /// Start of the last record read: the next record's `xl_prev` must equal it.
    prev_record: Option<Lsn>,
    /// After an overwrite-contrecord page: the abandoned record, which the next record
    /// (XLOG_OVERWRITE_CONTRECORD) must name (`VerifyOverwriteContrecord`).
    overwritten: Option<Lsn>,
    failed: Option<WalError>,
}

#[derive(Debug)]
enum State {
    /// Before the first page: synchronise like `XLogFindNextRecord`.
    Start,
    /// Skipping the continuation of a record whose head was never seen.
    SkippingHead,
    /// The next record starts at this position.
    Between(Lsn),
    /// Assembling a record that started on an earlier page.
    Partial {
        lsn: Lsn,
        total_len: u32,
        bytes: Vec<u8>,
        header_checked: bool,
    },
}

impl WalReader {
    /// A reader for a cluster with `segment_size`-byte segments (a power of two, from
    /// the long page header of any of its segments; any other size makes every `feed`
    /// an error).
    pub fn new(segment_size: u64) -> WalReader {
        let valid = segment_size.is_power_of_two() && segment_size >= XLOG_BLCKSZ as u64;
        WalReader {
            segment_size,
            magic: None,
            system_identifier: None,
            latest_timeline: 0,
            next_page: None,
            skip_until: Lsn(0),
            state: State::Start,
            prev_record: None,
            overwritten: None,
            failed: (!valid).then_some(WalError {
                lsn: Lsn(0),
                kind: WalErrorKind::BadInput(
                    "segment size is not a power of two of at least one page",
                ),
            }),
        }
    }

    /// The PostgreSQL major version of the WAL read so far.
    pub fn pg_major(&self) -> Option<u32> {
        self.magic
            .and_then(crate::pg::wal::page::pg_major_for_wal_magic)
    }

    /// Start of the record in progress at the end of the pages fed so far, if any.
    pub fn record_in_progress(&self) -> Option<Lsn> {
        match &self.state {
            State::Partial { lsn, .. } => Some(*lsn),
            _ => None,
        }
    }

    /// Feeds the page at `page_lsn` (a multiple of `XLOG_BLCKSZ`, right after the page
    /// fed before) and appends the events it completes to `out`. After an error every
    /// later call returns the same error: WAL past a broken spot is never believed.
    pub fn feed(
        &mut self,
        page_lsn: Lsn,
        page: &[u8],
        out: &mut Vec<WalEvent>,
    ) -> Result<(), WalError> {
        self.feed_to(page_lsn, page, &mut |e| out.push(e))
    }

    /// [`WalReader::feed`] that hands each event to `out` as it is complete.
    pub fn feed_to(
        &mut self,
        page_lsn: Lsn,
        page: &[u8],
        out: &mut impl FnMut(WalEvent),
    ) -> Result<(), WalError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let result = self.feed_page(page_lsn, page, out);
        if let Err(e) = &result {
            self.failed = Some(e.clone());
        }
        result
    }

    fn feed_page(
        &mut self,
        page_lsn: Lsn,
        page: &[u8],
        out: &mut impl FnMut(WalEvent),
    ) -> Result<(), WalError> {
        let at = |kind| WalError {
            lsn: page_lsn,
            kind,
        };
        if !page_lsn.0.is_multiple_of(XLOG_BLCKSZ as u64) {
            return Err(at(WalErrorKind::UnalignedPage));
        }
        if let Some(expected) = self.next_page {
            if page_lsn != expected {
                return Err(at(WalErrorKind::NotContiguous { expected }));
            }
        }
        self.next_page = Some(Lsn(page_lsn.0 + XLOG_BLCKSZ as u64));
        if page_lsn < self.skip_until {
            return Ok(());
        }
        if page.len() >= XLOG_BLCKSZ && crate::pg::page::is_all_zero(&page[..XLOG_BLCKSZ]) {
            // Never written: the end of a `.partial` segment or of a segment cut short.
            return Err(at(WalErrorKind::EndOfWal));
        }
        let header = parse_page_header(page, page_lsn, self.segment_size).map_err(at)?;
        self.check_stream(&header).map_err(at)?;
        let page = &page[..XLOG_BLCKSZ];
        let header_size = header.size();

        let pos = match std::mem::replace(&mut self.state, State::Start) {
            State::Start | State::SkippingHead => {
                if header.is_contrecord() {
                    let rem = header.remaining_length as usize;
                    if rem == 0 {
                        return Err(at(WalErrorKind::BadContrecordLength {
                            found: 0,
                            expected: None,
                        }));
                    }
                    if rem > XLOG_BLCKSZ - header_size {
                        self.state = State::SkippingHead;
                        return Ok(());
                    }
                    out(WalEvent::HeadMissing {
                        end: Lsn(page_lsn.0 + (header_size + rem) as u64),
                    });
                    maxalign(header_size + rem)
                } else {
                    header_size
                }
            }
            State::Between(next) => {
                // `next` is never before this page: records end on pages already fed.
                let off = next.0.saturating_sub(page_lsn.0) as usize;
                if off == 0 {
                    if header.is_contrecord() {
                        return Err(at(WalErrorKind::UnexpectedContrecord));
                    }
                    header_size
                } else {
                    off
                }
            }
            State::Partial {
                lsn,
                total_len,
                mut bytes,
                mut header_checked,
            } => {
                if header.is_overwrite_contrecord() {
                    out(WalEvent::Aborted {
                        lsn,
                        overwritten_at: page_lsn,
                    });
                    self.overwritten = Some(lsn);
                    header_size
                } else {
                    let partial_err = |kind| WalError { lsn, kind };
                    if !header.is_contrecord() {
                        return Err(partial_err(WalErrorKind::MissingContrecord(page_lsn)));
                    }
                    let got = bytes.len() as u32;
                    let rem = header.remaining_length;
                    if rem == 0 || Some(total_len) != rem.checked_add(got) {
                        return Err(partial_err(WalErrorKind::BadContrecordLength {
                            found: rem,
                            expected: Some(total_len.saturating_sub(got)),
                        }));
                    }
                    let len = (rem as usize).min(XLOG_BLCKSZ - header_size);
                    bytes.extend_from_slice(&page[header_size..header_size + len]);
                    if !header_checked && bytes.len() >= RECORD_HEADER_SIZE {
                        self.validate_header(&bytes, lsn).map_err(partial_err)?;
                        header_checked = true;
                    }
                    if bytes.len() < total_len as usize {
                        self.state = State::Partial {
                            lsn,
                            total_len,
                            bytes,
                            header_checked,
                        };
                        return Ok(());
                    }
                    let end = Lsn(page_lsn.0 + (header_size + len) as u64);
                    let next = self.finish(lsn, end, &bytes, out)?;
                    if next.0 >= page_lsn.0 + XLOG_BLCKSZ as u64 {
                        self.state = State::Between(next);
                        return Ok(());
                    }
                    (next.0 - page_lsn.0) as usize
                }
            }
        };
        self.read_records(page_lsn, page, header_size, pos, out)
    }

    /// Reads the records that start on this page from offset `pos` on.
    fn read_records(
        &mut self,
        page_lsn: Lsn,
        page: &[u8],
        header_size: usize,
        mut pos: usize,
        out: &mut impl FnMut(WalEvent),
    ) -> Result<(), WalError> {
        loop {
            if pos >= XLOG_BLCKSZ {
                self.state = State::Between(Lsn(page_lsn.0 + pos as u64));
                return Ok(());
            }
            let lsn = Lsn(page_lsn.0 + pos as u64);
            let err = |kind| WalError { lsn, kind };
            if pos < header_size {
                return Err(err(WalErrorKind::RecordInPageHeader));
            }
            // Records are MAXALIGNed, so xl_tot_len (4 bytes) is always on this page.
            let rest = &page[pos..];
            let total_len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]);
            if total_len == 0 {
                return Err(err(WalErrorKind::EndOfWal));
            }
            let header_here = rest.len() >= RECORD_HEADER_SIZE;
            if header_here {
                self.validate_header(rest, lsn).map_err(err)?;
            } else {
                check_total_len(total_len).map_err(|e| err(WalErrorKind::Record(e)))?;
            }
            if total_len as usize > rest.len() {
                self.state = State::Partial {
                    lsn,
                    total_len,
                    bytes: rest.to_vec(),
                    header_checked: header_here,
                };
                return Ok(());
            }
            let bytes = &rest[..total_len as usize];
            let end = Lsn(lsn.0 + total_len as u64);
            let next = self.finish(lsn, end, bytes, out)?;
            if next.0 >= page_lsn.0 + XLOG_BLCKSZ as u64 {
                self.state = State::Between(next);
                return Ok(());
            }
            pos = (next.0 - page_lsn.0) as usize;
        }
    }

    fn validate_header(&self, bytes: &[u8], lsn: Lsn) -> Result<(), WalErrorKind> {
        let h = RecordHeader::parse(bytes).ok_or(WalErrorKind::Record(RecordError::ShortData))?;
        h.validate(lsn, self.prev_record, self.pg_major().unwrap_or(0))
            .map_err(WalErrorKind::Record)
    }

    /// CRC-checks and decodes a complete record; returns where the next one starts.
    fn finish(
        &mut self,
        lsn: Lsn,
        end: Lsn,
        bytes: &[u8],
        out: &mut impl FnMut(WalEvent),
    ) -> Result<Lsn, WalError> {
        let err = |e| WalError {
            lsn,
            kind: WalErrorKind::Record(e),
        };
        check_crc(bytes).map_err(err)?;
        let mut next = Lsn(end.0.div_ceil(8) * 8);
        if is_switch(bytes[17], bytes[16]) {
            // "Pretend it extends to end of segment."
            next = Lsn(next.0.div_ceil(self.segment_size) * self.segment_size);
            self.skip_until = next;
        }
        let record =
            decode_record(bytes, lsn, end, next, self.pg_major().unwrap_or(0)).map_err(err)?;
        if let Some(aborted) = self.overwritten.take() {
            if record.special
                != Some(Special::OverwriteContrecord {
                    overwritten: aborted,
                })
            {
                return Err(WalError {
                    lsn,
                    kind: WalErrorKind::OverwriteMismatch { aborted },
                });
            }
        }
        self.prev_record = Some(lsn);
        out(WalEvent::Record(record));
        Ok(next)
    }

    /// The checks that need earlier pages: one magic, one system, timelines that never
    /// go backwards.
    fn check_stream(&mut self, header: &PageHeader) -> Result<(), WalErrorKind> {
        match self.magic {
            Some(m) if m != header.magic => {
                return Err(WalErrorKind::MagicChanged {
                    first: m,
                    now: header.magic,
                })
            }
            _ => self.magic = Some(header.magic),
        }
        if let Some(long) = &header.long {
            match self.system_identifier {
                Some(s) if s != long.system_identifier => {
                    return Err(WalErrorKind::SystemIdentifierChanged {
                        first: s,
                        now: long.system_identifier,
                    })
                }
                _ => self.system_identifier = Some(long.system_identifier),
            }
        }
        if header.timeline < self.latest_timeline {
            return Err(WalErrorKind::TimelineWentBack {
                before: self.latest_timeline,
                now: header.timeline,
            });
        }
        self.latest_timeline = header.timeline;
        Ok(())
    }
}

fn maxalign(n: usize) -> usize {
    n.div_ceil(8) * 8
}
