//! Copies a backup's files into the data directory, in parallel, each written once from
//! the extents that hold its bytes, checked against its checksum, then fsynced.

use std::collections::VecDeque;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::runtime::Handle;

use crate::error::{Error, IoContext, Result};
use crate::repo::manifest::{bundle_key, FileEntry, Manifest};
use crate::repo::Repo;
use crate::storage;

pub async fn restore_files(
    repo: &Repo,
    manifest: &Manifest,
    pgdata: &Path,
    jobs: usize,
) -> Result<()> {
    let mut files: Vec<FileEntry> = manifest.files.clone();
    files.sort_by_key(|f| std::cmp::Reverse(f.size));
    let queue = Arc::new(Mutex::new(VecDeque::from(files)));
    let codecs = Arc::new(codec_by_backup(repo, manifest).await?);
    let mut workers = Vec::new();
    for _ in 0..jobs.max(1) {
        let (repo, queue, codecs, pgdata) = (
            repo.clone(),
            queue.clone(),
            codecs.clone(),
            pgdata.to_path_buf(),
        );
        workers.push(tokio::task::spawn_blocking(move || -> Result<()> {
            let handle = Handle::current();
            loop {
                let next = queue.lock().unwrap().pop_front();
                let Some(file) = next else { return Ok(()) };
                if let Err(e) =
                    restore_one(&handle, &repo, &codecs, &file, &pgdata.join(&file.path))
                {
                    queue.lock().unwrap().clear();
                    return Err(e);
                }
            }
        }));
    }
    let mut first_error = None;
    for w in workers {
        if let Err(e) = w.await.expect("restore worker panicked") {
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// The compression of every backup an extent may point to.
async fn codec_by_backup(
    repo: &Repo,
    manifest: &Manifest,
) -> Result<std::collections::HashMap<String, crate::pipeline::compress::Codec>> {
    let mut codecs = std::collections::HashMap::new();
    codecs.insert(manifest.label.clone(), manifest.compression.codec);
    for file in &manifest.files {
        for extent in &file.extents {
            if !codecs.contains_key(&extent.backup) {
                let other = repo.load_manifest(&extent.backup).await?;
                codecs.insert(extent.backup.clone(), other.compression.codec);
            }
        }
    }
    Ok(codecs)
}

fn restore_one(
    handle: &Handle,
    repo: &Repo,
    codecs: &std::collections::HashMap<String, crate::pipeline::compress::Codec>,
    file: &FileEntry,
    dest: &PathBuf,
) -> Result<()> {
    let out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(dest)
        .at("creating", dest)?;
    let mut writer = std::io::BufWriter::with_capacity(1 << 20, out);
    let mut whole = blake3::Hasher::new();
    let mut written = 0u64;
    for extent in &file.extents {
        let key = bundle_key(repo, &extent.bundle);
        let reader = handle.block_on(repo.storage.read_range(
            &key,
            extent.bundle_offset,
            extent.stored_length,
        ))?;
        let mut decoder = codecs[&extent.backup]
            .decoder(storage::blocking_reader(reader))
            .at("decompressing", &key)?;
        let mut part = blake3::Hasher::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut extent_bytes = 0u64;
        loop {
            let n = decoder.read(&mut buf).map_err(|e| {
                Error::corrupt(format!(
                    "{} in backup {}: cannot decompress",
                    file.path, extent.backup
                ))
                .source(e)
            })?;
            if n == 0 {
                break;
            }
            part.update(&buf[..n]);
            whole.update(&buf[..n]);
            writer.write_all(&buf[..n]).at("writing", dest)?;
            extent_bytes += n as u64;
        }
        if extent_bytes != extent.length || part.finalize().to_hex().as_str() != extent.checksum {
            return Err(Error::corrupt(format!(
                "{} in backup {} (bundle {}) does not match its checksum",
                file.path, extent.backup, extent.bundle
            )));
        }
        written += extent_bytes;
    }
    if written != file.size || whole.finalize().to_hex().as_str() != file.checksum {
        return Err(Error::corrupt(format!(
            "{} restored from backup {} does not match its checksum",
            file.path,
            file.extents.first().map_or("?", |e| &e.backup)
        )));
    }
    let out = writer
        .into_inner()
        .map_err(|e| Error::io("writing", dest, e.into_error()))?;
    use std::os::unix::fs::PermissionsExt;
    out.set_permissions(std::fs::Permissions::from_mode(file.mode))
        .at("setting permissions of", dest)?;
    let mtime = std::time::UNIX_EPOCH + std::time::Duration::from_secs(file.mtime.max(0) as u64);
    out.set_modified(mtime).at("setting mtime of", dest)?;
    out.sync_all().at("syncing", dest)
}

use std::io::Read as _;
