//! The reader against WAL that real servers of each major wrote (`tests/fixtures/wal/`,
//! made by `scripts/make-wal-fixtures.sh`) and against pg_waldump's reading of the same
//! segments, record by record; then mutated segments, which must give values or errors,
//! never panics.

use std::collections::BTreeMap;

use super::*;
use crate::pg::lsn::Lsn;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/wal");

struct Fixture {
    major: u32,
    /// (file name, bytes), in WAL order.
    segments: Vec<(String, Vec<u8>)>,
    waldump: Option<String>,
    /// LSNs the workload noted (`note` in the script), by name.
    notes: BTreeMap<String, Lsn>,
}

fn unzstd(path: &std::path::Path) -> Vec<u8> {
    let f = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    zstd::decode_all(f).unwrap()
}

fn fixture(major: u32) -> Fixture {
    let dir = std::path::Path::new(FIXTURES).join(format!("pg{major}"));
    let mut names: Vec<_> = std::fs::read_dir(dir.join("seg"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    let segments = names
        .iter()
        .map(|n| {
            (
                n.trim_end_matches(".zst").to_string(),
                unzstd(&dir.join("seg").join(n)),
            )
        })
        .collect();
    let dump = dir.join("waldump.txt.zst");
    let waldump = dump
        .exists()
        .then(|| String::from_utf8(unzstd(&dump)).unwrap());
    let notes = std::fs::read_to_string(dir.join("workload.txt"))
        .unwrap()
        .lines()
        .map(|l| {
            let (k, v) = l.split_once(' ').unwrap();
            (k.to_string(), v.parse().unwrap())
        })
        .collect();
    Fixture {
        major,
        segments,
        waldump,
        notes,
    }
}

/// All events of the fixture, reading its segments as one stream.
fn stream(f: &Fixture) -> (Vec<WalEvent>, Option<Lsn>) {
    let segment_size = f.segments[0].1.len() as u64;
    let start = crate::pg::wal::page::parse_long_page_header(&f.segments[0].1)
        .unwrap()
        .page_address;
    let mut reader = WalReader::new(segment_size);
    let mut events = Vec::new();
    let all: Vec<u8> = f.segments.iter().flat_map(|(_, b)| b.clone()).collect();
    for (i, page) in all.chunks(XLOG_BLCKSZ).enumerate() {
        let lsn = Lsn(start.0 + (i * XLOG_BLCKSZ) as u64);
        reader.feed(lsn, page, &mut events).unwrap_or_else(|e| {
            panic!("pg{}: {e}", f.major);
        });
    }
    (events, reader.record_in_progress())
}

fn records(events: &[WalEvent]) -> Vec<&WalRecord> {
    events
        .iter()
        .filter_map(|e| match e {
            WalEvent::Record(r) => Some(r),
            _ => None,
        })
        .collect()
}

/// One record as pg_waldump prints it.
#[derive(Debug, Default)]
struct Dumped {
    rmgr: String,
    rec_len: u32,
    tot_len: u32,
    xid: u32,
    lsn: Lsn,
    prev: Lsn,
    desc: String,
    /// (block id, "spc/db/rel", fork, block, has image)
    blocks: Vec<(u8, String, String, u32, bool)>,
}

fn parse_waldump(text: &str) -> Vec<Dumped> {
    let mut out: Vec<Dumped> = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("rmgr: ") {
            // rmgr: Heap        len (rec/tot):     54/   150, tx:  735, lsn: 0/01A0B1C8, prev 0/01A0B190, desc: ...
            let (head, desc) = rest.split_once(", desc: ").unwrap();
            let rmgr = head.split_whitespace().next().unwrap().to_string();
            let lens = head.split_once("(rec/tot):").unwrap().1;
            let (rec, tot) = lens.split_once('/').unwrap();
            let tot = tot.split_once(',').unwrap().0;
            let field = |name: &str| {
                head.split_once(name)
                    .unwrap()
                    .1
                    .trim_start()
                    .split([',', ' '])
                    .next()
                    .unwrap()
                    .to_string()
            };
            out.push(Dumped {
                rmgr,
                rec_len: rec.trim().parse().unwrap(),
                tot_len: tot.trim().parse().unwrap(),
                xid: field("tx:").parse().unwrap(),
                lsn: field("lsn:").parse().unwrap(),
                prev: field("prev").parse().unwrap(),
                desc: desc.trim_end().to_string(),
                blocks: Vec::new(),
            });
        } else if let Some(rest) = line.trim_start().strip_prefix("blkref #") {
            // blkref #0: rel 1663/5/2704 fork main blk 2 (FPW); hole: ...
            let (id, rest) = rest.split_once(": rel ").unwrap();
            let words: Vec<&str> = rest.split_whitespace().collect();
            assert_eq!((words[1], words[3]), ("fork", "blk"), "{line}");
            let blk = words[4].trim_end_matches([';', ',']);
            out.last_mut().unwrap().blocks.push((
                id.parse().unwrap(),
                words[0].to_string(),
                words[2].to_string(),
                blk.parse().unwrap(),
                rest.contains("(FPW"),
            ));
        }
    }
    out
}

fn relpath(rel: &RelFileLocator, fork: Fork) -> String {
    let suffix = match fork {
        Fork::Main => String::new(),
        f => format!("_{}", f.name()),
    };
    match rel.spc {
        1663 => format!("base/{}/{}{suffix}", rel.db, rel.rel),
        1664 => format!("global/{}{suffix}", rel.rel),
        spc => format!("pg_tblspc/{spc}/*/{}/{}{suffix}", rel.db, rel.rel),
    }
}

fn wal_level_name(l: WalLevel) -> String {
    match l {
        WalLevel::Minimal => "minimal".into(),
        WalLevel::Replica => "replica".into(),
        WalLevel::Logical => "logical".into(),
        WalLevel::Unknown(v) => format!("{v}"),
    }
}

/// What pg_waldump's description must say about a special record.
fn check_special_against_desc(major: u32, s: &Special, desc: &str) {
    let ok = match s {
        Special::SmgrCreate { rel, fork } => desc == format!("CREATE {}", relpath(rel, *fork)),
        Special::SmgrTruncate { rel, blocks, forks } => {
            let flags = forks.main as u8
                | (forks.visibility_map as u8) << 1
                | (forks.free_space_map as u8) << 2;
            desc == format!(
                "TRUNCATE {} to {blocks} blocks flags {flags}",
                relpath(rel, Fork::Main)
            )
        }
        Special::DatabaseCreate { db, spc, how } => match how {
            DatabaseCreation::FileCopy { src_db, src_spc } => {
                let name = if major >= 15 {
                    "CREATE_FILE_COPY"
                } else {
                    "CREATE"
                };
                desc == format!("{name} copy dir {src_spc}/{src_db} to {spc}/{db}")
            }
            DatabaseCreation::WalLog => desc == format!("CREATE_WAL_LOG create dir {spc}/{db}"),
        },
        Special::DatabaseDrop { db, tablespaces } => {
            let dirs: Vec<_> = tablespaces.iter().map(|t| format!("{t}/{db}")).collect();
            desc == format!("DROP dir {}", dirs.join(" "))
        }
        Special::TransactionEnd { kind, dropped, .. } => {
            let name = match kind {
                TransactionEnd::Commit => "COMMIT ",
                TransactionEnd::Abort => "ABORT ",
                TransactionEnd::CommitPrepared => "COMMIT_PREPARED ",
                TransactionEnd::AbortPrepared => "ABORT_PREPARED ",
            };
            let rels: Vec<_> = dropped.iter().map(|r| relpath(r, Fork::Main)).collect();
            desc.starts_with(name)
                && if dropped.is_empty() {
                    !desc.contains("; rels: ")
                } else {
                    desc.contains(&format!("; rels: {}", rels.join(" ")))
                }
        }
        Special::WalLevel { source, level } => {
            let level = wal_level_name(*level);
            match source {
                WalLevelSource::ParameterChange => {
                    desc.starts_with("PARAMETER_CHANGE ")
                        && desc.contains(&format!(" wal_level={level} "))
                }
                WalLevelSource::CheckpointRedo => {
                    desc == format!("CHECKPOINT_REDO wal_level {level}")
                }
                WalLevelSource::CheckpointShutdown | WalLevelSource::CheckpointOnline => {
                    desc.starts_with("CHECKPOINT_")
                        && desc.contains(&format!("; wal_level {level};"))
                }
                WalLevelSource::EndOfRecovery => {
                    desc.starts_with("END_OF_RECOVERY")
                        && desc.contains(&format!("wal_level {level}"))
                }
            }
        }
        Special::Switch => desc == "SWITCH",
        Special::OverwriteContrecord { overwritten } => {
            desc.starts_with(&format!("OVERWRITE_CONTRECORD lsn {overwritten};"))
        }
        Special::UnknownRelUpdate => false,
    };
    assert!(ok, "pg{major}: {s:?} vs pg_waldump's {desc:?}");
}

/// Which special kinds a fixture holds, to prove the workload covered them.
fn kinds(events: &[WalEvent]) -> std::collections::BTreeSet<String> {
    let mut k = std::collections::BTreeSet::new();
    for e in events {
        match e {
            WalEvent::Record(r) => {
                if let Some(s) = &r.special {
                    k.insert(match s {
                        Special::TransactionEnd { kind, dropped, .. } if !dropped.is_empty() => {
                            format!("{kind:?} dropping")
                        }
                        Special::WalLevel { source, level } => format!("{source:?} {level:?}"),
                        Special::DatabaseCreate { how, .. } => format!("DatabaseCreate {how:?}")
                            .split_once(" {")
                            .map_or_else(
                                || format!("DatabaseCreate {how:?}"),
                                |(a, _)| a.to_string(),
                            ),
                        s => format!("{s:?}")
                            .split([' ', '{'])
                            .next()
                            .unwrap()
                            .to_string(),
                    });
                }
                if r.blocks
                    .iter()
                    .any(|b| b.image.is_some_and(|i| i.compressed))
                {
                    k.insert("compressed image".into());
                }
                if r.lsn.0 / XLOG_BLCKSZ as u64 != (r.end.0 - 1) / XLOG_BLCKSZ as u64 {
                    k.insert("across pages".into());
                }
                let seg = 1 << 20;
                if r.lsn.0 / seg != (r.end.0 - 1) / seg {
                    k.insert("across segments".into());
                }
            }
            WalEvent::Aborted { .. } => {
                k.insert("aborted record".into());
            }
            WalEvent::HeadMissing { .. } => {
                k.insert("head missing".into());
            }
        }
    }
    k
}

fn check_coverage(f: &Fixture, events: &[WalEvent]) {
    let got = kinds(events);
    let mut want = vec![
        "SmgrCreate",
        "SmgrTruncate",
        "DatabaseCreate FileCopy",
        "DatabaseDrop",
        "Commit dropping",
        "Abort dropping",
        "CommitPrepared dropping",
        "AbortPrepared dropping",
        "ParameterChange Logical",
        "Switch",
        "OverwriteContrecord",
        "aborted record",
        "across pages",
        "across segments",
        "compressed image",
    ];
    if f.major >= 17 {
        want.extend(["CheckpointRedo Replica", "CheckpointOnline Replica"]);
    }
    for w in want {
        assert!(
            got.contains(w),
            "pg{}: the fixture has no {w}: {got:?}",
            f.major
        );
    }
    if f.major >= 15 {
        let wal_log = events.iter().any(|e| {
            matches!(
                e,
                WalEvent::Record(WalRecord {
                    special: Some(Special::DatabaseCreate {
                        how: DatabaseCreation::WalLog,
                        ..
                    }),
                    ..
                })
            )
        });
        assert!(
            wal_log,
            "pg{}: no CREATE DATABASE STRATEGY WAL_LOG",
            f.major
        );
    }
    // The overwrite-contrecord names the record that the crash cut, which starts where
    // the workload noted it would.
    let aborted = events
        .iter()
        .find_map(|e| match e {
            WalEvent::Aborted {
                lsn,
                overwritten_at,
            } => Some((*lsn, *overwritten_at)),
            _ => None,
        })
        .unwrap();
    let noted = f.notes["aborted_record"];
    assert!(
        aborted.0 >= noted && aborted.0 .0 < noted.0 + 64,
        "pg{}: {aborted:?} vs {noted}",
        f.major
    );
    let overwrite = records(events)
        .into_iter()
        .find_map(|r| match r.special {
            Some(Special::OverwriteContrecord { overwritten }) => Some((r.lsn, overwritten)),
            _ => None,
        })
        .unwrap();
    assert_eq!(overwrite.1, aborted.0, "pg{}", f.major);
    assert_eq!(
        overwrite.0 .0 & !(XLOG_BLCKSZ as u64 - 1),
        aborted.1 .0,
        "pg{}",
        f.major
    );
}

/// Record by record: LSN, prev-link, rmgr, lengths, xid, block references, and what
/// pg_waldump's description says about the records decoded as special.
fn compare_with_waldump(major: u32) {
    let f = fixture(major);
    let (events, _) = stream(&f);
    check_coverage(&f, &events);
    let ours = records(&events);
    let dumped = parse_waldump(f.waldump.as_deref().expect("no waldump.txt"));
    assert_eq!(ours.len(), dumped.len(), "pg{major}: record count");
    for (r, d) in ours.iter().zip(&dumped) {
        let ctx = format!("pg{major} record at {}", d.lsn);
        assert_eq!(r.lsn, d.lsn, "{ctx}");
        assert_eq!(r.prev, d.prev, "{ctx}");
        assert_eq!(r.rmgr_name(), Some(d.rmgr.as_str()), "{ctx}");
        assert_eq!(r.total_len, d.tot_len, "{ctx}");
        assert_eq!(r.total_len - r.image_bytes(), d.rec_len, "{ctx}");
        assert_eq!(r.xid, d.xid, "{ctx}");
        let blocks: Vec<_> = r
            .blocks
            .iter()
            .map(|b| {
                (
                    b.id,
                    format!("{}/{}/{}", b.rel.spc, b.rel.db, b.rel.rel),
                    b.fork.name().to_string(),
                    b.block,
                    b.image.is_some(),
                )
            })
            .collect();
        assert_eq!(blocks, d.blocks, "{ctx}");
        if let Some(s) = &r.special {
            check_special_against_desc(major, s, &d.desc);
        }
        // The other way round: every record pg_waldump shows as changing files
        // outside block references is one we decoded.
        let needs_special = matches!(d.rmgr.as_str(), "Storage" | "Database")
            || d.desc.contains("; rels: ")
            || ["SWITCH", "PARAMETER_CHANGE", "OVERWRITE_CONTRECORD"]
                .iter()
                .any(|p| d.desc.starts_with(p));
        assert!(!needs_special || r.special.is_some(), "{ctx}: {}", d.desc);
    }
}

#[test]
fn pg14_records_match_pg_waldump() {
    compare_with_waldump(14);
}

#[test]
fn pg15_records_match_pg_waldump() {
    compare_with_waldump(15);
}

#[test]
fn pg16_records_match_pg_waldump() {
    compare_with_waldump(16);
}

#[test]
fn pg17_records_match_pg_waldump() {
    compare_with_waldump(17);
}

#[test]
fn pg18_records_match_pg_waldump() {
    compare_with_waldump(18);
}

/// PG 13's build has no pg_waldump: the reader's own checks (page headers, prev-links,
/// CRCs, lengths) must pass over every segment, and the workload's records must be there.
#[test]
fn pg13_reads_every_segment_and_finds_the_workload() {
    let f = fixture(13);
    let (events, _) = stream(&f);
    check_coverage(&f, &events);
    let message = records(&events)
        .into_iter()
        .find(|r| r.rmgr == 21 && r.total_len > 1_200_000)
        .expect("the 1.2 MB logical message");
    assert!(message.lsn >= f.notes["message"] && message.lsn.0 < f.notes["message"].0 + 64);
}

/// Segment by segment, with the WAL before each: every record lands in the segment that
/// holds its last byte, and the union is exactly the stream.
#[test]
fn read_segment_yields_each_record_in_the_segment_where_it_ends() {
    for major in [13, 14, 15, 16, 17, 18] {
        let f = fixture(major);
        let (events, in_progress) = stream(&f);
        let streamed: Vec<WalRecord> = records(&events).into_iter().cloned().collect();
        let mut joined = Vec::new();
        let mut before: Vec<u8> = Vec::new();
        for (name, seg) in &f.segments {
            let s = read_segment(seg, Some(&before)).unwrap();
            assert_eq!(s.pg_major, major);
            let end = Lsn(s.start.0 + seg.len() as u64);
            for r in &s.records {
                assert!(
                    r.end > s.start && r.end <= end,
                    "pg{major} {name}: {:?}",
                    r.lsn
                );
            }
            // The fixtures start right after a pg_switch_wal(): no record straddles in.
            assert_eq!(s.head_missing, None, "pg{major} {name}");
            joined.extend(s.records);
            before.extend_from_slice(seg);
        }
        assert_eq!(joined, streamed, "pg{major}");
        let _ = in_progress;
    }
}

/// A record that straddles into a segment is decoded only with the bytes before the
/// segment; without them (or with too few) the segment says its head is missing, and
/// which record it lacks.
#[test]
fn straddling_record_needs_the_previous_segment() {
    let f = fixture(17);
    let (events, _) = stream(&f);
    let segment_size = f.segments[0].1.len() as u64;
    let straddler = records(&events)
        .into_iter()
        .find(|r| r.lsn.0 / segment_size != (r.end.0 - 1) / segment_size && r.total_len > 1_000_000)
        .unwrap()
        .clone();
    let i = f
        .segments
        .iter()
        .position(|(_, b)| {
            let start = crate::pg::wal::page::parse_long_page_header(b)
                .unwrap()
                .page_address;
            start.0 / segment_size == (straddler.end.0 - 1) / segment_size
        })
        .unwrap();
    let (prev, seg) = (&f.segments[i - 1].1, &f.segments[i].1);
    let with = read_segment(seg, Some(prev)).unwrap();
    assert_eq!(with.records[0], straddler);
    assert_eq!(with.head_missing, None);
    for before in [None, Some(&prev[prev.len() - 4 * XLOG_BLCKSZ..])] {
        let without = read_segment(seg, before).unwrap();
        assert_eq!(without.head_missing, Some(straddler.end));
        assert_eq!(without.records[..], with.records[1..]);
    }
    // The segment before knows a record continues out of it.
    let earlier = read_segment(prev, Some(&f.segments[i - 2].1)).unwrap();
    assert_eq!(earlier.continues, Some(straddler.lsn));
}

/// The last segment of the 15+ fixtures stops inside CREATE DATABASE's page images.
#[test]
fn a_segment_that_ends_inside_a_record_reports_where_it_starts() {
    let f = fixture(16);
    let (events, in_progress) = stream(&f);
    let last = &f.segments.last().unwrap().1;
    let prev = &f.segments[f.segments.len() - 2].1;
    let s = read_segment(last, Some(prev)).unwrap();
    assert_eq!(s.continues, in_progress);
    let last_record = records(&events).last().unwrap().next;
    assert_eq!(s.continues, Some(last_record));
}

#[test]
fn corrupt_records_and_pages_are_errors_naming_the_spot() {
    let f = fixture(15);
    // The segment with the most records, so there are records after the damage.
    let i = (1..f.segments.len())
        .max_by_key(|&i| {
            read_segment(&f.segments[i].1, Some(&f.segments[i - 1].1))
                .unwrap()
                .records
                .len()
        })
        .unwrap();
    let seg = &f.segments[i].1;
    let prev = &f.segments[i - 1].1;
    let good = read_segment(seg, Some(prev)).unwrap();
    let target = &good.records[good.records.len() / 2];
    let off = (target.lsn.0 - good.start.0) as usize;

    // A flipped byte in the body: the CRC catches it.
    let mut bad = seg.clone();
    bad[off + 30] ^= 0x40;
    let e = read_segment(&bad, Some(prev)).unwrap_err();
    assert_eq!(e.lsn, target.lsn);
    assert!(
        matches!(
            e.kind,
            WalErrorKind::Record(RecordError::CrcMismatch { .. })
        ),
        "{e}"
    );

    // A wrong prev-link.
    let mut bad = seg.clone();
    bad[off + 8] ^= 0x08;
    let e = read_segment(&bad, Some(prev)).unwrap_err();
    assert!(
        matches!(
            e.kind,
            WalErrorKind::Record(RecordError::BadPrevLink { .. })
        ),
        "{e}"
    );

    // A page that claims to be elsewhere.
    let mut bad = seg.clone();
    bad[3 * XLOG_BLCKSZ + 9] ^= 0x01;
    let e = read_segment(&bad, Some(prev)).unwrap_err();
    assert_eq!(e.lsn, Lsn(good.start.0 + 3 * XLOG_BLCKSZ as u64));
    assert!(
        matches!(e.kind, WalErrorKind::UnexpectedPageAddress(_)),
        "{e}"
    );

    // Another major's magic mid-stream.
    let mut bad = seg.clone();
    bad[2 * XLOG_BLCKSZ..2 * XLOG_BLCKSZ + 2].copy_from_slice(&0xD116u16.to_le_bytes());
    let e = read_segment(&bad, Some(prev)).unwrap_err();
    assert!(matches!(e.kind, WalErrorKind::MagicChanged { .. }), "{e}");

    // An unknown magic.
    let mut bad = seg.clone();
    bad[0..2].copy_from_slice(&0xD101u16.to_le_bytes());
    assert!(read_segment(&bad, None).is_err());

    // Zeroed pages are the end of WAL, not records.
    let mut cut = seg.clone();
    let zero_from = (off / XLOG_BLCKSZ + 1) * XLOG_BLCKSZ;
    for b in &mut cut[zero_from..] {
        *b = 0;
    }
    let s = read_segment(&cut, Some(prev)).unwrap();
    assert_eq!(s.end_of_wal, Some(Lsn(good.start.0 + zero_from as u64)));
    assert!(
        s.records.len() < good.records.len(),
        "{} {} {:?} {:?}",
        s.records.len(),
        good.records.len(),
        s.end_of_wal,
        target.lsn
    );
    // So is a zero record length.
    let mut cut = seg.clone();
    for b in &mut cut[off..(off / XLOG_BLCKSZ + 1) * XLOG_BLCKSZ] {
        *b = 0;
    }
    let s = read_segment(&cut, Some(prev)).unwrap();
    assert_eq!(s.end_of_wal, Some(target.lsn));
    assert_eq!(s.records.last().unwrap().next, target.lsn);
}

use crate::test_rng::Rng;

/// Values that make lengths and counts interesting.
const WORDS: [u32; 10] = [
    0,
    1,
    23,
    24,
    25,
    0x7FFF_FFFF,
    0xFFFF_FFFF,
    8192,
    0x3FFF_FFFF,
    0x8000_0000,
];

fn mutate(rng: &mut Rng, bytes: &mut Vec<u8>, hot: &[usize]) {
    for _ in 0..1 + rng.below(4) {
        // Half the mutations hit a record or page header, where lengths live.
        let at = if !hot.is_empty() && rng.below(2) == 0 {
            hot[rng.below(hot.len())] + rng.below(48)
        } else {
            rng.below(bytes.len())
        };
        if at >= bytes.len() {
            continue;
        }
        match rng.below(4) {
            0 => bytes[at] ^= 1 << rng.below(8),
            1 => bytes[at] = rng.next() as u8,
            2 => {
                let w = WORDS[rng.below(WORDS.len())].to_le_bytes();
                let n = w.len().min(bytes.len() - at);
                bytes[at..at + n].copy_from_slice(&w[..n]);
            }
            _ => {
                let cut = at.max(1);
                bytes.truncate(cut);
            }
        }
    }
}

/// Feeds mutated real segments to `read_segment` and the streaming reader, and mutated
/// real records straight to the decoder (past the CRC, which would stop most of them).
/// Nothing may panic, and every call returns (the reader does a bounded amount of work
/// per page).
fn fuzz(iterations: usize, seed: u64) {
    let mut rng = Rng(seed);
    let fixtures: Vec<Fixture> = [13, 15, 17, 18].map(fixture).into();
    // Real records (single-page ones, sliced out of their page) for the decoder.
    let mut samples: Vec<(u32, Vec<u8>, Vec<usize>)> = Vec::new();
    for f in &fixtures {
        let (events, _) = stream(f);
        let seg0 = crate::pg::wal::page::parse_long_page_header(&f.segments[0].1)
            .unwrap()
            .page_address
            .0;
        let all: Vec<u8> = f.segments.iter().flat_map(|(_, b)| b.clone()).collect();
        let mut starts = Vec::new();
        for r in records(&events) {
            let off = (r.lsn.0 - seg0) as usize;
            starts.push(off);
            if off / XLOG_BLCKSZ == (off + r.total_len as usize - 1) / XLOG_BLCKSZ
                && samples.len() < 4000
                && (r.special.is_some() || rng.below(20) == 0)
            {
                samples.push((
                    f.major,
                    all[off..off + r.total_len as usize].to_vec(),
                    vec![0],
                ));
            }
        }
        // Segments cut to a few pages, with record starts as hot spots.
        for (i, (_, seg)) in f.segments.iter().enumerate() {
            let base = i * seg.len();
            let hot: Vec<usize> = starts
                .iter()
                .filter(|&&o| o >= base && o < base + seg.len())
                .map(|&o| o - base)
                .chain((0..seg.len()).step_by(XLOG_BLCKSZ))
                .collect();
            samples.push((f.major, seg.clone(), hot));
        }
    }
    let segments: Vec<usize> = (0..samples.len())
        .filter(|&i| samples[i].1.len() >= 1 << 20)
        .collect();
    let recs: Vec<usize> = (0..samples.len())
        .filter(|&i| samples[i].1.len() < 1 << 20)
        .collect();
    for _ in 0..iterations {
        if rng.below(3) == 0 {
            let (major, bytes, _) = &samples[recs[rng.below(recs.len())]];
            let mut b = bytes.clone();
            // Keep the length field honest half of the time so decoding goes deep.
            mutate(&mut rng, &mut b, &[24]);
            if rng.below(2) == 0 && b.len() >= 4 {
                let n = b.len() as u32;
                b[0..4].copy_from_slice(&n.to_le_bytes());
            }
            let _ = record::decode_record(
                &b,
                Lsn(0x100_0000),
                Lsn(0x100_0100),
                Lsn(0x100_0100),
                *major,
            );
        } else {
            let (_, seg, hot) = &samples[segments[rng.below(segments.len())]];
            let pages = 1 + rng.below(seg.len() / XLOG_BLCKSZ);
            let mut b = seg[..pages * XLOG_BLCKSZ].to_vec();
            mutate(&mut rng, &mut b, hot);
            let _ = read_segment(&b, None);
            // Streaming, starting mid-stream at an arbitrary page.
            let start = crate::pg::wal::page::parse_long_page_header(seg)
                .unwrap()
                .page_address;
            let mut reader = WalReader::new(1 << 20);
            let mut events = Vec::new();
            let skip = rng.below(pages) * XLOG_BLCKSZ;
            for (i, page) in b[skip.min(b.len())..].chunks(XLOG_BLCKSZ).enumerate() {
                let lsn = Lsn(start.0 + (skip + i * XLOG_BLCKSZ) as u64);
                if reader.feed(lsn, page, &mut events).is_err() {
                    break;
                }
            }
        }
    }
}

/// Runs `fuzz` on a thread and fails if it panics or has not finished in `limit`: a
/// reader that loops on some input hangs no test run.
fn fuzz_within(iterations: usize, seed: u64, limit: std::time::Duration) {
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        fuzz(iterations, seed);
        let _ = done.send(());
    });
    match finished.recv_timeout(limit) {
        Ok(()) => {}
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => panic!("the fuzz run panicked"),
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            panic!("{iterations} fuzz iterations took longer than {limit:?}: a loop?")
        }
    }
}

#[test]
fn mutated_segments_and_records_never_panic() {
    fuzz_within(1000, 0x5EED_0001, std::time::Duration::from_secs(120));
}

#[test]
#[ignore = "second tier: long fuzz run"]
fn mutated_segments_and_records_never_panic_long() {
    fuzz_within(300_000, 0x5EED_0002, std::time::Duration::from_secs(3600));
}

/// Recomputes a record's CRC after a test edited it (`ValidXLogRecord`'s order: body,
/// then the header up to `xl_crc`).
fn fix_crc(record: &mut [u8]) {
    let crc = crc32c::crc32c_append(crc32c::crc32c(&record[24..]), &record[..20]);
    record[20..24].copy_from_slice(&crc.to_le_bytes());
}

/// The record after an overwrite-contrecord page must be XLOG_OVERWRITE_CONTRECORD
/// naming the abandoned record; one naming another record is refused.
#[test]
fn overwrite_contrecord_must_name_the_abandoned_record() {
    let f = fixture(17);
    let (events, _) = stream(&f);
    let overwrite = records(&events)
        .into_iter()
        .find(|r| matches!(r.special, Some(Special::OverwriteContrecord { .. })))
        .unwrap()
        .clone();
    let segment_size = f.segments[0].1.len() as u64;
    let i = f
        .segments
        .iter()
        .position(|(_, b)| {
            crate::pg::wal::page::parse_long_page_header(b)
                .unwrap()
                .page_address
                .0
                == overwrite.lsn.0 / segment_size * segment_size
        })
        .unwrap();
    let (prev, seg) = (&f.segments[i - 1].1, &f.segments[i].1);
    let good = read_segment(seg, Some(prev)).unwrap();
    assert_eq!(good.aborted.len(), 1);
    assert_eq!(good.records[0], overwrite);

    let off = (overwrite.lsn.0 % segment_size) as usize;
    let mut bad = seg.clone();
    let rec = &mut bad[off..off + overwrite.total_len as usize];
    // Main data (xl_overwrite_contrecord) is the last 16 bytes: overwritten_lsn first.
    let at = rec.len() - 16;
    rec[at] ^= 0x08;
    fix_crc(rec);
    let e = read_segment(&bad, Some(prev)).unwrap_err();
    assert!(
        matches!(e.kind, WalErrorKind::OverwriteMismatch { .. }),
        "{e}"
    );
}

/// XLR_SPECIAL_REL_UPDATE on a record kind the decoder does not know (here a heap
/// record, as a custom resource manager might write) is reported, so a block map can
/// refuse to trust itself; on a kind it decodes, the decoded form wins.
#[test]
fn unknown_records_that_change_files_are_reported() {
    let f = fixture(18);
    let (events, _) = stream(&f);
    let seg0 = crate::pg::wal::page::parse_long_page_header(&f.segments[0].1)
        .unwrap()
        .page_address
        .0;
    let all: Vec<u8> = f.segments.iter().flat_map(|(_, b)| b.clone()).collect();
    let bytes_of = |r: &WalRecord| {
        let off = (r.lsn.0 - seg0) as usize;
        all[off..off + r.total_len as usize].to_vec()
    };
    let rs = records(&events);
    let heap = rs
        .iter()
        .find(|r| r.rmgr == 10 && r.total_len < 200)
        .unwrap();
    let mut b = bytes_of(heap);
    b[16] |= record::XLR_SPECIAL_REL_UPDATE;
    let d = record::decode_record(&b, heap.lsn, heap.end, heap.next, 18).unwrap();
    assert_eq!(d.special, Some(Special::UnknownRelUpdate));
    assert_eq!(d.blocks, heap.blocks);

    let create = rs
        .iter()
        .find(|r| matches!(r.special, Some(Special::SmgrCreate { .. })))
        .unwrap();
    assert_ne!(bytes_of(create)[16] & record::XLR_SPECIAL_REL_UPDATE, 0);
    let d = record::decode_record(&bytes_of(create), create.lsn, create.end, create.next, 18);
    assert_eq!(d.unwrap().special, create.special);

    // A custom resource manager (id 128+) is valid from PG 15 and decodes its blocks.
    let mut custom = bytes_of(heap);
    custom[17] = 200;
    custom[16] |= record::XLR_SPECIAL_REL_UPDATE;
    let d = record::decode_record(&custom, heap.lsn, heap.end, heap.next, 18).unwrap();
    assert_eq!(d.special, Some(Special::UnknownRelUpdate));
    let header = record::RecordHeader::parse(&custom).unwrap();
    assert!(header.validate(heap.lsn, Some(heap.prev), 18).is_ok());
    assert!(header.validate(heap.lsn, Some(heap.prev), 14).is_err());
}
