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
    stream.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}

/// Polls `probe` every 100 ms until it gives a value; panics after `timeout` with `what`.
fn wait_for<T>(timeout: Duration, what: impl Fn() -> String, mut probe: impl FnMut() -> Option<T>) -> T {
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
            .arg(format!("--storage.tsdb.path={}", dir.join("tsdb").display()))
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
    wait_for(Duration::from_secs(10), || format!("no child of runuser {pid}"), || {
        let out = Command::new("pgrep").args(["-P", &pid]).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
        text.lines().next().map(str::to_string)
    })
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
    assert_eq!(sample(&text, "pgward_verify_last_success", stanza), Some(1.0), "{text}");
    // The server answers: the lag is there, and small (the backup waited for its WAL).
    let lag = sample(&text, "pgward_archive_lag_bytes", "stanza=\"main\",timeline=\"1\"");
    assert!(lag.is_some_and(|b| b < (16 << 20) as f64), "{lag:?}\n{text}");
    assert!(
        sample(&text, "pgward_recoverable_window_start_timestamp_seconds", "stanza=\"main\",timeline=\"1\"")
            .is_some_and(|t| (t - stop).abs() < 0.002),
        "{text}"
    );
    // Without --stanza: every stanza of the repository (here the one).
    let all = assert_success(
        &pgward(&["--repo", &src.url, "metrics"], &src.cluster.env()),
        "metrics of every stanza",
    );
    assert_eq!(sample(&all, "pgward_backups", stanza), Some(1.0), "{all}");

    // serve, scraped by a real Prometheus.
    let port = next_port();
    let dir = src.cluster.dir.join("prometheus");
    mkdir_pg(&dir);
    let serve_log = dir.join("serve.log");
    let mut serve = pg_command(
        &pgward_bin(),
        &["--repo", &src.url, "--stanza", "main", "serve", "--listen", &format!("127.0.0.1:{port}")],
        &src.cluster.env(),
    )
    .stdout(Stdio::null())
    .stderr(std::fs::File::create(&serve_log).unwrap())
    .spawn()
    .unwrap();
    let served_log = || std::fs::read_to_string(&serve_log).unwrap_or_default();
    let (status, body) = wait_for(Duration::from_secs(30), || format!("serve never answered:\n{}", served_log()), || {
        http_get(port, "/metrics")
    });
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
    assert!((value - stop).abs() < 0.002, "Prometheus has {value}, the backup ended at {stop}");

    // SIGTERM to pgward itself: runuser, between it and the test when root, answers a
    // SIGTERM of its own by killing its child after 2 s.
    let pid = serving_pid(&serve);
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let status = wait_for(Duration::from_secs(20), || format!("serve still runs after SIGTERM:\n{}", served_log()), || {
        serve.try_wait().unwrap()
    });
    assert!(status.success(), "serve did not stop cleanly on SIGTERM: {status}\n{}", served_log());
    assert!(http_get(port, "/metrics").is_none(), "serve still answers after SIGTERM");
}

#[test]
fn alert_rules_fire_as_recorded_samples_say_and_the_guide_shows_them_verbatim() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/prometheus");
    for args in [["check", "rules", "alerts.yml"], ["test", "rules", "alerts.test.yml"]] {
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
    let guide = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/guide.md")).unwrap();
    assert!(
        guide.contains(&format!("```yaml\n{rules}```\n")),
        "docs/guide.md must show contrib/prometheus/alerts.yml as it is"
    );
}
