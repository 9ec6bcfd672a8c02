//! One memory budget for the whole process (issue 13): backup (full and incremental),
//! restore, verify, archive-push and archive-get stay under 64 MiB of resident memory at
//! `--jobs` 2, 8 and 32, measured by GNU time (installed by scripts/install-test-deps.sh).
//! The cluster is small but not tiny: more relation files than 32 workers, so that every
//! worker holds its buffers at once, and archived WAL for verify to decode. Runs against a
//! local repository, and against moto in the storage pass (tests/it/s3-pass.txt).

use std::path::Path;

use super::harness::*;
use super::setup::{stderr, Source};

const LIMIT_KIB: u64 = 64 << 10;

/// Runs pgward `args` on `stanza` of `src`'s repository (as the cluster's owner) under
/// GNU time; returns its stdout and peak resident memory in KiB.
fn measured(src: &Source, dir: &Path, stanza: &str, args: &[&str]) -> (String, u64) {
    let rss = dir.join("rss");
    let rss_s = rss.display().to_string();
    let bin = pgward_bin().display().to_string();
    let mut full = vec!["/usr/bin/time", "-f", "%M", "-o", &rss_s, &bin];
    full.extend(src.extra.iter().map(String::as_str));
    full.extend(["--repo", &src.url, "--stanza", stanza]);
    full.extend_from_slice(args);
    let out = run_as_pg(Path::new(full[0]), &full[1..], &src.cluster.env());
    assert!(
        out.status.success(),
        "pgward {}: {}",
        args.join(" "),
        stderr(&out)
    );
    let kib = std::fs::read_to_string(&rss)
        .unwrap()
        .trim()
        .parse()
        .expect("GNU time's %M");
    (String::from_utf8_lossy(&out.stdout).into_owned(), kib)
}

#[test]
fn backup_restore_verify_and_archive_stay_under_64_mib_at_2_8_and_32_jobs() {
    assert!(
        Path::new("/usr/bin/time").exists(),
        "GNU time is missing: run scripts/install-test-deps.sh"
    );
    let src = Source::start_with("memory", ClusterOptions::default());
    let dir = work_dir("memory-runs");
    // ~75 MB of pgbench data; with the catalogs of three databases, about a thousand
    // relation files: many more than workers.
    assert!(src
        .cluster
        .pgbench(&["-i", "-s", "5", "-q"])
        .status
        .success());

    let mut peaks: Vec<(String, u64)> = Vec::new();
    for jobs in ["2", "8", "32"] {
        let json = |out: String| -> serde_json::Value {
            serde_json::from_str(out.trim()).expect("backup --output json")
        };
        let (_, kib) = measured(
            &src,
            &dir,
            "main",
            &["--output", "json", "backup", "--jobs", jobs],
        );
        peaks.push((format!("backup --jobs {jobs}"), kib));
        src.sql("UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid % 50 = 0");
        let (out, kib) = measured(
            &src,
            &dir,
            "main",
            &[
                "--output", "json", "backup", "--type", "incr", "--jobs", jobs,
            ],
        );
        peaks.push((format!("incremental backup --jobs {jobs}"), kib));
        let incr = json(out)["label"].as_str().unwrap().to_string();

        let target = work_dir(&format!("memory-restore-{jobs}")).join("data");
        let target_s = target.display().to_string();
        let (_, kib) = measured(
            &src,
            &dir,
            "main",
            &[
                "restore", "--set", &incr, "--pgdata", &target_s, "--jobs", jobs,
            ],
        );
        peaks.push((format!("restore of the chain --jobs {jobs}"), kib));
        assert!(target.join("PG_VERSION").is_file());
        std::fs::remove_dir_all(&target).unwrap();
        let (_, kib) = measured(&src, &dir, "main", &["verify", "--jobs", jobs]);
        peaks.push((format!("verify --jobs {jobs}"), kib));
    }

    // A segment pushed into a stanza of its own (a write, not the already-archived check)
    // and fetched back.
    let segment = src.sql("SELECT pg_walfile_name(pg_switch_wal())");
    src.archive_current_wal();
    let copy = dir.join(&segment);
    std::fs::copy(src.cluster.data.join("pg_wal").join(&segment), &copy).unwrap();
    chown_pg(&copy);
    let mut create: Vec<&str> = src.extra.iter().map(String::as_str).collect();
    create.extend(["--repo", &src.url, "--stanza", "walmem", "stanza-create"]);
    assert_success(&pgward(&create, &src.cluster.env()), "stanza-create walmem");
    let copy_s = copy.display().to_string();
    let (_, kib) = measured(&src, &dir, "walmem", &["archive-push", &copy_s]);
    peaks.push(("archive-push".into(), kib));
    let fetched = dir.join("fetched").display().to_string();
    let (_, kib) = measured(
        &src,
        &dir,
        "walmem",
        &[
            "archive-get",
            "--archive-get-queue-max",
            "0",
            &segment,
            &fetched,
        ],
    );
    peaks.push(("archive-get".into(), kib));
    assert!(std::fs::read(&fetched).unwrap() == std::fs::read(&copy).unwrap());
    report(&peaks);
}

fn report(peaks: &[(String, u64)]) {
    for (what, kib) in peaks {
        eprintln!("{what:40} {:6.1} MiB", *kib as f64 / 1024.0);
    }
    let over: Vec<_> = peaks.iter().filter(|(_, kib)| *kib >= LIMIT_KIB).collect();
    assert!(over.is_empty(), "over 64 MiB: {over:?}");
}
