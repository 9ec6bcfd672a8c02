//! Finding the server programs of the backup's major version. A drill must run the
//! backup with the PostgreSQL that wrote it: `pg_ctl` of another major refuses the data
//! directory, and `pg_checksums` of another major refuses its control file.

use std::path::{Path, PathBuf};

use crate::error::{Error, ErrorKind, Result};

/// The programs a drill of a backup of PostgreSQL `major` runs, all from one directory:
/// `pg_amcheck` only from 14, which brought it (13's relations are checked through the
/// amcheck extension's SQL functions, `checks::RelationCheck`), and `pg_checksums` only
/// when the backup has data checksums (without them it is never run).
pub fn programs(major: u32, data_checksums: bool) -> Vec<&'static str> {
    let mut p = vec!["pg_ctl", "postgres"];
    if super::checks::RelationCheck::for_major(major) == super::checks::RelationCheck::PgAmcheck {
        p.push("pg_amcheck");
    }
    if data_checksums {
        p.push("pg_checksums");
    }
    p
}

/// The directory holding the [`programs`] of PostgreSQL `major`: `pg_bin` when given (and
/// only it), else the packagers' usual places (Debian's `/usr/lib/postgresql/M/bin`,
/// the PGDG RPMs' `/usr/pgsql-M/bin`), else `pg_config --bindir`, else each directory
/// of PATH that has `pg_ctl`. A candidate counts when its `postgres --version` is
/// `major`; the error lists every place looked at and what was wrong there.
pub fn find(pg_bin: Option<&Path>, major: u32, data_checksums: bool) -> Result<PathBuf> {
    let programs = programs(major, data_checksums);
    let candidates: Vec<PathBuf> = match pg_bin {
        Some(dir) => vec![dir.to_path_buf()],
        None => {
            let mut c = vec![
                PathBuf::from(format!("/usr/lib/postgresql/{major}/bin")),
                PathBuf::from(format!("/usr/pgsql-{major}/bin")),
            ];
            c.extend(pg_config_bindir());
            if let Some(path) = std::env::var_os("PATH") {
                c.extend(std::env::split_paths(&path).filter(|d| d.join("pg_ctl").is_file()));
            }
            c.dedup();
            c
        }
    };
    let mut looked = Vec::new();
    for dir in &candidates {
        match check_dir(dir, major, &programs) {
            Ok(()) => return Ok(dir.clone()),
            Err(why) => looked.push(format!("{}: {why}", dir.display())),
        }
    }
    let hint = format!(
        "install the server of PostgreSQL {major}{} (Debian: postgresql-{major}), or pass \
         --pg-bin DIR naming the directory of its pg_ctl",
        match &programs[2..] {
            [] => String::new(),
            contrib => format!(" with its contrib programs {}", contrib.join(", ")),
        }
    );
    Err(Error::new(
        ErrorKind::Config,
        format!(
            "drill needs {} of PostgreSQL {major}, the version of the backup; {}",
            programs.join(", "),
            if looked.is_empty() {
                "no candidate directory exists".to_string()
            } else {
                format!("looked in {}", looked.join("; "))
            }
        ),
    )
    .hint(hint))
}

/// Why `dir` does not hold PostgreSQL `major`'s programs.
fn check_dir(dir: &Path, major: u32, programs: &[&str]) -> std::result::Result<(), String> {
    if !dir.is_dir() {
        return Err("no such directory".into());
    }
    let missing: Vec<&str> = programs
        .iter()
        .copied()
        .filter(|p| !dir.join(p).is_file())
        .collect();
    if !missing.is_empty() {
        return Err(format!("{} missing", missing.join(", ")));
    }
    let out = std::process::Command::new(dir.join("postgres"))
        .arg("--version")
        .output()
        .map_err(|e| format!("cannot run postgres --version: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    match version_major(&text) {
        Some(m) if m == major => Ok(()),
        Some(m) => Err(format!("PostgreSQL {m}, not {major}")),
        None => Err(format!("postgres --version said {:?}", text.trim())),
    }
}

/// The major of `postgres (PostgreSQL) 15.8 (Debian 15.8-1.pgdg120+1)`.
fn version_major(text: &str) -> Option<u32> {
    let rest = text.split("(PostgreSQL) ").nth(1)?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

fn pg_config_bindir() -> Option<PathBuf> {
    let out = std::process::Command::new("pg_config")
        .arg("--bindir")
        .output()
        .ok()?;
    let dir = String::from_utf8(out.stdout).ok()?;
    (out.status.success() && !dir.trim().is_empty()).then(|| PathBuf::from(dir.trim()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_majors_read_like_postgres_prints_them() {
        let v = |s| version_major(s);
        assert_eq!(
            v("postgres (PostgreSQL) 15.8 (Debian 15.8-1.pgdg120+1)\n"),
            Some(15)
        );
        assert_eq!(v("postgres (PostgreSQL) 18beta1\n"), Some(18));
        assert_eq!(v("postgres (PostgreSQL) 9.6.24\n"), Some(9));
        assert_eq!(v("something else"), None);
    }

    #[test]
    fn thirteen_needs_no_pg_amcheck_and_no_checksums_need_no_pg_checksums() {
        assert_eq!(programs(13, true), ["pg_ctl", "postgres", "pg_checksums"]);
        assert_eq!(programs(13, false), ["pg_ctl", "postgres"]);
        assert_eq!(
            programs(14, true),
            ["pg_ctl", "postgres", "pg_amcheck", "pg_checksums"]
        );
        assert_eq!(programs(18, false), ["pg_ctl", "postgres", "pg_amcheck"]);
    }

    #[test]
    fn a_missing_directory_is_named_with_the_hint() {
        let e = find(Some(Path::new("/nonexistent/pg/bin")), 15, true).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Config);
        assert!(
            e.message.contains("/nonexistent/pg/bin: no such directory"),
            "{e}"
        );
        assert!(e.hint.unwrap().contains("--pg-bin"));
    }
}
