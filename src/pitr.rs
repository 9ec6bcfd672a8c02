//! `pitr enable|disable|status`: turn WAL archiving into this repository on and off,
//! and show whether it works. With a connection the settings go through ALTER SYSTEM;
//! without one (server down, `--pgdata` given) a marked block is appended to
//! postgresql.conf. Either way the old files are copied aside first, and the previous
//! values are remembered so that `disable` puts them back.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::db::{self, ConnOptions};
use crate::error::{Error, ErrorKind, IoContext, Result};
use crate::repo::Repo;
use crate::storage::local::sync_dir;

const SETTINGS: [&str; 3] = ["wal_level", "archive_mode", "archive_command"];
const BLOCK_BEGIN: &str = "# BEGIN pgward pitr";
const BLOCK_END: &str = "# END pgward pitr";

#[derive(Debug, Serialize, Deserialize, Clone)]
pub struct Setting {
    pub name: String,
    pub value: String,
    /// pg_settings.source: "default", "configuration file", …
    pub source: String,
}

#[derive(Debug, Serialize)]
pub struct ChangeReport {
    pub method: String,
    pub config_file: PathBuf,
    pub saved_copies: Vec<PathBuf>,
    pub changes: Vec<(String, String, String)>,
    pub restart_needed: bool,
}

/// Copies `file` to `file.pgward-<timestamp>` (durably) and returns the copy's path.
fn save_copy(file: &Path) -> Result<Option<PathBuf>> {
    if !file.exists() {
        return Ok(None);
    }
    let copy = PathBuf::from(format!(
        "{}.pgward-{}",
        file.display(),
        chrono::Utc::now().format("%Y%m%d-%H%M%S")
    ));
    std::fs::copy(file, &copy).at("saving a copy of", file)?;
    std::fs::File::open(&copy)
        .and_then(|f| f.sync_all())
        .at("syncing", &copy)?;
    if let Some(dir) = copy.parent() {
        sync_dir(dir).at("syncing", dir)?;
    }
    Ok(Some(copy))
}

async fn current(client: &tokio_postgres::Client) -> Result<Vec<Setting>> {
    let rows = client
        .query(
            "SELECT name, setting, source FROM pg_settings WHERE name = ANY($1) ORDER BY name",
            &[&SETTINGS.to_vec()],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Setting {
            name: r.get(0),
            value: r.get(1),
            source: r.get(2),
        })
        .collect())
}

fn quote(v: &str) -> String {
    format!("'{}'", v.replace('\'', "''"))
}

/// What both directions start from when the server is up: the current settings, its
/// data directory, and copies of both configuration files taken before any change.
struct Online {
    client: tokio_postgres::Client,
    data_dir: PathBuf,
    before: Vec<Setting>,
    saved_copies: Vec<PathBuf>,
}

/// Connects, or says why not (the caller falls back to editing files when it can).
async fn online(conn: &ConnOptions) -> Result<Online> {
    let client = db::connect(conn).await?;
    let settings = db::archive_settings(&client).await?;
    let data_dir = db::server_info(&client).await?.data_directory;
    let before = current(&client).await?;
    let mut saved_copies = Vec::new();
    saved_copies.extend(save_copy(&settings.config_file)?);
    saved_copies.extend(save_copy(&data_dir.join("postgresql.auto.conf"))?);
    Ok(Online {
        client,
        data_dir,
        before,
        saved_copies,
    })
}

/// How the settings can be changed: through the server, or (server down, --pgdata
/// given) by editing postgresql.conf.
enum Reach {
    Online(Box<Online>),
    Offline(PathBuf),
}

async fn reach(conn: &ConnOptions, pgdata: Option<&Path>) -> Result<Reach> {
    match online(conn).await {
        Ok(o) => Ok(Reach::Online(Box::new(o))),
        Err(e) if e.kind == ErrorKind::Database => match pgdata {
            Some(dir) => Ok(Reach::Offline(dir.to_path_buf())),
            None => Err(e.hint(
                "start the server, or pass --pgdata to edit postgresql.conf while it is down",
            )),
        },
        Err(e) => Err(e),
    }
}

pub async fn enable(
    repo: &Repo,
    conn: &ConnOptions,
    pgdata: Option<&Path>,
    archive_command: &str,
) -> Result<ChangeReport> {
    let Online {
        client,
        data_dir,
        before,
        saved_copies,
    } = match reach(conn, pgdata).await? {
        Reach::Online(o) => *o,
        Reach::Offline(dir) => return enable_offline(&dir, archive_command),
    };
    let wal_level = before
        .iter()
        .find(|s| s.name == "wal_level")
        .map(|s| s.value.clone())
        .unwrap_or_default();
    if repo.saved_pitr_settings::<Vec<Setting>>().await?.is_none() {
        repo.save_pitr_settings(&before).await?;
    }
    let mut wanted = vec![
        ("archive_mode", "on".to_string()),
        ("archive_command", archive_command.to_string()),
    ];
    if wal_level == "minimal" {
        wanted.push(("wal_level", "replica".into()));
    }
    let mut changes = Vec::new();
    let mut restart_needed = false;
    for (name, value) in wanted {
        let old = before
            .iter()
            .find(|s| s.name == name)
            .map(|s| s.value.clone())
            .unwrap_or_default();
        client
            .batch_execute(&format!("ALTER SYSTEM SET {name} = {}", quote(&value)))
            .await?;
        if old != value {
            restart_needed |= name != "archive_command";
            changes.push((name.to_string(), old, value));
        }
    }
    client.batch_execute("SELECT pg_reload_conf()").await?;
    Ok(ChangeReport {
        method: "ALTER SYSTEM".into(),
        config_file: data_dir.join("postgresql.auto.conf"),
        saved_copies,
        changes,
        restart_needed,
    })
}

pub async fn disable(
    repo: &Repo,
    conn: &ConnOptions,
    pgdata: Option<&Path>,
) -> Result<ChangeReport> {
    let Online {
        client,
        data_dir,
        before,
        saved_copies,
    } = match reach(conn, pgdata).await? {
        Reach::Online(o) => *o,
        Reach::Offline(dir) => return disable_offline(&dir),
    };
    let previous: Vec<Setting> = repo.saved_pitr_settings().await?.unwrap_or_default();
    let mut changes = Vec::new();
    let mut restart_needed = false;
    for name in ["archive_mode", "archive_command", "wal_level"] {
        let now = before
            .iter()
            .find(|s| s.name == name)
            .map(|s| s.value.clone())
            .unwrap_or_default();
        let sql = match previous.iter().find(|s| s.name == name) {
            // Set by ALTER SYSTEM before pgward: put that value back.
            Some(old)
                if old.source == "configuration file" && is_auto_conf_value(&data_dir, name) =>
            {
                format!("ALTER SYSTEM SET {name} = {}", quote(&old.value))
            }
            Some(_) => format!("ALTER SYSTEM RESET {name}"),
            None if name == "archive_mode" => "ALTER SYSTEM SET archive_mode = 'off'".to_string(),
            None if name == "archive_command" => "ALTER SYSTEM RESET archive_command".to_string(),
            None => continue,
        };
        client.batch_execute(&sql).await?;
        changes.push((name.to_string(), now, sql));
        restart_needed |= name != "archive_command";
    }
    client.batch_execute("SELECT pg_reload_conf()").await?;
    repo.delete_pitr_settings().await?;
    Ok(ChangeReport {
        method: "ALTER SYSTEM".into(),
        config_file: data_dir.join("postgresql.auto.conf"),
        saved_copies,
        changes,
        restart_needed,
    })
}

/// Whether a saved copy of postgresql.auto.conf set `name` (then ALTER SYSTEM owned it).
fn is_auto_conf_value(data_dir: &Path, name: &str) -> bool {
    // pgward's own copies are taken before it changes anything; the oldest is the original.
    let Ok(entries) = std::fs::read_dir(data_dir) else {
        return false;
    };
    let mut copies: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().contains("postgresql.auto.conf.pgward-"))
        .collect();
    copies.sort();
    copies
        .first()
        .and_then(|p| std::fs::read_to_string(p).ok())
        .is_some_and(|text| text.lines().any(|l| l.trim_start().starts_with(name)))
}

fn enable_offline(pgdata: &Path, archive_command: &str) -> Result<ChangeReport> {
    let conf = pgdata.join("postgresql.conf");
    let text = std::fs::read_to_string(&conf).at("reading", &conf)?;
    if text.contains(BLOCK_BEGIN) {
        return Err(Error::new(
            ErrorKind::Conflict,
            format!("{} already has a pgward pitr block", conf.display()),
        )
        .hint("run `pgward pitr disable` first to replace it"));
    }
    let saved = save_copy(&conf)?;
    let sets_minimal = text
        .lines()
        .rfind(|l| l.trim_start().starts_with("wal_level"))
        .is_some_and(|l| l.contains("minimal"));
    let mut block = format!(
        "\n{BLOCK_BEGIN} (added {}; `pgward pitr disable` removes it)\n",
        chrono::Utc::now().format("%Y-%m-%d %H:%M:%S UTC")
    );
    if sets_minimal {
        block.push_str("wal_level = replica\n");
    }
    block.push_str(&format!(
        "archive_mode = on\narchive_command = {}\n{BLOCK_END}\n",
        quote(archive_command)
    ));
    write_durably(&conf, &(text + &block))?;
    let mut changes = vec![
        ("archive_mode".to_string(), String::new(), "on".to_string()),
        (
            "archive_command".to_string(),
            String::new(),
            archive_command.to_string(),
        ),
    ];
    if sets_minimal {
        changes.push(("wal_level".into(), "minimal".into(), "replica".into()));
    }
    Ok(ChangeReport {
        method: "postgresql.conf".into(),
        config_file: conf,
        saved_copies: saved.into_iter().collect(),
        changes,
        restart_needed: true,
    })
}

fn disable_offline(pgdata: &Path) -> Result<ChangeReport> {
    let conf = pgdata.join("postgresql.conf");
    let text = std::fs::read_to_string(&conf).at("reading", &conf)?;
    let (Some(begin), Some(end)) = (text.find(&format!("\n{BLOCK_BEGIN}")), text.find(BLOCK_END))
    else {
        return Err(Error::new(
            ErrorKind::NotFound,
            format!("{} has no pgward pitr block", conf.display()),
        )
        .hint("start the server so that pgward can use ALTER SYSTEM"));
    };
    let saved = save_copy(&conf)?;
    let rest = &text[end + BLOCK_END.len()..];
    write_durably(
        &conf,
        &format!(
            "{}{}",
            &text[..begin],
            rest.strip_prefix('\n').unwrap_or(rest)
        ),
    )?;
    Ok(ChangeReport {
        method: "postgresql.conf".into(),
        config_file: conf,
        saved_copies: saved.into_iter().collect(),
        changes: vec![("pgward block".into(), "present".into(), "removed".into())],
        restart_needed: true,
    })
}

fn write_durably(path: &Path, content: &str) -> Result<()> {
    let temp = PathBuf::from(format!("{}.pgward-tmp", path.display()));
    std::fs::write(&temp, content).at("writing", &temp)?;
    let perms = std::fs::metadata(path).at("reading", path)?.permissions();
    std::fs::set_permissions(&temp, perms).at("writing", &temp)?;
    std::fs::File::open(&temp)
        .and_then(|f| f.sync_all())
        .at("syncing", &temp)?;
    std::fs::rename(&temp, path).at("replacing", path)?;
    sync_dir(path.parent().unwrap_or(Path::new("."))).at("syncing", path)
}

#[derive(Debug, Serialize)]
pub struct Status {
    pub wal_level: String,
    pub archive_mode: String,
    pub archive_command: String,
    /// None when the command archives into this repository and stanza.
    pub archive_command_problem: Option<String>,
    pub archived_count: i64,
    pub last_archived_wal: Option<String>,
    pub last_archived_time: Option<chrono::DateTime<chrono::Utc>>,
    pub failed_count: i64,
    pub last_failed_wal: Option<String>,
    pub last_failed_time: Option<chrono::DateTime<chrono::Utc>>,
    /// Segments in pg_wal/archive_status waiting to be archived.
    pub waiting_segments: i64,
    /// Seconds since the last successful archive.
    pub lag_seconds: Option<f64>,
    pub newest_backup: Option<String>,
    pub working: bool,
}

pub async fn status(repo: &Repo, conn: &ConnOptions) -> Result<Status> {
    let client = db::connect(conn).await?;
    let settings = db::archive_settings(&client).await?;
    let row = client
        .query_one(
            "SELECT archived_count, last_archived_wal, last_archived_time, failed_count, last_failed_wal, last_failed_time,
                    (SELECT count(*) FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready'),
                    extract(epoch FROM now() - last_archived_time)::float8
             FROM pg_stat_archiver",
            &[],
        )
        .await?;
    let problem = crate::repo::archive_command::command_problem(&settings.archive_command, repo);
    let newest_backup = repo.backup_labels().await?.pop();
    let failed_after_success = {
        let lf: Option<std::time::SystemTime> = row.get(5);
        let la: Option<std::time::SystemTime> = row.get(2);
        matches!((lf, la), (Some(f), Some(a)) if f > a) || (lf.is_some() && la.is_none())
    };
    let to_utc = |t: Option<std::time::SystemTime>| t.map(chrono::DateTime::<chrono::Utc>::from);
    Ok(Status {
        working: settings.archive_mode != "off" && problem.is_none() && !failed_after_success,
        wal_level: settings.wal_level,
        archive_mode: settings.archive_mode,
        archive_command: settings.archive_command,
        archive_command_problem: problem,
        archived_count: row.get(0),
        last_archived_wal: row.get(1),
        last_archived_time: to_utc(row.get(2)),
        failed_count: row.get(3),
        last_failed_wal: row.get(4),
        last_failed_time: to_utc(row.get(5)),
        waiting_segments: row.get(6),
        lag_seconds: row.get(7),
        newest_backup,
    })
}
