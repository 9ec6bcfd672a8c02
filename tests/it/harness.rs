//! Integration-test harness: real PostgreSQL clusters, driven as an unprivileged user.
//!
//! Binaries: the server binaries (initdb, pg_ctl, postgres) of a major come from
//! [`pg_bin`]: Debian's /usr/lib/postgresql/<m>/bin, else /opt/pgward-pg/<m>/bin as put there
//! by scripts/install-test-deps.sh. Those builds carry RUNPATH $ORIGIN/../lib, so no
//! LD_LIBRARY_PATH is needed. Clients (psql, pgbench, pg_basebackup) are always Debian's 15
//! ([`client_bin`]); they talk to servers 13..18 (the npm build of 13 has no clients at all).
//!
//! Root: PostgreSQL refuses to run as root, so when the tests run as root every server,
//! client and pgward process runs as the `postgres` OS user (`runuser -u postgres --`) and
//! every directory those touch must belong to it: use [`work_dir`], [`mkdir_pg`],
//! [`chown_pg`]. The checkout may sit under /root, which `postgres` cannot traverse: hence
//! [`pgward_bin`] copies the binary under /tmp/pgward-it, and children run with cwd /tmp.
//!
//! Parallel tests (threads, or nextest's processes): nothing here changes the process cwd or
//! env; each cluster has its own dir, unix-socket dir (no TCP: listen_addresses='') and port.
//!
//! Cleanup: dropping a [`Cluster`] stops it (immediate) and removes its dir, unless the thread
//! is panicking or PGWARD_IT_KEEP is set. Dirs under /tmp/pgward-it left by test processes that
//! are gone are removed (their servers stopped) the first time a process calls [`work_dir`].
#![allow(dead_code)]

use std::fs;
use std::io::{ErrorKind, Write};
use std::net::TcpListener;
use std::os::unix::fs::{lchown, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::thread::sleep;
use std::time::{Duration, Instant, SystemTime};

/// Everything the tests create lives below this world-traversable dir.
pub const IT_ROOT: &str = "/tmp/pgward-it";
/// The OS user servers, clients and pgward run as when the tests run as root.
pub const RUN_AS_USER: &str = "postgres";
/// The major whose clients (psql, pgbench, ...) are used against every server.
pub const CLIENT_MAJOR: u32 = 15;

/// libpq variables of the caller's environment that must not leak into children.
const LIBPQ_VARS: &[&str] = &[
    "PGHOST",
    "PGHOSTADDR",
    "PGPORT",
    "PGUSER",
    "PGDATABASE",
    "PGPASSWORD",
    "PGPASSFILE",
    "PGSERVICE",
    "PGSERVICEFILE",
    "PGOPTIONS",
    "PGDATA",
    "PGSSLMODE",
    "PGTZ",
    "PGDATESTYLE",
    "PGCLIENTENCODING",
    "PGTARGETSESSIONATTRS",
    "PGAPPNAME",
];

// ---------------------------------------------------------------------------------------
// Users, dirs, binaries

/// Effective uid == 0 (read from /proc so the harness needs no libc).
pub fn is_root() -> bool {
    static ROOT: OnceLock<bool> = OnceLock::new();
    *ROOT.get_or_init(|| {
        let status = fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
        let uids = status
            .lines()
            .find(|l| l.starts_with("Uid:"))
            .expect("Uid: line");
        uids.split_whitespace().nth(2) == Some("0")
    })
}

/// (uid, gid) to chown to: the `postgres` user when root, None (leave as is) otherwise.
pub fn pg_owner() -> Option<(u32, u32)> {
    static OWNER: OnceLock<Option<(u32, u32)>> = OnceLock::new();
    *OWNER.get_or_init(|| {
        if !is_root() {
            return None;
        }
        let passwd = fs::read_to_string("/etc/passwd").expect("read /etc/passwd");
        let f: Vec<&str> = passwd
            .lines()
            .map(|l| l.split(':').collect::<Vec<_>>())
            .find(|f| f[0] == RUN_AS_USER && f.len() > 3)
            .unwrap_or_else(|| panic!("tests run as root need an OS user `{RUN_AS_USER}`: run scripts/install-test-deps.sh"));
        Some((f[2].parse().unwrap(), f[3].parse().unwrap()))
    })
}

/// Server binaries of `major`: Debian's if installed, else /opt/pgward-pg's; None if neither.
pub fn pg_bin(major: u32) -> Option<PathBuf> {
    [
        format!("/usr/lib/postgresql/{major}/bin"),
        format!("/opt/pgward-pg/{major}/bin"),
    ]
    .into_iter()
    .map(PathBuf::from)
    .find(|d| d.join("initdb").is_file())
}

/// A client program (psql, pgbench, pg_basebackup, pg_controldata, ...) of Debian's 15.
pub fn client_bin(name: &str) -> PathBuf {
    let p = Path::new("/usr/lib/postgresql")
        .join(CLIENT_MAJOR.to_string())
        .join("bin")
        .join(name);
    assert!(
        p.is_file(),
        "{} missing: run scripts/install-test-deps.sh",
        p.display()
    );
    p
}

/// Creates `path` and any missing parents, chowning the ones it created to the run-as user.
pub fn mkdir_pg(path: &Path) {
    let mut created = Vec::new();
    let mut p = Some(path);
    while let Some(d) = p.filter(|d| !d.exists()) {
        created.push(d.to_path_buf());
        p = d.parent();
    }
    fs::create_dir_all(path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
    for d in created {
        chown_one(&d);
    }
}

/// Recursively chowns `path` to the run-as user (no-op when not root). Symlinks not followed.
pub fn chown_pg(path: &Path) {
    if pg_owner().is_none() {
        return;
    }
    chown_one(path);
    if fs::symlink_metadata(path)
        .map(|m| m.is_dir())
        .unwrap_or(false)
    {
        for e in fs::read_dir(path).unwrap_or_else(|e| panic!("read_dir {}: {e}", path.display())) {
            chown_pg(&e.unwrap().path());
        }
    }
}

fn chown_one(path: &Path) {
    if let Some((uid, gid)) = pg_owner() {
        lchown(path, Some(uid), Some(gid))
            .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
    }
}

/// /tmp/pgward-it, mode 1777 like /tmp so root and non-root runs can share it.
fn it_root() -> &'static Path {
    static DONE: OnceLock<PathBuf> = OnceLock::new();
    DONE.get_or_init(|| {
        let root = PathBuf::from(IT_ROOT);
        fs::create_dir_all(&root).unwrap_or_else(|e| panic!("mkdir {IT_ROOT}: {e}"));
        let _ = fs::set_permissions(&root, fs::Permissions::from_mode(0o1777));
        remove_stale_dirs(&root);
        // Port claims of dead processes: free to take anyway, just keep the dir small.
        for e in fs::read_dir(root.join("ports"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let pid = fs::read_to_string(e.path())
                .ok()
                .and_then(|t| t.trim().parse().ok());
            if !pid.is_some_and(pid_alive) {
                let _ = fs::remove_file(e.path());
            }
        }
        root
    })
}

fn pid_alive(pid: u32) -> bool {
    // A zombie (reparented postmaster in a container whose init doesn't reap) counts as dead.
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .map(|s| !s.trim_start().starts_with('Z'))
            .unwrap_or(true),
        Err(_) => false,
    }
}

/// Removes `<name>-<pid>` dirs whose test process is gone, stopping servers left in them.
fn remove_stale_dirs(root: &Path) {
    let Ok(entries) = fs::read_dir(root) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.rsplit('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !pid_alive(pid) {
            stop_servers_below(&e.path(), 3);
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

/// Immediate-stops every live server whose data dir is within `depth` levels below `dir`.
fn stop_servers_below(dir: &Path, depth: u32) {
    if dir.join("postmaster.pid").is_file() {
        let major = fs::read_to_string(dir.join("PG_VERSION"))
            .ok()
            .and_then(|v| v.trim().parse().ok());
        if let (Some(bin), true) = (major.and_then(pg_bin), postmaster_alive(dir)) {
            let _ = run_as_pg(
                &bin.join("pg_ctl"),
                &["-D", &s(dir), "-m", "immediate", "-w", "stop"],
                &[],
            );
        }
    } else if depth > 0 {
        for e in fs::read_dir(dir).into_iter().flatten().flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                stop_servers_below(&e.path(), depth - 1);
            }
        }
    }
}

fn postmaster_alive(data: &Path) -> bool {
    fs::read_to_string(data.join("postmaster.pid"))
        .ok()
        .and_then(|t| t.lines().next().and_then(|l| l.trim().parse().ok()))
        .map(pid_alive)
        .unwrap_or(false)
}

/// A fresh, empty /tmp/pgward-it/<name>-<pid>, owned by the run-as user. Any previous dir of
/// that name in this process is removed first (with its server stopped): names must be
/// unique among the tests that run at the same time in one process.
pub fn work_dir(name: &str) -> PathBuf {
    assert!(
        !name.is_empty() && !name.contains('/'),
        "bad work dir name {name:?}"
    );
    let dir = it_root().join(format!("{name}-{}", std::process::id()));
    if dir.exists() {
        stop_servers_below(&dir, 3);
        fs::remove_dir_all(&dir).unwrap_or_else(|e| panic!("rm -r {}: {e}", dir.display()));
    }
    mkdir_pg(&dir);
    dir
}

/// The pgward binary, copied once per process to a world-readable place
/// (/tmp/pgward-it/bin/<size>-<mtime>/pgward): the build may live under /root.
/// `PGWARD_IT_BIN` runs the tests against another build (a release binary, for the
/// second-tier timing tests).
pub fn pgward_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let chosen = std::env::var_os("PGWARD_IT_BIN");
        let src = chosen
            .as_deref()
            .map_or(Path::new(env!("CARGO_BIN_EXE_pgward")), Path::new);
        let meta = fs::metadata(src).unwrap_or_else(|e| panic!("{}: {e}", src.display()));
        let bins = it_root().join("bin");
        fs::create_dir_all(&bins).unwrap();
        let _ = fs::set_permissions(&bins, fs::Permissions::from_mode(0o1777));
        let dir = bins.join(format!(
            "{}-{}.{}",
            meta.len(),
            meta.mtime(),
            meta.mtime_nsec()
        ));
        let dst = dir.join("pgward");
        if fs::metadata(&dst)
            .map(|m| m.len() == meta.len())
            .unwrap_or(false)
        {
            return dst;
        }
        fs::create_dir_all(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        // Copy then rename: other test processes may be running the same path right now.
        let tmp = dir.join(format!(".pgward.{}", std::process::id()));
        fs::copy(src, &tmp)
            .unwrap_or_else(|e| panic!("copy {} -> {}: {e}", src.display(), tmp.display()));
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755)).unwrap();
        fs::rename(&tmp, &dst).unwrap();
        // Builds from more than a day ago are no longer run by anyone.
        for e in fs::read_dir(&bins).into_iter().flatten().flatten() {
            let old = e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| SystemTime::now().duration_since(t).ok())
                .is_some_and(|age| age > Duration::from_secs(86_400));
            if old && e.path() != dir {
                let _ = fs::remove_dir_all(e.path());
            }
        }
        dst
    })
    .clone()
}

// ---------------------------------------------------------------------------------------
// Running programs

/// A Command for `program` as the run-as user (`runuser -u postgres --` when root), with
/// cwd /tmp, the caller's libpq variables removed and `env` added. For background processes;
/// stop those with [`terminate`] (SIGTERM reaches the program through runuser, SIGKILL doesn't).
pub fn pg_command(program: &Path, args: &[&str], env: &[(String, String)]) -> Command {
    let mut cmd = if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", RUN_AS_USER, "--"]).arg(program);
        c
    } else {
        Command::new(program)
    };
    cmd.args(args).current_dir("/tmp");
    for v in LIBPQ_VARS {
        cmd.env_remove(v);
    }
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    cmd
}

/// Runs `program` to completion as the run-as user (see [`pg_command`]); stdin is empty.
pub fn run_as_pg(program: &Path, args: &[&str], env: &[(String, String)]) -> Output {
    run_as_pg_input(program, args, env, b"")
}

/// Like [`run_as_pg`], feeding `input` on stdin.
pub fn run_as_pg_input(
    program: &Path,
    args: &[&str],
    env: &[(String, String)],
    input: &[u8],
) -> Output {
    let mut child = pg_command(program, args, env)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", program.display()));
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    // Write from a thread: a large input and a large output would otherwise deadlock.
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("wait {}: {e}", program.display()));
    let _ = writer.join();
    out
}

/// SIGTERM `child` (e.g. from [`pg_command`]) and wait up to `timeout`, then SIGKILL.
pub fn terminate(child: &mut Child, timeout: Duration) -> ExitStatus {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            return child.wait().unwrap();
        }
        sleep(Duration::from_millis(50));
    }
}

/// Runs pgward as the run-as user. Large files are cut into 2 MiB pieces (64 MiB
/// outside tests), so that the small test clusters back up and restore files in pieces.
pub fn pgward(args: &[&str], env: &[(String, String)]) -> Output {
    let mut env = env.to_vec();
    env.push(("PGWARD_TEST_PIECE_BYTES".into(), (2 << 20).to_string()));
    run_as_pg(&pgward_bin(), args, &env)
}

/// Panics (showing both streams) unless `out` succeeded; returns stdout.
pub fn assert_success(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A port no other test (thread or process) of this machine has taken and nothing listens
/// on: an atomic counter from a per-process base, plus claim files in /tmp/pgward-it/ports
/// that hold the claiming pid (claims of dead processes are taken over).
pub fn next_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const FIRST: u32 = 56000;
    const SPAN: u32 = 4000;
    let claims = it_root().join("ports");
    if fs::create_dir(&claims).is_ok() {
        let _ = fs::set_permissions(&claims, fs::Permissions::from_mode(0o1777));
    }
    let base = (std::process::id() % 500) * 8;
    for _ in 0..SPAN {
        let port = (FIRST + (base + NEXT.fetch_add(1, Ordering::Relaxed)) % SPAN) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok()
            && claim_port(&claims.join(port.to_string()))
        {
            return port;
        }
    }
    panic!("no free port in {FIRST}..{}", FIRST + SPAN);
}

fn claim_port(file: &Path) -> bool {
    for _ in 0..2 {
        match fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(file)
        {
            Ok(mut f) => return write!(f, "{}", std::process::id()).is_ok(),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                let owner = fs::read_to_string(file)
                    .ok()
                    .and_then(|t| t.trim().parse::<u32>().ok());
                match owner {
                    Some(pid) if pid == std::process::id() || pid_alive(pid) => return false,
                    // Dead owner (or a claim being written right now: then the retry fails).
                    _ => {
                        let _ = fs::remove_file(file);
                    }
                }
            }
            Err(_) => return false,
        }
    }
    false
}

fn s(p: &Path) -> String {
    p.to_str().expect("non-UTF-8 path").to_string()
}

/// A postgresql.conf string literal.
pub fn conf_quote(v: &str) -> String {
    format!("'{}'", v.replace('\'', "''"))
}

/// An SQL string literal.
pub fn sql_quote(v: &str) -> String {
    format!("'{}'", v.replace('\'', "''"))
}

// ---------------------------------------------------------------------------------------
// Clusters

#[derive(Clone, Debug)]
pub struct ClusterOptions {
    pub major: u32,
    /// initdb -k (on 18, where checksums are the default, false passes --no-data-checksums).
    pub checksums: bool,
    /// None: archive_mode = off.
    pub archive_command: Option<String>,
    /// Lines appended to postgresql.conf after the harness's own.
    pub extra_conf: Vec<String>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            major: 15,
            checksums: true,
            archive_command: None,
            extra_conf: Vec::new(),
        }
    }
}

/// How [`Cluster::wait_for_recovery_end`] ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecoveryEnd {
    /// The server runs and pg_is_in_recovery() is false (promoted / recovery finished).
    Promoted,
    /// The server is not running: recovery_target_action = 'shutdown' reached its target,
    /// or recovery failed (e.g. target not reached): read `log` to tell which.
    Stopped,
}

#[derive(Debug)]
pub struct Cluster {
    pub major: u32,
    /// Server binaries of `major`.
    pub bin: PathBuf,
    pub data: PathBuf,
    pub port: u16,
    pub socket_dir: PathBuf,
    /// Server log (pg_ctl -l).
    pub log: PathBuf,
    /// The cluster's own work dir (holds sock/, server.log, and data/ for `init`); free for
    /// the test's own files. Removed on drop, see the module doc.
    pub dir: PathBuf,
}

impl Cluster {
    fn binary(major: u32) -> PathBuf {
        pg_bin(major).unwrap_or_else(|| {
            panic!("PostgreSQL {major} not installed: run scripts/install-test-deps.sh {major}")
        })
    }

    fn layout(major: u32, data: PathBuf, dir: PathBuf) -> Cluster {
        let socket_dir = dir.join("sock");
        mkdir_pg(&socket_dir);
        // Unix socket paths are limited to 107 bytes.
        assert!(
            s(&socket_dir).len() < 80,
            "socket dir path too long: {}",
            socket_dir.display()
        );
        Cluster {
            major,
            bin: Self::binary(major),
            data,
            port: next_port(),
            socket_dir,
            log: dir.join("server.log"),
            dir,
        }
    }

    /// initdb into <work_dir(name)>/data and configure; does not start.
    pub fn init(name: &str, opts: ClusterOptions) -> Cluster {
        Self::binary(opts.major); // fail before creating anything
        let dir = work_dir(name);
        let c = Cluster::layout(opts.major, dir.join("data"), dir);
        let data = s(&c.data);
        // C locale and UTF8: identical on every build; --no-sync: tests don't survive OS crashes.
        let mut args = vec![
            "-D",
            &data,
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        ];
        if opts.checksums {
            args.push("-k");
        } else if opts.major >= 18 {
            args.push("--no-data-checksums");
        }
        assert_success(
            &run_as_pg(&c.bin.join("initdb"), &args, &[]),
            &format!("initdb {}", c.data.display()),
        );
        let mut conf = vec![
            "wal_level = replica".to_string(),
            format!(
                "archive_mode = {}",
                if opts.archive_command.is_some() {
                    "on"
                } else {
                    "off"
                }
            ),
            "max_wal_size = 256MB".into(),
            "fsync = on".into(),
            "shared_buffers = 32MB".into(),
            "max_connections = 40".into(),
            "timezone = 'UTC'".into(),
            "log_timezone = 'UTC'".into(),
            "lc_messages = 'C'".into(),
            "logging_collector = off".into(),
            "log_line_prefix = '%m [%p] '".into(),
            "log_checkpoints = on".into(),
        ];
        if let Some(cmd) = &opts.archive_command {
            conf.push(format!("archive_command = {}", conf_quote(cmd)));
        }
        conf.extend(c.location_conf());
        conf.extend(opts.extra_conf.iter().cloned());
        c.append_conf(&conf);
        c
    }

    /// Adopts a data dir (e.g. restored by pgward) as a cluster that can run beside its
    /// source: chowns it to the run-as user, chmods it 0700, drops a stale postmaster.pid,
    /// and appends a new port and socket dir (in a fresh work_dir(name)) to postgresql.conf.
    pub fn from_existing(name: &str, major: u32, data_dir: PathBuf) -> Cluster {
        assert!(
            data_dir.join("PG_VERSION").is_file(),
            "{} is no data dir",
            data_dir.display()
        );
        assert!(
            !postmaster_alive(&data_dir),
            "{} belongs to a running server",
            data_dir.display()
        );
        let _ = fs::remove_file(data_dir.join("postmaster.pid"));
        chown_pg(&data_dir);
        fs::set_permissions(&data_dir, fs::Permissions::from_mode(0o700)).unwrap();
        let c = Cluster::layout(major, data_dir, work_dir(name));
        c.append_conf(&c.location_conf());
        c
    }

    fn location_conf(&self) -> Vec<String> {
        vec![
            format!("port = {}", self.port),
            "listen_addresses = ''".into(),
            format!(
                "unix_socket_directories = {}",
                conf_quote(&s(&self.socket_dir))
            ),
        ]
    }

    /// Appends lines to postgresql.conf (later lines win over earlier ones).
    pub fn append_conf<S: AsRef<str>>(&self, lines: &[S]) {
        let path = self.data.join("postgresql.conf");
        let mut f = fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
        writeln!(f, "\n# pgward-it").unwrap();
        for l in lines {
            writeln!(f, "{}", l.as_ref()).unwrap();
        }
    }

    /// Starts the server (pg_ctl -w -t 120); panics with the server log's tail on failure.
    pub fn start(&self) {
        self.try_start().unwrap_or_else(|e| panic!("{e}"));
    }

    /// Starts the server; the error carries pg_ctl's output and the log's tail. Note that
    /// pg_ctl -w returns once the server accepts connections, i.e. during archive recovery
    /// once it is consistent (hot_standby is on by default); with
    /// recovery_target_action = 'shutdown' the server may exit before that: Err here.
    pub fn try_start(&self) -> Result<(), String> {
        let out = run_as_pg(
            &self.bin.join("pg_ctl"),
            &[
                "-D",
                &s(&self.data),
                "-l",
                &s(&self.log),
                "-w",
                "-t",
                "120",
                "start",
            ],
            &[],
        );
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "pg_ctl start of {} failed ({}):\n{}{}\n--- server log tail ---\n{}",
                self.data.display(),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                self.log_tail(40)
            ))
        }
    }

    /// Fast shutdown (pg_ctl -m fast -w); no-op if not running.
    pub fn stop(&self) {
        self.stop_mode("fast");
    }

    /// Immediate shutdown, i.e. a crash as far as the data dir is concerned.
    pub fn stop_immediate(&self) {
        self.stop_mode("immediate");
    }

    fn stop_mode(&self, mode: &str) {
        if !self.is_running() {
            return;
        }
        let out = run_as_pg(
            &self.bin.join("pg_ctl"),
            &["-D", &s(&self.data), "-m", mode, "-w", "-t", "120", "stop"],
            &[],
        );
        if !out.status.success() && self.is_running() {
            panic!(
                "pg_ctl stop -m {mode} of {} failed: {}\n--- server log tail ---\n{}",
                self.data.display(),
                String::from_utf8_lossy(&out.stderr),
                self.log_tail(40)
            );
        }
    }

    /// The postmaster named in postmaster.pid is alive.
    pub fn is_running(&self) -> bool {
        postmaster_alive(&self.data)
    }

    /// Polls until the server is out of recovery (Promoted) or no longer running (Stopped:
    /// expected with recovery_target_action = 'shutdown'; also what a failed recovery
    /// looks like, so check the log). Panics with the log's tail after `timeout`.
    pub fn wait_for_recovery_end(&self, timeout: Duration) -> RecoveryEnd {
        let deadline = Instant::now() + timeout;
        loop {
            if !self.is_running() {
                return RecoveryEnd::Stopped;
            }
            // Connections fail until the server is consistent: keep polling.
            if self
                .try_psql("postgres", "select pg_is_in_recovery()")
                .as_deref()
                == Ok("f")
            {
                return RecoveryEnd::Promoted;
            }
            if Instant::now() > deadline {
                panic!(
                    "{} still in recovery after {timeout:?}\n--- server log tail ---\n{}",
                    self.data.display(),
                    self.log_tail(40)
                );
            }
            sleep(Duration::from_millis(200));
        }
    }

    /// Runs SQL (any number of statements, fed on stdin) with psql -X -Atq and
    /// ON_ERROR_STOP over the unix socket; returns stdout without trailing newlines.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        self.try_psql(db, sql)
            .unwrap_or_else(|e| panic!("psql on {} port {}: {e}", self.data.display(), self.port))
    }

    pub fn try_psql(&self, db: &str, sql: &str) -> Result<String, String> {
        let port = self.port.to_string();
        let sock = s(&self.socket_dir);
        let args = [
            "-X",
            "-A",
            "-t",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            &sock,
            "-p",
            &port,
            "-U",
            "postgres",
            "-d",
            db,
            "-f",
            "-",
        ];
        let env = [("PGCONNECT_TIMEOUT".to_string(), "10".to_string())];
        let out = run_as_pg_input(&client_bin("psql"), &args, &env, sql.as_bytes());
        let stdout = String::from_utf8_lossy(&out.stdout)
            .trim_end_matches('\n')
            .to_string();
        if out.status.success() {
            Ok(stdout)
        } else {
            Err(format!(
                "{}{}",
                String::from_utf8_lossy(&out.stderr),
                stdout
            ))
        }
    }

    /// Debian 15's pgbench with this cluster's env (PGHOST/PGPORT/... set: pass only the
    /// pgbench options). Does not check the exit status.
    pub fn pgbench(&self, args: &[&str]) -> Output {
        run_as_pg(&client_bin("pgbench"), args, &self.env())
    }

    /// md5 over the contents of every permanent ordinary table (partitions included,
    /// unlogged and temp tables excluded: those are empty after a restore) of `db`: tables
    /// in name order, each as the sorted md5s of its rows' text form. Any changed value,
    /// added/removed row or renamed table changes it.
    pub fn content_checksum(&self, db: &str) -> String {
        let tables = self.psql(
            db,
            "select t from (select format('%I.%I', n.nspname, c.relname) t \
            from pg_class c join pg_namespace n on n.oid = c.relnamespace \
            where c.relkind = 'r' and c.relpersistence = 'p' \
              and n.nspname not in ('pg_catalog', 'information_schema') \
              and n.nspname not like 'pg\\_toast%' and n.nspname not like 'pg\\_temp%') s \
            order by t collate \"C\"",
        );
        let parts: Vec<String> = tables.lines().filter(|t| !t.is_empty()).map(|t| format!(
            "select {} as k, (select coalesce(string_agg(md5(_pgw_r::text), ',' order by md5(_pgw_r::text)), '') \
             from {t} _pgw_r) as h", sql_quote(t))).collect();
        if parts.is_empty() {
            return self.psql(db, "select md5('')");
        }
        self.psql(
            db,
            &format!(
                "select md5(string_agg(k || ':' || h, ';' order by k collate \"C\")) from ({}) s",
                parts.join(" union all ")
            ),
        )
    }

    /// libpq env for this cluster: PGHOST (socket dir), PGPORT, PGUSER, PGDATABASE, PGDATA.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("PGHOST".into(), s(&self.socket_dir)),
            ("PGPORT".into(), self.port.to_string()),
            ("PGUSER".into(), "postgres".into()),
            ("PGDATABASE".into(), "postgres".into()),
            ("PGDATA".into(), s(&self.data)),
        ]
    }

    /// The last `n` lines of the server log.
    pub fn log_tail(&self, n: usize) -> String {
        let text = fs::read_to_string(&self.log)
            .unwrap_or_else(|e| format!("({}: {e})", self.log.display()));
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

impl Drop for Cluster {
    /// Immediate stop if running; then removes `dir` unless panicking or PGWARD_IT_KEEP is
    /// set. A `from_existing` data dir outside `dir` is left alone.
    fn drop(&mut self) {
        if self.is_running() {
            let _ = run_as_pg(
                &self.bin.join("pg_ctl"),
                &["-D", &s(&self.data), "-m", "immediate", "-w", "stop"],
                &[],
            );
        }
        if std::thread::panicking() || std::env::var_os("PGWARD_IT_KEEP").is_some() {
            eprintln!(
                "pgward-it: kept {} (log {})",
                self.dir.display(),
                self.log.display()
            );
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}
