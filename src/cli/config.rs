//! The configuration file: TOML with a `[global]` table and `[stanza.NAME]` tables whose
//! keys are the long option names (`repo`, `pg-port`, `compress`, …: the options marked
//! `FILE` in `options.rs`, which also parses their values). Precedence:
//! flags, then environment, then the stanza's table, then `[global]`. Unknown keys and
//! bad values are errors naming the key and the file.

use std::path::{Path, PathBuf};

use super::args::GlobalArgs;
use crate::error::{Error, Result};

pub(super) const DEFAULT_CONFIG: &str = "/etc/pgward/pgward.toml";

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
        args.fill_unset(
            &toml::Table::from_iter(
                global
                    .get("stanza")
                    .map(|v| ("stanza".to_string(), v.clone())),
            ),
            &file,
        )?;
    }
    if let Some(stanza) = args.stanza.clone() {
        args.fill_unset(
            &table(stanzas.get(&stanza), &format!("stanza.{stanza}"))?,
            &file,
        )?;
    }
    args.fill_unset(&global, &file)
}

fn check_keys(table: &toml::Table, file: &str, section: &str) -> Result<()> {
    for key in table.keys() {
        if !GlobalArgs::file_keys().any(|k| k == key) {
            return Err(
                Error::config(format!("{file}: unknown key {key:?} in [{section}]")).hint(format!(
                    "known keys: {}",
                    GlobalArgs::file_keys().collect::<Vec<_>>().join(", ")
                )),
            );
        }
    }
    Ok(())
}
