//! From an older format to this one, run by `stanza-create` on an existing stanza and by
//! `backup` under the stanza's lock. From 3 (or older) to 4: every metadata object gets
//! its envelope. From 4 to 5: each backup gets its header object (`manifest_head.rs`).
//!
//! Order: the objects first, `stanza.json` last. Until `stanza.json` says 4, readers
//! accept objects with and without an envelope, so an upgrade interrupted anywhere
//! leaves a readable stanza, and the next run finishes it. Payloads keep their bytes
//! (a legacy manifest is wrapped as it is, not re-serialized). Headers are optional
//! (a backup without one is read from its manifest), so writing them needs no order.

use super::cipher::{key_file_bytes, parse_key_file, KEY_FILE};
use super::object::{self, Contents, Kind};
use super::stanza::StanzaInfo;
use super::{Repo, FORMAT_VERSION};
use crate::error::Result;

impl Repo {
    /// Brings the stanza to this format when it is older; returns the new stanza info
    /// when it did.
    pub async fn upgrade_metadata(&self) -> Result<Option<StanzaInfo>> {
        let mut info = self.stanza_info().await?;
        if info.format_version >= FORMAT_VERSION {
            return Ok(None);
        }
        tracing::info!(
            from = info.format_version,
            to = FORMAT_VERSION,
            stanza = %self.stanza,
            "upgrading the stanza's metadata"
        );
        let mut wrapped = 0;
        if info.format_version < 4 {
            wrapped += self.add_envelopes().await?;
        }
        wrapped += self.add_backup_headers().await?;
        info.format_version = FORMAT_VERSION;
        self.write_stanza_info(&info).await?;
        tracing::info!(
            objects = wrapped + 1,
            "stanza upgraded to format {FORMAT_VERSION}"
        );
        Ok(Some(info))
    }

    /// Format 5: a header object for every backup that reads without one (a damaged
    /// manifest gets none: `verify` names it).
    async fn add_backup_headers(&self) -> Result<usize> {
        let mut written = 0;
        for label in self.backup_labels().await? {
            if self
                .read_backup_header(&label)
                .await
                .is_ok_and(|h| h.is_some())
            {
                continue;
            }
            match self.read_manifest(&label).await {
                Ok(m) => {
                    self.save_backup_header(&m).await?;
                    written += 1;
                }
                Err(e) if e.kind == crate::error::ErrorKind::Io => return Err(e),
                Err(e) => tracing::warn!("no header object for backup {label}: {e}"),
            }
        }
        Ok(written)
    }

    /// Format 4: every metadata object in an envelope, keeping its payload's bytes.
    async fn add_envelopes(&self) -> Result<usize> {
        let mut wrapped = 0;
        for label in self.backup_labels().await? {
            let key = self.key(&format!("backups/{label}.manifest"));
            wrapped += self.wrap_legacy(&key, Kind::Manifest).await? as usize;
            let pin = self.key(&format!("backups/{label}.pin"));
            if let Some(Contents::Legacy(raw)) = self.read_contents(&pin, Kind::Pin).await? {
                if raw == label.as_bytes() {
                    self.write_pin(&label).await?;
                    wrapped += 1;
                } else {
                    tracing::warn!("{pin} does not name its backup; left as it is");
                }
            }
        }
        wrapped += self
            .wrap_legacy(&self.key("pitr-previous-settings.json"), Kind::PitrSettings)
            .await? as usize;
        let key_file = self.key(KEY_FILE);
        if let Some(stored) = object::get(&self.storage, &key_file).await? {
            let parsed = parse_key_file(&stored, &key_file)?;
            if parsed.legacy {
                self.storage
                    .put(&key_file, &key_file_bytes(&parsed.file))
                    .await?;
                wrapped += 1;
            }
        }
        Ok(wrapped)
    }

    /// Wraps one legacy object in an envelope, keeping its payload bytes; a legacy object
    /// that is not even JSON is left for `verify` to report.
    async fn wrap_legacy(&self, key: &str, kind: Kind) -> Result<bool> {
        let Some(Contents::Legacy(raw)) = self.read_contents(key, kind).await? else {
            return Ok(false);
        };
        if serde_json::from_slice::<serde_json::Value>(&raw).is_err() {
            tracing::warn!("{key} does not parse; left as it is");
            return Ok(false);
        }
        self.write_payload(key, kind, &raw).await?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Arc;

    use super::*;
    use crate::error::ErrorKind;
    use crate::repo::StanzaHandle;
    use crate::storage::{LocalStorage, SharedStorage};

    const LABEL: &str = "20261121-124507F";
    const STANZA_V3: &[u8] = include_bytes!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/format-v3/stanza.json"
    ));
    const MANIFEST_V3: &[u8] = include_bytes!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/format-v3/20261121-124507F.manifest"
    ));
    const MANIFEST_V1: &[u8] = include_bytes!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/format-v1/manifest.json"
    ));

    const STANZA_V4: &[u8] = include_bytes!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/format-v4/stanza.json"
    ));
    const MANIFEST_V4: &[u8] = include_bytes!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/format-v4/20261121-124507F.manifest"
    ));

    /// Format 4: enveloped objects, no backup header objects. Read as it is (backup
    /// chooses from the manifest's head), then upgraded to 5 by adding the header without
    /// touching the manifest; from then on choosing reads the header, not the manifest.
    #[tokio::test]
    async fn format_4_stanza_reads_without_headers_then_upgrades_by_adding_them() {
        let dir = tempfile::tempdir().unwrap();
        let backups = dir.path().join("main/backups");
        std::fs::create_dir_all(&backups).unwrap();
        std::fs::write(dir.path().join("main/stanza.json"), STANZA_V4).unwrap();
        let manifest = backups.join(format!("{LABEL}.manifest"));
        std::fs::write(&manifest, MANIFEST_V4).unwrap();
        let storage: SharedStorage = Arc::new(LocalStorage::new(dir.path()));
        let repo = StanzaHandle::new(storage, "main")
            .unwrap()
            .unlock(None)
            .await
            .unwrap();
        let stanza = repo.stanza_info().await.unwrap();
        assert_eq!(stanza.format_version, 4);
        let full = repo.load_manifest(LABEL).await.unwrap();
        assert_eq!(full.format_version, 4);
        assert!(full.reads.is_some() && full.node.is_some());
        let index = repo.load_backup_header_objects(&stanza).await.unwrap();
        assert_eq!(index.backups.healthy.len(), 1);
        assert_eq!(index.file_counts[LABEL], full.files.len());
        assert!(crate::repo::manifest_head::same_head(
            &index.backups.healthy[0],
            &crate::repo::manifest_head::head_of(&full)
        ));
        assert!(repo.read_backup_header(LABEL).await.unwrap().is_none());

        let info = repo.upgrade_metadata().await.unwrap().expect("upgraded");
        assert_eq!(info.format_version, FORMAT_VERSION);
        assert_eq!(std::fs::read(&manifest).unwrap(), MANIFEST_V4);
        let (head, files) = repo.read_backup_header(LABEL).await.unwrap().unwrap();
        assert_eq!(files, full.files.len());
        assert!(crate::repo::manifest_head::same_head(
            &head,
            &crate::repo::manifest_head::head_of(&full)
        ));
        repo.check_backup_header(&full).await.unwrap();
        assert!(repo.upgrade_metadata().await.unwrap().is_none());

        // Choosing reads the header now: a damaged manifest goes unnoticed there (the
        // reference's manifest is read whole by backup), but not by the readers that
        // report damage.
        let mut damaged = MANIFEST_V4.to_vec();
        let last = damaged.len() - 10;
        damaged[last] ^= 1;
        std::fs::write(&manifest, damaged).unwrap();
        let index = repo.load_backup_header_objects(&info).await.unwrap();
        assert_eq!(index.backups.healthy[0].label, LABEL);
        let reported = repo.load_backup_headers(Some(&info)).await.unwrap();
        assert_eq!(reported.backups.damaged[0].label, LABEL);
    }

    /// A plain stanza as format 3 left it: bare JSON stanza.json, manifest and pin.
    async fn legacy_stanza(root: &Path, manifest: &[u8]) -> Repo {
        let backups = root.join("main/backups");
        std::fs::create_dir_all(&backups).unwrap();
        std::fs::write(root.join("main/stanza.json"), STANZA_V3).unwrap();
        std::fs::write(backups.join(format!("{LABEL}.manifest")), manifest).unwrap();
        std::fs::write(backups.join(format!("{LABEL}.pin")), LABEL).unwrap();
        let storage: SharedStorage = Arc::new(LocalStorage::new(root));
        StanzaHandle::new(storage, "main")
            .unwrap()
            .unlock(None)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn format_3_and_1_stanzas_read_then_upgrade_to_envelopes_around_the_same_bytes() {
        for manifest in [MANIFEST_V3, MANIFEST_V1] {
            let dir = tempfile::tempdir().unwrap();
            let repo = legacy_stanza(dir.path(), manifest).await;
            assert_eq!(repo.stanza_info().await.unwrap().format_version, 3);
            let m = repo.load_manifests().await.unwrap();
            assert_eq!(m[0].label, LABEL);
            assert_eq!(m[0].files[0].extents[0].frame_length, m[0].files[0].size);
            repo.check_pin(LABEL).await.unwrap();

            let info = repo.upgrade_metadata().await.unwrap().expect("upgraded");
            assert_eq!(info.format_version, FORMAT_VERSION);
            let path = dir.path().join(format!("main/backups/{LABEL}.manifest"));
            let stored = std::fs::read(&path).unwrap();
            assert_eq!(
                object::open_envelope(Kind::Manifest, &stored).unwrap(),
                manifest
            );
            assert!(std::fs::read(dir.path().join("main/stanza.json"))
                .unwrap()
                .starts_with(object::MAGIC));
            assert_eq!(repo.load_manifests().await.unwrap()[0].label, LABEL);
            repo.check_pin(LABEL).await.unwrap();
            assert!(repo.upgrade_metadata().await.unwrap().is_none());

            // Once the stanza is at format 4, a bare object is damage, not history.
            std::fs::write(&path, manifest).unwrap();
            let e = repo.load_manifest(LABEL).await.unwrap_err();
            assert_eq!(e.kind, ErrorKind::Corrupt);
            assert!(e.message.contains("has no envelope"), "{e}");
        }
    }

    /// Format 3 encrypted: a bare JSON key file, PGWE-sealed bare JSON everywhere else.
    #[tokio::test]
    async fn encrypted_format_3_stanza_reads_then_upgrades_with_the_key_file_enveloped() {
        use crate::pipeline::encrypt::{KdfParams, KeyFile};
        let cheap = KdfParams {
            m_cost_kib: 64,
            t_cost: 1,
            p_cost: 1,
        };
        let (key_file, key) = KeyFile::create_with(b"pw", cheap).unwrap();
        let seal = |plain: &[u8]| {
            let mut w = crate::pipeline::seal(Some(&key), Vec::new()).unwrap();
            std::io::Write::write_all(&mut w, plain).unwrap();
            w.finish().unwrap()
        };
        let dir = tempfile::tempdir().unwrap();
        let main = dir.path().join("main");
        std::fs::create_dir_all(main.join("backups")).unwrap();
        std::fs::write(main.join("keyfile.json"), key_file.to_json()).unwrap();
        std::fs::write(main.join("stanza.json"), seal(STANZA_V3)).unwrap();
        let manifest = main.join(format!("backups/{LABEL}.manifest"));
        std::fs::write(&manifest, seal(MANIFEST_V3)).unwrap();
        std::fs::write(
            main.join(format!("backups/{LABEL}.pin")),
            seal(LABEL.as_bytes()),
        )
        .unwrap();
        let storage: SharedStorage = Arc::new(LocalStorage::new(dir.path()));
        let handle = StanzaHandle::new(storage, "main").unwrap();
        assert!(handle.is_encrypted().await.unwrap());
        let repo = handle.unlock(Some(b"pw")).await.unwrap();
        assert!(repo.is_encrypted());
        assert_eq!(repo.load_manifests().await.unwrap()[0].label, LABEL);
        repo.check_pin(LABEL).await.unwrap();
        repo.check_key_file().await.unwrap();

        repo.upgrade_metadata().await.unwrap().expect("upgraded");
        let stored_key_file = std::fs::read(main.join("keyfile.json")).unwrap();
        assert!(stored_key_file.starts_with(object::MAGIC));
        let stored = std::fs::read(&manifest).unwrap();
        assert!(stored.starts_with(b"PGWE"), "still encrypted");
        assert!(matches!(
            object::decode(Some(&key), Kind::Manifest, &stored, "m").unwrap(),
            Contents::Checked(p) if p == MANIFEST_V3
        ));
        // The upgraded stanza unlocks and reads as format 4.
        let storage: SharedStorage = Arc::new(LocalStorage::new(dir.path()));
        let repo = StanzaHandle::new(storage, "main")
            .unwrap()
            .unlock(Some(b"pw"))
            .await
            .unwrap();
        assert_eq!(
            repo.stanza_info().await.unwrap().format_version,
            FORMAT_VERSION
        );
        assert_eq!(repo.load_manifests().await.unwrap()[0].label, LABEL);
        repo.check_pin(LABEL).await.unwrap();
        repo.check_key_file().await.unwrap();
    }

    #[tokio::test]
    async fn objects_that_name_another_label_stanza_or_cluster_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let repo = legacy_stanza(dir.path(), MANIFEST_V3).await;
        repo.upgrade_metadata().await.unwrap();
        let backups = dir.path().join("main/backups");
        let other = "20261122-010000I";
        std::fs::copy(
            backups.join(format!("{LABEL}.manifest")),
            backups.join(format!("{other}.manifest")),
        )
        .unwrap();
        std::fs::copy(
            backups.join(format!("{LABEL}.pin")),
            backups.join(format!("{other}.pin")),
        )
        .unwrap();
        let e = repo.load_manifest(other).await.unwrap_err();
        assert!(
            e.message.contains("copied over the manifest of backup"),
            "{e}"
        );
        let e = repo.check_pin(other).await.unwrap_err();
        assert!(e.message.contains("copied from another backup"), "{e}");
        let loaded = repo.load_backups(None).await.unwrap();
        assert_eq!((loaded.healthy.len(), loaded.damaged.len()), (1, 1));

        let mut info = repo.stanza_info().await.unwrap();
        info.system_identifier += 1;
        repo.write_stanza_info(&info).await.unwrap();
        let e = repo.load_manifest(LABEL).await.unwrap_err();
        assert!(e.message.contains("but stanza.json names cluster"), "{e}");

        let storage: SharedStorage = Arc::new(LocalStorage::new(dir.path()));
        std::fs::create_dir_all(dir.path().join("copy")).unwrap();
        std::fs::copy(
            dir.path().join("main/stanza.json"),
            dir.path().join("copy/stanza.json"),
        )
        .unwrap();
        let copy = StanzaHandle::new(storage, "copy")
            .unwrap()
            .unlock(None)
            .await
            .unwrap();
        let e = copy.stanza_info().await.unwrap_err();
        assert!(e.message.contains("copied from another stanza"), "{e}");
    }
}
