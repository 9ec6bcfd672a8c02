//! The same commands on an S3-compatible repository: a real moto server (started by
//! scripts/moto.sh, one per test process), reached through a TCP proxy the outage test
//! can cut.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::harness::*;
use super::setup::{create_bucket, moto, stderr, Source};

/// Forwards connections to moto while `up`; refuses them while down. Counts the bytes
/// sent to the store, so a test can cut it once a write is under way.
struct Proxy {
    port: u16,
    up: Arc<AtomicBool>,
    uploaded: Arc<AtomicU64>,
    /// While set, what clients send is kept in `sent`.
    recording: Arc<AtomicBool>,
    sent: Arc<Mutex<Vec<u8>>>,
}

impl Proxy {
    fn start(target: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(AtomicBool::new(true));
        let uploaded = Arc::new(AtomicU64::new(0));
        let recording = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(Mutex::new(Vec::new()));
        let flag = up.clone();
        let counter = uploaded.clone();
        let (record, log) = (recording.clone(), sent.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                if !flag.load(Ordering::SeqCst) {
                    continue; // dropped: the client sees a reset
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                let flag = flag.clone();
                let (record, log) = (record.clone(), log.clone());
                for (mut from, mut to, upstream) in [
                    (
                        client.try_clone().unwrap(),
                        server.try_clone().unwrap(),
                        true,
                    ),
                    (server, client, false),
                ] {
                    let flag = flag.clone();
                    let counter = counter.clone();
                    let (record, log) = (record.clone(), log.clone());
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 65536];
                        loop {
                            match from.read(&mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(n) if flag.load(Ordering::SeqCst) => {
                                    if to.write_all(&buf[..n]).is_err() {
                                        break;
                                    }
                                    if upstream {
                                        counter.fetch_add(n as u64, Ordering::SeqCst);
                                        if record.load(Ordering::SeqCst) {
                                            log.lock().unwrap().extend_from_slice(&buf[..n]);
                                        }
                                    }
                                }
                                Ok(_) => break,
                            }
                        }
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Proxy {
            port,
            up,
            uploaded,
            recording,
            sent,
        }
    }

    /// The request lines (`GET /bucket/...`) clients sent while `f` ran. Bodies could
    /// hold such lines too; the requests recorded here have none.
    fn requests_during(&self, f: impl FnOnce()) -> Vec<String> {
        self.sent.lock().unwrap().clear();
        self.recording.store(true, Ordering::SeqCst);
        f();
        self.recording.store(false, Ordering::SeqCst);
        let sent = String::from_utf8_lossy(&self.sent.lock().unwrap()).into_owned();
        sent.lines()
            .filter(|l| {
                ["GET ", "HEAD ", "PUT ", "POST ", "DELETE "]
                    .iter()
                    .any(|m| l.starts_with(m))
                    && l.ends_with("HTTP/1.1")
            })
            .map(str::to_string)
            .collect()
    }
}

/// A source whose repository is s3://<bucket>/repo, configured through a file.
fn s3_source(name: &str, proxy_port: Option<u16>, more_config: &str, create: &[&str]) -> Source {
    let port = moto();
    let bucket = name.replace('_', "-");
    create_bucket(port, &bucket);
    let dir = work_dir(&format!("{name}-conf"));
    let config = dir.join("pgward.toml");
    std::fs::write(
        &config,
        format!(
            "[global]\ns3-endpoint = \"http://127.0.0.1:{}\"\ns3-region = \"us-east-1\"\ns3-uri-style = \"path\"\ns3-key = \"test\"\ns3-key-secret = \"test\"\n{more_config}",
            proxy_port.unwrap_or(port)
        ),
    )
    .unwrap();
    chown_pg(&dir);
    let extra = vec!["--config".to_string(), config.display().to_string()];
    Source::start_at(
        name,
        ClusterOptions::default(),
        format!("s3://{bucket}/repo"),
        extra,
        create,
    )
}

#[test]
fn s3_repository_takes_a_chain_archives_restores_to_a_point_verifies_and_expires() {
    let src = s3_source("s3chain", None, "", &[]);
    assert!(src
        .cluster
        .pgbench(&["-i", "-s", "1", "-q"])
        .status
        .success());
    std::thread::sleep(Duration::from_millis(2500));
    let full = src.backup(&["--jobs", "2"]);
    std::thread::sleep(Duration::from_millis(2500));
    src.sql("UPDATE pgbench_accounts SET abalance = abalance + 7 WHERE aid <= 2000");
    let incr = src.backup(&["--type", "incr"]);
    src.sql("SELECT pg_create_restore_point('s3_point')");
    let expected = src.cluster.content_checksum("postgres");
    src.sql("UPDATE pgbench_accounts SET abalance = 0");
    src.archive_current_wal();

    let info = src.info_json();
    assert_eq!(info["backups"][1]["reference"], full.as_str());
    assert!(info["archive"][0]["segments"].as_u64().unwrap() >= 3);
    assert!(src.ok(&["check"]).contains("check passed"));
    src.ok(&["verify"]);
    let restored = src.restore_and_start(
        "s3chain-r",
        &[
            "--set",
            &incr,
            "--target-name",
            "s3_point",
            "--target-action",
            "promote",
        ],
    );
    assert_eq!(restored.content_checksum("postgres"), expected);
    drop(restored);

    let newest = src.backup(&[]);
    src.ok(&["expire", "--retain-full", "1"]);
    assert_eq!(src.labels(), [newest]);
    src.ok(&["verify"]);
}

#[test]
fn s3_repository_can_be_encrypted_end_to_end() {
    let src = s3_source(
        "s3enc",
        None,
        "cipher-pass = \"s3 secret\"\n",
        &["--cipher", "aes-256-gcm"],
    );
    src.sql("CREATE TABLE t AS SELECT g, md5(g::text) AS v FROM generate_series(1, 5000) g");
    let label = src.backup(&[]);
    let expected = src.cluster.content_checksum("postgres");
    src.archive_current_wal();
    src.ok(&["verify"]);
    let restored = src.restore_and_start("s3enc-r", &["--set", &label]);
    assert_eq!(restored.content_checksum("postgres"), expected);
    let out = pgward(
        &[
            "--repo",
            &src.url,
            "--stanza",
            "main",
            "--config",
            &src.extra[1],
            "--cipher-pass",
            "wrong",
            "info",
        ],
        &src.cluster.env(),
    );
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
}

#[test]
fn s3_outage_fails_backup_and_archive_push_clearly_and_loses_nothing() {
    let proxy = Proxy::start(moto());
    let src = s3_source("s3outage", Some(proxy.port), "s3-retry-seconds = 5\n", &[]);
    assert!(src
        .cluster
        .pgbench(&["-i", "-s", "2", "-q"])
        .status
        .success());
    let first = src.backup(&[]);
    let quick = [("PGWARD_S3_RETRY_SECONDS".to_string(), "3".to_string())];

    // The store goes away in the middle of a backup (once 1 MiB of it went up; its
    // bundles take several): it fails with a clear error and is not listed.
    let cut = {
        let (up, uploaded) = (proxy.up.clone(), proxy.uploaded.clone());
        let from = uploaded.load(Ordering::SeqCst);
        std::thread::spawn(move || {
            let deadline = std::time::Instant::now() + Duration::from_secs(120);
            while uploaded.load(Ordering::SeqCst) < from + (1 << 20) {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the backup never uploaded"
                );
                std::thread::sleep(Duration::from_millis(5));
            }
            up.store(false, Ordering::SeqCst);
        })
    };
    let mut env = src.cluster.env();
    env.extend(quick.iter().cloned());
    let mut args: Vec<&str> = src.extra.iter().map(String::as_str).collect();
    args.extend([
        "--repo",
        &src.url,
        "--stanza",
        "main",
        "backup",
        "--jobs",
        "1",
        "--compress",
        "gzip",
        "--compress-level",
        "9",
    ]);
    let out = pgward(&args, &env);
    cut.join().unwrap();
    assert!(
        !out.status.success(),
        "a backup must fail when the store is gone"
    );
    assert!(
        stderr(&out).contains("s3://s3outage/repo"),
        "the error must name the bucket: {}",
        stderr(&out)
    );
    // archive_command fails too while the store is down: PostgreSQL keeps the WAL.
    src.sql("CREATE TABLE during_outage AS SELECT g FROM generate_series(1, 10000) g");
    let seg = src.sql("SELECT pg_walfile_name(pg_switch_wal())");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while src.sql("SELECT failed_count FROM pg_stat_archiver") == "0" {
        assert!(
            std::time::Instant::now() < deadline,
            "archive-push did not fail during the outage"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = src.pgward(&["info"]);
    assert!(!out.status.success());

    // Back: the archiver catches up, the listed backups are the complete ones, and the
    // next backup succeeds.
    proxy.up.store(true, Ordering::SeqCst);
    src.archive_current_wal();
    assert_eq!(src.labels(), std::slice::from_ref(&first));
    let second = src.backup(&[]);
    assert_eq!(src.labels(), [first, second]);
    let stats: serde_json::Value =
        serde_json::from_str(&src.ok(&["--output", "json", "wal", "stats"])).unwrap();
    assert_eq!(
        stats["timelines"][0]["gaps"].as_array().unwrap().len(),
        0,
        "WAL lost during the outage: {stats}"
    );
    assert!(src.ok(&["wal", "list"]).contains(&seg));
    src.ok(&["verify"]);
}

#[test]
fn s3_lock_object_excludes_a_second_backup_and_a_killed_holder_is_taken_over() {
    let src = s3_source("s3lock", None, "", &[]);
    let check: serde_json::Value =
        serde_json::from_str(&src.ok(&["--output", "json", "check"])).unwrap();
    assert_eq!(
        check["lock"], "lock object created with a conditional write",
        "moto supports If-None-Match"
    );
    assert!(src
        .cluster
        .pgbench(&["-i", "-s", "3", "-q"])
        .status
        .success());
    let mut first = src.spawn_slow_backup(&[]);
    // Once the first holds the lock object, a second backup is refused at once.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !super::setup::s3_object_exists(moto(), "s3lock", "repo/main/lock/backup.lock") {
        assert!(
            first.try_wait().unwrap().is_none() && std::time::Instant::now() < deadline,
            "the slow backup never took the lock"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let out = src.pgward(&["backup"]);
        if out.status.code() == Some(8) {
            assert!(
                stderr(&out).contains("is locked for backup by pid")
                    && stderr(&out).contains("on host"),
                "{}",
                stderr(&out)
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the second backup was never refused: {}",
            stderr(&out)
        );
    }
    super::setup::kill_pgward(&mut first);
    // The killed holder's lock object is left behind; this host sees its pid is gone.
    src.backup(&[]);
    src.ok(&["verify"]);
}

/// A repository on the local moto through `endpoint`, with no `s3-uri-style`.
fn ip_config(name: &str, endpoint: &str) -> String {
    let dir = work_dir(&format!("{name}-conf"));
    let config = dir.join("pgward.toml");
    std::fs::write(
        &config,
        format!(
            "[global]\ns3-endpoint = \"{endpoint}\"\ns3-region = \"us-east-1\"\ns3-key = \"test\"\ns3-key-secret = \"test\"\n"
        ),
    )
    .unwrap();
    chown_pg(&dir);
    config.display().to_string()
}

#[test]
fn s3_ip_endpoint_implies_path_style_and_info_writes_nothing() {
    let proxy = Proxy::start(moto());
    create_bucket(moto(), "s3ip");
    let config = ip_config("s3ip", &format!("http://127.0.0.1:{}", proxy.port));
    let src = Source::start_at(
        "s3ip",
        ClusterOptions::default(),
        "s3://s3ip/repo".into(),
        vec!["--config".into(), config],
        &[],
    );
    src.sql("CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g");
    let label = src.backup(&[]);
    src.archive_current_wal();
    // The archiver may still be pushing the backup's history file (it takes files in
    // its own order): info must be the only client while the proxy listens.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while src
        .sql("SELECT count(*) FROM pg_ls_dir('pg_wal/archive_status') f WHERE f LIKE '%.ready'")
        != "0"
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the archiver never caught up"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }

    let mut info = String::new();
    let requests = proxy.requests_during(|| info = src.ok(&["info"]));
    assert!(info.contains(&label), "{info}");
    assert!(
        requests.iter().any(|r| r.starts_with("GET /s3ip")),
        "path style, through the proxy: {requests:?}"
    );
    let writes: Vec<_> = requests
        .iter()
        .filter(|r| !r.starts_with("GET ") && !r.starts_with("HEAD "))
        .collect();
    assert!(writes.is_empty(), "info wrote: {writes:?}");

    // S3 keys only on pgward's command line: the archive_command would have none.
    let before = src.sql("SHOW archive_command");
    let keyless = ip_config("s3ip-keyless", &format!("http://127.0.0.1:{}", proxy.port));
    std::fs::write(
        &keyless,
        std::fs::read_to_string(&keyless)
            .unwrap()
            .lines()
            .filter(|l| !l.starts_with("s3-key"))
            .map(|l| format!("{l}\n"))
            .collect::<String>(),
    )
    .unwrap();
    let out = pgward(
        &[
            "--config",
            &keyless,
            "--s3-key",
            "test",
            "--s3-key-secret",
            "test",
            "--repo",
            "s3://s3ip/repo",
            "--stanza",
            "main",
            "pitr",
            "enable",
        ],
        &src.cluster.env(),
    );
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("would have no S3 keys") && stderr(&out).contains("s3-key-secret"),
        "{}",
        stderr(&out)
    );
    assert_eq!(src.sql("SHOW archive_command"), before);

    // Virtual-host style cannot address an IP: a named error, not a panic.
    let err = src.fails(&["--s3-uri-style", "host", "info"], 3);
    assert!(
        err.contains("an IP address cannot be addressed virtual-host style"),
        "{err}"
    );
    // Without a scheme the endpoint is https; against this plain-HTTP server that fails
    // with a hint, never a panic.
    let out = pgward(
        &[
            "--config",
            &ip_config("s3ip-https", &format!("127.0.0.1:{}", proxy.port)),
            "--repo",
            "s3://s3ip/repo",
            "--stanza",
            "main",
            "--s3-retry-seconds",
            "2",
            "info",
        ],
        &src.cluster.env(),
    );
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("host[:port] means https"),
        "{}",
        stderr(&out)
    );
}

/// archive-get (without prefetch) of an unencrypted stanza makes four requests in two
/// rounds: `stanza.json`, the key file (absent; asked so that a planted plain
/// stanza.json cannot pass for an encrypted stanza's) and the listing of the segment's
/// names in its archive directory at once (nothing at open), then the segment. A second archive-push on a host does not probe conditional
/// writes again, and reads `stanza.json` once. A missing bucket still stops recovery
/// with its hint, never reads as the end of the archive.
#[test]
fn s3_archive_get_makes_four_requests_in_two_rounds_and_a_second_push_does_not_probe_again() {
    let proxy = Proxy::start(moto());
    let src = s3_source("s3requests", Some(proxy.port), "", &[]);
    src.sql("CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g");
    src.archive_current_wal();
    let seg = src.sql("SELECT last_archived_wal FROM pg_stat_archiver");
    // The archiver pushes other files too (a history or backup file) in its own order:
    // pgward must be the only client while the proxy listens.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while src
        .sql("SELECT count(*) FROM pg_ls_dir('pg_wal/archive_status') f WHERE f LIKE '%.ready'")
        != "0"
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the archiver never caught up"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let dir = work_dir("s3requests-files");
    chown_pg(&dir);
    let dest = dir.join("RECOVERYXLOG");
    let dest_s = dest.display().to_string();

    // Without prefetch: a prefetcher would go on in the background, making requests of
    // its own while the proxy listens.
    let requests = proxy.requests_during(|| {
        src.ok(&["archive-get", "--archive-get-queue-max", "0", &seg, &dest_s]);
    });
    assert_eq!(requests.len(), 4, "{requests:#?}");
    assert!(
        requests
            .iter()
            .any(|r| r.contains("/repo/main/keyfile.json ")),
        "{requests:#?}"
    );
    assert!(
        requests
            .iter()
            .any(|r| r.contains("/repo/main/stanza.json ")),
        "{requests:#?}"
    );
    assert!(
        requests
            .iter()
            .any(|r| r.contains(&format!("/repo/main/archive/{}/{seg}-", &seg[..16]))),
        "{requests:#?}"
    );
    // The listing asks for the segment's names only, not its whole directory's.
    assert!(
        requests
            .iter()
            .any(|r| r.contains("list-type=2") && r.contains(&seg)),
        "{requests:#?}"
    );
    assert!(
        requests.iter().all(|r| r.starts_with("GET ")),
        "{requests:#?}"
    );
    assert_eq!(std::fs::metadata(&dest).unwrap().len(), 16 << 20);

    // The archiver's pushes probed already; pushing the segment again (identical: the
    // claim is read back) does not.
    let again = dir.join(&seg);
    std::fs::copy(&dest, &again).unwrap();
    chown_pg(&again);
    let requests = proxy.requests_during(|| {
        src.ok(&["archive-push", again.to_str().unwrap()]);
    });
    assert!(
        !requests.iter().any(|r| r.contains(".pgward-probe")),
        "{requests:#?}"
    );
    assert!(
        requests
            .iter()
            .any(|r| r.starts_with("PUT ") && r.contains(".claim")),
        "the claim is still created conditionally: {requests:#?}"
    );
    // The stanza's identity is read once, with the unlock, and the key file once beside it.
    let stanza_reads = requests
        .iter()
        .filter(|r| r.contains("/stanza.json "))
        .count();
    assert_eq!(stanza_reads, 1, "{requests:#?}");
    assert_eq!(
        requests
            .iter()
            .filter(|r| r.contains("keyfile.json"))
            .count(),
        1,
        "{requests:#?}"
    );

    let mut args: Vec<&str> = src.extra.iter().map(String::as_str).collect();
    args.extend([
        "--repo",
        "s3://no-such-bucket/repo",
        "--stanza",
        "main",
        "archive-get",
        &seg,
        &dest_s,
    ]);
    let out = pgward(&args, &src.cluster.env());
    assert!(
        out.status.code().is_some_and(|c| c != 0 && c != 1),
        "{:?}: {}",
        out.status,
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("bucket no-such-bucket does not exist"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn s3_unreachable_endpoint_warns_while_retrying_and_fails_with_a_hint() {
    // A loopback port nothing listens on.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let started = std::time::Instant::now();
    let out = pgward(
        &[
            "--repo",
            "s3://unreachable/repo",
            "--stanza",
            "main",
            "--s3-endpoint",
            &endpoint,
            "--s3-region",
            "us-east-1",
            "--s3-key",
            "test",
            "--s3-key-secret",
            "test",
            "--s3-retry-seconds",
            "6",
            "info",
        ],
        &[],
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(7), "{err}");
    assert!(
        started.elapsed() >= Duration::from_secs(5),
        "gave up before its budget"
    );
    let retrying: Vec<_> = err
        .lines()
        .filter(|l| l.contains("retrying for another"))
        .collect();
    assert!(!retrying.is_empty(), "no retry warning: {err}");
    assert!(
        retrying[0].contains("s3://unreachable: GET")
            && retrying[0].contains(&endpoint)
            && retrying[0].contains("(until "),
        "{err}"
    );
    assert!(
        err.contains("HINT:") && err.contains("--s3-retry-seconds"),
        "{err}"
    );
}

/// Restore and verify on object storage fetch frames in planned spans (issue 13): at most
/// one bundle GET per 4 MiB (plus one per bundle and per larger frame), where fetching
/// each frame alone (`--repo-read-ahead 0`) costs a request per frame; both restore the
/// same bytes.
#[test]
fn s3_restore_and_verify_fetch_adjacent_frames_in_one_ranged_get() {
    let proxy = Proxy::start(moto());
    let src = s3_source("s3plan", Some(proxy.port), "", &[]);
    // Many small tables: many small frames side by side in the bundles.
    src.sql(
        "DO $$ BEGIN FOR i IN 1..150 LOOP \
         EXECUTE format('CREATE TABLE t%s AS SELECT g, md5(g::text) FROM generate_series(1, 200) g', i); \
         END LOOP; END $$",
    );
    assert!(src
        .cluster
        .pgbench(&["-i", "-s", "2", "-q"])
        .status
        .success());
    let full = src.backup(&["--jobs", "2"]);
    src.sql("UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid % 97 = 0");
    src.sql("UPDATE t7 SET g = g + 1");
    let incr = src.backup(&["--type", "incr"]);
    let info = src.info_json();
    let stored: u64 = info["backups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["stored_size"].as_u64().unwrap())
        .sum();

    let bundle_gets = |requests: &[String]| {
        requests
            .iter()
            .filter(|r| r.starts_with("GET ") && r.contains("/bundles/"))
            .count()
    };
    let restore = |name: &str, extra: &[&str]| {
        let dir = work_dir(name).join("data");
        let dir_s = dir.display().to_string();
        let mut args = vec!["restore", "--set", &incr, "--pgdata", &dir_s];
        args.extend_from_slice(extra);
        let requests = proxy.requests_during(|| {
            src.ok(&args);
        });
        (dir, requests)
    };
    let (planned_dir, planned) = restore("s3plan-planned", &[]);
    let (single_dir, single) = restore("s3plan-single", &["--repo-read-ahead", "0"]);
    let bundles = planned
        .iter()
        .filter(|r| r.contains("/bundles/"))
        .map(|r| r.split_whitespace().nth(1).unwrap_or("").to_string())
        .collect::<std::collections::HashSet<_>>()
        .len();
    let (planned, single) = (bundle_gets(&planned), bundle_gets(&single));
    eprintln!("bundle GETs: planned {planned}, one per frame {single}; {stored} bytes stored in {bundles} bundles");
    assert!(
        planned <= (stored >> 22) as usize + bundles + 8,
        "{planned} bundle GETs for {stored} stored bytes in {bundles} bundles"
    );
    assert!(
        planned * 10 <= single,
        "planned {planned} GETs, one per frame {single}"
    );
    // The same files either way (the restored clusters are not started here: the chain
    // tests prove restored contents; this proves the planned path hands out the same bytes).
    let listing = |dir: &std::path::Path| {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "cd {} && find . -type f ! -name backup_label ! -name '*.signal' ! -name postgresql.auto.conf -print0 | sort -z | xargs -0 sha256sum",
                dir.display()
            ))
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap()
    };
    assert_eq!(listing(&planned_dir), listing(&single_dir));

    let verify_gets = bundle_gets(&proxy.requests_during(|| {
        src.ok(&["verify"]);
    }));
    assert!(
        verify_gets <= (stored >> 22) as usize + bundles + 8,
        "verify: {verify_gets} bundle GETs for {stored} stored bytes"
    );
    let _ = full;
}

/// An HTTP proxy in front of moto that answers some requests itself, as an overloaded
/// or broken S3 does: `503 SlowDown` every `every_503`th request, `429 Too Many
/// Requests` every `every_429`th, and request number `hang_at` never (it holds the
/// connection until the client gives up). Every other request goes to moto on a
/// connection of its own, and its connection is closed after the answer.
struct FaultyProxy {
    port: u16,
    requests: Arc<AtomicU64>,
    slowdowns: Arc<AtomicU64>,
    throttled: Arc<AtomicU64>,
    hung: Arc<AtomicU64>,
}

impl FaultyProxy {
    fn start(target: u16, every_503: u64, every_429: u64, hang_at: u64) -> FaultyProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let counters: [Arc<AtomicU64>; 4] = Default::default();
        let [requests, slowdowns, throttled, hung] = counters.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let [requests, slowdowns, throttled, hung] = counters.clone();
                std::thread::spawn(move || {
                    let mut reader = std::io::BufReader::new(client.try_clone().unwrap());
                    let mut client = client;
                    loop {
                        let Some(request) = read_request(&mut reader) else {
                            return;
                        };
                        let n = requests.fetch_add(1, Ordering::SeqCst) + 1;
                        let refuse = |status: &str, code: &str| {
                            let body = format!(
                                "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code><Message>injected by the test</Message></Error>"
                            );
                            format!(
                                "HTTP/1.1 {status}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\r\n{body}",
                                body.len()
                            )
                        };
                        if n == hang_at {
                            hung.fetch_add(1, Ordering::SeqCst);
                            // Never answer: wait until the client hangs up.
                            let mut sink = [0u8; 4096];
                            while matches!(reader.read(&mut sink), Ok(k) if k > 0) {}
                            return;
                        } else if n % every_503 == 0 {
                            slowdowns.fetch_add(1, Ordering::SeqCst);
                            let _ =
                                client.write_all(refuse("503 Slow Down", "SlowDown").as_bytes());
                        } else if n % every_429 == 0 {
                            throttled.fetch_add(1, Ordering::SeqCst);
                            let _ = client.write_all(
                                refuse("429 Too Many Requests", "TooManyRequests").as_bytes(),
                            );
                        } else {
                            let Ok(mut server) = TcpStream::connect(("127.0.0.1", target)) else {
                                return;
                            };
                            if server.write_all(&request).is_err() {
                                return;
                            }
                            let mut answer = Vec::new();
                            let _ = server.read_to_end(&mut answer);
                            let _ = client.write_all(&answer);
                            return; // the answer said Connection: close
                        }
                    }
                });
            }
        });
        FaultyProxy {
            port,
            requests,
            slowdowns,
            throttled,
            hung,
        }
    }
}

/// One HTTP/1.1 request from `reader` (head and Content-Length body), rewritten to close
/// its connection after the answer; None at the end of the connection.
pub(super) fn read_request(reader: &mut std::io::BufReader<TcpStream>) -> Option<Vec<u8>> {
    use std::io::BufRead;
    let mut head = Vec::new();
    let mut length = 0usize;
    loop {
        let mut line = Vec::new();
        if reader.read_until(b'\n', &mut line).ok()? == 0 {
            return None;
        }
        let text = String::from_utf8_lossy(&line).to_ascii_lowercase();
        if let Some(v) = text.strip_prefix("content-length:") {
            length = v.trim().parse().ok()?;
        }
        if text.starts_with("connection:") {
            continue;
        }
        if line == b"\r\n" {
            head.extend_from_slice(b"Connection: close\r\n\r\n");
            break;
        }
        head.extend_from_slice(&line);
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body).ok()?;
    head.extend_from_slice(&body);
    Some(head)
}

/// Object storage that fights back (issue 13): requests answered `503 SlowDown` or `429`
/// back off and continue, and a request that hangs is cut by `s3-timeout` and retried;
/// archiving, a full and an incremental backup, a restore and a verify all succeed.
#[test]
fn s3_slowdowns_throttling_and_a_hung_request_are_retried_and_every_command_succeeds() {
    let proxy = FaultyProxy::start(moto(), 5, 7, 60);
    let src = s3_source("s3faults", Some(proxy.port), "s3-timeout = 2\n", &[]);
    assert!(src
        .cluster
        .pgbench(&["-i", "-s", "1", "-q"])
        .status
        .success());
    src.backup(&["--jobs", "2"]);
    src.sql("UPDATE pgbench_accounts SET abalance = abalance + 3 WHERE aid <= 5000");
    let incr = src.backup(&["--type", "incr"]);
    let expected = src.cluster.content_checksum("postgres");
    src.ok(&["verify"]);
    let restored = src.restore_and_start("s3faults-r", &["--set", &incr]);
    assert_eq!(restored.content_checksum("postgres"), expected);
    let count = |c: &AtomicU64| c.load(Ordering::SeqCst);
    eprintln!(
        "{} requests: {} answered 503, {} answered 429, {} hung",
        count(&proxy.requests),
        count(&proxy.slowdowns),
        count(&proxy.throttled),
        count(&proxy.hung)
    );
    assert!(count(&proxy.slowdowns) >= 10, "too few 503s injected");
    assert!(count(&proxy.throttled) >= 5, "too few 429s injected");
    assert_eq!(count(&proxy.hung), 1, "the hung request was never made");
}
