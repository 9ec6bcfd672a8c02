//! Encrypted stanzas: everything stored is encrypted and authenticated; a wrong key, a
//! missing passphrase or a changed byte is a clear error naming the file.

use std::fs;
use std::path::{Path, PathBuf};

use super::harness::*;
use super::setup::{stderr, Source};

const MARKER: &str = "PLAINTEXT-MARKER-7f3a9c";

fn encrypted(name: &str, pass: &str) -> (Source, PathBuf) {
    let dir = work_dir(&format!("{name}-secret"));
    let pass_file = dir.join("pass");
    fs::write(&pass_file, format!("{pass}\n")).unwrap();
    chown_pg(&dir);
    let extra = vec![
        "--cipher-pass-file".to_string(),
        pass_file.display().to_string(),
        "--compress".to_string(),
        "none".to_string(),
    ];
    let src = Source::start_full(
        name,
        ClusterOptions::default(),
        extra,
        &["--cipher", "aes-256-gcm"],
    );
    (src, pass_file)
}

fn stored_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(stored_files(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn flip_byte(path: &Path, at: usize) {
    let mut bytes = fs::read(path).unwrap();
    let i = at.min(bytes.len() - 1);
    bytes[i] ^= 0x01;
    fs::write(path, bytes).unwrap();
}

#[test]
fn encrypted_stanza_backs_up_archives_and_restores_and_stores_no_plaintext() {
    let (src, _) = encrypted("enc", "correct horse battery staple");
    src.sql(&format!(
        "CREATE TABLE secret AS SELECT g, '{MARKER}' AS note FROM generate_series(1, 2000) g"
    ));
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let full = src.backup(&[]);
    std::thread::sleep(std::time::Duration::from_millis(2500));
    src.sql("UPDATE secret SET g = g + 1 WHERE g < 10");
    let incr = src.backup(&["--type", "incr"]);
    src.sql("SELECT pg_create_restore_point('enc_point')");
    let expected = src.cluster.content_checksum("postgres");
    src.archive_current_wal();
    src.ok(&["verify"]);

    // Uncompressed, the marker would be in the bundles; encrypted, nowhere.
    for file in stored_files(&src.repo.join("main")) {
        let bytes = fs::read(&file).unwrap();
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        if name == "keyfile.json" || name.ends_with(".lock") {
            continue;
        }
        assert!(
            !bytes.windows(MARKER.len()).any(|w| w == MARKER.as_bytes()),
            "{} holds plaintext",
            file.display()
        );
        assert!(
            bytes.starts_with(b"PGWE") || name.ends_with(".bundle"),
            "{} is not encrypted",
            file.display()
        );
    }
    let info = src.info_json();
    assert_eq!(info["backups"][1]["reference"], full.as_str());

    let restored = src.restore_and_start(
        "enc-r",
        &[
            "--set",
            &incr,
            "--target-name",
            "enc_point",
            "--target-action",
            "promote",
        ],
    );
    assert_eq!(restored.content_checksum("postgres"), expected);
}

#[test]
fn wrong_or_missing_passphrase_and_changed_bytes_fail_naming_the_file() {
    let (src, pass_file) = encrypted("enctamper", "s3cret passphrase");
    src.sql("CREATE TABLE t AS SELECT g FROM generate_series(1, 5000) g");
    src.backup(&[]);
    src.archive_current_wal();
    let repo = src.repo.display().to_string();

    let out = pgward(
        &["--repo", &repo, "--stanza", "main", "info"],
        &src.cluster.env(),
    );
    assert_eq!(out.status.code(), Some(3));
    assert!(
        stderr(&out).contains("is encrypted and no passphrase was given"),
        "{}",
        stderr(&out)
    );
    let out = pgward(
        &[
            "--repo",
            &repo,
            "--stanza",
            "main",
            "--cipher-pass",
            "wrong",
            "info",
        ],
        &src.cluster.env(),
    );
    assert_eq!(out.status.code(), Some(3));
    assert!(
        stderr(&out).contains("wrong passphrase"),
        "{}",
        stderr(&out)
    );

    let files = stored_files(&src.repo.join("main"));
    let find = |pred: &dyn Fn(&str) -> bool| {
        files
            .iter()
            .find(|p| pred(&p.file_name().unwrap().to_string_lossy()))
            .unwrap()
            .clone()
    };
    let segment = find(&|n| n.len() > 24 && n.as_bytes()[24] == b'-' && !n.contains('.'));
    let seg_name = segment.file_name().unwrap().to_string_lossy()[..24].to_string();
    let bundle = find(&|n| n.ends_with(".bundle"));
    let manifest = find(&|n| n.ends_with(".manifest"));
    let dest = work_dir("enctamper-get").join("RECOVERYXLOG");
    let dest_s = dest.display().to_string();

    // A changed byte in a WAL file: archive-get must stop recovery, naming it.
    let original = fs::read(&segment).unwrap();
    flip_byte(&segment, original.len() / 2);
    let out = src.pgward(&["archive-get", &seg_name, &dest_s]);
    assert!(out.status.code().unwrap() > 125, "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&seg_name) && stderr(&out).contains("authentication failed"),
        "{}",
        stderr(&out)
    );
    // Truncated: also refused.
    fs::write(&segment, &original[..original.len() - 100]).unwrap();
    let out = src.pgward(&["archive-get", &seg_name, &dest_s]);
    assert!(out.status.code().unwrap() > 125, "{}", stderr(&out));
    fs::write(&segment, &original).unwrap();
    src.ok(&["archive-get", &seg_name, &dest_s]);

    // A changed byte in a bundle: verify names it and what it breaks.
    let original = fs::read(&bundle).unwrap();
    flip_byte(&bundle, 200);
    let out = src.pgward(&["verify"]);
    assert_eq!(out.status.code(), Some(5));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("authentication failed"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    fs::write(&bundle, &original).unwrap();

    // A changed byte in a manifest or in stanza.json: verify says which file.
    for file in [manifest, src.repo.join("main/stanza.json")] {
        let original = fs::read(&file).unwrap();
        flip_byte(&file, 60);
        let out = src.pgward(&["verify"]);
        assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
        assert!(said.contains(&name), "verify must name {name}: {said}");
        fs::write(&file, &original).unwrap();
    }
    src.ok(&["verify"]);
    let _ = pass_file;
}

#[test]
fn rekey_changes_the_passphrase_without_rewriting_data() {
    let (src, pass_file) = encrypted("rekey", "old passphrase");
    src.sql("CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g");
    let label = src.backup(&[]);
    let expected = src.cluster.content_checksum("postgres");
    src.archive_current_wal();
    let bundles = src.repo.join("main/bundles");
    let before: Vec<(PathBuf, u64)> = stored_files(&bundles)
        .into_iter()
        .map(|p| {
            let n = fs::metadata(&p).unwrap().len();
            (p, n)
        })
        .collect();

    src.ok(&["rekey", "--new-cipher-pass", "new passphrase"]);
    let after: Vec<(PathBuf, u64)> = stored_files(&bundles)
        .into_iter()
        .map(|p| {
            let n = fs::metadata(&p).unwrap().len();
            (p, n)
        })
        .collect();
    assert_eq!(before, after, "rekey must not rewrite data");

    // The old passphrase (still in the file every call uses) is refused now.
    let out = src.pgward(&["info"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(
        stderr(&out).contains("wrong passphrase"),
        "{}",
        stderr(&out)
    );
    fs::write(&pass_file, "new passphrase\n").unwrap();
    let restored = src.restore_and_start("rekey-r", &["--set", &label]);
    assert_eq!(restored.content_checksum("postgres"), expected);
}

/// The temporary key files in the stanza's directory (what a killed rekey leaves).
fn key_file_leftovers(src: &Source) -> Vec<PathBuf> {
    fs::read_dir(src.repo.join(&src.stanza))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            name.starts_with("keyfile.json.") && name.ends_with(".pgward-tmp")
        })
        .collect()
}

fn make_old(path: &Path) {
    fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(7200))
        .unwrap();
}

#[test]
fn a_killed_rekey_leaves_the_old_passphrase_in_force_and_its_leftover_is_removed_later() {
    let (src, pass_file) = encrypted("killrekey", "old passphrase");
    if src.url.contains("://") {
        return; // a single PUT on object storage: nothing is left to look at
    }
    src.backup(&[]);
    let marker = work_dir("killrekey-halt").join("halted");
    chown_pg(marker.parent().unwrap());
    let halt = [(
        "PGWARD_TEST_REKEY_HALT".to_string(),
        marker.display().to_string(),
    )];
    let mut child = src.spawn(&["rekey", "--new-cipher-pass", "new passphrase"], &halt);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !marker.exists() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "rekey ended before writing its key file"
        );
        assert!(
            std::time::Instant::now() < deadline,
            "rekey never wrote its key file"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    super::setup::kill_pgward(&mut child);
    let leftovers = key_file_leftovers(&src);
    assert_eq!(leftovers.len(), 1, "the killed rekey's key file");

    // The rename never happened: the old passphrase is in force, the new one is not.
    src.ok(&["verify"]);
    fs::write(&pass_file, "new passphrase\n").unwrap();
    let err = src.fails(&["info"], 3);
    assert!(err.contains("wrong passphrase"), "{err}");
    fs::write(&pass_file, "old passphrase\n").unwrap();

    // A fresh leftover may be a rekey at work: left alone. An old one goes.
    src.ok(&["rekey", "--new-cipher-pass", "newer passphrase"]);
    assert_eq!(key_file_leftovers(&src), leftovers);
    fs::write(&pass_file, "newer passphrase\n").unwrap();
    make_old(&leftovers[0]);
    src.ok(&["rekey", "--new-cipher-pass", "new passphrase"]);
    assert!(
        key_file_leftovers(&src).is_empty(),
        "the next rekey removed it"
    );
    fs::write(&pass_file, "new passphrase\n").unwrap();
    src.ok(&["verify"]);

    // expire removes one too.
    let planted = src
        .repo
        .join(&src.stanza)
        .join("keyfile.json.4321-0.pgward-tmp");
    fs::copy(src.repo.join(&src.stanza).join("keyfile.json"), &planted).unwrap();
    make_old(&planted);
    src.ok(&["expire", "--retain-full", "1"]);
    assert!(!planted.exists(), "expire removed it");
    src.ok(&["verify"]);
}
