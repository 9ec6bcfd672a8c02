//! Talking to PostgreSQL: connection settings resolved like libpq (flags, then the PG*
//! environment variables, then `.pgpass`), and the version-neutral queries pgward needs.

use std::path::{Path, PathBuf};

use tokio_postgres::{Client, NoTls};

use crate::error::{Error, ErrorKind, Result};
use crate::pg::Lsn;
use crate::repo::stanza::ClusterIdentity;

#[derive(Clone, Debug, Default)]
pub struct ConnOptions {
    pub host: Option<String>,
    pub port: Option<u16>,
    pub user: Option<String>,
    pub database: Option<String>,
}

impl ConnOptions {
    /// Fills what flags left unset from libpq's environment variables and defaults.
    fn resolved(&self) -> (String, u16, String, String) {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let host = self
            .host
            .clone()
            .or_else(|| env("PGHOST"))
            .unwrap_or_else(|| {
                if Path::new("/var/run/postgresql").is_dir() {
                    "/var/run/postgresql".into()
                } else {
                    "localhost".into()
                }
            });
        let port = self
            .port
            .or_else(|| env("PGPORT").and_then(|p| p.parse().ok()))
            .unwrap_or(5432);
        let user = self
            .user
            .clone()
            .or_else(|| env("PGUSER"))
            .unwrap_or_else(os_user);
        let database = self
            .database
            .clone()
            .or_else(|| env("PGDATABASE"))
            .unwrap_or_else(|| "postgres".into());
        (host, port, user, database)
    }

    pub fn describe(&self) -> String {
        let (host, port, user, db) = self.resolved();
        format!("host={host} port={port} user={user} dbname={db}")
    }
}

fn os_user() -> String {
    std::env::var("USER")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| {
            // SAFETY: geteuid has no preconditions; getpwuid's result is read at once.
            unsafe {
                let pw = libc::getpwuid(libc::geteuid());
                if pw.is_null() {
                    "postgres".into()
                } else {
                    std::ffi::CStr::from_ptr((*pw).pw_name)
                        .to_string_lossy()
                        .into_owned()
                }
            }
        })
}

pub async fn connect(opts: &ConnOptions) -> Result<Client> {
    let (host, port, user, database) = opts.resolved();
    let mut config = tokio_postgres::Config::new();
    config
        .host(&host)
        .port(port)
        .user(&user)
        .dbname(&database)
        .application_name("pgward");
    let password = std::env::var("PGPASSWORD")
        .ok()
        .or_else(|| pgpass_lookup(&host, port, &database, &user));
    if let Some(password) = password {
        config.password(password);
    }
    // The whole attempt is bounded, not only the TCP connect (config.connect_timeout):
    // a server or proxy that accepts and then says nothing must not hang pgward.
    let timeout = connect_timeout();
    let (client, connection) = match tokio::time::timeout(timeout, config.connect(NoTls)).await {
        Ok(connected) => connected.map_err(|e| connect_error(&e, opts, &host, port, &user, &database))?,
        Err(_) => {
            return Err(Error::new(
                ErrorKind::Timeout,
                format!(
                    "cannot connect to PostgreSQL ({}): no answer from {host} port {port} within {} s",
                    opts.describe(),
                    timeout.as_secs()
                ),
            )
            .hint("check the host name, the network and firewalls between here and the server (PGCONNECT_TIMEOUT sets the wait)"))
        }
    };
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!("connection closed: {e}");
        }
    });
    Ok(client)
}

/// How long a connection attempt may take before it is reported as a timeout: libpq's
/// PGCONNECT_TIMEOUT (seconds, at least 2 as libpq has it), else 15 s.
fn connect_timeout() -> std::time::Duration {
    let secs = std::env::var("PGCONNECT_TIMEOUT")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|s| *s > 0)
        .map_or(15, |s| s.max(2));
    std::time::Duration::from_secs(secs)
}

/// A failed connection, by cause: no server socket, refused, authentication failed,
/// no such database, or whatever else the server or the system said (a timeout is
/// reported by `connect`).
fn connect_error(
    e: &tokio_postgres::Error,
    opts: &ConnOptions,
    host: &str,
    port: u16,
    user: &str,
    database: &str,
) -> Error {
    let params = opts.describe();
    let io = std::error::Error::source(e).and_then(|s| s.downcast_ref::<std::io::Error>());
    let (cause, hint) = if let Some(db) = e.as_db_error() {
        match db.code().code() {
            "28P01" | "28000" => (
                format!("authentication failed for user {user:?}: {}", db.message()),
                "check the password (PGPASSWORD or ~/.pgpass) and pg_hba.conf for this user and host".to_string(),
            ),
            "3D000" => (
                format!("database {database:?} does not exist"),
                "give an existing database with --pg-database or PGDATABASE".to_string(),
            ),
            _ => (
                format!("the server refused the connection: {}", db.message()),
                "see the server's log for details".to_string(),
            ),
        }
    } else if let Some(io) = io {
        match io.kind() {
            std::io::ErrorKind::NotFound if host.starts_with('/') => (
                format!("no server socket {host}/.s.PGSQL.{port}"),
                "is the server running, with unix_socket_directories and port as given? check --pg-host/--pg-port (PGHOST, PGPORT)".to_string(),
            ),
            std::io::ErrorKind::ConnectionRefused => (
                format!("connection refused by {host} port {port}"),
                "is the server running and listening there (listen_addresses, port)? check --pg-host/--pg-port (PGHOST, PGPORT)".to_string(),
            ),
            std::io::ErrorKind::PermissionDenied => (
                format!("permission denied on {host}: {io}"),
                "run pgward as a user who may open the server's socket (usually postgres)".to_string(),
            ),
            _ => (
                io.to_string(),
                "check --pg-host/--pg-port/--pg-user (or PGHOST, PGPORT, PGUSER) and that the server is running".to_string(),
            ),
        }
    } else {
        (
            e.to_string(),
            "check --pg-host/--pg-port/--pg-user (or PGHOST, PGPORT, PGUSER) and that the server is running".to_string(),
        )
    };
    Error::new(
        ErrorKind::Database,
        format!("cannot connect to PostgreSQL ({params}): {cause}"),
    )
    .hint(hint)
}

/// The password for a connection from PGPASSFILE or ~/.pgpass (libpq's rules: `*`
/// matches anything, `\` escapes, unix-socket hosts match "localhost").
fn pgpass_lookup(host: &str, port: u16, database: &str, user: &str) -> Option<String> {
    let path = std::env::var_os("PGPASSFILE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".pgpass")))?;
    let text = std::fs::read_to_string(path).ok()?;
    let host = if host.starts_with('/') {
        "localhost"
    } else {
        host
    };
    let port = port.to_string();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let fields = split_pgpass(line);
            if fields.len() != 5 {
                return None;
            }
            let matches = |field: &str, value: &str| field == "*" || field == value;
            (matches(&fields[0], host)
                && matches(&fields[1], &port)
                && matches(&fields[2], database)
                && matches(&fields[3], user))
            .then(|| fields[4].clone())
        })
}

fn split_pgpass(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => fields.last_mut().unwrap().extend(chars.next()),
            ':' => fields.push(String::new()),
            c => fields.last_mut().unwrap().push(c),
        }
    }
    fields
}

/// What pgward needs to know about a running server.
#[derive(Clone, Debug)]
pub struct ServerInfo {
    pub identity: ClusterIdentity,
    pub version_num: u32,
    pub data_directory: PathBuf,
    pub in_recovery: bool,
}

pub async fn server_info(client: &Client) -> Result<ServerInfo> {
    let row = client
        .query_one(
            "SELECT (SELECT system_identifier::text FROM pg_control_system()),
                    current_setting('server_version_num'),
                    current_setting('data_checksums'),
                    (SELECT setting FROM pg_settings WHERE name = 'wal_segment_size'),
                    current_setting('data_directory'),
                    pg_is_in_recovery()",
            &[],
        )
        .await?;
    let parse = |s: String, what: &str| -> Result<u64> {
        s.parse().map_err(|_| {
            Error::new(
                ErrorKind::Database,
                format!("server reported an unreadable {what}: {s:?}"),
            )
        })
    };
    let version_num = parse(row.get(1), "server_version_num")? as u32;
    Ok(ServerInfo {
        identity: ClusterIdentity {
            system_identifier: parse(row.get(0), "system identifier")?,
            pg_major: version_num / 10000,
            data_checksums: row.get::<_, String>(2) == "on",
            wal_segment_size: parse(row.get(3), "wal_segment_size")?,
        },
        version_num,
        data_directory: PathBuf::from(row.get::<_, String>(4)),
        in_recovery: row.get(5),
    })
}

/// Where a backup was taken, to record and show: the host (or socket directory) and port
/// pgward connected to, and the server's own address when that was over TCP.
pub async fn node_address(client: &Client, conn: &ConnOptions) -> Result<String> {
    let (host, port, _, _) = conn.resolved();
    let addr: Option<String> = client
        .query_one("SELECT host(inet_server_addr())", &[])
        .await?
        .get(0);
    Ok(match addr {
        Some(addr) if addr != host => format!("{host}:{port} ({addr})"),
        _ => format!("{host}:{port}"),
    })
}

/// Starts a non-exclusive backup on this session; returns the start LSN.
pub async fn backup_start(
    client: &Client,
    version_num: u32,
    label: &str,
    fast: bool,
) -> Result<Lsn> {
    let sql = if version_num >= 150000 {
        "SELECT pg_backup_start($1, $2)::text"
    } else {
        "SELECT pg_start_backup($1, $2, false)::text"
    };
    let lsn: String = client.query_one(sql, &[&label, &fast]).await?.get(0);
    parse_lsn(&lsn)
}

pub struct BackupStop {
    pub lsn: Lsn,
    pub backup_label: String,
    pub tablespace_map: Option<String>,
}

/// Ends the backup started on this same session. WAL archiving is waited for by the
/// caller, against the repository, not by the server.
pub async fn backup_stop(client: &Client, version_num: u32) -> Result<BackupStop> {
    let sql = if version_num >= 150000 {
        "SELECT lsn::text, labelfile, spcmapfile FROM pg_backup_stop(false)"
    } else {
        "SELECT lsn::text, labelfile, spcmapfile FROM pg_stop_backup(false, false)"
    };
    let row = client.query_one(sql, &[]).await?;
    let map: Option<String> = row.get(2);
    Ok(BackupStop {
        lsn: parse_lsn(&row.get::<_, String>(0))?,
        backup_label: row.get(1),
        tablespace_map: map.filter(|m| !m.is_empty()),
    })
}

pub fn parse_lsn(s: &str) -> Result<Lsn> {
    s.parse().map_err(|e| {
        Error::new(
            ErrorKind::Database,
            format!("server returned an unreadable LSN: {e}"),
        )
    })
}

/// The timeline the server is on now (from its latest checkpoint; on a standby, the
/// timeline being replayed).
pub async fn current_timeline(client: &Client) -> Result<crate::pg::TimelineId> {
    let row = client
        .query_one("SELECT CASE WHEN pg_is_in_recovery() THEN (SELECT received_tli FROM pg_stat_wal_receiver) END, (SELECT timeline_id FROM pg_control_checkpoint())", &[])
        .await?;
    let receiving: Option<i32> = row.get(0);
    let checkpoint: i32 = row.get(1);
    Ok(crate::pg::TimelineId(receiving.unwrap_or(checkpoint) as u32))
}

pub struct ArchiveSettings {
    pub wal_level: String,
    pub archive_mode: String,
    pub archive_command: String,
    pub config_file: PathBuf,
}

pub async fn archive_settings(client: &Client) -> Result<ArchiveSettings> {
    let row = client
        .query_one("SELECT current_setting('wal_level'), current_setting('archive_mode'), current_setting('archive_command'), current_setting('config_file')", &[])
        .await?;
    Ok(ArchiveSettings {
        wal_level: row.get(0),
        archive_mode: row.get(1),
        archive_command: row.get(2),
        config_file: PathBuf::from(row.get::<_, String>(3)),
    })
}

/// Where a server's WAL stands, for the archive lag `metrics` reports.
#[derive(Clone, Debug)]
pub struct WalPosition {
    pub system_identifier: u64,
    /// The insert position and its timeline; None on a standby, which writes no WAL.
    pub current: Option<(crate::pg::TimelineId, Lsn)>,
    /// archive_command failures since the archiver's statistics were reset.
    pub archive_failed_count: i64,
}

pub async fn wal_position(client: &Client) -> Result<WalPosition> {
    // The timeline from the name of the segment being written, not from the last
    // checkpoint: right after a promotion that checkpoint still names the old timeline.
    let row = client
        .query_one(
            "SELECT (SELECT system_identifier::text FROM pg_control_system()),
                    CASE WHEN NOT pg_is_in_recovery() THEN pg_current_wal_lsn()::text END,
                    CASE WHEN NOT pg_is_in_recovery() THEN pg_walfile_name(pg_current_wal_lsn()) END,
                    (SELECT failed_count FROM pg_stat_archiver)",
            &[],
        )
        .await?;
    let unreadable = |what: &str, s: &str| {
        Error::new(
            ErrorKind::Database,
            format!("server reported an unreadable {what}: {s:?}"),
        )
    };
    let id: String = row.get(0);
    let current = match (
        row.get::<_, Option<String>>(1),
        row.get::<_, Option<String>>(2),
    ) {
        (Some(lsn), Some(file)) => {
            let name = crate::pg::WalFileName::parse(&file)
                .map_err(|_| unreadable("WAL file name", &file))?;
            Some((name.timeline(), parse_lsn(&lsn)?))
        }
        _ => None,
    };
    Ok(WalPosition {
        system_identifier: id
            .parse()
            .map_err(|_| unreadable("system identifier", &id))?,
        current,
        archive_failed_count: row.get(3),
    })
}
