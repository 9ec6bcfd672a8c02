//! Block maps built when WAL is archived (issue 12): on real PostgreSQL 15 WAL.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use pgward::repo::blockmap::{BlockMap, Poison, RelFork};

use super::harness::*;
use super::setup::*;

/// Every `<wal name>.map` of a local repository: name -> stored bytes.
fn map_files(repo: &Path) -> BTreeMap<String, (PathBuf, Vec<u8>)> {
    let mut out = BTreeMap::new();
    for dir in std::fs::read_dir(repo.join("main/archive")).unwrap() {
        for f in std::fs::read_dir(dir.unwrap().path()).unwrap() {
            let path = f.unwrap().path();
            let name = path.file_name().unwrap().to_str().unwrap().to_string();
            if let Some(seg) = name.strip_suffix(".map") {
                let bytes = std::fs::read(&path).unwrap();
                out.insert(seg.to_string(), (path, bytes));
            }
        }
    }
    out
}

/// The map in a plain stanza's object: the payload after the 48-byte envelope header.
fn decode(stored: &[u8]) -> BlockMap {
    BlockMap::decode(&stored[48..]).expect("a sound map")
}

fn segments_archived(repo: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for dir in std::fs::read_dir(repo.join("main/archive")).unwrap() {
        for f in std::fs::read_dir(dir.unwrap().path()).unwrap() {
            let name = f.unwrap().file_name().into_string().unwrap();
            if name.len() == 24 + 1 + 64 + 4 && name.ends_with(".zst") {
                out.push(name[..24].to_string());
            }
        }
    }
    out.sort();
    out
}

#[test]
fn archived_segments_get_block_maps_naming_changed_blocks_truncations_and_poison() {
    // Always a local directory: the test reads and edits stored maps. Maps are built by
    // default (no `--wal-maps` in archive_command).
    let src = Source::start_at(
        "blockmap",
        ClusterOptions {
            major: 15,
            ..Default::default()
        },
        work_dir("blockmap-repo").display().to_string(),
        Vec::new(),
        &[],
    );
    let db: u32 = src
        .sql("SELECT oid FROM pg_database WHERE datname = 'postgres'")
        .parse()
        .unwrap();
    src.sql("CREATE TABLE t (id int, pad text) WITH (fillfactor = 10, autovacuum_enabled = off)");
    src.sql("INSERT INTO t SELECT g, repeat('x', 200) FROM generate_series(1, 400) g");
    src.archive_current_wal();
    let rel: u32 = src.sql("SELECT pg_relation_filenode('t')").parse().unwrap();
    let file = RelFork {
        spc: 1663,
        db,
        rel,
        fork: 0,
    };

    // A known UPDATE: the blocks of some rows.
    let before = src.sql("SELECT pg_walfile_name(pg_current_wal_insert_lsn())");
    let blocks: Vec<u32> = src
        .sql("SELECT DISTINCT (ctid::text::point)[0]::int FROM t WHERE id % 37 = 0 ORDER BY 1")
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    assert!(blocks.len() > 3, "{blocks:?}");
    src.sql("UPDATE t SET pad = 'y' WHERE id % 37 = 0");
    let after = src.sql("SELECT pg_walfile_name(pg_current_wal_insert_lsn())");
    src.archive_current_wal();
    let maps = map_files(&src.repo);
    let mut changed = Vec::new();
    for (name, (_, bytes)) in maps.range(before.clone()..=after.clone()) {
        let map = decode(bytes);
        assert!(
            !map.poison.is_poisoned(),
            "{name}: {:?}",
            map.poison.reasons()
        );
        changed.extend(
            map.files
                .get(&file)
                .map(|c| c.blocks.clone())
                .unwrap_or_default(),
        );
    }
    for b in &blocks {
        assert!(
            changed.contains(b),
            "block {b} of the UPDATE is not in the maps: {changed:?}"
        );
    }

    // TRUNCATE gives the table a new relfilenode, created in WAL: a whole-file mark.
    src.sql("TRUNCATE t");
    let new_rel: u32 = src.sql("SELECT pg_relation_filenode('t')").parse().unwrap();
    src.archive_current_wal();
    // Load to fill segments end to end (records straddle segment boundaries).
    let out = src.cluster.pgbench(&["-i", "-s", "3", "-q"]);
    assert!(out.status.success(), "{}", stderr(&out));
    src.archive_current_wal();

    let maps = map_files(&src.repo);
    let segments = segments_archived(&src.repo);
    for s in &segments {
        assert!(
            maps.contains_key(s),
            "{s} has no block map; maps: {:?}",
            maps.keys()
        );
    }
    let decoded: BTreeMap<&String, BlockMap> =
        maps.iter().map(|(n, (_, b))| (n, decode(b))).collect();
    let created = RelFork {
        rel: new_rel,
        ..file
    };
    assert!(
        decoded
            .values()
            .any(|m| m.files.get(&created).is_some_and(|c| c.whole)),
        "TRUNCATE's new relfilenode {new_rel} is not marked created"
    );
    for m in decoded.values() {
        assert!(!m.poison.is_poisoned(), "{:?}", m.poison.reasons());
    }
    let sizes: usize = maps.values().map(|(_, b)| b.len()).sum();
    eprintln!(
        "{} maps, {sizes} bytes for {} segments ({:.0} bytes per GiB of WAL)",
        maps.len(),
        segments.len(),
        sizes as f64 / (segments.len() as f64 * 16.0 / 1024.0)
    );
    let stats = src.ok(&["wal", "stats"]);
    assert!(
        stats.contains(&format!(
            "block maps: {} segment(s) with one, 0 without",
            segments.len()
        )),
        "{stats}"
    );

    // Backfill on a stanza whose maps were deleted rebuilds them identically.
    for (path, _) in maps.values() {
        std::fs::remove_file(path).unwrap();
    }
    let report = src.ok(&["wal", "maps"]);
    assert!(
        report.contains(&format!("{} without", segments.len())),
        "{report}"
    );
    src.ok(&["wal", "maps", "--backfill"]);
    let rebuilt = map_files(&src.repo);
    assert_eq!(rebuilt.len(), maps.len());
    for (name, (_, bytes)) in &maps {
        assert!(rebuilt[name].1 == *bytes, "{name}: the rebuilt map differs");
    }

    // A segment whose first record straddles in, backfilled while its predecessor is
    // missing from the archive: poisoned, not wrong.
    let (straddling, map) = decoded
        .iter()
        .find(|(n, m)| {
            let seg = u64::from_str_radix(&n[16..24], 16).unwrap();
            m.start.0 < (u64::from_str_radix(&n[8..16], 16).unwrap() << 32) + (seg << 24)
        })
        .expect("pgbench's WAL has a record across a segment boundary");
    let previous_pos = segments.iter().position(|s| s == *straddling).unwrap() - 1;
    let previous = &segments[previous_pos];
    let dir = src.repo.join("main/archive").join(&previous[..16]);
    let data = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with(&format!("{previous}-"))
        })
        .unwrap();
    let aside = src.repo.join("aside");
    std::fs::rename(&data, &aside).unwrap();
    std::fs::remove_file(&rebuilt[*straddling].0).unwrap();
    src.ok(&["wal", "maps", "--backfill"]);
    let poisoned = decode(&std::fs::read(&rebuilt[*straddling].0).unwrap());
    assert_eq!(poisoned.poison, Poison(Poison::HEAD_MISSING));
    assert!(poisoned.files.is_empty());
    let report = src.ok(&["wal", "maps"]);
    assert!(
        report.contains(&format!("{straddling}: previous segment missing")),
        "{report}"
    );
    std::fs::rename(&aside, &data).unwrap();
    // With the predecessor back, backfill replaces the poisoned map with the real one.
    src.ok(&["wal", "maps", "--backfill"]);
    assert_eq!(
        decode(&std::fs::read(&rebuilt[*straddling].0).unwrap()),
        *map
    );

    // verify names a damaged map and what it breaks.
    let (path, bytes) = &rebuilt[&segments[segments.len() / 2]];
    let mut bad = bytes.clone();
    let last = bad.len() - 1;
    bad[last] ^= 0x40;
    std::fs::write(path, &bad).unwrap();
    let out = src.pgward(&["verify"]);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    assert!(!out.status.success(), "verify passed:\n{text}");
    assert!(
        text.contains(&format!("{}.map", segments[segments.len() / 2]))
            && text.contains("page scan"),
        "{text}"
    );
    std::fs::write(path, bytes).unwrap();
    src.ok(&["verify"]);

    // expire removes maps with their segments.
    src.backup(&[]);
    src.sql("INSERT INTO t SELECT g FROM generate_series(1, 10) g");
    src.archive_current_wal();
    src.backup(&[]);
    src.ok(&["expire", "--retain-full", "1"]);
    let left = segments_archived(&src.repo);
    let maps_left = map_files(&src.repo);
    assert!(left.len() < segments.len(), "expire removed no WAL");
    for name in maps_left.keys() {
        assert!(
            left.contains(name),
            "the map of expired {name} is left behind"
        );
    }
}
