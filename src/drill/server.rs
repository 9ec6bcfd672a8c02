//! The scratch server: started with `pg_ctl` on the restored copy with settings that cut
//! every path to the source and the outside (no TCP, a socket directory of its own,
//! archiving off, no replication or subscriptions, its own pid and stats files), watched
//! until recovery has ended, and always stopped: cleanly by [`Server::stop`], immediately
//! by `Drop` on every other path (an error, an interrupted drill).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio_postgres::{Client, NoTls};

use super::scratch::{user_name, Scratch};
use crate::error::{Error, ErrorKind, Result};
use crate::repo::shell_quote;
use crate::restore::ownership::Owner;

/// libpq's variables: a drill's programs get their connection on the command line, and
/// none of the caller's may point them at the source.
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
    "PGTARGETSESSIONATTRS",
];

/// A program of the drill's PostgreSQL, run as the scratch cluster's owner.
pub fn program(
    bin: &Path,
    name: &str,
    owner: Option<Owner>,
    cwd: &Path,
) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(bin.join(name));
    cmd.current_dir(cwd).stdin(Stdio::null()).kill_on_drop(true);
    for v in LIBPQ_VARS {
        cmd.env_remove(v);
    }
    if let Some(owner) = owner {
        // std drops root's supplementary groups when it changes the uid.
        cmd.uid(owner.uid).gid(owner.gid);
    }
    cmd
}

/// Runs a program to its end; (success, stderr and stdout together).
pub async fn run(mut cmd: tokio::process::Command, what: &str) -> Result<(bool, String)> {
    let out = cmd
        .output()
        .await
        .map_err(|e| Error::new(ErrorKind::Io, format!("running {what}")).source(e))?;
    // The complaint first (pg_checksums puts its summary on stdout, its error on stderr).
    let mut text = String::from_utf8_lossy(&out.stderr).into_owned();
    text.push('\n');
    text.push_str(&String::from_utf8_lossy(&out.stdout));
    Ok((out.status.success(), text.trim().to_string()))
}

pub struct Server {
    bin: PathBuf,
    data: PathBuf,
    root: PathBuf,
    log: PathBuf,
    owner: Option<Owner>,
    pub port: u16,
    pub socket_dir: PathBuf,
    /// Roles to try, in order, when connecting (the copy has the source's roles).
    users: Vec<String>,
    user: Option<String>,
    /// Secrets the restore_command reads from its environment.
    env: Vec<(String, String)>,
    stopped: bool,
}

impl Server {
    /// Prepares the scratch server's files; nothing runs yet.
    pub fn prepare(
        scratch: &Scratch,
        bin: &Path,
        major: u32,
        db_user: Option<&str>,
        env: Vec<(String, String)>,
    ) -> Result<(Server, Vec<String>)> {
        let data = scratch.data();
        // Debian keeps postgresql.conf in /etc: a data directory without one still starts.
        let conf = data.join("postgresql.conf");
        if !conf.exists() {
            scratch.write_file(&conf, "")?;
        }
        // A backup of a standby carries standby.signal: the copy would wait for WAL forever.
        match std::fs::remove_file(data.join("standby.signal")) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(Error::io("removing", data.join("standby.signal"), e))
            }
            _ => {}
        }
        let socket_dir = scratch.socket_dir();
        scratch.private_dir(&socket_dir)?;
        let hba = scratch.root.join("pg_hba.conf");
        scratch.write_file(&hba, "local all all trust\n")?;
        let ident = scratch.root.join("pg_ident.conf");
        scratch.write_file(&ident, "")?;
        let port = free_port()?;
        let mut settings: Vec<(&str, String)> = vec![
            ("data_directory", data.display().to_string()),
            ("port", port.to_string()),
            ("listen_addresses", String::new()),
            ("unix_socket_directories", socket_dir.display().to_string()),
            ("unix_socket_permissions", "0700".into()),
            ("hba_file", hba.display().to_string()),
            ("ident_file", ident.display().to_string()),
            ("external_pid_file", String::new()),
            ("ssl", "off".into()),
            ("logging_collector", "off".into()),
            ("cluster_name", "pgward-drill".into()),
            ("hot_standby", "on".into()),
            ("archive_mode", "off".into()),
            ("archive_cleanup_command", String::new()),
            ("recovery_end_command", String::new()),
            ("primary_conninfo", String::new()),
            ("primary_slot_name", String::new()),
            // After promotion a commit would wait for a standby that never comes.
            ("synchronous_standby_names", String::new()),
            // Subscriptions would connect to their publishers: possibly the source.
            ("max_logical_replication_workers", "0".into()),
        ];
        if major < 15 {
            let stats = scratch.root.join("stats_tmp");
            scratch.private_dir(&stats)?;
            settings.push(("stats_temp_directory", stats.display().to_string()));
        }
        let options: Vec<String> = settings
            .iter()
            .map(|(k, v)| format!("-c {}", shell_quote(&format!("{k}={v}"))))
            .collect();
        let mut users: Vec<String> = db_user.map(str::to_string).into_iter().collect();
        // SAFETY: geteuid has no preconditions and cannot fail.
        let uid = scratch.owner.map_or(unsafe { libc::geteuid() }, |o| o.uid);
        users.extend(user_name(uid));
        users.push("postgres".into());
        users.dedup();
        let server = Server {
            bin: bin.to_path_buf(),
            data,
            root: scratch.root.clone(),
            log: scratch.log(),
            owner: scratch.owner,
            port,
            socket_dir,
            users,
            user: None,
            env,
            stopped: true,
        };
        Ok((server, options))
    }

    /// `pg_ctl start`, waiting (up to `timeout`) until the server accepts connections:
    /// once it is consistent, or has left recovery.
    pub async fn start(&mut self, options: &[String], timeout: Duration) -> Result<()> {
        let mut cmd = program(&self.bin, "pg_ctl", self.owner, &self.root);
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd.arg("start")
            .arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(&self.log)
            .args(["-w", "-t", &timeout.as_secs().max(1).to_string(), "-o"])
            .arg(options.join(" "))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        self.stopped = false;
        let (ok, out) = run(cmd, "pg_ctl start").await?;
        if !ok {
            // pg_ctl gave up waiting while recovery goes on: the drill's time ran out.
            if out.contains("did not start in time") {
                return Err(Error::new(
                    ErrorKind::Timeout,
                    "the scratch server was still recovering when the drill's time ran out",
                )
                .hint(
                    "give recovery more time with --timeout SECONDS, or choose a nearer target",
                ));
            }
            let words = out
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with("waiting for server"))
                .collect::<Vec<_>>()
                .join(" ");
            return Err(Error::new(
                ErrorKind::Database,
                format!(
                    "the scratch server did not start: {words}{}",
                    self.log_problems()
                ),
            )
            .hint(format!(
                "its log: {} (kept with --keep)",
                self.log.display()
            )));
        }
        Ok(())
    }

    /// Waits until recovery has ended and the server runs promoted; a server that stops
    /// instead (a target it cannot reach, WAL it cannot read) is an error with its words.
    pub async fn wait_promoted(&mut self, deadline: Instant) -> Result<Client> {
        let mut client: Option<Client> = None;
        loop {
            if !self.is_running() {
                return Err(Error::new(
                    ErrorKind::Database,
                    format!(
                        "the scratch server stopped during recovery{}",
                        self.log_problems()
                    ),
                )
                .hint(format!(
                    "its log: {} (kept with --keep)",
                    self.log.display()
                )));
            }
            if client.as_ref().is_none_or(|c| c.is_closed()) {
                client = match self.connect("template1").await {
                    Ok(c) => Some(c),
                    // Refused for good (no such role): waiting longer will not help.
                    Err(e) if e.kind == ErrorKind::Config => return Err(e),
                    // Not yet consistent, or not yet listening.
                    Err(_) => None,
                };
            }
            if let Some(c) = &client {
                if let Ok(row) = c.query_one("SELECT pg_is_in_recovery()", &[]).await {
                    if !row.get::<_, bool>(0) {
                        return Ok(client.take().expect("connected"));
                    }
                }
            }
            if Instant::now() > deadline {
                return Err(Error::new(
                    ErrorKind::Timeout,
                    "the scratch server was still recovering when the drill's time ran out",
                )
                .hint(
                    "give recovery more time with --timeout SECONDS, or choose a nearer target",
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// A connection to `database` as the first role of the copy that exists. When the
    /// server refuses every role (SQLSTATE class 28: no such role, authentication), a
    /// `Config` error naming them.
    pub async fn connect(&mut self, database: &str) -> Result<Client> {
        let users = match &self.user {
            Some(u) => vec![u.clone()],
            None => self.users.clone(),
        };
        let mut last = None;
        let mut refused = Vec::new();
        for user in users.iter().cloned() {
            let mut config = tokio_postgres::Config::new();
            config
                .host_path(&self.socket_dir)
                .port(self.port)
                .user(&user)
                .dbname(database)
                .application_name("pgward drill")
                .connect_timeout(Duration::from_secs(10));
            match config.connect(NoTls).await {
                Ok((client, connection)) => {
                    tokio::spawn(async move {
                        let _ = connection.await;
                    });
                    self.user = Some(user);
                    return Ok(client);
                }
                Err(e) => {
                    if let Some(db) = e
                        .as_db_error()
                        .filter(|d| d.code().code().starts_with("28"))
                    {
                        refused.push(format!("{user}: {}", db.message()));
                    }
                    last = Some(Error::from(e));
                }
            }
        }
        if !refused.is_empty() && refused.len() == users.len() {
            return Err(Error::config(format!(
                "the restored copy refused every role pgward tried ({})",
                refused.join("; ")
            ))
            .hint("pass --pg-user ROLE naming a superuser of the cluster"));
        }
        Err(last.unwrap_or_else(|| Error::new(ErrorKind::Database, "no role to connect as")))
    }

    pub fn owner(&self) -> Option<Owner> {
        self.owner
    }

    /// The role connections use (after a successful `connect`).
    pub fn user(&self) -> &str {
        self.user.as_deref().unwrap_or("postgres")
    }

    /// Fast shutdown (a clean stop: `pg_checksums` needs one).
    pub async fn stop(&mut self) -> Result<()> {
        let mut cmd = program(&self.bin, "pg_ctl", self.owner, &self.root);
        cmd.arg("stop")
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "fast", "-w", "-t", "600"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let (ok, out) = run(cmd, "pg_ctl stop").await?;
        if !ok && self.is_running() {
            return Err(Error::new(
                ErrorKind::Database,
                format!("the scratch server did not stop: {}", first_line(&out)),
            ));
        }
        self.stopped = true;
        Ok(())
    }

    /// The postmaster named in postmaster.pid is alive.
    pub fn is_running(&self) -> bool {
        let Ok(text) = std::fs::read_to_string(self.data.join("postmaster.pid")) else {
            return false;
        };
        let Some(pid) = text
            .lines()
            .next()
            .and_then(|l| l.trim().parse::<i32>().ok())
        else {
            return false;
        };
        // SAFETY: kill with signal 0 only checks that the process exists.
        pid > 0
            && (unsafe { libc::kill(pid, 0) } == 0
                || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM))
    }

    /// The server log's FATAL and PANIC lines (the last few), or its last lines.
    pub fn log_problems(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let bad: Vec<&str> = lines
            .iter()
            .copied()
            .filter(|l| l.contains("FATAL:") || l.contains("PANIC:"))
            .collect();
        let shown = if bad.is_empty() {
            &lines[lines.len().saturating_sub(3)..]
        } else {
            &bad[bad.len().saturating_sub(3)..]
        };
        if shown.is_empty() {
            String::new()
        } else {
            format!(": {}", shown.join(" | "))
        }
    }
}

impl Drop for Server {
    /// Every path out of a drill stops the scratch server, the error paths too.
    fn drop(&mut self) {
        if self.stopped || !self.is_running() {
            return;
        }
        let mut cmd = std::process::Command::new(self.bin.join("pg_ctl"));
        cmd.current_dir(&self.root)
            .arg("stop")
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "-w", "-t", "60"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(owner) = self.owner {
            use std::os::unix::process::CommandExt;
            cmd.uid(owner.uid).gid(owner.gid);
        }
        if let Err(e) = cmd.status() {
            tracing::warn!(data = %self.data.display(), %e, "could not stop the scratch server");
        }
    }
}

fn first_line(text: &str) -> &str {
    text.lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim()
}

/// A TCP port nothing listens on. The server listens on none (its socket file is named
/// after the port), but a port of its own keeps it apart from every other server, the
/// source's too, in shared memory keys and in anything that reads the port.
fn free_port() -> Result<u16> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| {
            Error::new(ErrorKind::Io, "finding a free port for the scratch server").source(e)
        })
}
