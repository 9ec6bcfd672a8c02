//! `pgward metrics` and `pgward serve` against a real cluster and a real Prometheus
//! (Debian's `prometheus` package, installed by scripts/install-test-deps.sh), the alert
//! rules under `promtool test rules`, and the cost of a scrape on a large repository.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::harness::*;
use super::setup::*;

fn tool(name: &str) -> PathBuf {
    let path = Path::new("/usr/bin").join(name);
    assert!(
        path.is_file(),
        "{} missing: run scripts/install-test-deps.sh (it installs Debian's prometheus)",
        path.display()
    );
    path
}

/// `promtool check metrics` on `text`: panics with promtool's words unless it is clean.
fn promtool_check_metrics(text: &str) {
    let mut child = Command::new(tool("promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n--- metrics ---\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A plain HTTP/1.0 GET of `path` on 127.0.0.1:`port`: (status code, body), or None
/// while nothing answers there.
fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}

/// Polls `probe` every 100 ms until it gives a value; panics after `timeout` with `what`.
fn wait_for<T>(
    timeout: Duration,
    what: impl Fn() -> String,
    mut probe: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out: {}", what());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The value of the sample of `name` with exactly `labels` in an exposition.
fn sample(text: &str, name: &str, labels: &str) -> Option<f64> {
    let prefix = format!("{name}{{{labels}}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map(|v| v.parse().unwrap())
}

fn epoch_of(rfc3339: &serde_json::Value) -> f64 {
    let t = chrono::DateTime::parse_from_rfc3339(rfc3339.as_str().unwrap()).unwrap();
    t.timestamp_millis() as f64 / 1000.0
}

/// A Prometheus of its own: port, configuration and storage under `dir`, scraping
/// 127.0.0.1:`target` every second. Killed on drop.
struct Prometheus {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Prometheus {
    fn start(dir: &Path, target: u16) -> Prometheus {
        let port = next_port();
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: pgward\n    static_configs:\n      - targets: ['127.0.0.1:{target}']\n"
            ),
        )
        .unwrap();
        let log = dir.join("prometheus.log");
        let child = Command::new(tool("prometheus"))
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Prometheus { child, port, log }
    }

    /// The samples an instant query returns now (an empty list before the first scrape).
    fn query(&self, query: &str) -> Option<Vec<serde_json::Value>> {
        let (status, body) = http_get(self.port, &format!("/api/v1/query?query={query}"))?;
        if status != 200 {
            return None;
        }
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        v["data"]["result"].as_array().cloned()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The pid of the pgward that `child` runs (through runuser when root).
fn serving_pid(child: &Child) -> String {
    if !is_root() {
        return child.id().to_string();
    }
    let pid = child.id().to_string();
    wait_for(
        Duration::from_secs(10),
        || format!("no child of runuser {pid}"),
        || {
            let out = Command::new("pgrep").args(["-P", &pid]).output().unwrap();
            let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
            text.lines().next().map(str::to_string)
        },
    )
}

#[test]
fn prometheus_scrapes_serve_and_finds_the_newest_backups_time() {
    let src = Source::start("metrics_prom", 15);
    src.sql("CREATE TABLE t AS SELECT generate_series(1, 1000) AS i");
    src.backup(&[]);
    src.ok(&["verify"]);
    let info = src.info_json();
    let newest = info["backups"].as_array().unwrap().last().unwrap().clone();
    let stop = epoch_of(&newest["stop_time"]);

    // The textfile-collector form: valid, and saying what the repository holds.
    let text = src.ok(&["metrics"]);
    promtool_check_metrics(&text);
    let stanza = "stanza=\"main\"";
    let completion = sample(
        &text,
        "pgward_backup_last_completion_timestamp_seconds",
        "stanza=\"main\",type=\"full\"",
    );
    assert!(
        completion.is_some_and(|t| (t - stop).abs() < 0.002),
        "{completion:?} is not {stop}\n{text}"
    );
    assert_eq!(sample(&text, "pgward_up", stanza), Some(1.0), "{text}");
    assert_eq!(sample(&text, "pgward_backups", stanza), Some(1.0), "{text}");
    assert_eq!(
        sample(&text, "pgward_verify_last_success", stanza),
        Some(1.0),
        "{text}"
    );
    // The server answers: the lag is there, and small (the backup waited for its WAL).
    let lag = sample(
        &text,
        "pgward_archive_lag_bytes",
        "stanza=\"main\",timeline=\"1\"",
    );
    assert!(
        lag.is_some_and(|b| b < (16 << 20) as f64),
        "{lag:?}\n{text}"
    );
    assert!(
        sample(
            &text,
            "pgward_recoverable_window_start_timestamp_seconds",
            "stanza=\"main\",timeline=\"1\""
        )
        .is_some_and(|t| (t - stop).abs() < 0.002),
        "{text}"
    );
    // Without --stanza: every stanza of the repository (here the one).
    let mut args: Vec<&str> = src.extra.iter().map(String::as_str).collect();
    args.extend(["--repo", &src.url]);
    // A verify of a stanza that does not exist fails, and records nothing that would
    // make the stanza appear.
    let mut typo = args.clone();
    typo.extend(["--stanza", "typo", "verify"]);
    assert!(!pgward(&typo, &src.cluster.env()).status.success());
    let mut all_args = args.clone();
    all_args.push("metrics");
    let all = assert_success(
        &pgward(&all_args, &src.cluster.env()),
        "metrics of every stanza",
    );
    assert_eq!(sample(&all, "pgward_backups", stanza), Some(1.0), "{all}");
    assert_eq!(all.matches("pgward_up{").count(), 1, "{all}");

    // serve, scraped by a real Prometheus.
    let port = next_port();
    let dir = src.cluster.dir.join("prometheus");
    mkdir_pg(&dir);
    let serve_log = dir.join("serve.log");
    let listen = format!("127.0.0.1:{port}");
    args.extend(["--stanza", "main", "serve", "--listen", &listen]);
    let mut serve = pg_command(&pgward_bin(), &args, &src.cluster.env())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&serve_log).unwrap())
        .spawn()
        .unwrap();
    let served_log = || std::fs::read_to_string(&serve_log).unwrap_or_default();
    let (status, body) = wait_for(
        Duration::from_secs(30),
        || format!("serve never answered:\n{}", served_log()),
        || http_get(port, "/metrics"),
    );
    assert_eq!(status, 200, "{body}");
    promtool_check_metrics(&body);
    assert_eq!(http_get(port, "/").map(|r| r.0), Some(404));

    let prometheus = Prometheus::start(&dir, port);
    let found = wait_for(
        Duration::from_secs(90),
        || format!("Prometheus never had a sample:\n{}", prometheus.log()),
        || {
            prometheus
                .query("pgward_backup_last_completion_timestamp_seconds")
                .filter(|r| !r.is_empty())
        },
    );
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0]["metric"]["stanza"], "main");
    assert_eq!(found[0]["metric"]["type"], "full");
    let value: f64 = found[0]["value"][1].as_str().unwrap().parse().unwrap();
    assert!(
        (value - stop).abs() < 0.002,
        "Prometheus has {value}, the backup ended at {stop}"
    );

    // SIGTERM to pgward itself: runuser, between it and the test when root, answers a
    // SIGTERM of its own by killing its child after 2 s.
    let pid = serving_pid(&serve);
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = wait_for(
        Duration::from_secs(20),
        || format!("serve still runs after SIGTERM:\n{}", served_log()),
        || serve.try_wait().unwrap(),
    );
    assert!(
        status.success(),
        "serve did not stop cleanly on SIGTERM: {status}\n{}",
        served_log()
    );
    assert!(
        http_get(port, "/metrics").is_none(),
        "serve still answers after SIGTERM"
    );
}

#[test]
fn alert_rules_fire_as_recorded_samples_say_and_the_guide_shows_them_verbatim() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/prometheus");
    for args in [
        ["check", "rules", "alerts.yml"],
        ["test", "rules", "alerts.test.yml"],
    ] {
        let out = Command::new(tool("promtool"))
            .args(args)
            .current_dir(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let rules = std::fs::read_to_string(dir.join("alerts.yml")).unwrap();
    let guide =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/guide.md"))
            .unwrap();
    assert!(
        guide.contains(&format!("```yaml\n{rules}```\n")),
        "docs/guide.md must show contrib/prometheus/alerts.yml as it is"
    );
}

/// A stanza of `backups` backups (a full every tenth, incrementals between, each listing
/// `files` files) and `segments` archived segments on timeline 1, fabricated without a
/// cluster: the stanza and manifests through pgward's repository API, the archive as hard
/// links of one stored file (and one claim) under each segment's name, which is all a
/// listing shows. Nothing reads their content: that is the point.
fn fabricate_large_stanza(repo_dir: &Path, backups: u64, segments: u64, files: usize) {
    use pgward::pg::{Lsn, TimelineId, WalFileName, WalSegment};
    use pgward::pipeline::compress::{Codec, Compression};
    use pgward::repo::label::BackupType;
    use pgward::repo::manifest::{Digest, DirEntry, Extent, FileEntry, Manifest, Name};
    use pgward::repo::stanza::ClusterIdentity;
    const SEG: u64 = 16 << 20;
    const SYSTEM: u64 = 7_300_000_000_000_000_001;
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let repo = runtime.block_on(async {
        let storage = std::sync::Arc::new(pgward::storage::LocalStorage::new(repo_dir));
        let repo = pgward::repo::StanzaHandle::new(storage, "main")
            .unwrap()
            .unlock(None)
            .await
            .unwrap();
        let cluster = ClusterIdentity {
            system_identifier: SYSTEM,
            pg_major: 15,
            data_checksums: true,
            wal_segment_size: SEG,
        };
        repo.stanza_create(&cluster).await.unwrap();
        repo
    });
    let base = chrono::DateTime::from_timestamp(1_790_000_000, 0).unwrap();
    let spacing = segments / backups;
    let mut previous: Option<String> = None;
    for i in 0..backups {
        let full = i % 10 == 0;
        let start_time = base + chrono::Duration::hours(i as i64);
        let label = format!(
            "{}{}",
            start_time.format("%Y%m%d-%H%M%S"),
            if full { 'F' } else { 'I' }
        );
        let bundle = format!("{label}-0-0.bundle");
        let (backup_name, bundle_name): (Name, Name) =
            (label.as_str().into(), bundle.as_str().into());
        let files: Vec<FileEntry> = (0..files)
            .map(|f| FileEntry {
                path: format!("base/5/{}", 16384 + f),
                size: 8192,
                mtime: 1_790_000_000,
                mode: 0o600,
                checksum: Some(Digest([0xab; 32])),
                extents: vec![Extent {
                    offset: 0,
                    length: 8192,
                    backup: backup_name.clone(),
                    bundle: bundle_name.clone(),
                    bundle_offset: f as u64 * 300,
                    stored_length: 300,
                    frame_offset: 0,
                    frame_length: 8192,
                    frame_checksum: Digest([0xcd; 32]),
                }],
            })
            .collect();
        let start_lsn = Lsn(i * spacing * SEG + 0x28);
        let manifest = Manifest {
            format_version: pgward::repo::FORMAT_VERSION,
            label: label.clone(),
            backup_type: if full {
                BackupType::Full
            } else {
                BackupType::Incr
            },
            reference: if full { None } else { previous.clone() },
            system_identifier: SYSTEM,
            pg_major: 15,
            pg_version_num: 150018,
            timeline: TimelineId(1),
            start_lsn,
            stop_lsn: Lsn(start_lsn.0 + SEG),
            start_time,
            stop_time: start_time + chrono::Duration::seconds(90),
            wal_segment_size: SEG,
            data_checksums: true,
            from_standby: false,
            node: None,
            reads: None,
            compression: Compression {
                codec: Codec::Zstd,
                level: 3,
            },
            backup_label: format!("START WAL LOCATION: {start_lsn}\nLABEL: {label}\n"),
            tablespace_map: None,
            tablespaces: Vec::new(),
            annotations: Default::default(),
            directories: vec![DirEntry {
                path: "base/5".into(),
                mode: 0o700,
            }],
            database_size: files.len() as u64 * 8192,
            stored_size: files.len() as u64 * 300,
            files,
            bundles: vec![bundle],
            checksum_failures: Vec::new(),
        };
        runtime.block_on(repo.save_manifest(manifest)).unwrap();
        previous = Some(label);
    }
    let stored = repo_dir.join("stored-wal");
    let claim = repo_dir.join("stored-claim");
    let checksum = "ef".repeat(32);
    for n in 0..segments {
        // A new file to link to now and then: a file system caps links per inode.
        if n % 10_000 == 0 {
            for (path, len) in [(&stored, 4096), (&claim, 200)] {
                let _ = std::fs::remove_file(path);
                std::fs::write(path, vec![7u8; len]).unwrap();
            }
        }
        let name = WalFileName::Segment(WalSegment::from_segno(TimelineId(1), n, SEG));
        let file = pgward::repo::archive::stored_name(&name, &checksum, Codec::Zstd);
        let dir =
            repo_dir.join(repo.archive_dir_key(&pgward::repo::archive::archive_subdir(&name)));
        if n % 256 == 0 || n == 0 {
            std::fs::create_dir_all(&dir).unwrap();
        }
        std::fs::hard_link(&stored, dir.join(file)).unwrap();
        std::fs::hard_link(&claim, repo_dir.join(repo.wal_claim_key(&name))).unwrap();
    }
    chown_pg(&repo_dir.join("main").join("backups"));
}

/// What GNU time measured of a run.
struct Cost {
    wall: f64,
    /// User plus system CPU seconds: what the run costs whatever else the machine does
    /// (the test machines are shared, their wall clock is not the program's).
    cpu: f64,
    peak_rss_kib: u64,
}

/// Runs pgward `args` under GNU time: its stdout and what it cost.
fn timed_pgward(args: &[&str]) -> (String, Cost) {
    let mut full = vec![
        "-f".to_string(),
        "%e %U %S %M".to_string(),
        pgward_bin().display().to_string(),
    ];
    full.extend(args.iter().map(|a| a.to_string()));
    let out = Command::new("/usr/bin/time").args(&full).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "pgward {}: {stderr}", args.join(" "));
    let last = stderr.lines().last().unwrap_or_default();
    let v: Vec<f64> = last.split(' ').map(|x| x.parse().unwrap()).collect();
    let cost = Cost {
        wall: v[0],
        cpu: v[1] + v[2],
        peak_rss_kib: v[3] as u64,
    };
    (String::from_utf8_lossy(&out.stdout).into_owned(), cost)
}

/// `metrics` and `info` on a fabricated stanza: the right counts, within a second of CPU
/// (two for the unoptimised build tests run by default) and 64 MiB. The fabricated WAL
/// is not WAL and the bundles do not exist: reading either would fail the commands.
fn metrics_and_info_stay_small(name: &str, backups: u64, segments: u64) {
    // The binary's build, not the test's, sets the bar (PGWARD_IT_BIN may be a release).
    let release = std::env::var_os("PGWARD_IT_BIN").is_some();
    let limit = if release { 1.0 } else { 2.0 };
    let dir = work_dir(name);
    let repo = dir.join("repo");
    fabricate_large_stanza(&repo, backups, segments, 1_500);
    let url = repo.display().to_string();
    let base = [
        "--repo",
        url.as_str(),
        "--stanza",
        "main",
        "--pg-host",
        "/nonexistent",
    ];
    let check = |what: &str, cost: &Cost| {
        eprintln!(
            "{what}: {} s wall, {:.2} s CPU, {} KiB",
            cost.wall, cost.cpu, cost.peak_rss_kib
        );
        assert!(cost.cpu < limit, "{what} took {:.2} s of CPU", cost.cpu);
        assert!(
            cost.peak_rss_kib < 64 << 10,
            "{what} peaked at {} KiB",
            cost.peak_rss_kib
        );
    };
    let mut args = base.to_vec();
    args.push("metrics");
    let (text, cost) = timed_pgward(&args);
    assert_eq!(
        sample(&text, "pgward_backups", "stanza=\"main\""),
        Some(backups as f64),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "pgward_archive_segments",
            "stanza=\"main\",timeline=\"1\""
        ),
        Some(segments as f64),
        "{text}"
    );
    assert!(
        sample(
            &text,
            "pgward_recoverable_window_seconds",
            "stanza=\"main\""
        )
        .is_some(),
        "{text}"
    );
    check("metrics", &cost);
    let mut args = base.to_vec();
    args.extend(["--output", "json", "info"]);
    let (json, cost) = timed_pgward(&args);
    let info: serde_json::Value = serde_json::from_str(&json).unwrap();
    let listed = info["backups"].as_array().unwrap();
    assert_eq!(listed.len() as u64, backups);
    assert_eq!(listed[0]["file_count"], 1_500);
    assert_eq!(info["archive"][0]["segments"], segments);
    check("info", &cost);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn metrics_and_info_of_a_stanza_read_only_metadata_and_listings() {
    metrics_and_info_stay_small("metrics_small", 10, 2_000);
}

#[test]
#[ignore = "second tier: fabricates 100 backups and 100,000 archived segments"]
fn metrics_and_info_take_under_a_second_for_100_backups_and_100000_segments() {
    metrics_and_info_stay_small("metrics_large", 100, 100_000);
}

#[test]
fn metrics_count_failed_async_pushes_queued_wal_and_the_lag_while_the_repository_refuses() {
    let src = Source::start("metrics_spool", 15);
    let spool = work_dir("metrics-spool-dir");
    let spool_s = spool.display().to_string();
    let cmd = format!(
        "{} --repo {} --stanza main archive-push --async --spool-path {spool_s} --archive-push-queue-max 2 %p",
        pgward_bin().display(),
        src.repo.display(),
    );
    src.sql(&format!(
        "ALTER SYSTEM SET archive_command = {}",
        sql_quote(&cmd)
    ));
    src.sql("SELECT pg_reload_conf()");
    src.archive_current_wal();
    let metrics = || src.ok(&["metrics", "--spool-path", &spool_s]);
    let stanza = "stanza=\"main\"";
    let text = metrics();
    promtool_check_metrics(&text);
    assert_eq!(
        sample(&text, "pgward_spool_push_failures_total", stanza),
        Some(0.0),
        "{text}"
    );

    // The repository refuses writes: background pushes fail, WAL waits in the spool.
    let lock_out = |mode: u32| {
        use std::os::unix::fs::PermissionsExt;
        for d in std::fs::read_dir(src.repo.join("main/archive"))
            .unwrap()
            .flatten()
        {
            std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(mode)).unwrap();
        }
    };
    lock_out(0o500);
    for _ in 0..3 {
        src.sql("CREATE TABLE IF NOT EXISTS filler (x int); INSERT INTO filler SELECT generate_series(1, 1000)");
        src.sql("SELECT pg_switch_wal()");
    }
    let text = wait_for(
        Duration::from_secs(60),
        || format!("no failed push counted:\n{}", metrics()),
        || {
            let text = metrics();
            let failed = sample(&text, "pgward_spool_push_failures_total", stanza)?;
            let queued = sample(&text, "pgward_spool_queued_files", stanza)?;
            (failed > 0.0 && queued >= 2.0).then_some(text)
        },
    );
    promtool_check_metrics(&text);
    assert!(
        sample(&text, "pgward_spool_last_failure_timestamp_seconds", stanza).is_some(),
        "{text}"
    );
    // Complete segments wait: more than one segment of lag, and it has an age.
    let timeline = "stanza=\"main\",timeline=\"1\"";
    let lag = sample(&text, "pgward_archive_lag_bytes", timeline).unwrap();
    assert!(lag > (16 << 20) as f64, "{text}");
    assert!(
        sample(&text, "pgward_archive_lag_seconds", timeline).is_some(),
        "{text}"
    );

    // Back to normal: the queue drains, the failures stay counted.
    lock_out(0o755);
    src.archive_current_wal();
    let text = wait_for(
        Duration::from_secs(60),
        || format!("the spool never drained:\n{}", metrics()),
        || {
            let text = metrics();
            (sample(&text, "pgward_spool_queued_files", stanza)? == 0.0).then_some(text)
        },
    );
    assert!(
        sample(&text, "pgward_spool_push_failures_total", stanza).is_some_and(|n| n > 0.0),
        "{text}"
    );
}
