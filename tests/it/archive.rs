//! archive-push and archive-get as PostgreSQL's archive_command and restore_command.

use std::fs;

use super::harness::*;
use super::setup::{stderr, Source};

fn stored_files(repo: &std::path::Path, prefix: &str) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for dir in fs::read_dir(repo.join("main/archive")).unwrap() {
        for f in fs::read_dir(dir.unwrap().path()).unwrap() {
            let p = f.unwrap().path();
            if p.file_name().unwrap().to_string_lossy().starts_with(prefix) {
                out.push(p);
            }
        }
    }
    out
}

#[test]
fn archive_push_is_idempotent_and_refuses_foreign_or_conflicting_files() {
    let src = Source::start("push", 15);
    src.archive_current_wal();
    let seg = src.sql("SELECT last_archived_wal FROM pg_stat_archiver");
    let wal_dir = work_dir("push-files");
    // PostgreSQL keeps the segment until its next checkpoint; take a copy to push again.
    let copy = wal_dir.join(&seg);
    let original =
        fs::read(src.cluster.data.join("pg_wal").join(&seg)).expect("segment still in pg_wal");
    fs::write(&copy, &original).unwrap();
    chown_pg(&wal_dir);

    // An identical duplicate succeeds.
    src.ok(&["archive-push", copy.to_str().unwrap()]);

    // A different file under the same name fails with its own message.
    let mut changed = original.clone();
    changed[100_000] ^= 0xff;
    fs::write(&copy, &changed).unwrap();
    let err = src.fails(&["archive-push", copy.to_str().unwrap()], 4);
    assert!(
        err.contains("already archived") && err.contains("different contents"),
        "{err}"
    );

    // A segment from another cluster is refused by its system identifier.
    let other = Cluster::init("push-other", ClusterOptions::default());
    let foreign_name = "000000010000000000000001";
    let foreign = wal_dir.join("foreign");
    fs::create_dir_all(&foreign).unwrap();
    fs::copy(
        other.data.join("pg_wal").join(foreign_name),
        foreign.join(foreign_name),
    )
    .unwrap();
    chown_pg(&wal_dir);
    let err = src.fails(
        &["archive-push", foreign.join(foreign_name).to_str().unwrap()],
        4,
    );
    assert!(
        err.contains("does not belong to stanza") && err.contains("system identifier"),
        "{err}"
    );

    // A malformed name is refused before anything is read.
    let bogus = wal_dir.join("00000001000000000000000G");
    fs::write(&bogus, b"x").unwrap();
    chown_pg(&wal_dir);
    let err = src.fails(&["archive-push", bogus.to_str().unwrap()], 3);
    assert!(err.contains("is not a WAL file name"), "{err}");

    // A stanza that was never created is a configuration error, not a silent success.
    let out = pgward(
        &[
            "--repo",
            src.repo.to_str().unwrap(),
            "--stanza",
            "nope",
            "archive-push",
            copy.to_str().unwrap(),
        ],
        &src.cluster.env(),
    );
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("does not exist"), "{}", stderr(&out));
}

#[test]
fn history_backup_and_partial_files_round_trip_through_the_archive() {
    let src = Source::start("kinds", 15);
    src.backup(&[]); // the stop call writes and archives a .backup file
    assert_eq!(
        stored_files(&src.repo, "")
            .iter()
            .filter(|p| p.to_string_lossy().contains(".backup-"))
            .count(),
        1
    );

    let dir = work_dir("kinds-files");
    src.sql("CREATE TABLE t AS SELECT 1 AS x");
    src.archive_current_wal();
    let seg = src.sql("SELECT left(last_archived_wal, 24) FROM pg_stat_archiver");
    let history = "1\t0/5000000\tno recovery target specified\n";
    fs::write(dir.join("00000002.history"), history).unwrap();
    let segment_bytes = fs::read(src.cluster.data.join("pg_wal").join(&seg)).unwrap();
    // The last segment of a timeline, archived at promotion under SEGMENT.partial.
    let partial_source = dir.join(seg.clone() + ".partial");
    fs::write(&partial_source, &segment_bytes).unwrap();
    chown_pg(&dir);
    src.ok(&[
        "archive-push",
        dir.join("00000002.history").to_str().unwrap(),
    ]);
    src.ok(&["archive-push", partial_source.to_str().unwrap()]);

    // archive-get finds each kind; a segment that exists only as .partial is still found.
    let got = dir.join("got");
    fs::create_dir_all(&got).unwrap();
    chown_pg(&dir);
    src.ok(&[
        "archive-get",
        "00000002.history",
        got.join("h").to_str().unwrap(),
    ]);
    assert_eq!(fs::read_to_string(got.join("h")).unwrap(), history);
    let backup_file = stored_files(&src.repo, "")
        .into_iter()
        .find(|p| p.to_string_lossy().contains(".backup-"))
        .unwrap();
    let backup_name = backup_file
        .file_name()
        .unwrap()
        .to_string_lossy()
        .split('-')
        .next()
        .unwrap()
        .to_string();
    src.ok(&["archive-get", &backup_name, got.join("b").to_str().unwrap()]);
    assert!(fs::read_to_string(got.join("b"))
        .unwrap()
        .contains("START WAL LOCATION"));

    // Remove the full segment from the repository: the .partial copy must still be served.
    for p in stored_files(&src.repo, &format!("{seg}-")) {
        fs::remove_file(p).unwrap();
    }
    src.ok(&["archive-get", &seg, got.join("s").to_str().unwrap()]);
    assert_eq!(fs::read(got.join("s")).unwrap(), segment_bytes);
}

#[test]
fn corrupt_archived_segment_stops_recovery_and_verify_names_it() {
    let src = Source::start("corrupt", 15);
    src.sql("CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g");
    src.archive_current_wal();
    let seg = src.sql("SELECT last_archived_wal FROM pg_stat_archiver");
    let dest = work_dir("corrupt-get");
    let dest_s = dest.join("RECOVERYXLOG").display().to_string();

    // Present and intact: exit 0. Absent: exit 1, the normal end of the archive.
    src.ok(&["archive-get", &seg, &dest_s]);
    let out = src.pgward(&["archive-get", "0000000100000000000000FE", &dest_s]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));

    // One flipped byte in the stored file: exit above 125 so PostgreSQL stops recovery.
    let stored = stored_files(&src.repo, &format!("{seg}-")).pop().unwrap();
    let mut bytes = fs::read(&stored).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x55;
    fs::write(&stored, &bytes).unwrap();
    let out = src.pgward(&["archive-get", &seg, &dest_s]);
    assert!(
        out.status.code().unwrap() > 125,
        "corrupt segment must stop recovery, got {:?}: {}",
        out.status.code(),
        stderr(&out)
    );
    assert!(stderr(&out).contains(&seg), "{}", stderr(&out));

    let out = src.pgward(&["verify"]);
    assert_eq!(
        out.status.code(),
        Some(5),
        "verify must fail:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        report.contains(&seg) && report.contains("breaks"),
        "{report}"
    );

    // A repository that is not there must not look like the end of the archive either.
    let out = pgward(
        &[
            "--repo",
            "/nonexistent/repo",
            "--stanza",
            "main",
            "archive-get",
            &seg,
            &dest_s,
        ],
        &src.cluster.env(),
    );
    assert!(out.status.code().unwrap() > 125, "{}", stderr(&out));
}

fn wal_stats(src: &Source) -> serde_json::Value {
    serde_json::from_str(&src.ok(&["--output", "json", "wal", "stats"])).unwrap()
}

#[test]
fn async_archive_push_never_loses_wal_when_the_repository_fails_and_the_queue_fills() {
    let src = Source::start("async", 15);
    let spool = work_dir("async-spool");
    let cmd = format!(
        "{} --repo {} --stanza main archive-push --async --spool-path {} --archive-push-queue-max 2 %p",
        pgward_bin().display(),
        src.repo.display(),
        spool.display()
    );
    src.sql(&format!(
        "ALTER SYSTEM SET archive_command = {}",
        sql_quote(&cmd)
    ));
    src.sql("SELECT pg_reload_conf()");
    let first = src.backup(&[]);
    assert!(src
        .cluster
        .pgbench(&["-i", "-s", "2", "-q"])
        .status
        .success());
    src.archive_current_wal();

    // The repository refuses writes: spooled files pile up to the queue limit, then
    // archive-push fails and PostgreSQL keeps its WAL.
    let archive = src.repo.join("main/archive");
    let lock_out = |mode: u32| {
        use std::os::unix::fs::PermissionsExt;
        for d in fs::read_dir(&archive).unwrap().flatten() {
            fs::set_permissions(d.path(), fs::Permissions::from_mode(mode)).unwrap();
        }
    };
    lock_out(0o500);
    for _ in 0..5 {
        src.sql("CREATE TABLE IF NOT EXISTS filler (x int); INSERT INTO filler SELECT generate_series(1, 1000)");
        src.sql("SELECT pg_switch_wal()");
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while src.sql("SELECT failed_count FROM pg_stat_archiver") == "0" {
        assert!(
            std::time::Instant::now() < deadline,
            "archive-push never reported the full queue"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let queued = fs::read_dir(spool.join("main/push"))
        .unwrap()
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .count();
    assert!(
        queued <= 2,
        "the spool holds {queued} files, more than --archive-push-queue-max"
    );

    // Back to normal: everything arrives, in order, with no gap.
    lock_out(0o755);
    src.archive_current_wal();
    wait_for_drained_spool(&spool.join("main/push"));
    let stats = wal_stats(&src);
    assert_eq!(
        stats["timelines"][0]["gaps"].as_array().unwrap().len(),
        0,
        "{stats}"
    );
    src.ok(&["verify"]);
    let expected = src.cluster.content_checksum("postgres");
    let restored = src.restore_and_start("async-r", &["--set", &first]);
    assert_eq!(restored.content_checksum("postgres"), expected);
}

#[test]
fn archive_get_prefetches_the_next_segments_and_serves_them_locally() {
    let src = Source::start("prefetch", 15);
    src.sql("CREATE TABLE t (x int)");
    let mut segments = Vec::new();
    for _ in 0..5 {
        src.sql("INSERT INTO t SELECT generate_series(1, 1000)");
        segments.push(src.sql("SELECT pg_walfile_name(pg_current_wal_lsn())"));
        src.sql("SELECT pg_switch_wal()");
    }
    src.archive_current_wal();
    let pg_wal = work_dir("prefetch-dest").join("pg_wal");
    fs::create_dir_all(&pg_wal).unwrap();
    chown_pg(pg_wal.parent().unwrap());
    let dest = pg_wal.join("RECOVERYXLOG");
    let dest_s = dest.display().to_string();
    src.ok(&[
        "archive-get",
        &segments[0],
        &dest_s,
        "--archive-get-queue-max",
        "3",
    ]);
    let prefetched = pg_wal.join("pgward-prefetch");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !(1..=3).all(|i| prefetched.join(&segments[i]).exists()) {
        assert!(
            std::time::Instant::now() < deadline,
            "segments were not prefetched"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(
        !prefetched.join(&segments[4]).exists(),
        "prefetch must stay within its window"
    );
    let expected = fs::read(src.cluster.data.join("pg_wal").join(&segments[1])).ok();
    src.ok(&[
        "archive-get",
        &segments[1],
        &dest_s,
        "--archive-get-queue-max",
        "3",
    ]);
    assert!(
        !prefetched.join(&segments[1]).exists(),
        "the prefetched copy is handed over by rename"
    );
    if let Some(bytes) = expected {
        assert_eq!(fs::read(&dest).unwrap(), bytes);
    }
}

/// A file the postgres user owns and could be tricked into overwriting: its content and
/// mtime, to compare after each attempt.
fn victim_state(path: &std::path::Path) -> (Vec<u8>, std::time::SystemTime) {
    (
        fs::read(path).unwrap(),
        fs::symlink_metadata(path).unwrap().modified().unwrap(),
    )
}

#[test]
fn async_push_refuses_a_spool_others_can_write_and_never_follows_links_planted_in_it() {
    use std::os::unix::fs::{symlink, PermissionsExt};
    let src = Source::start("spool-links", 15);
    src.archive_current_wal();
    let seg = src.sql("SELECT last_archived_wal FROM pg_stat_archiver");
    let files = work_dir("spool-links-files");
    let segment = files.join(&seg);
    fs::copy(src.cluster.data.join("pg_wal").join(&seg), &segment).expect("segment in pg_wal");
    let victim = files.join("victim");
    fs::write(&victim, b"the postgres user's own file").unwrap();
    chown_pg(&files);
    let before = victim_state(&victim);

    // --spool-path in a shared, world-writable place, like /tmp.
    let shared = work_dir("spool-links-shared");
    fs::set_permissions(&shared, fs::Permissions::from_mode(0o1777)).unwrap();
    let spool = shared.join("main/push");
    let plant = |names: &[&str]| {
        for name in names {
            let _ = fs::remove_file(spool.join(name));
            symlink(&victim, spool.join(name)).unwrap();
        }
    };
    let push = || {
        src.pgward(&[
            "archive-push",
            "--async",
            "--spool-path",
            shared.to_str().unwrap(),
            segment.to_str().unwrap(),
        ])
    };
    let stale_temp = format!("{seg}.pgward-tmp");
    let links = [".last-error", ".worker.lock", stale_temp.as_str()];
    let refused = |why: &str| {
        let out = push();
        assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
        assert!(stderr(&out).contains(why), "{}", stderr(&out));
        assert!(stderr(&out).contains("HINT:"), "{}", stderr(&out));
        assert_eq!(victim_state(&victim), before, "a planted link was followed");
    };

    // Another user prepared the spool (when root, the test is that other user).
    fs::create_dir_all(&spool).unwrap();
    fs::set_permissions(&spool, fs::Permissions::from_mode(0o777)).unwrap();
    plant(&links);
    if is_root() {
        refused("is owned by uid 0");
    }
    // pgward's own user, but open to everyone.
    chown_pg(&shared);
    refused("writable by group or others");

    // Closed again, with the links still there: the lock is refused, never opened
    // through the link.
    fs::set_permissions(&spool, fs::Permissions::from_mode(0o700)).unwrap();
    refused("symbolic link");

    // Without the lock link the segment is spooled (the stale temp link is unlinked,
    // not written through) and pushed; the victim is never touched.
    fs::remove_file(spool.join(".worker.lock")).unwrap();
    assert_success(&push(), "archive-push --async");
    wait_for_drained_spool(&spool);
    assert_eq!(victim_state(&victim), before, "a planted link was followed");
    src.ok(&["verify"]);
}

/// pgward with the source's options and `PGWARD_TEST_PANIC=point` (debug builds only).
fn with_test_panic(src: &Source, point: &str, args: &[&str]) -> std::process::Output {
    let mut full: Vec<&str> = src.extra.iter().map(String::as_str).collect();
    full.extend(["--repo", &src.url, "--stanza", &src.stanza]);
    full.extend_from_slice(args);
    let mut env = src.cluster.env();
    env.push(("PGWARD_TEST_PANIC".into(), point.into()));
    pgward(&full, &env)
}

#[test]
fn a_panic_in_an_archive_get_worker_stops_recovery_with_126() {
    let src = Source::start("get-panic", 15);
    src.archive_current_wal();
    let seg = src.sql("SELECT last_archived_wal FROM pg_stat_archiver");
    let dest = work_dir("get-panic-dest").join("RECOVERYXLOG");
    let out = with_test_panic(
        &src,
        "archive-get",
        &["archive-get", &seg, dest.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(126), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("pgward: error [internal]: PGWARD_TEST_PANIC=archive-get at src/"),
        "{err}"
    );
    assert!(err.contains("HINT: this is a bug in pgward"), "{err}");
    assert!(!dest.exists());
    // The same call without the switch works: the panic was the only failure.
    src.ok(&["archive-get", &seg, dest.to_str().unwrap()]);
}

/// A copy of the 16 MiB segment `template` renamed to segment number `segno` of timeline
/// 1: its first page's address (`xlp_pageaddr`) rewritten to match, as archive-push checks.
fn segment_as(template: &[u8], segno: u64) -> (String, Vec<u8>) {
    let seg_size = 16u64 << 20;
    assert_eq!(template.len() as u64, seg_size);
    let mut bytes = template.to_vec();
    bytes[8..16].copy_from_slice(&(segno * seg_size).to_le_bytes());
    (
        format!("00000001{:08X}{:08X}", segno >> 8, segno & 0xff),
        bytes,
    )
}

fn write_pg(dir: &std::path::Path, name: &str, bytes: &[u8]) -> String {
    fs::create_dir_all(dir).unwrap();
    let path = dir.join(name);
    fs::write(&path, bytes).unwrap();
    chown_pg(dir);
    path.display().to_string()
}

#[test]
fn concurrent_pushes_of_one_name_store_exactly_one_version() {
    let src = Source::start("race", 15);
    src.archive_current_wal();
    let seg = src.sql("SELECT last_archived_wal FROM pg_stat_archiver");
    let template = fs::read(src.cluster.data.join("pg_wal").join(&seg)).expect("in pg_wal");
    let dir = work_dir("race-files");
    for round in 0..20u64 {
        // Far past anything the cluster writes, a fresh name each round.
        let (name, original) = segment_as(&template, 0xA000 + round);
        let mut changed = original.clone();
        changed[100_000 + round as usize] ^= 0xff;
        let a = write_pg(&dir.join(format!("{round}a")), &name, &original);
        let b = write_pg(&dir.join(format!("{round}b")), &name, &changed);
        let mut first = src.spawn(&["archive-push", &a], &[]);
        let mut second = src.spawn(&["archive-push", &b], &[]);
        let codes = [first.wait().unwrap().code(), second.wait().unwrap().code()];
        let winner = match codes {
            [Some(0), Some(4)] => &original,
            [Some(4), Some(0)] => &changed,
            _ => panic!("round {round}: exactly one push must win, the other exit 4 (conflict); got {codes:?}"),
        };
        let got = dir.join(format!("{round}got"));
        src.ok(&["archive-get", &name, got.to_str().unwrap()]);
        assert!(
            fs::read(&got).unwrap() == *winner,
            "round {round}: archive-get serves the winner"
        );

        // The same content twice at once: both succeed, one version.
        let (name, same) = segment_as(&template, 0xB000 + round);
        let c = write_pg(&dir.join(format!("{round}c")), &name, &same);
        let d = write_pg(&dir.join(format!("{round}d")), &name, &same);
        let mut first = src.spawn(&["archive-push", &c], &[]);
        let mut second = src.spawn(&["archive-push", &d], &[]);
        let codes = [first.wait().unwrap().code(), second.wait().unwrap().code()];
        assert_eq!(codes, [Some(0), Some(0)], "round {round}: identical pushes");
    }
    let listed: serde_json::Value =
        serde_json::from_str(&src.ok(&["--output", "json", "wal", "list"])).unwrap();
    let text = listed.to_string();
    assert_eq!(
        text.matches("00000001000000A000000000").count(),
        1,
        "wal list shows the first round's segment once: {text}"
    );
}

#[test]
fn verify_names_a_wal_name_stored_twice_and_archive_get_refuses_it() {
    let src = Source::start("twice", 15);
    if src.url.contains("://") {
        return; // plants a file into a local repository
    }
    src.archive_current_wal();
    let seg = src.sql("SELECT last_archived_wal FROM pg_stat_archiver");
    let template = fs::read(src.cluster.data.join("pg_wal").join(&seg)).expect("in pg_wal");
    let dir = work_dir("twice-files");
    let (name, original) = segment_as(&template, 0xA000);
    let mut changed = original.clone();
    changed[100_000] ^= 0xff;
    src.ok(&["archive-push", &write_pg(&dir.join("a"), &name, &original)]);

    // The second version, as a push from before claims could leave it: archived into a
    // scratch stanza of this cluster, then copied beside the first.
    let scratch = work_dir("twice-scratch");
    let scratch_s = scratch.display().to_string();
    let other = |args: &[&str]| {
        let mut full = vec!["--repo", &scratch_s, "--stanza", "main"];
        full.extend_from_slice(args);
        assert_success(&pgward(&full, &src.cluster.env()), &args.join(" "))
    };
    other(&["stanza-create"]);
    other(&["archive-push", &write_pg(&dir.join("b"), &name, &changed)]);
    let planted = stored_files(&scratch, &format!("{name}-")).pop().unwrap();
    let twin = src
        .repo
        .join("main/archive/00000001000000A0")
        .join(planted.file_name().unwrap());
    fs::copy(&planted, &twin).unwrap();
    let kept = stored_files(&src.repo, &format!("{name}-"));
    assert_eq!(kept.len(), 2);

    let out = src.pgward(&["verify"]);
    let report = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(5), "verify must fail:\n{report}");
    let file_names: Vec<String> = kept
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert!(
        report.contains("stored 2 times with different contents")
            && file_names.iter().all(|f| report.contains(f.as_str())),
        "verify names both versions:\n{report}"
    );
    let got = dir.join("got");
    let out = src.pgward(&["archive-get", &name, got.to_str().unwrap()]);
    assert!(
        out.status.code().unwrap() > 125,
        "archive-get must not pick one: {:?} {}",
        out.status.code(),
        stderr(&out)
    );
    assert!(!got.exists());
    // Listing still works and shows both.
    let listed = src.ok(&["--output", "json", "wal", "list"]);
    assert_eq!(listed.matches(name.as_str()).count(), 2, "{listed}");
    src.ok(&["info"]);
}

#[test]
fn archive_push_removes_what_killed_pushes_left_and_spares_pushes_in_progress_and_claims() {
    let src = Source::start("pushleftover", 15);
    if src.url.contains("://") {
        return; // on object storage, expire cleans up (one request fewer per push)
    }
    src.archive_current_wal();
    let seg = src.sql("SELECT last_archived_wal FROM pg_stat_archiver");
    let dir = src.repo.join(&src.stanza).join("archive").join(&seg[..16]);
    let two_hours_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(7200);
    let age = |path: &std::path::Path| {
        fs::File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(two_hours_ago)
            .unwrap();
    };
    // What a push killed mid-write leaves: its temporary file (named as LocalStorage
    // names them), two hours old or seconds old.
    let plant = |name: &str| {
        let path = dir.join(name);
        fs::write(&path, b"partial").unwrap();
        path
    };
    let abandoned = plant("0000000100000000000000F0-x.lz4.1234-0.pgward-tmp");
    age(&abandoned);
    let in_progress = plant("0000000100000000000000F1-y.lz4.1235-0.pgward-tmp");
    let claims: Vec<std::path::PathBuf> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "claim"))
        .collect();
    assert!(!claims.is_empty(), "pushes claim their names");
    claims.iter().for_each(|c| age(c));

    src.sql("CREATE TABLE t AS SELECT 1 AS x"); // something for the next segment to hold
    src.archive_current_wal();
    let next = src.sql("SELECT last_archived_wal FROM pg_stat_archiver");
    assert!(next > seg, "{next} was pushed after {seg}");
    assert_eq!(
        next[..16],
        seg[..16],
        "the next push stores into the same directory"
    );
    assert!(!abandoned.exists(), "a 2-hour-old partial push is removed");
    assert!(
        in_progress.exists(),
        "a push that may still be running is left alone"
    );
    assert!(
        claims.iter().all(|c| c.exists()),
        "claims are never leftovers"
    );
    fs::remove_file(&in_progress).unwrap();
    src.ok(&["verify"]);
}

/// Waits until the spool directory `dir` holds no queued file (hidden files are the
/// spool's own), failing after a minute.
fn wait_for_drained_spool(dir: &std::path::Path) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while fs::read_dir(dir)
        .unwrap()
        .flatten()
        .any(|e| !e.file_name().to_string_lossy().starts_with('.'))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the spool never drained"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
