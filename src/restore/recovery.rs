//! The files that make a restored directory recover instead of crash-start:
//! `backup_label` (kept, never removed), `tablespace_map`, `recovery.signal` (or, for a
//! standby, `standby.signal` and `primary_conninfo`, as `pg_basebackup -R` writes them),
//! and the recovery settings appended to `postgresql.auto.conf`.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::target::target_settings;
use super::RestoreOptions;
use crate::error::{IoContext, Result};
use crate::repo::manifest::Manifest;

/// Settings pgward owns in postgresql.auto.conf; earlier values are dropped.
const OWNED: &[&str] = &[
    "restore_command",
    "recovery_target",
    "recovery_target_time",
    "recovery_target_xid",
    "recovery_target_lsn",
    "recovery_target_name",
    "recovery_target_inclusive",
    "recovery_target_action",
    "recovery_target_timeline",
];

fn write_synced(path: &Path, content: &[u8]) -> Result<()> {
    let mut f = std::fs::File::create(path).at("creating", path)?;
    f.write_all(content).at("writing", path)?;
    use std::os::unix::fs::PermissionsExt;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))
        .at("setting permissions of", path)?;
    f.sync_all().at("syncing", path)
}

pub fn write_backup_files(
    pgdata: &Path,
    manifest: &Manifest,
    tablespaces: &[(u32, PathBuf)],
) -> Result<()> {
    write_synced(
        &pgdata.join("backup_label"),
        manifest.backup_label.as_bytes(),
    )?;
    if !tablespaces.is_empty() {
        // Remapped locations must win over the ones the server recorded.
        let map: String = tablespaces
            .iter()
            .map(|(oid, loc)| format!("{oid} {}\n", loc.display()))
            .collect();
        write_synced(&pgdata.join("tablespace_map"), map.as_bytes())?;
    }
    Ok(())
}

pub fn write_recovery_settings(
    pgdata: &Path,
    manifest: &Manifest,
    opts: &RestoreOptions,
) -> Result<()> {
    let conf = pgdata.join("postgresql.auto.conf");
    let existing = std::fs::read_to_string(&conf).unwrap_or_default();
    let mut out: String = existing
        .lines()
        .filter(|line| {
            let key = line.split('=').next().unwrap_or("").trim();
            !(OWNED.contains(&key)
                || (opts.archive_off && key == "archive_mode")
                || (opts.primary_conninfo.is_some() && key == "primary_conninfo"))
        })
        .map(|l| format!("{l}\n"))
        .collect();
    out.push_str(&format!(
        "# recovery settings written by pgward restore of backup {}\n",
        manifest.label
    ));
    let mut settings = vec![("restore_command".to_string(), opts.restore_command.clone())];
    settings.extend(target_settings(
        &opts.target,
        opts.target_action,
        opts.target_timeline.as_deref(),
        opts.target_exclusive,
    ));
    if opts.archive_off {
        settings.push(("archive_mode".into(), "off".into()));
    }
    if let Some(conninfo) = &opts.primary_conninfo {
        settings.push(("primary_conninfo".into(), conninfo.clone()));
    }
    for (key, value) in settings {
        out.push_str(&format!("{key} = '{}'\n", value.replace('\'', "''")));
    }
    write_synced(&conf, out.as_bytes())?;
    // The backup's own signal files (one taken from a standby has standby.signal) give
    // way to the one asked for: both present would make a standby of any restore.
    let (signal, other) = match opts.primary_conninfo {
        Some(_) => ("standby.signal", "recovery.signal"),
        None => ("recovery.signal", "standby.signal"),
    };
    match std::fs::remove_file(pgdata.join(other)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(crate::error::Error::io("removing", pgdata.join(other), e))
        }
        _ => {}
    }
    write_synced(&pgdata.join(signal), b"")
}
