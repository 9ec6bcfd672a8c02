//! `backup`: a physical backup of a running cluster with the non-exclusive API.
//!
//! Order of crash-safe steps: lock the stanza; remove bundles that earlier, interrupted
//! backups left (no manifest names them); start the backup; copy files into new
//! bundles; stop the backup; wait until the WAL from start to stop is archived; write
//! the manifest last. Until the manifest exists nothing lists the backup, so a kill at
//! any point leaves the repository as it was plus unreferenced bundles.

pub mod copy;
pub mod plan;
pub mod reference;
pub mod standby;
pub mod walk;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::db::{self, ConnOptions};
use crate::error::{Error, ErrorKind, Result};
use crate::pg::backup_label::parse_backup_label;
use crate::pg::control::parse_control_file;
use crate::pg::datadir::CONTROL_FILE;
use crate::pipeline::Compression;
use crate::repo::archive_map::{segments_between, wait_for_archived};
use crate::repo::label::{new_label, BackupType};
use crate::repo::manifest::{DamagedBackup, Manifest, PackedFiles};
use crate::repo::manifest_head::{head_of, same_head};
use crate::repo::stanza::check_same_cluster;
use crate::repo::{Repo, FORMAT_VERSION};

pub struct BackupOptions {
    pub backup_type: BackupType,
    pub pgdata: Option<PathBuf>,
    pub compression: Compression,
    pub jobs: usize,
    pub start_fast: bool,
    pub archive_timeout: Duration,
    pub annotations: BTreeMap<String, String>,
    /// Force a full after this many dependent backups in a chain.
    pub max_chain: Option<usize>,
    /// Never expire this backup (nor what it references).
    pub pin: bool,
    /// The primary, when the server backed up is a standby (see `standby`).
    pub primary: Option<ConnOptions>,
    /// Backing up a standby: warn when it is this many bytes behind the primary.
    pub standby_lag_warning: u64,
    /// How many blocks the WAL block maps leave out are read to check them.
    pub block_map_check: plan::BlockMapCheck,
}

/// The backup's manifest (its file list packed).
pub async fn backup(
    repo: &Repo,
    conn: &ConnOptions,
    opts: BackupOptions,
) -> Result<Manifest<PackedFiles>> {
    let lock = repo.lock("backup").await?;
    let result = backup_locked(repo, conn, opts).await;
    lock.release().await;
    result
}

async fn backup_locked(
    repo: &Repo,
    conn: &ConnOptions,
    opts: BackupOptions,
) -> Result<Manifest<PackedFiles>> {
    let started = Instant::now();
    let stanza = repo.stanza_info().await?;
    let client = db::connect(conn).await?;
    let server = db::server_info(&client).await?;
    check_same_cluster(&stanza, &server.identity)?;
    let node = db::node_address(&client, conn).await?;
    let standby = standby::Standby::connect(&server, &node, &opts).await?;
    let stanza = repo.upgrade_metadata().await?.unwrap_or(stanza);

    remove_orphans(repo).await?;

    let pgdata = opts
        .pgdata
        .clone()
        .unwrap_or_else(|| server.data_directory.clone());
    check_data_directory(&pgdata, server.identity.system_identifier)?;

    // A damaged manifest must not stop new backups: build only on intact ones, and keep
    // the damaged ones' labels (and bundles) untouched for `verify` to name. Choosing the
    // reference reads each backup's header object (a few KiB), not its manifest; the
    // reference's own manifest is read whole (its file list is needed, held packed) and
    // must read, check and agree with its header, or the choice is made again without
    // it. So what a backup reads of the repository does not grow with the manifests it
    // holds.
    let timeline = db::current_timeline(&client).await?;
    let mut backups = repo.load_backup_header_objects(&stanza).await?.backups;
    let (choice, reference) = loop {
        let choice = reference::choose(
            repo,
            &buildable(&backups.healthy),
            opts.backup_type,
            opts.max_chain,
            timeline,
        )
        .await?;
        let Some(header) = &choice.reference else {
            break (choice, None);
        };
        match repo
            .load_manifest_with::<PackedFiles>(&header.label, &stanza)
            .await
        {
            Ok(m) if same_head(&head_of(&m), header) => break (choice, Some(m)),
            Ok(m) => {
                tracing::warn!(label = %m.label, "the header object of backup {} does not match its manifest: choosing from the manifest", m.label);
                let at = backups.healthy.iter().position(|h| h.label == m.label);
                backups.healthy[at.expect("chosen from healthy")] = head_of(&m);
            }
            Err(error) if error.kind == ErrorKind::Corrupt => {
                backups.healthy.retain(|h| h.label != header.label);
                backups.damaged.push(DamagedBackup {
                    label: header.label.clone(),
                    error,
                });
            }
            Err(error) => return Err(error),
        }
    };
    for d in &backups.damaged {
        tracing::warn!(label = %d.label, "not building on a damaged backup: {}", d.error);
    }
    if let Some(why) = &choice.fallback {
        tracing::warn!(
            "taking a full backup instead of {}: {why}",
            opts.backup_type
        );
    }
    let labels: Vec<String> = backups
        .healthy
        .iter()
        .map(|m| m.label.clone())
        .chain(backups.damaged.iter().map(|d| d.label.clone()))
        .collect();
    let label = new_label(choice.backup_type, chrono::Utc::now(), &labels);
    if let Some(r) = &reference {
        tracing::info!(reference = %r.label, "{} backup builds on {}", choice.backup_type, r.label);
        if let Some(standby) = &standby {
            standby.wait_for_replay(&client, &head_of(r)).await?;
        }
    }
    tracing::info!(%label, pgdata = %pgdata.display(), "starting backup");
    let start_time = chrono::Utc::now();
    let start_lsn = db::backup_start(
        &client,
        server.version_num,
        &format!("pgward {label}"),
        opts.start_fast,
    )
    .await?;
    tracing::info!(%start_lsn, "backup started");
    test_pause_point().await;

    let walk_root = pgdata.clone();
    let listing = tokio::task::spawn_blocking(move || walk::walk_data_dir(&walk_root))
        .await
        .unwrap_or_else(crate::error::task_panicked)?;
    let maps = match &reference {
        Some(r) => {
            // The timeline the backup started on: a promotion may have come in between.
            let started_on = db::current_timeline(&client).await?;
            let maps = plan::map_use(
                repo,
                r,
                started_on,
                start_lsn,
                &pgdata,
                opts.block_map_check,
            );
            Some(Arc::new(maps.await))
        }
        None => None,
    };
    let progress = Arc::new(crate::progress::Progress::default());
    let _reporter = crate::progress::Reporter::start(
        "backup",
        (0..listing.files.len())
            .map(|i| listing.files.size(i))
            .sum(),
        listing.files.len() as u64,
        progress.clone(),
    );
    let reference_label = reference.as_ref().map(|m| m.label.clone());
    let settings = copy::CopySettings {
        label: label.clone(),
        compression: opts.compression,
        verify_pages_before: stanza.data_checksums.then_some(start_lsn),
        jobs: opts.jobs,
        first_bundle: 0,
        reference: reference.map(|m| Arc::new(copy::Reference::new(m))),
        maps,
    };
    // pg_control goes last, after every other file, as pg_basebackup does.
    let files = Arc::new(listing.files);
    let (control, others): (Vec<u32>, Vec<u32>) =
        (0..files.len() as u32).partition(|&i| files.path(i as usize) == CONTROL_FILE);
    let mut copied = copy::copy_files(
        repo,
        files.clone(),
        others,
        settings.clone(),
        progress.clone(),
    )
    .await?;
    copied.merge(
        copy::copy_files(
            repo,
            files,
            control,
            copy::CopySettings {
                jobs: 1,
                first_bundle: settings.jobs,
                ..settings
            },
            progress,
        )
        .await?,
    );

    let stop = match &standby {
        Some(standby) => standby.stop(&client).await?,
        None => db::backup_stop(&client, server.version_num).await?,
    };
    let stop_time = chrono::Utc::now();
    let label_file = parse_backup_label(&stop.backup_label).map_err(|e| {
        Error::new(
            ErrorKind::Database,
            format!("the server returned a backup_label pgward cannot read: {e}"),
        )
    })?;
    tracing::info!(stop_lsn = %stop.lsn, "backup stopped; waiting for WAL to be archived");
    let segments = segments_between(
        label_file.start_timeline,
        start_lsn,
        stop.lsn,
        stanza.wal_segment_size,
    );
    let reference_timeline = reference_label.as_ref().map(|_| timeline);
    match &standby {
        Some(s) => {
            let label = &label_file;
            s.finish(&client, repo, &stop, label, reference_timeline, segments)
                .await?
        }
        None => wait_for_archived(repo, segments, opts.archive_timeout).await?,
    }

    let manifest = Manifest {
        format_version: FORMAT_VERSION,
        label: label.clone(),
        backup_type: choice.backup_type,
        reference: reference_label,
        system_identifier: stanza.system_identifier,
        pg_major: server.identity.pg_major,
        pg_version_num: server.version_num,
        timeline: label_file.start_timeline,
        start_lsn,
        stop_lsn: stop.lsn,
        start_time,
        stop_time,
        wal_segment_size: stanza.wal_segment_size,
        data_checksums: stanza.data_checksums,
        from_standby: standby.is_some(),
        node: Some(node),
        compression: opts.compression,
        backup_label: stop.backup_label,
        tablespace_map: stop.tablespace_map,
        tablespaces: listing.tablespaces,
        annotations: opts.annotations,
        directories: listing.dirs,
        database_size: (0..copied.files.len()).map(|i| copied.files.size(i)).sum(),
        stored_size: copied.stored_size,
        bundles: copied.bundles,
        checksum_failures: copied.checksum_failures,
        files: copied.files,
        reads: Some(copied.reads),
    };
    let manifest = repo.save_manifest(manifest).await?;
    if opts.pin {
        repo.set_pinned(&manifest.label, true).await?;
    }
    if !manifest.checksum_failures.is_empty() {
        let pages: usize = manifest
            .checksum_failures
            .iter()
            .map(|f| f.blocks.len())
            .sum();
        tracing::warn!("{pages} page(s) in {} file(s) failed checksum verification; see `pgward info --set {label}`", manifest.checksum_failures.len());
    }
    tracing::info!(%label, seconds = started.elapsed().as_secs_f64(), files = manifest.files.len(), "backup complete");
    Ok(manifest)
}

/// The backups an incremental may build on: those whose chain reaches a full backup
/// through intact backups.
fn buildable(healthy: &[Manifest]) -> Vec<Manifest> {
    healthy
        .iter()
        .filter(|m| {
            crate::repo::manifest::chain(healthy, &m.label)
                .first()
                .is_some_and(|full| full.reference.is_none())
        })
        .cloned()
        .collect()
}

/// Lets tests act while a backup is running (promote the standby it copies, say): with
/// `PGWARD_TEST_BACKUP_PAUSE=FILE` (debug builds only), backup creates FILE once the
/// start call returned and goes on when the test removes it: an observable event, not a
/// guessed delay.
async fn test_pause_point() {
    #[cfg(debug_assertions)]
    if let Some(marker) = std::env::var_os("PGWARD_TEST_BACKUP_PAUSE") {
        let _ = std::fs::write(&marker, b"started\n");
        while std::path::Path::new(&marker).exists() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Deletes bundles that no manifest references. Safe only under the backup lock.
async fn remove_orphans(repo: &Repo) -> Result<()> {
    for bundle in repo.unheld_orphan_bundles().await? {
        tracing::info!(%bundle, "removing bundle left by an interrupted backup");
        repo.delete_bundle(&bundle).await?;
    }
    let headers = repo.remove_orphan_headers().await?;
    if headers > 0 {
        tracing::info!(
            headers,
            "removed the header objects of backups that did not finish"
        );
    }
    for dir in ["bundles", "backups"] {
        let removed = repo.remove_incomplete(dir, None).await?;
        if removed > 0 {
            tracing::info!(
                removed,
                "removed partly written files left by an interrupted backup"
            );
        }
    }
    Ok(())
}

/// Why the data directory's control file cannot be read, as what the operator must fix:
/// a wrong `--pgdata` is a configuration error, not "not found" (which is about the
/// repository); a directory this user may not read is an I/O error whose usual cause is
/// running as another user than the cluster's owner.
fn unreadable_data_directory(pgdata: &Path, control_path: &Path, e: std::io::Error) -> Error {
    let pass = "pass the cluster's data directory with --pgdata (or PGDATA), or leave both \
                unset to use the one the server reports";
    match e.kind() {
        std::io::ErrorKind::NotFound if !pgdata.is_dir() => Error::config(format!(
            "data directory {} does not exist",
            pgdata.display()
        ))
        .hint(pass),
        std::io::ErrorKind::NotFound => Error::config(format!(
            "{} is not a PostgreSQL data directory: it has no {CONTROL_FILE}",
            pgdata.display()
        ))
        .hint(pass),
        std::io::ErrorKind::PermissionDenied => Error::io("reading", control_path, e).hint(
            "this user may not read the data directory: run pgward as the cluster's owner \
             (the user PostgreSQL runs as)",
        ),
        _ => Error::io("reading", control_path, e),
    }
}

/// The directory we copy must be the cluster we are connected to.
fn check_data_directory(pgdata: &Path, system_identifier: u64) -> Result<()> {
    let control_path = pgdata.join("global/pg_control");
    // The server may be rewriting pg_control as we read it: retry a torn read.
    let mut attempt = 0;
    let control = loop {
        let bytes = std::fs::read(&control_path)
            .map_err(|e| unreadable_data_directory(pgdata, &control_path, e))?;
        match parse_control_file(&bytes) {
            Ok(control) => break control,
            Err(_) if attempt < 5 => attempt += 1,
            Err(e) => {
                return Err(Error::new(
                    ErrorKind::Corrupt,
                    format!("{}: {e}", control_path.display()),
                ))
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    if control.system_identifier != system_identifier {
        return Err(Error::new(
            ErrorKind::Conflict,
            format!("{} belongs to cluster {}, but the server pgward connected to is cluster {system_identifier}", pgdata.display(), control.system_identifier),
        )
        .hint("--pgdata and the connection options must name the same cluster"));
    }
    Ok(())
}
