//! Backup header objects (`backups/<label>.head`, format 5): what `backup` chooses its
//! reference from instead of every manifest. A damaged or wrong header never makes a
//! backup build on the wrong facts, `verify` names it, and headers go with their backup.

use std::fs;
use std::path::PathBuf;

use pgward::repo::object::{envelope, open_envelope, Kind};

use super::setup::{stderr, Source};

fn header(src: &Source, label: &str) -> PathBuf {
    src.repo.join(format!("main/backups/{label}.head"))
}

fn verify_output(src: &Source) -> (Option<i32>, String) {
    let out = src.pgward(&["verify"]);
    let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    (out.status.code(), all)
}

#[test]
fn wrong_or_damaged_headers_are_named_by_verify_and_never_steer_a_backup() {
    let src = Source::start("header", 15);
    src.sql("CREATE TABLE t AS SELECT g FROM generate_series(1, 10000) g");
    let full = src.backup(&[]);
    src.sql("UPDATE t SET g = -g WHERE g <= 100");
    let incr = src.backup(&["--type", "incr"]);
    for label in [&full, &incr] {
        assert!(header(&src, label).is_file(), "{label} has no header");
    }
    src.ok(&["verify"]);

    // A header that reads but says another stop LSN than its manifest: verify names it;
    // backup checks the reference's header against its manifest and builds on the
    // manifest's facts.
    let path = header(&src, &incr);
    let stored = fs::read(&path).unwrap();
    let mut head: serde_json::Value =
        serde_json::from_slice(open_envelope(Kind::BackupHeader, &stored).unwrap()).unwrap();
    head["manifest"]["stop_lsn"] = "0/1".into();
    let payload = serde_json::to_vec_pretty(&head).unwrap();
    fs::write(&path, envelope(Kind::BackupHeader, &payload)).unwrap();
    let (code, out) = verify_output(&src);
    assert_eq!(code, Some(5), "{out}");
    assert!(
        out.contains(&format!("{incr}.head")) && out.contains("does not match the manifest"),
        "{out}"
    );
    src.sql("UPDATE t SET g = -g WHERE g <= 200");
    let next = src.backup(&["--type", "incr"]);
    let info = src.info_json();
    let entry = info["backups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["label"] == next.as_str())
        .unwrap();
    assert_eq!(entry["reference"], incr.as_str(), "{info}");

    // A damaged header: backup reads the manifest instead, verify names the header.
    fs::write(&path, &stored[..stored.len() - 1]).unwrap();
    let again = src.backup(&["--type", "incr"]);
    let (code, out) = verify_output(&src);
    assert_eq!(code, Some(5), "{out}");
    assert!(out.contains(&format!("{incr}.head")), "{out}");
    fs::write(&path, &stored).unwrap();
    src.ok(&["verify"]);

    // A header without its manifest is an unfinished backup's: the next backup removes
    // it. Expire removes a backup's header with its manifest.
    let orphan = header(&src, "20261101-000000F");
    fs::copy(header(&src, &full), &orphan).unwrap();
    let newest = src.backup(&[]);
    assert!(!orphan.exists(), "the leftover header stays");
    src.ok(&["expire", "--retain-full", "1"]);
    for label in [&full, &incr, &next, &again] {
        assert!(
            !header(&src, label).exists(),
            "{label}'s header outlived it"
        );
    }
    assert!(header(&src, &newest).is_file());
    src.ok(&["verify"]);
}
