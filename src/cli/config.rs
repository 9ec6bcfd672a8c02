//! The configuration file: TOML with a `[global]` table and `[stanza.NAME]` tables whose
//! keys are the long option names (`repo`, `pg-port`, `compress`, …). Precedence:
//! flags, then environment, then the stanza's table, then `[global]`. Unknown keys and
//! bad values are errors naming the key and the file.

use std::path::{Path, PathBuf};

use super::args::GlobalArgs;
use crate::error::{Error, Result};

const DEFAULT_CONFIG: &str = "/etc/pgward/pgward.toml";
const KEYS: &[&str] = &[
    "repo",
    "stanza",
    "pgdata",
    "pg-host",
    "pg-port",
    "pg-user",
    "pg-database",
    "jobs",
    "compress",
    "compress-level",
    "log-level",
    "log-format",
    "retain-full",
    "retain-diff",
    "retain-full-days",
    "cipher",
    "cipher-pass",
    "cipher-pass-file",
    "s3-endpoint",
    "s3-region",
    "s3-uri-style",
    "s3-storage-class",
    "s3-ca-file",
    "s3-key",
    "s3-key-secret",
    "s3-retry-seconds",
];

/// Fills options left unset on the command line and in the environment from the file.
pub fn apply_config_file(args: &mut GlobalArgs) -> Result<()> {
    let path = match &args.config {
        Some(p) => p.clone(),
        None if Path::new(DEFAULT_CONFIG).exists() => PathBuf::from(DEFAULT_CONFIG),
        None => return Ok(()),
    };
    let text = std::fs::read_to_string(&path).map_err(|e| {
        Error::config(format!(
            "cannot read configuration file {}: {e}",
            path.display()
        ))
        .hint("check --config / PGWARD_CONFIG")
    })?;
    let doc: toml::Table = text.parse().map_err(|e| {
        Error::config(format!(
            "configuration file {} is not valid TOML: {e}",
            path.display()
        ))
    })?;
    let file = path.display().to_string();
    for key in doc.keys() {
        if key != "global" && key != "stanza" {
            return Err(Error::config(format!("{file}: unknown table [{key}]"))
                .hint("use [global] and [stanza.NAME]"));
        }
    }
    let table = |v: Option<&toml::Value>, name: &str| -> Result<toml::Table> {
        match v {
            None => Ok(toml::Table::new()),
            Some(toml::Value::Table(t)) => Ok(t.clone()),
            Some(_) => Err(Error::config(format!("{file}: [{name}] must be a table"))),
        }
    };
    let global = table(doc.get("global"), "global")?;
    check_keys(&global, &file, "global")?;
    let stanzas = table(doc.get("stanza"), "stanza")?;
    for (name, value) in &stanzas {
        check_keys(
            &table(Some(value), &format!("stanza.{name}"))?,
            &file,
            &format!("stanza.{name}"),
        )?;
    }
    // The stanza's own table beats [global]; both only fill what is still unset.
    if args.stanza.is_none() {
        fill(
            args,
            &toml::Table::from_iter(
                global
                    .get("stanza")
                    .map(|v| ("stanza".to_string(), v.clone())),
            ),
            &file,
        )?;
    }
    if let Some(stanza) = args.stanza.clone() {
        fill(
            args,
            &table(stanzas.get(&stanza), &format!("stanza.{stanza}"))?,
            &file,
        )?;
    }
    fill(args, &global, &file)
}

fn check_keys(table: &toml::Table, file: &str, section: &str) -> Result<()> {
    for key in table.keys() {
        if !KEYS.contains(&key.as_str()) {
            return Err(
                Error::config(format!("{file}: unknown key {key:?} in [{section}]"))
                    .hint(format!("known keys: {}", KEYS.join(", "))),
            );
        }
    }
    Ok(())
}

fn fill(args: &mut GlobalArgs, t: &toml::Table, file: &str) -> Result<()> {
    let string = |k: &str| -> Result<Option<String>> {
        match t.get(k) {
            None => Ok(None),
            Some(toml::Value::String(s)) => Ok(Some(s.clone())),
            Some(v) => Err(Error::config(format!(
                "{file}: {k} must be a string, found {v}"
            ))),
        }
    };
    let int = |k: &str| -> Result<Option<i64>> {
        match t.get(k) {
            None => Ok(None),
            Some(toml::Value::Integer(i)) => Ok(Some(*i)),
            Some(v) => Err(Error::config(format!(
                "{file}: {k} must be a number, found {v}"
            ))),
        }
    };
    let bad = |k: &str| Error::config(format!("{file}: {k} is out of range"));
    macro_rules! set {
        ($field:ident, $value:expr) => {
            if args.$field.is_none() {
                args.$field = $value;
            }
        };
    }
    set!(repo, string("repo")?);
    set!(stanza, string("stanza")?);
    set!(pgdata, string("pgdata")?.map(PathBuf::from));
    set!(pg_host, string("pg-host")?);
    set!(
        pg_port,
        int("pg-port")?
            .map(|p| u16::try_from(p).map_err(|_| bad("pg-port")))
            .transpose()?
    );
    set!(pg_user, string("pg-user")?);
    set!(pg_database, string("pg-database")?);
    set!(
        jobs,
        int("jobs")?
            .map(|j| usize::try_from(j)
                .ok()
                .filter(|j| *j > 0)
                .ok_or_else(|| bad("jobs")))
            .transpose()?
    );
    set!(compress, string("compress")?);
    set!(
        compress_level,
        int("compress-level")?
            .map(|l| i32::try_from(l).map_err(|_| bad("compress-level")))
            .transpose()?
    );
    set!(log_level, string("log-level")?);
    set!(log_format, string("log-format")?);
    set!(cipher, string("cipher")?);
    set!(s3_endpoint, string("s3-endpoint")?);
    set!(s3_region, string("s3-region")?);
    set!(s3_uri_style, string("s3-uri-style")?);
    set!(s3_storage_class, string("s3-storage-class")?);
    set!(s3_ca_file, string("s3-ca-file")?.map(PathBuf::from));
    set!(s3_key, string("s3-key")?);
    set!(s3_key_secret, string("s3-key-secret")?);
    set!(cipher_pass, string("cipher-pass")?);
    set!(
        cipher_pass_file,
        string("cipher-pass-file")?.map(PathBuf::from)
    );
    let count = |k: &str| -> Result<Option<u64>> {
        int(k)?
            .map(|v| u64::try_from(v).map_err(|_| bad(k)))
            .transpose()
    };
    set!(s3_retry_seconds, count("s3-retry-seconds")?);
    set!(retain_full, count("retain-full")?.map(|v| v as usize));
    set!(retain_diff, count("retain-diff")?.map(|v| v as usize));
    set!(retain_full_days, count("retain-full-days")?);
    Ok(())
}
