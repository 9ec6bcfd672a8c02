use super::*;
use crate::pg::wal::read_segment;

fn rel(rel: u32, fork: u8) -> RelFork {
    RelFork {
        spc: 1663,
        db: 5,
        rel,
        fork,
    }
}

fn changes(limit: Option<u32>, whole: bool, blocks: &[u32]) -> FileChanges {
    FileChanges {
        limit,
        whole,
        blocks: blocks.to_vec(),
    }
}

pub(crate) fn sample() -> BlockMap {
    let mut files = BTreeMap::new();
    files.insert(
        rel(16384, 0),
        changes(None, false, &[0, 1, 2, 3, 9, 200, 201, u32::MAX]),
    );
    files.insert(rel(16384, 2), changes(None, false, &[0]));
    files.insert(rel(16390, 0), changes(Some(4), false, &[1]));
    files.insert(rel(16400, 3), changes(None, true, &[]));
    files.insert(RelFork::database(1663, 16500), changes(Some(0), true, &[]));
    BlockMap {
        system_identifier: 7_300_000_000_000_000_001,
        pg_major: 15,
        timeline: 2,
        start: Lsn(0x0100_0028),
        end: Lsn(0x0200_0000),
        segment_checksum: [7; 32],
        poison: Poison(0),
        files,
    }
}

#[test]
fn maps_round_trip_byte_for_byte() {
    let map = sample();
    let bytes = map.encode();
    assert_eq!(&bytes[..4], b"PGBM");
    assert_eq!(BlockMap::decode(&bytes).unwrap(), map);
    // Runs keep it compact: 8 blocks in 4 runs cost 8 varints, u32::MAX 5 bytes.
    assert!(bytes.len() < HEADER_LEN + 80, "{}", bytes.len());
    let poisoned = BlockMap::poisoned((1, 15, 1), Lsn(0x0100_0000), [0; 32], Poison::HEAD_MISSING);
    let decoded = BlockMap::decode(&poisoned.encode()).unwrap();
    assert_eq!(decoded, poisoned);
    assert_eq!(decoded.poison.reasons(), vec!["previous segment missing"]);
    // A poisoned map's encoding drops whatever files it carried.
    let mut carrying = sample();
    carrying.poison = Poison(Poison::PARSE_ERROR);
    assert!(BlockMap::decode(&carrying.encode())
        .unwrap()
        .files
        .is_empty());
}

#[test]
fn decode_names_damage() {
    let bytes = sample().encode();
    for len in 0..bytes.len() {
        assert!(BlockMap::decode(&bytes[..len]).is_err(), "{len}");
    }
    let mut longer = bytes.clone();
    longer.push(0);
    assert_eq!(BlockMap::decode(&longer), Err(MapError::Trailing(1)));
    let mut version = bytes.clone();
    version[4] = 2;
    assert_eq!(BlockMap::decode(&version), Err(MapError::Version(2)));
    let mut range = bytes.clone();
    range[24..32].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(matches!(BlockMap::decode(&range), Err(MapError::Range(..))));
    let mut fork = bytes;
    // The first file's fork byte: after the count, spc 1663, db 5 and rel 16384.
    let at = HEADER_LEN + 1 + 2 + 1 + 3;
    assert_eq!(fork[at], 0);
    fork[at] = 1;
    assert_eq!(BlockMap::decode(&fork), Err(MapError::Fork(1)));
}

#[test]
fn merge_keeps_later_changes_and_drops_blocks_past_a_truncation() {
    let mut a = changes(None, false, &[1, 5, 10]);
    a.then(&changes(Some(6), false, &[7]));
    assert_eq!(a, changes(Some(6), false, &[1, 5, 7]));
    a.then(&changes(Some(8), true, &[]));
    assert_eq!(a, changes(Some(6), true, &[1, 5, 7]));
    // Associative: (x.y).z == x.(y.z).
    let (x, y, z) = (
        changes(None, false, &[3, 9]),
        changes(Some(4), false, &[8]),
        changes(Some(2), false, &[1, 6]),
    );
    let mut left = x.clone();
    left.then(&y);
    left.then(&z);
    let mut yz = y.clone();
    yz.then(&z);
    let mut right = x;
    right.then(&yz);
    assert_eq!(left, right);
}

#[test]
fn maps_merge_only_when_contiguous_and_poison_spreads() {
    let a = sample();
    let mut b = sample();
    b.start = a.end;
    b.end = Lsn(0x0300_0000);
    b.files = BTreeMap::from([(rel(16390, 0), changes(None, false, &[2, 7]))]);
    let mut merged = a.clone();
    merged.then(&b).unwrap();
    assert_eq!((merged.start, merged.end), (a.start, b.end));
    assert_eq!(
        merged.files[&rel(16390, 0)],
        changes(Some(4), false, &[1, 2, 7])
    );
    let mut gap = a.clone();
    assert!(matches!(
        gap.then(&sample()),
        Err(MergeError::NotContiguous(..))
    ));
    let mut other = b.clone();
    other.timeline = 3;
    assert_eq!(a.clone().then(&other), Err(MergeError::Identity));
    let mut poisoned = b;
    poisoned.poison = Poison(Poison::MINIMAL_WAL);
    poisoned.files.clear();
    let mut m = a;
    m.then(&poisoned).unwrap();
    assert!(m.poison.is_poisoned() && m.files.is_empty());
}

fn fixture_segments(major: u32) -> Vec<Vec<u8>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("tests/fixtures/wal/pg{major}/seg"));
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    names
        .iter()
        .map(|p| zstd::decode_all(std::fs::File::open(p).unwrap()).unwrap())
        .collect()
}

fn build(segment: &[u8], before: Option<&[u8]>) -> BlockMap {
    let h = crate::pg::wal::page::parse_long_page_header(segment).unwrap();
    BlockMap::build(
        read_segment(segment, before),
        (h.system_identifier, 0, h.timeline.0, h.page_address),
        *blake3::hash(segment).as_bytes(),
    )
}

/// Archive-push folds records into the map as they are read (`of_segment`), keeping
/// none: the same map as from all the records at once, on every major's real WAL, with
/// and without the segment before, and it says whether the head straddling in was there.
#[test]
fn maps_built_while_reading_equal_maps_of_all_records() {
    for major in 13..=18 {
        let segments = fixture_segments(major);
        for (i, seg) in segments.iter().enumerate() {
            let h = crate::pg::wal::page::parse_long_page_header(seg).unwrap();
            let identity = (h.system_identifier, 0, h.timeline.0, h.page_address);
            for before in [None, i.checked_sub(1).map(|p| &segments[p][..])] {
                let read = read_segment(seg, before);
                let head = matches!(&read, Ok(r) if r.head_missing.is_none());
                let (map, whole_head) = BlockMap::of_segment(seg, before, identity, [1; 32]);
                assert_eq!(
                    map,
                    BlockMap::build(read, identity, [1; 32]),
                    "pg{major} #{i}"
                );
                assert_eq!(whole_head, head, "pg{major} #{i}");
            }
        }
    }
}

/// Real WAL of PostgreSQL 15 (the fixture's workload: VACUUM truncation, TRUNCATE,
/// CREATE/DROP DATABASE, wal_level changes): maps chain, stay small, and carry the
/// truncation; without its predecessor a segment whose first record straddles in is
/// poisoned.
#[test]
fn maps_of_real_wal_chain_and_stay_small() {
    let segments = fixture_segments(15);
    let mut maps = Vec::new();
    for (i, seg) in segments.iter().enumerate() {
        let map = build(seg, i.checked_sub(1).map(|p| &segments[p][..]));
        let encoded = map.encode();
        assert_eq!(BlockMap::decode(&encoded).unwrap(), map);
        assert!(
            encoded.len() * 50 < seg.len(),
            "map of {} bytes",
            encoded.len()
        );
        maps.push(map);
    }
    let trusted: Vec<_> = maps.iter().filter(|m| !m.poison.is_poisoned()).collect();
    assert!(
        trusted.len() >= 2,
        "{:?}",
        maps.iter().map(|m| m.poison).collect::<Vec<_>>()
    );
    for pair in maps.windows(2) {
        if !pair[0].poison.is_poisoned() && !pair[1].poison.is_poisoned() {
            assert_eq!(pair[0].end, pair[1].start);
        }
    }
    assert!(
        maps[0]
            .files
            .values()
            .any(|c| c.limit.is_some_and(|l| l > 0)),
        "VACUUM's truncation is in the first segment's map"
    );
    assert!(maps
        .iter()
        .any(|m| m.files.iter().any(|(f, c)| f.rel == 0 && c.whole)));
    let straddling = (1..segments.len())
        .find(|&i| read_segment(&segments[i], None).is_ok_and(|r| r.head_missing.is_some()));
    if let Some(i) = straddling {
        assert_eq!(
            build(&segments[i], None).poison.0 & Poison::HEAD_MISSING,
            Poison::HEAD_MISSING
        );
    }
}

/// The map decoder fed arbitrary, mutated and truncated bytes: errors, never panics.
#[test]
fn decode_never_panics_on_mutated_bytes() {
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let seeds = [sample().encode(), {
        let segments = fixture_segments(15);
        build(&segments[1], Some(&segments[0])).encode()
    }];
    let started = std::time::Instant::now();
    for seed in &seeds {
        for _ in 0..1500 {
            let mut b = seed.clone();
            for _ in 0..=next() % 4 {
                let len = b.len().max(1) as u64;
                match next() % 5 {
                    0 if !b.is_empty() => {
                        let i = (next() % len) as usize;
                        b[i] ^= 1 << (next() % 8);
                    }
                    1 => b.truncate((next() % (len + 1)) as usize),
                    2 => {
                        let i = (next() % (len + 1)) as usize;
                        b.insert(i.min(b.len()), next() as u8);
                    }
                    3 if !b.is_empty() => {
                        let i = (next() % len) as usize;
                        b[i] = 0xff;
                    }
                    _ => b = (0..next() % 120).map(|_| next() as u8).collect(),
                }
            }
            if let Ok(map) = BlockMap::decode(&b) {
                // What decodes re-encodes to the same bytes: one encoding per map.
                assert_eq!(BlockMap::decode(&map.encode()).unwrap(), map);
            }
        }
    }
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
}
