//! Every metadata object is checked on every read: a changed byte, a JSON-valid edit, a
//! truncation, a deletion, or a manifest copied over another backup's is named by
//! `verify` (exit non-zero), refused by `restore`, and marked by `info`; nothing
//! restores silently wrong. One cluster, one full and one incremental backup serve every
//! case: the repository is copied once and put back between cases.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;

use super::harness::*;
use super::setup::{stderr, Source};

/// Format 4's metadata envelope (docs/repository-format.md): 48-byte header, JSON payload.
const HEADER: usize = 48;

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn envelope(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = b"PGWM".to_vec();
    out.extend_from_slice(&[1, kind, 0, 0]);
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    let mut h = blake3::Hasher::new();
    h.update(&out);
    h.update(payload);
    out.extend_from_slice(h.finalize().as_bytes());
    out.extend_from_slice(payload);
    out
}

/// Changes the character `skip` bytes after the first `pattern` into another of its class
/// (digit, lowercase hex, letter): the JSON stays valid.
fn edit_after(bytes: &[u8], pattern: &str, skip: usize) -> Vec<u8> {
    let at = bytes
        .windows(pattern.len())
        .position(|w| w == pattern.as_bytes())
        .unwrap_or_else(|| panic!("{pattern:?} not found"))
        + pattern.len()
        + skip;
    let mut out = bytes.to_vec();
    out[at] = match out[at] {
        b'0'..=b'8' | b'a'..=b'e' | b'A'..=b'Y' => out[at] + 1,
        b'9' => b'0',
        b'f' => b'a',
        b'Z' => b'A',
        other => panic!("cannot edit {:?} after {pattern:?}", other as char),
    };
    out
}

fn copy_tree(from: &Path, to: &Path) {
    let _ = fs::remove_dir_all(to);
    let out = std::process::Command::new("cp")
        .args(["-a", &from.display().to_string(), &to.display().to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "cp -a: {}", stderr(&out));
}

enum Change {
    FlipByte,
    /// A one-byte edit that keeps the JSON valid (plaintext objects only).
    JsonEdit(&'static str, usize),
    Truncate,
    Delete,
    /// Another object's stored bytes over this one.
    CopyFrom(PathBuf),
    /// Contents replaced by a consistent envelope around an edited payload: what a bug
    /// or a careful hand would leave (the checksum matches, the identity does not).
    Reenvelope(u8, &'static str, usize),
}

struct Case {
    name: String,
    object: PathBuf,
    change: Change,
    /// What verify must name.
    names: String,
    /// Whether restore must refuse (false: objects restore does not read, and a deleted
    /// manifest, whose backup is simply gone).
    restore_refuses: bool,
}

struct Stanza {
    src: Source,
    full: String,
    incr: String,
    pristine: PathBuf,
}

fn start(name: &str, encrypted: bool) -> Stanza {
    let mut extra = Vec::new();
    let mut create: Vec<&str> = Vec::new();
    if encrypted {
        let dir = work_dir(&format!("{name}-secret"));
        fs::write(dir.join("pass"), "tamper passphrase\n").unwrap();
        chown_pg(&dir);
        extra.extend([
            "--cipher-pass-file".to_string(),
            dir.join("pass").display().to_string(),
        ]);
        create.extend(["--cipher", "aes-256-gcm"]);
    }
    // Always a local directory: the test edits stored files.
    let repo = work_dir(&format!("{name}-repo"));
    let src = Source::start_at(
        name,
        ClusterOptions::default(),
        repo.display().to_string(),
        extra,
        &create,
    );
    // Saves the settings it replaces in the stanza (pitr-previous-settings.json).
    src.ok(&["pitr", "enable"]);
    src.sql("CREATE TABLE t AS SELECT g FROM generate_series(1, 20000) g");
    let full = src.backup(&[]);
    src.sql("UPDATE t SET g = -g WHERE g <= 100");
    let incr = src.backup(&["--type", "incr"]);
    src.ok(&["pin", &incr]);
    src.archive_current_wal();
    src.ok(&["verify"]);
    // Nothing may archive into the repository while cases edit and restore it.
    src.cluster.stop();
    let pristine = work_dir(&format!("{name}-pristine")).join("repo");
    copy_tree(&src.repo, &pristine);
    Stanza {
        src,
        full,
        incr,
        pristine,
    }
}

fn cases(st: &Stanza, encrypted: bool) -> Vec<Case> {
    let main = st.src.repo.join("main");
    let manifest = |l: &str| main.join(format!("backups/{l}.manifest"));
    let stanza = main.join("stanza.json");
    let pin = main.join(format!("backups/{}.pin", st.incr));
    let mut objects = vec![
        (stanza.clone(), "stanza.json".to_string(), true),
        (manifest(&st.full), format!("{}.manifest", st.full), true),
        (manifest(&st.incr), format!("{}.manifest", st.incr), true),
        (pin.clone(), format!("{}.pin", st.incr), false),
        (
            main.join("pitr-previous-settings.json"),
            "pitr-previous-settings.json".into(),
            false,
        ),
    ];
    if encrypted {
        objects.push((main.join("keyfile.json"), "keyfile.json".into(), true));
    }
    // A WAL name's claim (restore does not read claims; archive-push and verify do).
    let claim = std::fs::read_dir(main.join("archive"))
        .unwrap()
        .flatten()
        .flat_map(|d| std::fs::read_dir(d.path()).unwrap().flatten())
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "claim"))
        .expect("archived WAL has claims");
    let claim_name = claim.file_name().unwrap().to_string_lossy().into_owned();
    objects.push((claim, claim_name, false));
    let mut out = Vec::new();
    for (object, names, restore_refuses) in objects {
        let file = object.file_name().unwrap().to_string_lossy().into_owned();
        let mut changes = vec![
            ("flip a byte", Change::FlipByte),
            ("truncate", Change::Truncate),
        ];
        // A deleted pin is an unpinned backup, and deleted settings were never saved:
        // nothing to detect.
        // A deleted claim is an archive from before claims: nothing to detect either.
        if !file.ends_with(".pin")
            && !file.ends_with(".claim")
            && file != "pitr-previous-settings.json"
        {
            changes.push(("delete", Change::Delete));
        }
        let plaintext = !encrypted || file == "keyfile.json";
        if plaintext {
            changes.push(match file.as_str() {
                "stanza.json" => (
                    "edit a digit of the system identifier",
                    Change::JsonEdit("\"system_identifier\": \"", 3),
                ),
                "keyfile.json" => (
                    "edit a digit of the salt",
                    Change::JsonEdit("\"salt\": \"", 5),
                ),
                f if f.ends_with(".claim") => (
                    "edit a digit of the WAL name",
                    Change::JsonEdit("\"name\": \"", 5),
                ),
                f if f.ends_with(".pin") => (
                    "edit a digit of the label",
                    Change::JsonEdit("\"label\": \"", 14),
                ),
                "pitr-previous-settings.json" => (
                    "edit a letter of a setting's name",
                    Change::JsonEdit("\"name\": \"", 0),
                ),
                _ => (
                    "edit a digit of a file mode",
                    Change::JsonEdit("\"mode\":", 1),
                ),
            });
        }
        for (what, change) in changes {
            let (names, refuses) = match (&change, file.as_str()) {
                // A deleted manifest removes its backup: verify names what still points at it.
                (Change::Delete, f) if f == format!("{}.manifest", st.full) => {
                    (st.full.clone(), true)
                }
                (Change::Delete, f) if f == format!("{}.manifest", st.incr) => {
                    (format!("{}.pin", st.incr), false)
                }
                (Change::Delete, "keyfile.json") => ("keyfile.json".to_string(), true),
                _ => (names.clone(), restore_refuses),
            };
            out.push(Case {
                name: format!("{what} of {file}"),
                object: object.clone(),
                change,
                names,
                restore_refuses: refuses,
            });
        }
    }
    if !encrypted {
        let m = manifest(&st.incr);
        for (what, pattern, skip) in [
            ("a letter of a path", "\"path\":\"PG_VERSIO", 0),
            ("a digit of an mtime", "\"mtime\":", 3),
            ("a digit of a whole-file checksum", "\"checksum\":\"", 7),
            ("a backup_label line", "START WAL LOCATION: ", 2),
        ] {
            out.push(Case {
                name: format!("edit {what} in {}.manifest", st.incr),
                object: m.clone(),
                change: Change::JsonEdit(pattern, skip),
                names: format!("{}.manifest", st.incr),
                restore_refuses: true,
            });
        }
        out.push(Case {
            name: "stanza.json re-enveloped with another system identifier".into(),
            object: stanza.clone(),
            change: Change::Reenvelope(1, "\"system_identifier\": \"", 4),
            names: "stanza.json names cluster".into(),
            restore_refuses: true,
        });
    }
    out.push(Case {
        name: format!("copy {}'s manifest over {}'s", st.full, st.incr),
        object: manifest(&st.incr),
        change: Change::CopyFrom(manifest(&st.full)),
        names: format!("{}.manifest", st.incr),
        restore_refuses: true,
    });
    out
}

fn apply(object: &Path, change: &Change) {
    let bytes = fs::read(object).unwrap();
    let new = match change {
        Change::FlipByte => {
            let mut b = bytes.clone();
            let i = b.len() / 2;
            b[i] ^= 0x04;
            b
        }
        Change::JsonEdit(pattern, skip) => {
            assert!(
                bytes.starts_with(b"PGWM"),
                "{} is not enveloped",
                object.display()
            );
            edit_after(&bytes, pattern, *skip)
        }
        Change::Truncate => bytes[..bytes.len() / 2].to_vec(),
        Change::Delete => {
            fs::remove_file(object).unwrap();
            return;
        }
        Change::CopyFrom(other) => fs::read(other).unwrap(),
        Change::Reenvelope(kind, pattern, skip) => {
            envelope(*kind, &edit_after(&bytes[HEADER..], pattern, *skip))
        }
    };
    assert_ne!(new, bytes);
    fs::write(object, new).unwrap();
}

fn run_cases(name: &str, st: &Stanza, encrypted: bool) {
    let restore_to = work_dir(&format!("{name}-restore"));
    for (i, case) in cases(st, encrypted).iter().enumerate() {
        copy_tree(&st.pristine, &st.src.repo);
        apply(&case.object, &case.change);

        let out = st.src.pgward(&["verify"]);
        assert_ne!(
            out.status.code(),
            Some(0),
            "{}: verify passed:\n{}",
            case.name,
            text(&out)
        );
        assert!(
            text(&out).contains(&case.names),
            "{}: verify does not name {}:\n{}",
            case.name,
            case.names,
            text(&out)
        );

        // Objects restore does not read (pins, saved settings) leave restore as it was.
        let dir = restore_to.join(format!("case{i}"));
        let dir_s = dir.display().to_string();
        if case.restore_refuses {
            let out = st
                .src
                .pgward(&["restore", "--pgdata", &dir_s, "--archive-mode", "off"]);
            assert_eq!(
                out.status.code(),
                Some(5),
                "{}: restore must refuse as corrupt:\n{}",
                case.name,
                text(&out)
            );
            assert!(
                stderr(&out).contains("HINT"),
                "{}: {}",
                case.name,
                stderr(&out)
            );
            assert!(!dir.join("global/pg_control").exists(), "{}", case.name);
        }

        // info marks a damaged backup instead of failing or listing it twice.
        if case.object.extension().is_some_and(|e| e == "manifest") {
            let out = st.src.pgward(&["--output", "json", "info"]);
            if matches!(case.change, Change::Delete) || case.restore_refuses {
                let info: serde_json::Value =
                    serde_json::from_str(&assert_success(&out, &format!("{}: info", case.name)))
                        .unwrap();
                let listed: Vec<&str> = info["backups"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|b| b["label"].as_str().unwrap())
                    .collect();
                let damaged: Vec<&str> = info["damaged_backups"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|b| b["label"].as_str().unwrap())
                    .collect();
                let label = case.object.file_stem().unwrap().to_string_lossy();
                assert!(!listed.contains(&label.as_ref()), "{}: {info}", case.name);
                assert_eq!(
                    damaged.contains(&label.as_ref()),
                    !matches!(case.change, Change::Delete),
                    "{}: {info}",
                    case.name
                );
            }
            let text_out = st.src.pgward(&["info"]);
            if !matches!(case.change, Change::Delete) {
                assert!(
                    text(&text_out).contains("DAMAGED"),
                    "{}: info text:\n{}",
                    case.name,
                    text(&text_out)
                );
            }
        }
        let _ = fs::remove_dir_all(&dir);
    }
    copy_tree(&st.pristine, &st.src.repo);
    st.src.ok(&["verify"]);
}

#[test]
fn every_change_to_plain_metadata_is_named_by_verify_and_refused_by_restore() {
    let st = start("tamper", false);
    run_cases("tamper", &st, false);

    // A damaged manifest does not stop backups: the next one builds on an intact backup,
    // and verify keeps naming the damaged one.
    let backups = st.src.repo.join("main/backups");
    apply(
        &backups.join(format!("{}.manifest", st.incr)),
        &Change::CopyFrom(backups.join(format!("{}.manifest", st.full))),
    );
    st.src.cluster.start();
    let next = st.src.backup(&["--type", "incr"]);
    let info = st.src.info_json();
    let entry = info["backups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["label"] == next.as_str())
        .unwrap();
    assert_eq!(entry["reference"], st.full.as_str(), "{info}");
    let out = st.src.pgward(&["verify"]);
    assert_eq!(out.status.code(), Some(5), "{}", text(&out));
    assert!(text(&out).contains(&format!("{}.manifest", st.incr)));
    let dir = work_dir("tamper-next").join("data");
    st.src.ok(&[
        "restore",
        "--set",
        &next,
        "--pgdata",
        &dir.display().to_string(),
    ]);
}

#[test]
fn every_change_to_encrypted_metadata_is_named_by_verify_and_refused_by_restore() {
    let st = start("tamperenc", true);
    run_cases("tamperenc", &st, true);
}

/// A format 3 stanza (bare JSON metadata) still verifies and restores; stanza-create
/// then wraps every object in its envelope, writes the backups' header objects (format 5)
/// and bumps stanza.json to the current format.
#[test]
fn format_3_metadata_reads_then_stanza_create_upgrades_it() {
    let st = start("tamperv3", false);
    let main = st.src.repo.join("main");
    let mut legacy = vec![main.join("stanza.json")];
    for e in fs::read_dir(main.join("backups")).unwrap().flatten() {
        if e.path().extension().is_some_and(|x| x == "head") {
            fs::remove_file(e.path()).unwrap(); // format 5's, unknown to format 3
        } else {
            legacy.push(e.path());
        }
    }
    for path in &legacy {
        let bytes = fs::read(path).unwrap();
        let mut payload = bytes[HEADER..].to_vec();
        if path.ends_with("stanza.json") {
            payload = String::from_utf8(payload)
                .unwrap()
                .replace(
                    &format!("\"format_version\": {}", pgward::repo::FORMAT_VERSION),
                    "\"format_version\": 3",
                )
                .into_bytes();
        }
        if path.extension().is_some_and(|e| e == "pin") {
            payload = path.file_stem().unwrap().as_encoded_bytes().to_vec();
        }
        fs::write(path, payload).unwrap();
    }
    let info = st.src.info_json();
    assert_eq!(info["format_version"], 3);
    assert_eq!(info["backups"].as_array().unwrap().len(), 2);
    assert_eq!(info["backups"][1]["pinned"], true);
    st.src.ok(&["verify"]);
    let dir = work_dir("tamperv3-restore").join("data");
    st.src.ok(&[
        "restore",
        "--pgdata",
        &dir.display().to_string(),
        "--archive-mode",
        "off",
    ]);
    assert!(dir.join("global/pg_control").is_file());

    st.src.cluster.start();
    st.src.ok(&["stanza-create"]);
    for path in &legacy {
        assert!(
            fs::read(path).unwrap().starts_with(b"PGWM"),
            "{} was not upgraded",
            path.display()
        );
    }
    assert_eq!(
        st.src.info_json()["format_version"],
        pgward::repo::FORMAT_VERSION
    );
    for label in [&st.full, &st.incr] {
        assert!(main.join(format!("backups/{label}.head")).is_file());
    }
    st.src.ok(&["verify"]);
}
