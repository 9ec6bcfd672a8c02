//! A cluster archiving into a fresh pgward repository, with helpers to run pgward
//! against it and to restore and start copies of it.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use super::harness::*;

pub struct Source {
    pub cluster: Cluster,
    pub repo: PathBuf,
    /// What --repo says: the local directory, or an object store's URL (s3://, gs://, az://).
    pub url: String,
    pub stanza: String,
    /// Options given to every pgward call (and to archive_command): e.g. a passphrase file.
    pub extra: Vec<String>,
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

impl Source {
    /// initdb (data checksums on), archive_command = pgward archive-push, start, stanza-create.
    pub fn start(name: &str, major: u32) -> Source {
        Self::start_with(
            name,
            ClusterOptions {
                major,
                ..Default::default()
            },
        )
    }

    pub fn start_with(name: &str, opts: ClusterOptions) -> Source {
        Self::start_full(name, opts, Vec::new(), &[])
    }

    /// `extra`: options for every pgward call (archive_command included); `create`: more
    /// options for stanza-create.
    /// With PGWARD_IT_STORE=s3|gcs|azure (or PGWARD_IT_S3) set, sources built this way
    /// keep their repository in a bucket of a local server of that store instead of a
    /// directory (scripts/test.sh runs the storage-independent tests a second time so).
    pub fn start_full(
        name: &str,
        opts: ClusterOptions,
        extra: Vec<String>,
        create: &[&str],
    ) -> Source {
        if let (Some(store), false) = (
            super::stores::selected(),
            extra.iter().any(|e| e == "--config"),
        ) {
            let dir = work_dir(&format!("{name}-storeconf"));
            let (url, config_text) = super::stores::repository(store, name, &dir);
            let config = dir.join("pgward.toml");
            std::fs::write(&config, config_text).unwrap();
            chown_pg(&dir);
            let mut extra = extra;
            extra.extend(["--config".to_string(), config.display().to_string()]);
            return Self::start_at(name, opts, url, extra, create);
        }
        let repo = work_dir(&format!("{name}-repo"));
        Self::start_at(name, opts, repo.display().to_string(), extra, create)
    }

    /// A source archiving into the repository `url` (a directory or an object store's URL).
    pub fn start_at(
        name: &str,
        mut opts: ClusterOptions,
        url: String,
        extra: Vec<String>,
        create: &[&str],
    ) -> Source {
        let repo = PathBuf::from(if url.contains("://") {
            "/nonexistent-remote-repository"
        } else {
            url.as_str()
        });
        let stanza = "main".to_string();
        opts.archive_command = Some(format!(
            "{} {} --repo {url} --stanza {stanza} archive-push %p",
            pgward_bin().display(),
            extra.join(" ")
        ));
        let cluster = Cluster::init(name, opts);
        cluster.start();
        let source = Source {
            cluster,
            repo,
            url,
            stanza,
            extra,
        };
        let mut args = vec!["stanza-create"];
        args.extend_from_slice(create);
        source.ok(&args);
        source
    }

    /// pgward with this cluster's connection environment, --repo and --stanza.
    pub fn pgward(&self, args: &[&str]) -> Output {
        let mut full: Vec<&str> = self.extra.iter().map(String::as_str).collect();
        full.extend(["--repo", &self.url, "--stanza", &self.stanza]);
        full.extend_from_slice(args);
        pgward(&full, &self.cluster.env())
    }

    pub fn ok(&self, args: &[&str]) -> String {
        assert_success(&self.pgward(args), &format!("pgward {}", args.join(" ")))
    }

    /// Expects failure with exit `code`; returns stderr.
    pub fn fails(&self, args: &[&str], code: i32) -> String {
        let out = self.pgward(args);
        assert_eq!(
            out.status.code(),
            Some(code),
            "pgward {} should exit {code}; stderr:\n{}",
            args.join(" "),
            stderr(&out)
        );
        stderr(&out)
    }

    pub fn sql(&self, sql: &str) -> String {
        self.cluster.psql("postgres", sql)
    }

    /// Full backup; returns its label.
    pub fn backup(&self, extra: &[&str]) -> String {
        let mut args = vec!["--output", "json", "backup"];
        args.extend_from_slice(extra);
        let out = self.ok(&args);
        let v: serde_json::Value = serde_json::from_str(out.trim()).expect("backup --output json");
        v["label"].as_str().unwrap().to_string()
    }

    pub fn info_json(&self) -> serde_json::Value {
        serde_json::from_str(&self.ok(&["--output", "json", "info"])).expect("info json")
    }

    /// Switches WAL and waits until the finished segment is archived.
    pub fn archive_current_wal(&self) {
        let segment = self.sql("SELECT pg_walfile_name(pg_switch_wal())");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let last =
                self.sql("SELECT coalesce(left(last_archived_wal, 24), '') FROM pg_stat_archiver");
            if last.as_str() >= segment.as_str() && last.len() == 24 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{segment} not archived; last archived {last:?}\n{}",
                self.cluster.log_tail(20)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Restores into a fresh directory with `args` (archiving off in the copy), starts it
    /// beside the source and waits for recovery to end.
    pub fn restore_and_start(&self, name: &str, args: &[&str]) -> Cluster {
        self.restore_and_start_archiving(name, args, false)
    }

    /// Like `restore_and_start`; with `archiving` the copy keeps the source's
    /// archive_command and archives into the same stanza (a new timeline after promotion).
    pub fn restore_and_start_archiving(
        &self,
        name: &str,
        args: &[&str],
        archiving: bool,
    ) -> Cluster {
        let dir = work_dir(&format!("{name}-pgdata")).join("data");
        let dir_s = dir.display().to_string();
        let mode = if archiving { "preserve" } else { "off" };
        let mut full = vec!["restore", "--pgdata", &dir_s, "--archive-mode", mode];
        full.extend_from_slice(args);
        self.ok(&full);
        assert!(
            dir.join("backup_label").is_file(),
            "restore must leave backup_label in place"
        );
        assert!(dir.join("recovery.signal").is_file());
        let restored = Cluster::from_existing(name, self.cluster.major, dir);
        restored.start();
        let end = restored.wait_for_recovery_end(Duration::from_secs(120));
        assert_eq!(
            end,
            RecoveryEnd::Promoted,
            "restored cluster did not promote:\n{}",
            restored.log_tail(30)
        );
        restored
    }
}

/// SIGKILL the pgward process `child` runs (through runuser when root).
pub fn kill_pgward(child: &mut Child) {
    let pid = child.id().to_string();
    let out = std::process::Command::new("pgrep")
        .args(["-P", &pid, "-f", "pgward"])
        .output()
        .unwrap();
    let children = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let target = children.lines().next().map(str::to_string).unwrap_or(pid);
    assert!(std::process::Command::new("kill")
        .args(["-9", &target])
        .status()
        .unwrap()
        .success());
    let _ = child.wait();
}

impl Source {
    /// Starts pgward in the background (output discarded).
    pub fn spawn(&self, args: &[&str], extra_env: &[(String, String)]) -> Child {
        let mut full: Vec<&str> = self.extra.iter().map(String::as_str).collect();
        full.extend(["--repo", &self.url, "--stanza", &self.stanza]);
        full.extend_from_slice(args);
        let mut env = self.cluster.env();
        env.extend_from_slice(extra_env);
        env.push(("PGWARD_TEST_PIECE_BYTES".into(), (2 << 20).to_string()));
        pg_command(&pgward_bin(), &full, &env)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    }

    /// Starts a deliberately slow backup (one job, gzip -9) in the background, so a test
    /// can interrupt it or race it. `extra` adds backup options (e.g. `--type incr`).
    pub fn spawn_slow_backup(&self, extra: &[&str]) -> Child {
        let mut args = vec![
            "backup",
            "--jobs",
            "1",
            "--compress",
            "gzip",
            "--compress-level",
            "9",
        ];
        args.extend_from_slice(extra);
        self.spawn(&args, &[])
    }

    /// Waits until a backup is writing a bundle (a temporary file in bundles/).
    pub fn wait_for_bundle_in_flight(&self) {
        let bundles = self.repo.join("main/bundles");
        let deadline = Instant::now() + Duration::from_secs(60);
        let in_flight = || {
            std::fs::read_dir(&bundles)
                .map(|d| {
                    d.flatten()
                        .any(|e| e.file_name().to_string_lossy().ends_with(".pgward-tmp"))
                })
                .unwrap_or(false)
        };
        while !in_flight() {
            assert!(
                Instant::now() < deadline,
                "backup never started writing a bundle"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn labels(&self) -> Vec<String> {
        self.info_json()["backups"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["label"].as_str().unwrap().to_string())
            .collect()
    }
}

/// A moto S3 server for this test process (scripts/moto.sh, stopped when we exit).
pub fn moto() -> u16 {
    static PORT: std::sync::OnceLock<u16> = std::sync::OnceLock::new();
    *PORT.get_or_init(|| {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let dir = std::env::temp_dir().join(format!("pgward-it-moto-{}", std::process::id()));
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/moto.sh");
        let status = std::process::Command::new("bash")
            .args([script, "start", &port.to_string()])
            .arg(&dir)
            .env("PGWARD_MOTO_PARENT", std::process::id().to_string())
            .status()
            .expect("running scripts/moto.sh");
        assert!(status.success(), "scripts/moto.sh start failed");
        port
    })
}

pub fn create_bucket(port: u16, bucket: &str) {
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(conn, "PUT /{bucket} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "CreateBucket {bucket}: {answer}"
    );
}

/// Whether `key` exists in a bucket of the local S3 server: an unsigned HEAD, which moto
/// answers 404 for a missing object and 403 (private) for an existing one.
pub fn s3_object_exists(port: u16, bucket: &str, key: &str) -> bool {
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        conn,
        "HEAD /{bucket}/{key} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 "), "HEAD {key}: {answer}");
    !answer.starts_with("HTTP/1.1 404")
}
