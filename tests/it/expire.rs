//! Retention never breaks a restorable chain or the WAL a retained backup needs.

use std::time::Duration;

use super::setup::{kill_pgward, Source};

fn archived_segments(src: &Source) -> Vec<String> {
    let info = src.info_json();
    info["archive"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["first_segment"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn expire_keeps_every_retained_backup_restorable_and_never_removes_pinned_ones() {
    let src = Source::start("expire", 15);
    src.sql("CREATE TABLE t (id int, note text)");
    let mut step = 0;
    let mut change = |src: &Source| {
        step += 1;
        src.sql(&format!(
            "INSERT INTO t SELECT g, 'step {step}' FROM generate_series(1, 1000) g"
        ));
    };
    let f1 = src.backup(&[]);
    change(&src);
    let i1 = src.backup(&["--type", "incr"]);
    change(&src);
    let d1 = src.backup(&["--type", "diff"]);
    change(&src);
    let f2 = src.backup(&[]);
    change(&src);
    let i2 = src.backup(&["--type", "incr"]);
    change(&src);
    src.sql("SELECT pg_create_restore_point('after_i2')");
    let expected = src.cluster.psql(
        "postgres",
        "SELECT count(*), md5(string_agg(id || note, ',' ORDER BY note, id)) FROM t",
    );
    src.archive_current_wal();
    let f2_start_segment = src.info_json()["backups"][3]["start_lsn"]
        .as_str()
        .unwrap()
        .to_string();

    // A dry run changes nothing.
    let plan = src.ok(&["expire", "--retain-full", "1", "--dry-run"]);
    assert!(
        plan.contains(&format!("would expire backup {f1}"))
            && plan.contains(&format!("would expire backup {d1}")),
        "{plan}"
    );
    assert_eq!(src.labels().len(), 5);

    // A pinned incremental keeps itself and its full; the diff goes.
    src.ok(&["pin", &i1]);
    src.ok(&["expire", "--retain-full", "1"]);
    assert_eq!(
        src.labels(),
        [f1.clone(), i1.clone(), f2.clone(), i2.clone()]
    );
    src.ok(&["verify"]);

    // Unpinned, the old chain goes, and WAL before the oldest retained backup with it.
    src.ok(&["unpin", &i1]);
    src.ok(&["expire", "--retain-full", "1"]);
    assert_eq!(src.labels(), [f2.clone(), i2.clone()]);
    let bundles: Vec<String> = std::fs::read_dir(src.repo.join("main/bundles"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        bundles
            .iter()
            .all(|b| b.starts_with(&f2) || b.starts_with(&i2)),
        "{bundles:?}"
    );
    let first_kept = &archived_segments(&src)[0];
    let f2_segment = u64::from_str_radix(&first_kept[16..24], 16).unwrap();
    let (hi, lo) = f2_start_segment.split_once('/').unwrap();
    let f2_lsn =
        (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap();
    assert_eq!(
        f2_segment,
        f2_lsn / (16 << 20),
        "archive must start at the oldest retained backup's segment"
    );
    src.ok(&["verify"]);

    // Every remaining backup restores, and PITR across the retained window works.
    let restored = src.restore_and_start(
        "expire-r",
        &[
            "--set",
            &f2,
            "--target-name",
            "after_i2",
            "--target-action",
            "promote",
        ],
    );
    assert_eq!(
        restored.psql(
            "postgres",
            "SELECT count(*), md5(string_agg(id || note, ',' ORDER BY note, id)) FROM t"
        ),
        expected
    );
    drop(restored);
    let restored = src.restore_and_start(
        "expire-r2",
        &[
            "--set",
            &i2,
            "--target-name",
            "after_i2",
            "--target-action",
            "promote",
        ],
    );
    assert_eq!(
        restored.psql(
            "postgres",
            "SELECT count(*), md5(string_agg(id || note, ',' ORDER BY note, id)) FROM t"
        ),
        expected
    );
}

#[test]
fn killed_expire_leaves_a_valid_repository_and_finishes_on_the_next_run() {
    let src = Source::start("killexpire", 15);
    src.sql("CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g");
    let f1 = src.backup(&[]);
    src.backup(&["--type", "incr"]);
    let f2 = src.backup(&[]);
    src.backup(&["--type", "incr"]);
    let f3 = src.backup(&[]);
    let _ = (f1, f2);
    let marker = super::harness::work_dir("killexpire-halt").join("halted");
    super::harness::chown_pg(marker.parent().unwrap());
    let halt = [(
        "PGWARD_TEST_EXPIRE_HALT".to_string(),
        marker.display().to_string(),
    )];
    let mut child = src.spawn(&["expire", "--retain-full", "1"], &halt);
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while !marker.exists() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "expire ended before its first removal"
        );
        assert!(
            std::time::Instant::now() < deadline,
            "expire never removed a backup"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    kill_pgward(&mut child);
    let left = src.labels();
    assert_eq!(
        left.len(),
        4,
        "expire was killed right after its first removal: {left:?}"
    );
    assert!(left.contains(&f3));
    src.ok(&["verify"]);
    src.ok(&["expire", "--retain-full", "1"]);
    assert_eq!(src.labels(), [f3]);
    src.ok(&["verify"]);
}

#[test]
fn retention_in_the_configuration_file_expires_after_each_backup() {
    let src = Source::start("autoexpire", 15);
    let config = super::harness::work_dir("autoexpire-conf").join("pgward.toml");
    std::fs::write(
        &config,
        "[global]\nretain-full = 2\n\n[stanza.main]\ncompress = \"lz4\"\n",
    )
    .unwrap();
    super::harness::chown_pg(config.parent().unwrap());
    let cfg = config.to_str().unwrap();
    let mut labels = Vec::new();
    for _ in 0..3 {
        labels.push(src.backup(&["--config", cfg]));
    }
    assert_eq!(
        src.labels(),
        labels[1..].to_vec(),
        "retain-full = 2 keeps the two newest fulls"
    );
}

#[test]
fn expire_removes_what_killed_archive_pushes_left_and_spares_pushes_in_progress() {
    let src = Source::start("stalepush", 15);
    if src.url.contains("://") {
        return; // the local archive's leftovers; object storage has none to plant
    }
    src.backup(&[]);
    src.archive_current_wal();
    let archive = std::path::Path::new(&src.url)
        .join(&src.stanza)
        .join("archive");
    let dir = std::fs::read_dir(&archive)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().unwrap().len() == 16)
        .expect("a WAL directory in the archive");
    let plant = |name: &str, age: Duration| {
        let path = dir.join(name);
        let file = std::fs::File::create(&path).unwrap();
        file.set_modified(std::time::SystemTime::now() - age)
            .unwrap();
        path
    };
    let abandoned = plant(
        "000000010000000000000099-x.lz4.1234-0.pgward-tmp",
        Duration::from_secs(7200),
    );
    let in_progress = plant(
        "00000001000000000000009A-y.lz4.1235-0.pgward-tmp",
        Duration::from_secs(5),
    );
    src.ok(&["expire", "--retain-full", "1"]);
    assert!(!abandoned.exists(), "a 2-hour-old partial push is removed");
    assert!(
        in_progress.exists(),
        "a push that may still be running is left alone"
    );
    src.ok(&["verify"]);
}

/// Labels of every manifest file in the (local) repository, damaged ones too.
fn manifest_labels(src: &Source) -> Vec<String> {
    let mut labels: Vec<String> = std::fs::read_dir(src.repo.join("main/backups"))
        .unwrap()
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_suffix(".manifest")
                .map(str::to_string)
        })
        .collect();
    labels.sort();
    labels
}

#[test]
fn expire_keeps_a_damaged_backup_and_what_it_may_need_and_expires_the_rest() {
    let src = Source::start("expire-damaged", 15);
    src.sql("CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g");
    let backup = |kind: &str| {
        src.sql("INSERT INTO t SELECT g FROM generate_series(1, 100) g");
        src.backup(&["--type", kind])
    };
    let f1 = backup("full");
    let i1 = backup("incr");
    let f2 = backup("full");
    let i2 = backup("incr");
    let d2 = backup("diff");
    let f3 = backup("full");
    let i3 = backup("incr");
    src.archive_current_wal();
    let manifest = |label: &str| src.repo.join(format!("main/backups/{label}.manifest"));
    let flip = |label: &str| {
        let good = std::fs::read(manifest(label)).unwrap();
        let mut bad = good.clone();
        let middle = bad.len() / 2;
        bad[middle] ^= 0x20;
        std::fs::write(manifest(label), bad).unwrap();
        good
    };
    let first_segment = |src: &Source| archived_segments(src)[0].clone();
    let i1_start = src.info_json()["backups"][1]["start_lsn"].clone();
    let f1_start = src.info_json()["backups"][0]["start_lsn"].clone();
    // The number of a segment file, and the segment holding an LSN (16 MiB segments).
    let segment_no = |name: &str| {
        u64::from_str_radix(&name[8..16], 16).unwrap() * 256
            + u64::from_str_radix(&name[16..24], 16).unwrap()
    };
    let lsn_segment = |lsn: &serde_json::Value| {
        let (hi, lo) = lsn.as_str().unwrap().split_once('/').unwrap();
        ((u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap())
            / (16 << 20)
    };
    assert_eq!(src.info_json()["backups"][1]["label"], i1.as_str());

    // A damaged incremental in the middle: it may build on any older backup, so all of
    // them stay; the diff after it builds on f2, not on it, and goes.
    let i2_good = flip(&i2);
    let out = src.pgward(&["expire", "--retain-full", "1"]);
    let err = super::setup::stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains(&format!("backup {i2} has a damaged manifest"))
            && err.contains(&format!("{f1}, {i1}, {f2}")),
        "{err}"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!(
            "expire backup {d2}: depends on expired backup {f2}"
        )),
        "{stdout}"
    );
    assert_eq!(
        manifest_labels(&src),
        [&f1, &i1, &f2, &i2, &f3, &i3].map(String::clone)
    );
    assert!(
        segment_no(&first_segment(&src)) <= lsn_segment(&f1_start),
        "WAL f1 needs was removed"
    );

    // A damaged full needs nothing older: f1 and i1 go; i2, which builds on it, stays,
    // and the WAL from i1's start (f2's own start is not known).
    std::fs::write(manifest(&i2), &i2_good).unwrap();
    let f2_good = flip(&f2);
    let plan: serde_json::Value =
        serde_json::from_str(&src.ok(&["--output", "json", "expire", "--retain-full", "1"]))
            .unwrap();
    assert_eq!(plan["damaged_backups"][0]["label"], f2.as_str(), "{plan:#}");
    assert_eq!(plan["damaged_backups"][0]["keeps"], serde_json::json!([i2]));
    assert_eq!(
        manifest_labels(&src),
        [&f2, &i2, &f3, &i3].map(String::clone)
    );
    assert_eq!(plan["wal_kept_from"], i1_start, "{plan:#}");
    assert_eq!(segment_no(&first_segment(&src)), lsn_segment(&i1_start));

    // Repaired, everything kept is whole, and the next expire removes it.
    std::fs::write(manifest(&f2), &f2_good).unwrap();
    src.ok(&["verify"]);
    src.ok(&["expire", "--retain-full", "1"]);
    assert_eq!(manifest_labels(&src), [f3, i3]);
    src.ok(&["verify"]);
}
