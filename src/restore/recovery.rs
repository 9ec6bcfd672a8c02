//! The files that make a restored directory recover instead of crash-start:
//! `backup_label` (kept, never removed), `tablespace_map`, `recovery.signal` (or, for a
//! standby, `standby.signal` and `primary_conninfo`, as `pg_basebackup -R` writes them),
//! and the recovery settings appended to `postgresql.auto.conf`.
//!
//! As pgBackRest does, earlier recovery settings in `postgresql.auto.conf` (the backed-up
//! cluster's, often left by the restore that made it, or a previous restore's) are
//! commented out, naming the restore, never silently kept: PostgreSQL ignores them once
//! recovery has ended and its signal file is gone, but a `recovery.signal` or
//! `standby.signal` created later would bring an old target back. The settings this
//! restore writes stay after recovery for the same reason; the next restore over the
//! directory (`--delta` too) comments them out in turn.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::target::target_settings;
use super::RestoreOptions;
use crate::error::{IoContext, Result};
use crate::repo::manifest::Manifest;

/// Settings pgward owns in postgresql.auto.conf; earlier values are commented out.
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
    let existing = match std::fs::read_to_string(&conf) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(crate::error::Error::io("reading", &conf, e)),
    };
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
    write_synced(
        &conf,
        recovery_conf(&existing, &manifest.label, &settings).as_bytes(),
    )?;
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

/// The name a line of a configuration file sets (lowercase, as PostgreSQL compares
/// them; the `=` is optional), or None for a comment or blank line.
fn setting_name(line: &str) -> Option<String> {
    let line = line.trim_start();
    let end = line
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
        .unwrap_or(line.len());
    let rest = line[end..].trim_start();
    (end > 0
        && (rest.is_empty()
            || rest.starts_with('=')
            || line[end..].starts_with(char::is_whitespace)))
    .then(|| line[..end].to_ascii_lowercase())
}

/// `existing` postgresql.auto.conf with every line setting a recovery setting pgward
/// owns, or one of `settings`, commented out (naming backup `label`'s restore), then
/// `settings` in one block: each set exactly once, whatever the file held.
fn recovery_conf(existing: &str, label: &str, settings: &[(String, String)]) -> String {
    let mut out = String::new();
    for line in existing.lines() {
        let replaced = setting_name(line)
            .is_some_and(|k| OWNED.contains(&k.as_str()) || settings.iter().any(|(s, _)| *s == k));
        if replaced {
            out.push_str(&format!(
                "# commented out by pgward restore of backup {label}: {line}\n"
            ));
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    out.push_str(&format!(
        "# recovery settings written by pgward restore of backup {label} (read only while \
         recovery.signal or standby.signal exists; the next restore comments them out)\n"
    ));
    for (key, value) in settings {
        out.push_str(&format!("{key} = '{}'\n", value.replace('\'', "''")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn active(conf: &str) -> Vec<String> {
        conf.lines().filter_map(setting_name).collect()
    }

    #[test]
    fn earlier_recovery_settings_are_commented_out_and_each_new_one_is_set_once() {
        // What a cluster restored to a target, promoted and backed up carries.
        let existing = "# Do not edit this file manually!\n\
            work_mem = '64MB'\n\
            restore_command = 'old'\n\
            Recovery_Target_Name 'p1'\n\
            recovery_target_action = 'promote'\n\
            archive_mode = 'on'\n\
            recovery_target_timeline_extra = 'not ours'\n";
        let settings = vec![
            (
                "restore_command".to_string(),
                "pgward archive-get %f %p".to_string(),
            ),
            ("recovery_target_lsn".to_string(), "0/3000000".to_string()),
            ("archive_mode".to_string(), "off".to_string()),
        ];
        let conf = recovery_conf(existing, "20261129-120000F", &settings);
        assert_eq!(
            active(&conf),
            [
                "work_mem",
                "recovery_target_timeline_extra",
                "restore_command",
                "recovery_target_lsn",
                "archive_mode"
            ]
        );
        assert!(conf.contains(
            "# commented out by pgward restore of backup 20261129-120000F: Recovery_Target_Name 'p1'\n"
        ));
        assert!(conf.ends_with("archive_mode = 'off'\n"));

        // Again over the same file (a delta restore that kept it): nothing accumulates;
        // archive_mode, which this restore leaves alone, keeps the value the last one set.
        let again = recovery_conf(&conf, "20261129-130000F", &settings[..1]);
        assert_eq!(
            active(&again),
            [
                "work_mem",
                "recovery_target_timeline_extra",
                "archive_mode",
                "restore_command"
            ]
        );
        assert!(again.contains("20261129-130000F: recovery_target_lsn = '0/3000000'"));
    }

    #[test]
    fn setting_names_are_read_as_postgresql_reads_them() {
        assert_eq!(setting_name("  a.b = 1").as_deref(), Some("a.b"));
        assert_eq!(setting_name("Work_Mem='1'").as_deref(), Some("work_mem"));
        assert_eq!(setting_name("work_mem 1").as_deref(), Some("work_mem"));
        assert_eq!(setting_name("# restore_command = 'x'"), None);
        assert_eq!(setting_name(""), None);
    }
}
