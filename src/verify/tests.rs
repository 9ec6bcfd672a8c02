//! Verify on synthetic backups of many small files: what it holds, and what it names.

use std::path::Path;
use std::sync::Arc;

use super::{verify, VerifyReport};
use crate::pipeline::compress::{Codec, Compression};
use crate::repo::frames::BundleWriter;
use crate::repo::label::BackupType;
use crate::repo::manifest::{parse_manifest, Extent, FileEntry, Manifest};
use crate::repo::object::{envelope, Kind};
use crate::repo::stanza::StanzaInfo;
use crate::repo::Repo;
use crate::storage::{LocalStorage, SharedStorage};
use crate::test_alloc::Group;

/// Files per backup: enough that a manifest dwarfs verify's fixed buffers.
const FILES: usize = 3000;

fn template() -> Manifest {
    let bytes = std::fs::read(format!(
        "{}/tests/fixtures/format-v3/20261121-124507F.manifest",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let mut m = parse_manifest(&bytes).unwrap();
    m.format_version = crate::repo::FORMAT_VERSION;
    m.compression = Compression::new(Codec::Lz4, None).unwrap();
    m.reads = None;
    m.checksum_failures = Vec::new();
    m
}

/// A plain stanza in `dir` of the template's cluster, without archived WAL.
fn stanza(dir: &Path) -> Repo {
    let m = template();
    let info = StanzaInfo {
        format_version: crate::repo::FORMAT_VERSION,
        stanza: "main".into(),
        system_identifier: m.system_identifier,
        pg_major: m.pg_major,
        data_checksums: true,
        wal_segment_size: m.wal_segment_size,
        created: m.start_time,
    };
    std::fs::create_dir_all(dir.join("main")).unwrap();
    std::fs::write(
        dir.join("main/stanza.json"),
        envelope(Kind::Stanza, &serde_json::to_vec(&info).unwrap()),
    )
    .unwrap();
    let storage: SharedStorage = Arc::new(LocalStorage::new(dir));
    Repo::plain_for_tests(storage, "main")
}

/// Saves a backup of FILES small files: a full stores them all; an incremental (on
/// `reference`, a full) stores every tenth and reads the rest from it.
async fn backup(repo: &Repo, label: &str, reference: Option<&Manifest>) -> Manifest {
    let mut m = template();
    m.label = label.into();
    m.backup_type = if reference.is_some() {
        BackupType::Incr
    } else {
        BackupType::Full
    };
    m.reference = reference.map(|r| r.label.clone());
    let file = m.files[1].clone();
    let (repo2, label2, reference) = (repo.clone(), m.label.clone(), reference.cloned());
    let (files, bundles) = tokio::task::spawn_blocking(move || {
        let mut writer = BundleWriter::new(repo2, &label2, 0, m_compression());
        let mut files = Vec::with_capacity(FILES);
        for i in 0..FILES {
            let path = format!("base/16384/{}", 100_000 + i);
            let extent: Extent = match &reference {
                Some(r) if i % 10 != 0 => r.files[i].extents[0].clone(),
                _ => {
                    let mut frame = writer.frame().unwrap();
                    frame.write(format!("{label2} {path}").as_bytes()).unwrap();
                    frame.finish().unwrap().extent(0)
                }
            };
            files.push(FileEntry {
                path,
                size: extent.length,
                checksum: None,
                extents: vec![extent],
                ..file.clone()
            });
        }
        writer.close().unwrap();
        let bundles: Vec<String> = writer.closed().iter().map(|(b, _)| b.clone()).collect();
        (files, bundles)
    })
    .await
    .unwrap();
    m.files = files;
    m.bundles = bundles;
    repo.save_manifest(m).await.unwrap()
}

fn m_compression() -> Compression {
    Compression::new(Codec::Lz4, None).unwrap()
}

/// The problems of a report but the archive's (these stanzas archive no WAL).
fn backup_problems(report: &VerifyReport) -> Vec<String> {
    report
        .problems
        .iter()
        .filter(|p| !p.problem.contains("is missing from the archive"))
        .map(|p| format!("{} BREAKS {}", p.problem, p.breaks))
        .collect()
}

static HEAP: Group = Group::new();

/// A runtime whose threads count their heap in `HEAP`.
fn runtime() -> tokio::runtime::Runtime {
    HEAP.join();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .on_thread_start(|| HEAP.join())
        .enable_all()
        .build()
        .unwrap()
}

/// Regression (issue 13, item 4): verify held every manifest whole, then every stored
/// frame of every backup with the backups that read it: its peak grew by more than a
/// manifest for each backup stored. One manifest at a time, four backups take what one
/// does, but for a few bytes per frame of the chain being read.
#[test]
fn verify_holds_one_manifest_at_a_time_whatever_the_backups_stored() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let repo = stanza(dir.path());
    let full = rt.block_on(backup(&repo, "20261121-100000F", None));
    let (one, peak_one) = HEAP.measure(|| rt.block_on(verify(&repo, 1)).unwrap());
    assert_eq!((one.backups_checked, one.extents_checked), (1, FILES));
    assert_eq!(backup_problems(&one), Vec::<String>::new());

    let manifest_bytes = HEAP
        .measure(|| rt.block_on(repo.read_manifest(&full.label)).unwrap())
        .1;
    drop(full);
    rt.block_on(backup(&repo, "20261121-110000F", None));
    let last = rt.block_on(backup(&repo, "20261121-120000F", None));
    rt.block_on(backup(&repo, "20261121-130000I", Some(&last)));
    drop(last);
    let (four, peak_four) = HEAP.measure(|| rt.block_on(verify(&repo, 1)).unwrap());
    assert_eq!(
        (four.backups_checked, four.extents_checked),
        (4, 3 * FILES + FILES / 10)
    );
    assert_eq!(backup_problems(&four), Vec::<String>::new());
    // What may grow: the heads kept, and 8 bytes per frame of the chain being read.
    assert!(
        peak_four < peak_one + manifest_bytes / 4,
        "one backup: peak {peak_one} bytes; four: {peak_four} (a manifest parses to {manifest_bytes})"
    );
}

/// A damaged frame breaks the backup that stores it and every backup that reads it (found
/// by reading those manifests again); an extent into a backup that is gone, or into a
/// frame its backup does not store, breaks the backup that names it.
#[test]
fn damage_names_every_backup_it_breaks_and_references_must_be_stored() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let repo = stanza(dir.path());
    let full = rt.block_on(backup(&repo, "20261121-100000F", None));
    let incr = rt.block_on(backup(&repo, "20261121-110000I", Some(&full)));
    let mut wrong = incr.clone();
    wrong.label = "20261121-120000I".into();
    wrong.reference = Some(incr.label.clone());
    wrong.files[5].extents[0].stored_length += 1;
    wrong.files[7].extents[0].backup = "20261121-090000F".into();
    for f in [8, 9] {
        wrong.files[f].extents[0].bundle_offset += 1;
    }
    let wrong = rt.block_on(repo.save_manifest(wrong)).unwrap();
    let (f, i, w) = (&full.label, &incr.label, &wrong.label);
    let expected = [
        format!("base/16384/100007 in backup {w} is held by backup 20261121-090000F, which is missing or damaged BREAKS backup {w} cannot be restored"),
        format!("base/16384/100005 and 2 more file(s) in backup {w} are held by backup {f}, which does not store those frames: a bug in the backup that wrote {w} BREAKS backup {w} cannot be restored"),
    ];
    // A damaged frame's problem: the file, backup, bundle and offset, and what it breaks.
    let damaged = |problem: &str, file: usize, breaks: &str| {
        let e = &full.files[file].extents[0];
        let start = format!(
            "{} (backup {f}, bundle {} at {}): ",
            full.files[file].path, e.bundle, e.bundle_offset
        );
        problem.starts_with(&start)
            && problem.ends_with(&format!(" BREAKS {breaks} cannot be restored"))
    };
    let report = rt.block_on(verify(&repo, 2)).unwrap();
    assert_eq!(backup_problems(&report), expected[..2]);

    // Damage a frame the full stores and both incrementals read, and one only it reads.
    for file in [1, 10] {
        let e = &full.files[file].extents[0];
        let bundle = dir.path().join("main/bundles").join(&*e.bundle);
        let mut bytes = std::fs::read(&bundle).unwrap();
        bytes[(e.bundle_offset + e.stored_length / 2) as usize] ^= 0x55;
        std::fs::write(&bundle, bytes).unwrap();
    }
    let report = rt.block_on(verify(&repo, 2)).unwrap();
    let problems = backup_problems(&report);
    assert_eq!(problems.len(), 4, "{problems:#?}");
    assert_eq!(problems[..2], expected);
    assert!(
        damaged(&problems[2], 1, &format!("backups {f}, {i}, {w}")),
        "{}",
        problems[2]
    );
    assert!(
        damaged(&problems[3], 10, &format!("backup {f}")),
        "{}",
        problems[3]
    );
    drop(wrong);
}
