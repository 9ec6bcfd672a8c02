//! What a drill checks on the recovered copy: every relation with `pg_amcheck
//! --heapallindexed` (heap and every index entry; on 13, which has no pg_amcheck, every
//! btree index against its heap through amcheck's SQL, and the record says what 13
//! cannot check), the operator's SQL (each statement must return true), and after the
//! clean stop every page checksum with `pg_checksums --check`. Each outcome keeps the
//! checker's own words.

use std::path::Path;
use std::process::Stdio;

use tokio_postgres::{Client, SimpleQueryMessage};

use super::server::{program, run, Server};
use crate::error::{Error, IoContext, Result};
use crate::repo::records::DrillCheck;

/// Longest detail kept in a check's outcome (the record lives in the repository).
const MAX_DETAIL: usize = 4000;

fn check(name: &str, passed: bool, detail: impl Into<String>) -> DrillCheck {
    let mut detail: String = detail.into();
    if detail.len() > MAX_DETAIL {
        let cut = (0..=MAX_DETAIL)
            .rev()
            .find(|i| detail.is_char_boundary(*i))
            .unwrap_or(0);
        detail.truncate(cut);
        detail.push_str(" ...");
    }
    DrillCheck {
        name: name.to_string(),
        passed,
        detail,
    }
}

/// How a drill checks the relations of a copy of PostgreSQL `major`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RelationCheck {
    /// `pg_amcheck`, with amcheck's `verify_heapam`: both came with 14.
    PgAmcheck,
    /// 13's amcheck (1.2) has only the btree functions: `bt_index_check(index,
    /// heapallindexed => true)` per index, which also proves every heap tuple is indexed.
    BtreeIndexes,
}

impl RelationCheck {
    pub fn for_major(major: u32) -> RelationCheck {
        if major >= 14 {
            RelationCheck::PgAmcheck
        } else {
            RelationCheck::BtreeIndexes
        }
    }
}

/// What 13 cannot check, said in every record of a drill of 13 (never a silent pass).
pub const NOT_ON_13: &str = "not available on 13: pg_amcheck and amcheck's verify_heapam (the \
    heap's own structure, checked apart from its indexes), which came with 14; a table \
    without a btree index is not checked";

/// The btree indexes amcheck can check in one database (as pg_amcheck chooses them:
/// valid, ready, not another session's temporary relation).
const BTREE_INDEXES: &str = "SELECT i.oid, format('%I.%I', n.nspname, i.relname) \
    FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid \
    JOIN pg_namespace n ON n.oid = i.relnamespace JOIN pg_am a ON a.oid = i.relam \
    WHERE a.amname = 'btree' AND i.relpersistence <> 't' AND x.indisvalid AND x.indisready \
    ORDER BY i.oid";

/// 13's check (see [`RelationCheck::BtreeIndexes`]) in every database that accepts
/// connections, installing amcheck where it is missing (in the copy only). Every index
/// is checked; each failure is named with its database and index.
pub async fn btree_indexes(server: &mut Server) -> Result<DrillCheck> {
    const NAME: &str = "amcheck";
    let databases: Vec<String> = server
        .connect("template1")
        .await?
        .query(
            "SELECT datname FROM pg_database WHERE datallowconn ORDER BY datname",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut checked = 0usize;
    let mut problems = Vec::new();
    for db in &databases {
        let client = match server.connect(db).await {
            Ok(c) => c,
            Err(e) => {
                problems.push(format!("database {db}: connecting: {e}"));
                continue;
            }
        };
        if let Err(e) = client
            .batch_execute("CREATE EXTENSION IF NOT EXISTS amcheck")
            .await
        {
            problems.push(format!(
                "database {db}: installing amcheck: {}",
                Error::from(e)
            ));
            continue;
        }
        let indexes = match client.query(BTREE_INDEXES, &[]).await {
            Ok(rows) => rows,
            Err(e) => {
                problems.push(format!(
                    "database {db}: listing indexes: {}",
                    Error::from(e)
                ));
                continue;
            }
        };
        for index in indexes {
            let (oid, name): (u32, String) = (index.get(0), index.get(1));
            checked += 1;
            let check =
                "SELECT bt_index_check(c.oid::regclass, true) FROM pg_class c WHERE c.oid = $1";
            if let Err(e) = client.execute(check, &[&oid]).await {
                problems.push(format!("database {db}, index {name}: {}", Error::from(e)));
            }
        }
    }
    Ok(if problems.is_empty() {
        check(
            NAME,
            true,
            format!(
                "no corruption found: {checked} btree indexes in {} databases checked with \
                 bt_index_check(heapallindexed => true); {NOT_ON_13}",
                databases.len()
            ),
        )
    } else {
        check(NAME, false, format!("{}\n{NOT_ON_13}", problems.join("\n")))
    })
}

/// `pg_amcheck --all --heapallindexed`, installing amcheck where it is missing (in the
/// copy: the source is never connected to).
pub async fn amcheck(bin: &Path, server: &Server, cwd: &Path, jobs: usize) -> Result<DrillCheck> {
    let mut cmd = program(bin, "pg_amcheck", server.owner(), cwd);
    cmd.arg("--host")
        .arg(&server.socket_dir)
        .args(["--port", &server.port.to_string()])
        .args(["--username", server.user()])
        .args([
            "--no-password",
            "--all",
            "--heapallindexed",
            "--install-missing",
        ])
        .args(["--jobs", &jobs.max(1).to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let (ok, out) = run(cmd, "pg_amcheck").await?;
    Ok(if ok {
        check(
            "pg_amcheck",
            true,
            "no corruption found (heap and all indexes, every database)",
        )
    } else {
        check("pg_amcheck", false, out)
    })
}

/// `pg_checksums --check` on the cleanly stopped copy.
pub async fn checksums(bin: &Path, server: &Server, data: &Path, cwd: &Path) -> Result<DrillCheck> {
    let mut cmd = program(bin, "pg_checksums", server.owner(), cwd);
    cmd.arg("--check")
        .arg("--pgdata")
        .arg(data)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let (ok, out) = run(cmd, "pg_checksums").await?;
    Ok(if ok {
        let summary: Vec<&str> = out
            .lines()
            .filter(|l| l.starts_with("Blocks scanned") || l.starts_with("Bad checksums"))
            .map(str::trim)
            .collect();
        check("pg_checksums", true, summary.join("; "))
    } else {
        check("pg_checksums", false, out)
    })
}

/// The statements of a `--check-sql` file, read before anything is restored (a missing
/// file or one without statements is a mistake to report at once).
pub fn read_sql_checks(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).at("reading --check-sql", path)?;
    let statements = split_statements(&text);
    if statements.is_empty() {
        return Err(Error::config(format!(
            "--check-sql {} holds no SQL statement",
            path.display()
        ))
        .hint("write one query per check, each returning true, ended by ';'"));
    }
    Ok(statements)
}

/// Runs each statement; it passes when it returns one row whose first value is true.
pub async fn sql_checks(client: &Client, statements: &[String]) -> Vec<DrillCheck> {
    let mut out = Vec::new();
    for statement in statements {
        let name = format!("sql: {}", one_line(statement, 100));
        let result = match client.simple_query(statement).await {
            Err(e) => check(&name, false, Error::from(e).to_string()),
            Ok(messages) => {
                let first = messages.iter().find_map(|m| match m {
                    SimpleQueryMessage::Row(row) => Some(row.get(0).map(str::to_string)),
                    _ => None,
                });
                match first {
                    Some(Some(v)) if v == "t" => check(&name, true, "returned true"),
                    Some(Some(v)) => check(&name, false, format!("returned {v}, not true")),
                    Some(None) => check(&name, false, "returned NULL, not true"),
                    None => check(&name, false, "returned no row, not true"),
                }
            }
        };
        out.push(result);
    }
    out
}

fn one_line(s: &str, max: usize) -> String {
    let flat = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() <= max {
        flat
    } else {
        format!("{}...", flat.chars().take(max).collect::<String>())
    }
}

/// Splits SQL text at the semicolons that end statements, as psql does: not inside
/// quotes ('...', "...", E'...' with backslash escapes), dollar quotes ($tag$...$tag$)
/// or comments (-- and nested /* */). Statements that are only comments are dropped.
pub fn split_statements(text: &str) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut current = String::new();
    let mut has_code = false;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        match c {
            '-' if next == Some('-') => {
                while i < chars.len() && chars[i] != '\n' {
                    current.push(chars[i]);
                    i += 1;
                }
                continue;
            }
            '/' if next == Some('*') => {
                let mut depth = 0;
                while i < chars.len() {
                    if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                        depth += 1;
                        current.push_str("/*");
                        i += 2;
                    } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                        depth -= 1;
                        current.push_str("*/");
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        current.push(chars[i]);
                        i += 1;
                    }
                }
                continue;
            }
            '\'' | '"' => {
                let backslashes = c == '\''
                    && i > 0
                    && matches!(chars[i - 1], 'e' | 'E')
                    && (i < 2 || !chars[i - 2].is_alphanumeric() && chars[i - 2] != '_');
                has_code = true;
                current.push(c);
                i += 1;
                while i < chars.len() {
                    let d = chars[i];
                    current.push(d);
                    i += 1;
                    if backslashes && d == '\\' {
                        if let Some(&e) = chars.get(i) {
                            current.push(e);
                            i += 1;
                        }
                    } else if d == c {
                        if chars.get(i) == Some(&c) {
                            current.push(c);
                            i += 1;
                        } else {
                            break;
                        }
                    }
                }
                continue;
            }
            '$' => {
                // $tag$ where tag is empty or an identifier not starting with a digit.
                let tag_end = chars[i + 1..]
                    .iter()
                    .position(|ch| !(ch.is_alphanumeric() || *ch == '_'))
                    .map(|p| i + 1 + p);
                let starts_ident =
                    i == 0 || !(chars[i - 1].is_alphanumeric() || chars[i - 1] == '_');
                if let Some(end) = tag_end.filter(|&e| {
                    chars[e] == '$'
                        && starts_ident
                        && !chars.get(i + 1).is_some_and(char::is_ascii_digit)
                }) {
                    let tag: String = chars[i..=end].iter().collect();
                    current.push_str(&tag);
                    has_code = true;
                    i = end + 1;
                    let body: String = chars[i..].iter().collect();
                    match body.find(&tag) {
                        Some(at) => {
                            current.push_str(&body[..at + tag.len()]);
                            i += body[..at + tag.len()].chars().count();
                        }
                        None => {
                            current.push_str(&body);
                            i = chars.len();
                        }
                    }
                    continue;
                }
            }
            ';' => {
                if has_code {
                    out.push(current.trim().to_string());
                }
                current.clear();
                has_code = false;
                i += 1;
                continue;
            }
            _ => {}
        }
        if !c.is_whitespace() {
            has_code = true;
        }
        current.push(c);
        i += 1;
    }
    if has_code {
        out.push(current.trim().to_string());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_split_at_semicolons_outside_quotes_and_comments() {
        let text = "-- counts\nSELECT count(*) > 0 FROM t;\n\
            SELECT 'a;b' = 'a;b'; SELECT \"x;y\" FROM (SELECT true AS \"x;y\") s;\n\
            /* a /* nested; */ comment; */ SELECT E'it\\'s;' <> '';\n\
            SELECT $$;$$ = $f$;$f$;\n-- only a comment;\n  SELECT true  ";
        let s = split_statements(text);
        assert_eq!(
            s,
            vec![
                "-- counts\nSELECT count(*) > 0 FROM t",
                "SELECT 'a;b' = 'a;b'",
                "SELECT \"x;y\" FROM (SELECT true AS \"x;y\") s",
                "/* a /* nested; */ comment; */ SELECT E'it\\'s;' <> ''",
                "SELECT $$;$$ = $f$;$f$",
                // The semicolon is the comment's: the comment belongs to the next one.
                "-- only a comment;\n  SELECT true",
            ]
        );
        assert!(split_statements("  -- nothing\n/* at all */ ; ;").is_empty());
        // Unterminated quotes never panic, and keep the rest as one statement.
        assert_eq!(split_statements("SELECT 'open;"), vec!["SELECT 'open;"]);
        assert_eq!(
            split_statements("SELECT $a$ open;"),
            vec!["SELECT $a$ open;"]
        );
        assert_eq!(split_statements("SELECT $1;"), vec!["SELECT $1"]);
    }

    #[test]
    fn pg_amcheck_from_14_and_btree_indexes_through_sql_on_13() {
        assert_eq!(RelationCheck::for_major(13), RelationCheck::BtreeIndexes);
        for major in 14..=18 {
            assert_eq!(RelationCheck::for_major(major), RelationCheck::PgAmcheck);
        }
        assert!(NOT_ON_13.starts_with("not available on 13: "));
    }

    #[test]
    fn long_details_are_cut_on_a_character_boundary() {
        let c = check("x", false, "é".repeat(MAX_DETAIL));
        assert!(c.detail.len() <= MAX_DETAIL + 4 && c.detail.ends_with(" ..."));
    }
}
