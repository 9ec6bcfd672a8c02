use super::*;
use crate::repo::blockmap::Poison;

const SEG: u64 = 16 << 20;

fn tl(n: u32) -> TimelineId {
    TimelineId(n)
}

fn rel(rel: u32) -> RelFork {
    RelFork {
        spc: 1663,
        db: 5,
        rel,
        fork: 0,
    }
}

fn map(timeline: u32, start: u64, end: u64, files: &[(RelFork, FileChanges)]) -> BlockMap {
    BlockMap {
        system_identifier: 7,
        pg_major: 15,
        timeline,
        start: Lsn(start),
        end: Lsn(end),
        segment_checksum: [0; 32],
        poison: Poison(0),
        files: files.iter().cloned().collect(),
    }
}

fn blocks(b: &[u32]) -> FileChanges {
    FileChanges {
        blocks: b.to_vec(),
        ..FileChanges::default()
    }
}

fn entry(size: u64) -> FileEntry {
    FileEntry {
        path: String::new(),
        size,
        mtime: 0,
        mode: 0o600,
        checksum: None,
        extents: Vec::new(),
    }
}

#[test]
fn one_timeline_is_one_step_over_the_segments_from_start_to_start() {
    let s = steps(
        (tl(1), Lsn(SEG + 100)),
        Lsn(SEG + 500),
        (tl(1), Lsn(3 * SEG + 40)),
        &[],
    )
    .unwrap();
    assert_eq!(
        s,
        [Step {
            timeline: tl(1),
            from: Lsn(SEG + 100),
            to: Lsn(3 * SEG + 40)
        }]
    );
    let segs: Vec<String> = segments(&s, SEG).iter().map(|s| s.to_string()).collect();
    assert_eq!(
        segs,
        [
            "000000010000000000000001",
            "000000010000000000000002",
            "000000010000000000000003"
        ]
    );
}

#[test]
fn steps_follow_the_history_with_exclusive_bounds_at_switch_points() {
    let history = [
        HistoryEntry {
            timeline: tl(1),
            switch_point: Lsn(2 * SEG + 800),
            reason: String::new(),
        },
        HistoryEntry {
            timeline: tl(2),
            switch_point: Lsn(4 * SEG),
            reason: String::new(),
        },
    ];
    let s = steps(
        (tl(1), Lsn(SEG + 100)),
        Lsn(SEG + 500),
        (tl(3), Lsn(5 * SEG + 40)),
        &history,
    )
    .unwrap();
    assert_eq!(
        s.iter()
            .map(|s| (s.timeline.0, s.from.0, s.to.0))
            .collect::<Vec<_>>(),
        [
            (1, SEG + 100, 2 * SEG + 800),
            (2, 2 * SEG + 800, 4 * SEG),
            (3, 4 * SEG, 5 * SEG + 40)
        ]
    );
    // The switch segment comes from the child timeline, which holds its head too.
    let segs: Vec<String> = segments(&s, SEG).iter().map(|s| s.to_string()).collect();
    assert_eq!(
        segs,
        [
            "000000010000000000000001",
            "000000020000000000000002",
            "000000020000000000000003",
            "000000030000000000000004",
            "000000030000000000000005"
        ]
    );
    // A reference that ends after its timeline was left is on an abandoned history.
    let e = steps(
        (tl(1), Lsn(SEG)),
        Lsn(2 * SEG + 900),
        (tl(3), Lsn(5 * SEG)),
        &history,
    )
    .unwrap_err();
    assert!(e.contains("after timeline 1 was left"), "{e}");
    let e = steps((tl(4), Lsn(SEG)), Lsn(SEG), (tl(3), Lsn(5 * SEG)), &history).unwrap_err();
    assert!(e.contains("not an ancestor"), "{e}");
}

#[test]
fn a_gap_in_the_maps_is_refused() {
    let maps = [
        map(1, 100, SEG, &[(rel(10), blocks(&[1]))]),
        map(1, 2 * SEG, 3 * SEG, &[]),
    ];
    let e = combine(&maps, Lsn(100), Lsn(2 * SEG + 50)).unwrap_err();
    assert!(e.contains("gap"), "{e}");
    // A range the maps do not reach is refused too.
    let e = combine(&maps[..1], Lsn(100), Lsn(SEG + 4000)).unwrap_err();
    assert!(e.contains("not the range"), "{e}");
    let e = combine(&maps[..1], Lsn(50), Lsn(SEG)).unwrap_err();
    assert!(e.contains("not the range"), "{e}");
    // An end at a page boundary reaches a start right after that page's header.
    assert!(combine(&maps[..1], Lsn(100), Lsn(SEG + 40)).is_ok());
}

#[test]
fn a_poisoned_map_in_the_range_is_refused_with_its_reason() {
    let mut bad = map(1, SEG, 2 * SEG, &[]);
    bad.poison = Poison(Poison::MINIMAL_WAL);
    let maps = [map(1, 100, SEG, &[]), bad];
    let e = combine(&maps, Lsn(100), Lsn(SEG + 50)).unwrap_err();
    assert!(e.contains("wal_level=minimal"), "{e}");
}

#[test]
fn maps_merge_across_a_timeline_switch_in_lsn_order() {
    let truncated = FileChanges {
        limit: Some(3),
        ..FileChanges::default()
    };
    let db = RelFork {
        spc: 1663,
        db: 9,
        rel: 0,
        fork: 0,
    };
    let maps = [
        map(1, 100, SEG, &[(rel(10), blocks(&[1, 7]))]),
        // The child's first map starts before the old timeline's last one ends.
        map(
            2,
            SEG - 300,
            2 * SEG,
            &[(rel(10), truncated), (rel(11), blocks(&[4]))],
        ),
        map(
            2,
            2 * SEG,
            2 * SEG + 900,
            &[(rel(10), blocks(&[5])), (db, FileChanges::default())],
        ),
    ];
    let c = combine(&maps, Lsn(100), Lsn(2 * SEG + 500)).unwrap();
    // Block 7 fell to the truncation; everything from block 3 is read anyway.
    assert_eq!(
        c.files[&rel(10)],
        FileChanges {
            limit: Some(3),
            whole: false,
            blocks: vec![1, 5]
        }
    );
    assert_eq!(c.files[&rel(11)].blocks, [4]);
    assert!(c.databases.contains(&(1663, 9)));
    // A child map that starts after the parent's maps end leaves a hole.
    let holed = [maps[0].clone(), map(2, SEG + 8192, 2 * SEG, &[])];
    let e = combine(&holed, Lsn(100), Lsn(SEG + 9000)).unwrap_err();
    assert!(e.contains("do not join"), "{e}");
}

#[test]
fn files_read_the_mapped_blocks_and_everything_past_the_limit_or_the_old_end() {
    let mut changes = Changes::default();
    changes.files.insert(
        rel(10),
        FileChanges {
            limit: Some(131072 + 50),
            whole: false,
            blocks: vec![3, 9, 131072 + 2, 131072 + 60, 2 * 131072 + 1],
        },
    );
    changes.files.insert(
        rel(11),
        FileChanges {
            whole: true,
            ..FileChanges::default()
        },
    );
    changes.databases.insert((1663, 6));
    let plan = MapPlan::Mapped(changes);
    let mb = |n: u64| n * BLCKSZ as u64;
    let of = |path: &str, size, old| FilePlan::of(&plan, path, size, &entry(old)).unwrap();
    assert_eq!(
        of("base/5/10", mb(131072), mb(131072)),
        FilePlan::Blocks {
            blocks: vec![3, 9],
            rest_from: 131072
        }
    );
    // Segment .1: its blocks are file-local, the limit cuts at 50 of them.
    assert_eq!(
        of("base/5/10.1", mb(40), mb(100)),
        FilePlan::Blocks {
            blocks: vec![2],
            rest_from: 50
        }
    );
    // The reference's shorter length wins over a later limit.
    assert_eq!(
        of("base/5/10.1", mb(200), mb(30)),
        FilePlan::Blocks {
            blocks: vec![2],
            rest_from: 30
        }
    );
    // Past the limit entirely: everything.
    assert_eq!(
        of("base/5/10.2", mb(10), mb(10)),
        FilePlan::Blocks {
            blocks: vec![],
            rest_from: 0
        }
    );
    assert_eq!(of("base/5/11", mb(5), mb(5)), FilePlan::Whole);
    assert_eq!(of("base/6/12", mb(5), mb(5)), FilePlan::Whole);
    assert_eq!(of("base/5/10_vm", mb(1), mb(1)), FilePlan::Whole);
    assert_eq!(of("base/5/10_fsm", mb(3), mb(3)), FilePlan::Whole);
    assert_eq!(of("base/5/13_init", mb(1), mb(1)), FilePlan::Whole);
    // Unnamed by the maps: only growth is read; shrinking without a truncation is not
    // believed.
    assert_eq!(
        of("base/5/12", mb(12), mb(10)),
        FilePlan::Blocks {
            blocks: vec![],
            rest_from: 10
        }
    );
    assert!(matches!(of("base/5/12", mb(8), mb(10)), FilePlan::Scan(_)));
    assert_eq!(
        FilePlan::of(&plan, "pg_xact/0000", 8192, &entry(8192)),
        None
    );
    let unusable = MapPlan::Unusable("no map".into());
    assert_eq!(
        FilePlan::of(&unusable, "base/5/10", 1, &entry(1)),
        Some(FilePlan::Scan("no map".into()))
    );
}

#[test]
fn block_map_check_values() {
    assert_eq!("off".parse(), Ok(BlockMapCheck::Off));
    assert_eq!("ALL".parse(), Ok(BlockMapCheck::All));
    assert_eq!("0.25".parse(), Ok(BlockMapCheck::Fraction(0.25)));
    assert!("1.5".parse::<BlockMapCheck>().is_err());
    assert!("some".parse::<BlockMapCheck>().is_err());
    let f = BlockMapCheck::Fraction(0.01);
    assert_eq!(f.sample_size(1000, 0), 10);
    assert_eq!(f.sample_size(1000, u64::MAX), 10);
    assert_eq!(f.sample_size(1050, 0), 11, "heads: the half block is read");
    assert_eq!(f.sample_size(1050, u64::MAX), 10, "tails: it is not");
    assert_eq!(f.sample_size(0, 0), 0);
    // Small files: checked now and then, a block at a time, 1% of them on average.
    let mut rng = crate::test_rng::Rng(7);
    let checked: u64 = (0..100_000).map(|_| f.sample_size(3, rng.next())).sum();
    assert!((2_400..3_600).contains(&checked), "{checked} of 300000");
    assert_eq!(BlockMapCheck::All.sample_size(3, 0), 3);
    assert_eq!(BlockMapCheck::Off.sample_size(3, 0), 0);
    assert_eq!(BlockMapCheck::All.sample_size(7, 0), 7);
    assert_eq!(BlockMapCheck::default().to_string(), "0.01");
}

#[test]
fn tail_keeps_the_last_bytes_in_bounded_memory() {
    use std::io::Write;
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let mut tail = Tail {
        keep: 1000,
        bytes: Vec::new(),
    };
    for chunk in data.chunks(777) {
        tail.write_all(chunk).unwrap();
        assert!(tail.bytes.len() < 2 * 1000 + 777);
    }
    assert_eq!(tail.finish(), data[data.len() - 1000..]);
    let mut whole = Tail {
        keep: data.len(),
        bytes: Vec::new(),
    };
    whole.write_all(&data).unwrap();
    assert_eq!(whole.finish(), data);
}
