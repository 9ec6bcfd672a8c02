//! Incrementals that read only the blocks the WAL block maps name (issue 12, items 3-5),
//! on real PostgreSQL 15: what they read, that they restore exactly, and that they fall
//! back to the page scan, saying why, when a map is missing.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::harness::*;
use super::setup::*;

/// Files created or modified within 2 s of a reference's start count as changed (mtime
/// granularity); let the next backup see the load as older.
fn settle() {
    std::thread::sleep(Duration::from_millis(2500));
}

/// A source with block maps on, its repository a local directory (tests edit maps).
fn source(name: &str) -> Source {
    Source::start_at(
        name,
        ClusterOptions {
            major: 15,
            ..Default::default()
        },
        work_dir(&format!("{name}-repo")).display().to_string(),
        vec!["--wal-maps".into(), "on".into()],
        &[],
    )
}

/// `backup --output json` with `args`: the summary.
fn backup(src: &Source, args: &[&str]) -> serde_json::Value {
    let mut full = vec!["--output", "json", "backup"];
    full.extend_from_slice(args);
    serde_json::from_str(src.ok(&full).trim()).expect("backup --output json")
}

fn scanned(summary: &serde_json::Value) -> u64 {
    summary["reads"]["files_scanned"]
        .as_object()
        .map_or(0, |o| o.values().map(|v| v.as_u64().unwrap()).sum())
}

/// The content of `dbs` now (no load runs in these tests: what a backup taken now holds).
fn contents(src: &Source, dbs: &[&str]) -> Vec<(String, String)> {
    dbs.iter()
        .map(|d| (d.to_string(), src.cluster.content_checksum(d)))
        .collect()
}

/// Restores `label` beside the source (to its consistent point) and compares content.
fn assert_restores_to(src: &Source, label: &str, name: &str, want: &[(String, String)]) {
    let restored = src.restore_and_start(
        name,
        &[
            "--set",
            label,
            "--target",
            "immediate",
            "--target-action",
            "promote",
        ],
    );
    for (db, sum) in want {
        assert_eq!(
            &restored.content_checksum(db),
            sum,
            "database {db} of backup {label} differs from the source"
        );
    }
    restored.stop();
}

#[test]
fn an_incremental_after_a_small_update_reads_only_the_mapped_blocks_and_restores_exactly() {
    let src = source("mapped-update");
    src.sql(
        "CREATE TABLE t (id int PRIMARY KEY, pad text) WITH (autovacuum_enabled = off); \
         INSERT INTO t SELECT g, repeat('x', 200) FROM generate_series(1, 100000) g",
    );
    let table: u64 = src.sql("SELECT pg_relation_size('t')").parse().unwrap();
    // Written out now, not by the full's own start checkpoint: files that checkpoint
    // writes have mtimes too close to the reference's start to prove them unchanged, and
    // the incremental would read their FSM and VM forks whole.
    src.sql("CHECKPOINT");
    settle();
    src.backup(&[]);

    // A contiguous 1% of the rows.
    src.sql("UPDATE t SET pad = repeat('y', 200) WHERE id BETWEEN 5000 AND 6000");
    src.sql("CHECKPOINT");
    let incr = backup(&src, &["--type", "incr"]);
    let reads = &incr["reads"];
    let read = reads["bytes_read"].as_u64().unwrap();
    eprintln!("table {table} bytes; the incremental read {read}: {reads}");
    assert!(
        read < table / 10,
        "the incremental read {read} bytes of a {table}-byte table: {reads}"
    );
    assert!(reads["files_mapped"].as_u64().unwrap() > 0, "{reads}");
    assert_eq!(scanned(&incr), 0, "{reads}");
    assert_eq!(reads["map_check"], "0.01");
    let label = incr["label"].as_str().unwrap().to_string();
    let at_incr = contents(&src, &["postgres"]);
    // info shows the same, in text and JSON.
    let info = src.info_json();
    let shown = info["backups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["label"] == label.as_str())
        .unwrap();
    assert_eq!(shown["reads"]["bytes_read"], read);
    let text = src.ok(&["info"]);
    assert!(text.contains("from block maps, 0 scanned"), "{text}");

    // The cross-check reads every block the maps leave out, and finds nothing.
    src.sql("UPDATE t SET pad = 'z' WHERE id BETWEEN 50000 AND 50400");
    src.sql("DELETE FROM t WHERE id BETWEEN 70000 AND 70100");
    src.sql("CHECKPOINT");
    let checked = backup(&src, &["--type", "incr", "--block-map-check", "all"]);
    let reads = &checked["reads"];
    assert_eq!(reads["map_check"], "all");
    assert!(reads["map_checked_blocks"].as_u64().unwrap() > 0, "{reads}");
    assert!(reads.get("map_misses").is_none(), "{reads}");
    assert_eq!(scanned(&checked), 0, "{reads}");
    src.ok(&["verify"]);
    verify_names_a_recorded_miss(&src, checked["label"].as_str().unwrap());

    assert_restores_to(&src, &label, "mapped-update-r1", &at_incr);
    let last = checked["label"].as_str().unwrap();
    assert_restores_to(
        &src,
        last,
        "mapped-update-r2",
        &contents(&src, &["postgres"]),
    );
}

#[test]
fn truncation_new_tables_and_new_databases_between_reference_and_incremental_restore_exactly() {
    let src = source("mapped-ddl");
    src.sql(
        "CREATE TABLE gone (id int, pad text); \
         INSERT INTO gone SELECT g, repeat('g', 300) FROM generate_series(1, 20000) g; \
         CREATE TABLE shrinks (id int, pad text) WITH (autovacuum_enabled = off); \
         INSERT INTO shrinks SELECT g, repeat('s', 300) FROM generate_series(1, 20000) g; \
         CREATE TABLE kept (id int, pad text); \
         INSERT INTO kept SELECT g, repeat('k', 100) FROM generate_series(1, 5000) g",
    );
    settle();
    src.backup(&[]);

    src.sql("TRUNCATE gone");
    src.sql("INSERT INTO gone SELECT g, 'again' FROM generate_series(1, 100) g");
    // VACUUM truncates the emptied tail; later rows reuse the truncated range.
    src.sql("DELETE FROM shrinks WHERE id > 5000");
    src.sql("VACUUM shrinks");
    src.sql("INSERT INTO shrinks SELECT g, 'back' FROM generate_series(30000, 30500) g");
    src.sql(
        "CREATE TABLE fresh AS SELECT g AS id, md5(g::text) AS h FROM generate_series(1, 3000) g",
    );
    src.sql("UPDATE kept SET pad = 'changed' WHERE id % 100 = 0");
    src.sql("CREATE DATABASE walcopy STRATEGY WAL_LOG");
    src.sql("CREATE DATABASE filecopy STRATEGY FILE_COPY");
    src.cluster.psql(
        "filecopy",
        "CREATE TABLE f AS SELECT g FROM generate_series(1, 1000) g",
    );
    src.sql("CHECKPOINT");
    let incr = backup(&src, &["--type", "incr", "--block-map-check", "all"]);
    let reads = &incr["reads"];
    assert!(reads["files_mapped"].as_u64().unwrap() > 0, "{reads}");
    assert_eq!(scanned(&incr), 0, "{reads}");
    assert!(reads.get("map_misses").is_none(), "{reads}");

    // A chain: more of the same on top of the incremental.
    src.sql("TRUNCATE fresh");
    src.sql("DROP DATABASE walcopy");
    src.sql("CREATE DATABASE walcopy");
    src.cluster.psql(
        "walcopy",
        "CREATE TABLE w AS SELECT g, md5(g::text) FROM generate_series(1, 2000) g",
    );
    src.sql("DELETE FROM shrinks WHERE id > 100");
    src.sql("VACUUM shrinks");
    src.sql("CHECKPOINT");
    let second = backup(&src, &["--type", "incr", "--block-map-check", "all"]);
    assert_eq!(scanned(&second), 0, "{}", second["reads"]);
    assert!(second["reads"].get("map_misses").is_none());

    let want = contents(&src, &["postgres", "walcopy", "filecopy"]);
    assert_restores_to(
        &src,
        second["label"].as_str().unwrap(),
        "mapped-ddl-r",
        &want,
    );
}

/// A backup whose manifest records a block the maps missed (as a cross-check hit
/// would) is reported by verify; the manifest as it was passes again.
fn verify_names_a_recorded_miss(src: &Source, label: &str) {
    use pgward::repo::object::{envelope, Kind};
    let path = src.repo.join(format!("main/backups/{label}.manifest"));
    let stored = std::fs::read(&path).unwrap();
    let mut manifest: serde_json::Value = serde_json::from_slice(&stored[48..]).unwrap();
    manifest["reads"]["map_misses"] = serde_json::json!([{"path": "base/5/1259", "blocks": [3]}]);
    let payload = serde_json::to_vec(&manifest).unwrap();
    std::fs::write(&path, envelope(Kind::Manifest, &payload)).unwrap();
    let out = src.pgward(&["verify"]);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    assert!(!out.status.success(), "verify passed:\n{text}");
    assert!(
        text.contains(&format!("backup {label} found 1 changed block(s)"))
            && text.contains("base/5/1259"),
        "{text}"
    );
    assert!(src
        .ok(&["info"])
        .contains("BLOCK MAP MISS: 1 block(s) of base/5/1259"));
    std::fs::write(&path, stored).unwrap();
    src.ok(&["verify"]);
}

/// Every `<segment>.map` of the stanza: segment name -> path.
fn map_paths(repo: &Path) -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    for dir in std::fs::read_dir(repo.join("main/archive")).unwrap() {
        for f in std::fs::read_dir(dir.unwrap().path()).unwrap() {
            let path = f.unwrap().path();
            let name = path.file_name().unwrap().to_str().unwrap().to_string();
            if let Some(seg) = name.strip_suffix(".map") {
                out.push((seg.to_string(), path));
            }
        }
    }
    out.sort();
    out
}

/// Switches WAL and checkpoints until `segment` has left pg_wal (recycled or removed).
fn wait_until_recycled(src: &Source, segment: &str) {
    let path = src.cluster.data.join("pg_wal").join(segment);
    let deadline = Instant::now() + Duration::from_secs(60);
    while path.exists() {
        assert!(Instant::now() < deadline, "{segment} stays in pg_wal");
        src.archive_current_wal();
        src.sql("CHECKPOINT");
    }
}

#[test]
fn a_missing_or_poisoned_map_in_the_range_makes_the_incremental_scan_and_say_why() {
    use pgward::repo::blockmap::{BlockMap, Poison};
    use pgward::repo::object::{envelope, Kind};

    let src = source("mapped-fallback");
    src.sql(
        "CREATE TABLE t (id int, pad text); \
         INSERT INTO t SELECT g, repeat('x', 200) FROM generate_series(1, 20000) g",
    );
    settle();
    src.backup(&[]);
    src.sql("UPDATE t SET pad = 'u' WHERE id % 50 = 0");
    let in_range = src.sql("SELECT pg_walfile_name(pg_current_wal_insert_lsn())");
    src.archive_current_wal();
    wait_until_recycled(&src, &in_range);

    let maps = map_paths(&src.repo);
    let (_, path) = maps
        .iter()
        .find(|(n, _)| *n == in_range)
        .expect("the segment of the update has a map");
    let stored = std::fs::read(path).unwrap();
    std::fs::remove_file(path).unwrap();
    let incr = backup(&src, &["--type", "incr"]);
    let reasons = incr["reads"]["files_scanned"].as_object().unwrap();
    assert!(
        reasons
            .keys()
            .any(|why| why.contains(&format!("no block map of {in_range}"))),
        "{reasons:?}"
    );
    assert_eq!(incr["reads"]["files_mapped"], 0);
    assert!(src
        .ok(&["info"])
        .contains(&format!("no block map of {in_range}")));
    let want = contents(&src, &["postgres"]);
    assert_restores_to(
        &src,
        incr["label"].as_str().unwrap(),
        "mapped-fallback-r1",
        &want,
    );

    // The map back, but poisoned: the next incremental's range starts after it, so
    // poison one in its own range instead.
    std::fs::write(path, &stored).unwrap();
    src.sql("UPDATE t SET pad = 'v' WHERE id % 70 = 0");
    let in_range = src.sql("SELECT pg_walfile_name(pg_current_wal_insert_lsn())");
    src.archive_current_wal();
    let (_, path) = map_paths(&src.repo)
        .into_iter()
        .find(|(n, _)| *n == in_range)
        .unwrap();
    let mut map = BlockMap::decode(&std::fs::read(&path).unwrap()[48..]).unwrap();
    map.poison = Poison(Poison::UNKNOWN_REL_UPDATE);
    map.files.clear();
    std::fs::write(&path, envelope(Kind::BlockMap, &map.encode())).unwrap();
    let incr = backup(&src, &["--type", "incr"]);
    let reasons = incr["reads"]["files_scanned"].as_object().unwrap();
    assert!(
        reasons
            .keys()
            .any(|why| why.contains("poisoned (unknown relation-changing record)")),
        "{reasons:?}"
    );
    let want = contents(&src, &["postgres"]);
    assert_restores_to(
        &src,
        incr["label"].as_str().unwrap(),
        "mapped-fallback-r2",
        &want,
    );
}

#[test]
fn an_incremental_of_a_promoted_copy_plans_past_abandoned_wal_and_restores_exactly() {
    let src = source("mapped-tl");
    src.sql(
        "CREATE TABLE t (id int PRIMARY KEY, note text) WITH (autovacuum_enabled = off); \
         INSERT INTO t SELECT g, repeat('b', 200) FROM generate_series(1, 20000) g",
    );
    settle();
    let full = src.backup(&[]);
    src.sql("UPDATE t SET note = 'tl1' WHERE id BETWEEN 100 AND 300");
    src.sql("SELECT pg_create_restore_point('on_tl1')");
    src.archive_current_wal();

    // Promoted on timeline 2, archiving into the same stanza; timeline 1 goes on with
    // changes timeline 2 never saw (truncations included), in the same archive.
    let tl2 = src.restore_and_start_archiving(
        "mapped-tl2",
        &["--target-name", "on_tl1", "--target-action", "promote"],
        true,
    );
    src.sql("UPDATE t SET note = 'abandoned' WHERE id BETWEEN 5000 AND 9000");
    src.sql("DELETE FROM t WHERE id > 15000");
    src.sql("VACUUM t");
    src.archive_current_wal();
    // The backup follows timeline 2's history file from the archive. (The copy's files
    // were all born after the reference, so they are read whole: the maps' plan is what
    // this test checks; the in-place promotion below reads mapped blocks.)
    let done = tl2.data.join("pg_wal/archive_status/00000002.history.done");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done.exists() {
        assert!(Instant::now() < deadline, "00000002.history not archived");
        std::thread::sleep(Duration::from_millis(100));
    }
    tl2.psql(
        "postgres",
        "UPDATE t SET note = 'tl2' WHERE id BETWEEN 12000 AND 12300",
    );
    tl2.psql("postgres", "CHECKPOINT");

    let mut args: Vec<String> = src.extra.clone();
    args.extend(["--repo", &src.url, "--stanza", "main"].map(String::from));
    args.extend(
        [
            "--output",
            "json",
            "backup",
            "--type",
            "incr",
            "--block-map-check",
            "all",
        ]
        .map(String::from),
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = pgward(&args, &tl2.env());
    let incr: serde_json::Value =
        serde_json::from_str(assert_success(&out, "backup on timeline 2").trim()).unwrap();
    let reads = &incr["reads"];
    eprintln!("{reads}");
    let label = incr["label"].as_str().unwrap();
    let info = src.info_json();
    let shown = info["backups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["label"] == label)
        .unwrap();
    assert_eq!(shown["reference"], full.as_str(), "{shown}");
    assert_eq!(shown["timeline"], 2, "{shown}");
    // Every file of the copy was created by its restore, after the reference: the maps
    // planned the range, and the files are copied whole (and said to be).
    assert_eq!(reads["files_mapped"], 0, "{reads}");
    assert!(reads["files_whole"].as_u64().unwrap() > 0, "{reads}");
    assert_eq!(scanned(&incr), 0, "{reads}");
    assert!(reads.get("map_misses").is_none(), "{reads}");

    let want = vec![("postgres".to_string(), tl2.content_checksum("postgres"))];
    tl2.stop();
    assert_restores_to(&src, label, "mapped-tl-r", &want);
}

#[test]
fn an_incremental_after_an_in_place_promotion_reads_mapped_blocks_across_the_switch() {
    let src = source("mapped-inplace");
    src.sql(
        "CREATE TABLE t (id int PRIMARY KEY, note text) WITH (autovacuum_enabled = off); \
         INSERT INTO t SELECT g, repeat('b', 200) FROM generate_series(1, 40000) g",
    );
    settle();
    src.backup(&[]);
    src.sql("UPDATE t SET note = 'tl1' WHERE id BETWEEN 100 AND 300");
    src.sql("DELETE FROM t WHERE id > 38000");
    src.sql("VACUUM t");
    // A record from the last whole segment of timeline 1 into the next, where timeline 2
    // will begin: the first segment of timeline 2 then starts inside a record whose
    // head is in timeline 1's segment (its map must take it from there). Transactional,
    // so that its commit flushes it before the stop.
    let last_whole = src.sql("SELECT pg_walfile_name(pg_current_wal_insert_lsn())");
    let to_boundary: u64 = src
        .sql("SELECT 16777216 - (pg_current_wal_insert_lsn() - '0/0'::pg_lsn) % 16777216")
        .parse()
        .unwrap();
    src.sql(&format!(
        "SELECT pg_logical_emit_message(true, 'pad', repeat('x', {}))",
        to_boundary + 8192
    ));

    // Archive recovery of the same data directory to the end of the archive: it
    // promotes to timeline 2 and its files keep their birth times (not "created since").
    // Stopped at once: a clean stop with archiving on switches to a new segment, so that
    // timeline 2 would begin on a segment boundary, and its first segment would not
    // start inside the record above. First the segment the record began in is archived
    // (archive recovery does not archive what the crash left unarchived).
    let done = src
        .cluster
        .data
        .join(format!("pg_wal/archive_status/{last_whole}.done"));
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done.exists() {
        assert!(Instant::now() < deadline, "{last_whole} not archived");
        std::thread::sleep(Duration::from_millis(100));
    }
    src.cluster.stop_immediate();
    src.cluster.append_conf(&[format!(
        "restore_command = '{} {} --repo {} --stanza main archive-get %f %p'",
        pgward_bin().display(),
        src.extra.join(" "),
        src.url
    )]);
    let signal = src.cluster.data.join("recovery.signal");
    std::fs::write(&signal, "").unwrap();
    chown_pg(&signal);
    src.cluster.start();
    assert_eq!(
        src.cluster.wait_for_recovery_end(Duration::from_secs(120)),
        RecoveryEnd::Promoted
    );
    assert_eq!(
        src.sql("SELECT timeline_id FROM pg_control_checkpoint()"),
        "2"
    );
    let first_on_2 = src.sql("SELECT pg_walfile_name(pg_current_wal_insert_lsn())");
    assert!(first_on_2.starts_with("00000002"), "{first_on_2}");
    let head = std::fs::read(src.cluster.data.join("pg_wal").join(&first_on_2)).unwrap();
    assert!(
        head[2] & 1 != 0,
        "{first_on_2} does not start inside a record"
    );
    // The backup follows timeline 2's history file from the archive.
    let done = src
        .cluster
        .data
        .join("pg_wal/archive_status/00000002.history.done");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done.exists() {
        assert!(Instant::now() < deadline, "00000002.history not archived");
        std::thread::sleep(Duration::from_millis(100));
    }
    src.sql("UPDATE t SET note = 'tl2' WHERE id BETWEEN 20000 AND 20300");
    src.sql("INSERT INTO t SELECT g, 'back' FROM generate_series(38001, 38500) g");
    src.sql("CHECKPOINT");

    let incr = backup(&src, &["--type", "incr", "--block-map-check", "all"]);
    let reads = &incr["reads"];
    // The map archive-push stored for timeline 2's first segment is whole: the head of
    // the record straddling in came from timeline 1's segment before it.
    let (_, path) = map_paths(&src.repo)
        .into_iter()
        .find(|(n, _)| *n == first_on_2)
        .unwrap_or_else(|| panic!("{first_on_2} has no map"));
    let map =
        pgward::repo::blockmap::BlockMap::decode(&std::fs::read(&path).unwrap()[48..]).unwrap();
    assert!(
        !map.poison.is_poisoned(),
        "{first_on_2}: {:?}",
        map.poison.reasons()
    );
    let table: u64 = src.sql("SELECT pg_relation_size('t')").parse().unwrap();
    assert!(reads["files_mapped"].as_u64().unwrap() > 0, "{reads}");
    assert_eq!(scanned(&incr), 0, "{reads}");
    assert!(reads["map_checked_blocks"].as_u64().unwrap() > 0, "{reads}");
    assert!(reads.get("map_misses").is_none(), "{reads}");
    // Without the check's reads, a small part of the table would be read.
    let quiet = {
        src.sql("UPDATE t SET note = 'again' WHERE id BETWEEN 30000 AND 30100");
        src.sql("CHECKPOINT");
        backup(&src, &["--type", "incr", "--block-map-check", "off"])
    };
    let read = quiet["reads"]["bytes_read"].as_u64().unwrap();
    assert!(read < table / 5, "read {read} of a {table}-byte table");

    let want = contents(&src, &["postgres"]);
    assert_restores_to(
        &src,
        quiet["label"].as_str().unwrap(),
        "mapped-inplace-r",
        &want,
    );
}
