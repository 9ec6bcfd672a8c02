//! Point-in-time recovery to every kind of target gives exactly the rows committed
//! before it: each restored table is compared with the source's table as it was at the
//! target (a checksum over every row, not a count).

use std::time::Duration;

use super::setup::Source;

struct Mark {
    /// Checksum of the source's table `t` right at the target.
    expected: String,
    target: Vec<String>,
}

fn table_checksum(c: &super::harness::Cluster) -> String {
    c.psql(
        "postgres",
        "SELECT md5(coalesce(string_agg(id || ':' || note, ',' ORDER BY id), '')) FROM t",
    )
}

#[test]
fn pitr_to_time_xid_lsn_name_and_immediate_restores_exactly_the_committed_rows() {
    let src = Source::start("pitr", 15);
    src.sql("CREATE TABLE t (id int PRIMARY KEY, note text)");
    src.sql("INSERT INTO t SELECT g, 'base' FROM generate_series(1, 100) g");
    let first = src.backup(&[]);
    let at_first_backup = table_checksum(&src.cluster);
    let insert = |from: i32, note: &str| {
        src.sql(&format!(
            "INSERT INTO t SELECT g, '{note}' FROM generate_series({from}, {}) g",
            from + 99
        ))
    };

    let mut marks = Vec::new();
    // Time: every commit before the target time is in, every later one out.
    insert(101, "before-time");
    let time = src.sql("SELECT now()");
    marks.push(Mark {
        expected: table_checksum(&src.cluster),
        target: vec!["--target-time".into(), time],
    });
    std::thread::sleep(Duration::from_millis(20));

    // Xid: the transaction with that id is the last one in (inclusive target).
    let xid = src.sql("BEGIN; INSERT INTO t SELECT g, 'xid' FROM generate_series(201, 300) g; SELECT txid_current(); COMMIT;");
    marks.push(Mark {
        expected: table_checksum(&src.cluster),
        target: vec![
            "--target-xid".into(),
            xid.trim().into(),
            "--set".into(),
            first.clone(),
        ],
    });
    insert(301, "after-xid");

    // LSN: everything up to that WAL position.
    let lsn = src.sql("SELECT pg_current_wal_lsn()");
    marks.push(Mark {
        expected: table_checksum(&src.cluster),
        target: vec!["--target-lsn".into(), lsn],
    });
    insert(401, "after-lsn");

    // Name: a restore point.
    src.sql("SELECT pg_create_restore_point('before_500')");
    marks.push(Mark {
        expected: table_checksum(&src.cluster),
        target: vec![
            "--target-name".into(),
            "before_500".into(),
            "--set".into(),
            first.clone(),
        ],
    });
    insert(501, "after-name");

    // Immediate: the backup's own consistent end.
    marks.push(Mark {
        expected: at_first_backup,
        target: vec![
            "--target".into(),
            "immediate".into(),
            "--set".into(),
            first.clone(),
        ],
    });

    // A later backup: restores to times and LSNs before it must still pick the first.
    let second = src.backup(&[]);
    insert(601, "after-second");
    src.archive_current_wal();
    let info = src.info_json();
    assert_eq!(info["backups"].as_array().unwrap().len(), 2);
    assert_eq!(
        info["recoverable_window"]["earliest_backup"],
        first.as_str()
    );
    let _ = second;

    std::thread::scope(|scope| {
        for (i, mark) in marks.iter().enumerate() {
            let src = &src;
            scope.spawn(move || {
                let mut args: Vec<&str> = mark.target.iter().map(String::as_str).collect();
                args.extend(["--target-action", "promote"]);
                let restored = src.restore_and_start(&format!("pitr-r{i}"), &args);
                assert_eq!(
                    table_checksum(&restored),
                    mark.expected,
                    "restore with {:?} gave other rows",
                    mark.target
                );
            });
        }
    });

    // No target: all archived WAL is replayed.
    let restored = src.restore_and_start("pitr-end", &[]);
    assert_eq!(table_checksum(&restored), table_checksum(&src.cluster));
}

#[test]
fn restore_without_set_refuses_a_target_before_every_backup() {
    let src = Source::start("pitr-early", 15);
    let before = src.sql("SELECT now() - interval '1 hour'");
    src.backup(&[]);
    let dir = super::harness::work_dir("pitr-early-r");
    let err = src.fails(
        &[
            "restore",
            "--pgdata",
            dir.to_str().unwrap(),
            "--target-time",
            &before,
        ],
        1,
    );
    assert!(
        err.contains("no backup ends before the recovery target"),
        "{err}"
    );
}

#[test]
fn pitr_follows_the_history_file_onto_a_later_timeline() {
    let src = Source::start("tli", 15);
    src.sql("CREATE TABLE t (id int PRIMARY KEY, note text)");
    src.sql("INSERT INTO t SELECT g, 'base' FROM generate_series(1, 100) g");
    src.backup(&[]);
    src.sql("INSERT INTO t SELECT g, 'tl1' FROM generate_series(101, 200) g");
    src.sql("SELECT pg_create_restore_point('on_tl1')");
    src.sql("INSERT INTO t SELECT g, 'tl1-later' FROM generate_series(201, 300) g");
    src.archive_current_wal();

    // A first restore stops on timeline 1, promotes to timeline 2 and keeps archiving
    // into the same stanza (its history file and, at promotion, a .partial segment).
    let tl2 = src.restore_and_start_archiving(
        "tli-r1",
        &["--target-name", "on_tl1", "--target-action", "promote"],
        true,
    );
    assert_eq!(
        tl2.psql(
            "postgres",
            "SELECT timeline_id FROM pg_control_checkpoint()"
        ),
        "2"
    );
    tl2.psql(
        "postgres",
        "INSERT INTO t SELECT g, 'tl2' FROM generate_series(1001, 1100) g",
    );
    tl2.psql("postgres", "SELECT pg_create_restore_point('on_tl2')");
    let expected = table_checksum(&tl2);
    let on_tl2_lsn = tl2.psql("postgres", "SELECT pg_current_wal_lsn()");
    let seg = tl2.psql("postgres", "SELECT pg_walfile_name(pg_switch_wal())");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while tl2.psql(
        "postgres",
        "SELECT coalesce(left(last_archived_wal, 24), '') FROM pg_stat_archiver",
    ) < seg
    {
        assert!(
            std::time::Instant::now() < deadline,
            "timeline 2 WAL not archived:\n{}",
            tl2.log_tail(20)
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let info = src.info_json();
    let timelines: Vec<u64> = info["archive"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["timeline"].as_u64().unwrap())
        .collect();
    assert_eq!(timelines, vec![1, 2]);
    // The recoverable window continues onto timeline 2 from its switch point.
    let windows = info["recoverable_windows"].as_array().unwrap();
    assert_eq!(windows.len(), 2, "{windows:?}");
    assert!(windows[0]["from"]
        .as_str()
        .unwrap()
        .starts_with("end of backup"));
    assert_eq!(windows[1]["timeline"], 2);
    assert_eq!(windows[1]["from"], "switch from timeline 1");
    assert!(src.ok(&["info"]).contains("timeline 2   |"));

    // Recovery from the timeline-1 backup follows 00000002.history to the point on timeline 2.
    let restored = src.restore_and_start(
        "tli-r2",
        &[
            "--target-name",
            "on_tl2",
            "--target-timeline",
            "latest",
            "--target-action",
            "promote",
        ],
    );
    assert_eq!(table_checksum(&restored), expected);
    assert_eq!(
        restored.psql(
            "postgres",
            "SELECT count(*) FROM t WHERE note = 'tl1-later'"
        ),
        "0"
    );

    // An LSN on timeline 2 is inside the window that `latest` reaches through the history
    // file (checked before the restore), and recovery gets there.
    let restored = src.restore_and_start(
        "tli-r3",
        &["--target-lsn", &on_tl2_lsn, "--target-action", "promote"],
    );
    assert_eq!(table_checksum(&restored), expected);

    // A backup taken on timeline 1 after timeline 2 forked off is not on timeline 2's
    // history: PostgreSQL would refuse to start along `latest`, so restore refuses first.
    let after_fork = src.backup(&[]);
    src.sql("INSERT INTO t SELECT g, 'tl1-after-fork' FROM generate_series(2001, 2100) g");
    let lsn = src.sql("SELECT pg_current_wal_lsn()");
    src.archive_current_wal();
    let dir = super::harness::work_dir("tli-r4").join("data");
    let dir_s = dir.display().to_string();
    let restore = ["restore", "--pgdata", &dir_s, "--archive-mode", "off"];
    let target = ["--set", &after_fork, "--target-lsn", &lsn];
    let err = src.fails(&[&restore[..], &target[..]].concat(), 1);
    assert!(err.contains("after timeline 2 forked off it at"), "{err}");
    assert!(err.contains("--target-timeline current"), "{err}");
    assert!(!dir.exists());
    src.ok(&[&restore[..], &target[..], &["--target-timeline", "current"]].concat());
}
