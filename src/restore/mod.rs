//! `restore`, as a sequence of named phases: select the backup, check the recovery target
//! against what the archive can reach (`reach`), validate the destination, lay out
//! directories and tablespace links, copy every file once from the backup that holds each
//! extent, write `backup_label`/`tablespace_map` and the recovery settings, then fsync
//! everything, and last `global/pg_control`: until it is there, the directory cannot start
//! as a cluster, whatever step a crash interrupted. Nothing is started: a plain
//! `pg_ctl start` recovers. `--delta` replaces the validation and the layout with its own
//! phases (`delta.rs`) and the copy with a comparison (`delta_files.rs`).

pub mod delta;
mod delta_files;
pub mod files;
mod output;
pub mod ownership;
pub mod reach;
pub mod recovery;
pub mod target;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, ErrorKind, IoContext, Result};
use crate::repo::holds::HoldGuard;
use crate::repo::manifest::Manifest;
use crate::repo::Repo;
use crate::storage::local::{create_dir_durable, sync_dir, sync_filesystem};
use target::{RecoveryTarget, TargetAction};

pub struct RestoreOptions {
    pub set: Option<String>,
    pub pgdata: PathBuf,
    pub tablespace_map: BTreeMap<u32, PathBuf>,
    pub target: RecoveryTarget,
    pub target_action: Option<TargetAction>,
    pub target_timeline: Option<String>,
    pub target_exclusive: bool,
    /// Skip checking that the archive reaches a time or LSN target (its syntax is checked).
    pub target_unchecked: bool,
    pub jobs: usize,
    /// The restore_command written into the recovery settings.
    pub restore_command: String,
    /// Turn archiving off in the restored cluster (a copy must not archive into its source's stanza by accident).
    pub archive_off: bool,
    /// Restore into an existing data directory of the cluster, writing only what differs.
    pub delta: bool,
    /// With `delta`: over another cluster's data directory, or one whose pg_control is unreadable.
    pub force: bool,
    /// Restore a standby following this primary (`standby.signal` and `primary_conninfo`).
    pub primary_conninfo: Option<String>,
}

/// What a restore restored, and for a delta restore what it read, wrote and removed.
pub struct Restored {
    /// The backup restored, without its file list (`files` counts it).
    pub manifest: Manifest,
    pub files: usize,
    pub delta: Option<delta::DeltaStats>,
}

pub async fn restore(repo: &Repo, opts: RestoreOptions) -> Result<Restored> {
    if let RecoveryTarget::Name(name) = &opts.target {
        target::check_target_name(name)?;
    }
    let (manifest, hold) =
        select_backup(repo, opts.set.as_deref(), &opts.target, "restore").await?;
    let restored = restore_selected(repo, opts, manifest).await;
    hold.release().await;
    restored
}

async fn restore_selected(
    repo: &Repo,
    opts: RestoreOptions,
    manifest: Manifest,
) -> Result<Restored> {
    if !opts.target_unchecked {
        reach::check_reachable(
            repo,
            &manifest,
            &opts.target,
            opts.target_timeline.as_deref(),
        )
        .await?;
    }
    tracing::info!(label = %manifest.label, pgdata = %opts.pgdata.display(), "restoring backup");

    let tablespaces = resolve_tablespaces(&manifest, &opts.tablespace_map)?;
    let owner = ownership::cluster_owner(&opts.pgdata)?;
    let mut manifest = manifest;
    let mut delta = None;
    if opts.delta {
        delta = Some(delta::prepare(
            &opts.pgdata,
            &manifest,
            &tablespaces,
            opts.force,
        )?);
    }
    // The file list is the bulk of a large backup's memory: moved to the copy, never cloned.
    let files = std::mem::take(&mut manifest.files);
    let file_count = files.len();
    let (control, rest): (Vec<_>, Vec<_>) = files
        .into_iter()
        .partition(|f| f.path == crate::pg::datadir::CONTROL_FILE);
    if let Some(stats) = &mut delta {
        let rewritten =
            delta_files::rewrite(repo, &manifest, rest, &opts.pgdata, opts.jobs).await?;
        stats.add(&rewritten);
    } else {
        // A restore refused before the copy leaves no trace, not even the directories it made.
        let mut created = Vec::new();
        let prepared = prepare_destination(&opts.pgdata, &manifest, &tablespaces, &mut created);
        if let Err(e) = prepared {
            for dir in created.iter().rev() {
                match std::fs::remove_dir_all(dir) {
                    Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
                        tracing::warn!(dir = %dir.display(), %err, "could not remove a directory this restore created");
                    }
                    _ => {}
                }
            }
            return Err(e);
        }
        test_pause_point().await;
        files::restore_files(repo, &manifest, rest, &opts.pgdata, opts.jobs, false).await?;
    }

    recovery::write_backup_files(&opts.pgdata, &manifest, &tablespaces)?;
    recovery::write_recovery_settings(&opts.pgdata, &manifest, &opts)?;
    if let Some(owner) = owner {
        ownership::give_to(owner, &opts.pgdata, &tablespaces)?;
    }
    sync_tree(&opts.pgdata, &tablespaces)?;
    let control_fetched =
        restore_control_file(repo, &manifest, control, &opts.pgdata, owner).await?;
    if let Some(stats) = &mut delta {
        stats.fetched += control_fetched;
        delta::finish(&opts.pgdata)?;
    }
    tracing::info!(label = %manifest.label, "restore complete; start the cluster to recover");
    Ok(Restored {
        manifest,
        files: file_count,
        delta,
    })
}

/// Lets tests act while a restore is under way: with `PGWARD_TEST_RESTORE_PAUSE=FILE`
/// (debug builds only), restore creates FILE before it reads any bundle and goes on when
/// the test removes it: an observable event, not a guessed delay.
async fn test_pause_point() {
    #[cfg(debug_assertions)]
    if let Some(marker) = std::env::var_os("PGWARD_TEST_RESTORE_PAUSE") {
        let _ = std::fs::write(&marker, b"paused\n");
        while Path::new(&marker).exists() {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}

/// `global/pg_control`, written once everything else is durable: a directory without it
/// cannot be started, so a crash before this point leaves nothing a server would take
/// for a cluster. Returns the stored bytes it read.
async fn restore_control_file(
    repo: &Repo,
    manifest: &Manifest,
    control: Vec<crate::repo::manifest::FileEntry>,
    pgdata: &Path,
    owner: Option<ownership::Owner>,
) -> Result<u64> {
    let fetched = control
        .iter()
        .flat_map(|f| &f.extents)
        .map(|e| e.stored_length)
        .sum();
    files::restore_files(repo, manifest, control, pgdata, 1, true).await?;
    let path = pgdata.join(crate::pg::datadir::CONTROL_FILE);
    if let Some(owner) = owner {
        std::os::unix::fs::lchown(&path, Some(owner.uid), Some(owner.gid))
            .at("changing the owner of", &path)?;
    }
    let global = path.parent().expect("global/");
    sync_dir(global).at("syncing", global)?;
    Ok(fetched)
}

/// The backup to restore (`set`, else the newest that ends before `target`), refusing
/// when a damaged manifest is the one asked for, could have been the one chosen, or is
/// part of the chosen backup's chain. `drill` chooses its backup with it too.
///
/// The hold it hands back names the chain and the WAL from the backup's start, for
/// `command`, and is taken before any manifest of the chain is read: `expire` keeps
/// them until it is released (`repo/holds.rs` has why no expire can slip in between).
pub async fn select_backup(
    repo: &Repo,
    set: Option<&str>,
    target: &RecoveryTarget,
    command: &str,
) -> Result<(Manifest, HoldGuard)> {
    let stanza = repo.stanza_info().await?;
    // Chosen by their header objects (a few KiB each): only the chosen backup's manifest
    // is read whole (at the end), and its chain's are read, checked, for their codecs.
    let backups = repo.load_backup_header_objects(&stanza).await?.backups;
    if let Some(d) = backups
        .damaged
        .iter()
        .find(|d| Some(d.label.as_str()) == set)
    {
        return Err(Error::corrupt(format!(
            "backup {} cannot be restored: {}",
            d.label, d.error
        )));
    }
    let manifests = backups.healthy;
    let selected = target::select_backup(&manifests, set, target);
    if set.is_none() {
        // A damaged backup newer than the one chosen may be the one the target needs.
        let chosen = selected.as_ref().map_or("", |m| m.label.as_str());
        if let Some(d) = backups.damaged.iter().find(|d| d.label.as_str() > chosen) {
            return Err(Error::new(
                ErrorKind::Corrupt,
                format!(
                    "backup {} is damaged{}: pgward cannot tell which backup the target needs: {}",
                    d.label,
                    if chosen.is_empty() {
                        String::new()
                    } else {
                        format!(" and newer than backup {chosen}")
                    },
                    d.error
                ),
            )
            .hint(
                "run `pgward verify`; to restore an intact backup anyway, name it with --set LABEL",
            ));
        }
    }
    let manifest = selected?;
    let chain = crate::repo::manifest::chain(&manifests, &manifest.label);
    if let Some(missing) = chain.first().and_then(|first| first.reference.as_ref()) {
        return Err(Error::corrupt(format!(
            "backup {} builds on backup {missing}, which is damaged or missing",
            manifest.label
        )));
    }
    let chain: Vec<String> = chain.iter().map(|m| m.label.clone()).collect();
    repo.hold_and_load(command, &chain, manifest.start_lsn, &stanza)
        .await
}

/// Where each tablespace goes: its original location unless remapped.
fn resolve_tablespaces(
    manifest: &Manifest,
    remap: &BTreeMap<u32, PathBuf>,
) -> Result<Vec<(u32, PathBuf)>> {
    for oid in remap.keys() {
        if !manifest.tablespaces.iter().any(|t| t.oid == *oid) {
            return Err(Error::config(format!(
                "--tablespace-map names tablespace {oid}, which backup {} does not have",
                manifest.label
            ))
            .hint(format!(
                "its tablespaces: {:?}",
                manifest
                    .tablespaces
                    .iter()
                    .map(|t| t.oid)
                    .collect::<Vec<_>>()
            )));
        }
    }
    Ok(manifest
        .tablespaces
        .iter()
        .map(|t| {
            (
                t.oid,
                remap
                    .get(&t.oid)
                    .cloned()
                    .unwrap_or_else(|| PathBuf::from(&t.location)),
            )
        })
        .collect())
}

/// Empty destination directories with the backup's directory tree and tablespace links.
/// Every directory this creates from nothing (its outermost new ancestor) is pushed on
/// `created` before it is made, so that a failure can take them away again.
fn prepare_destination(
    pgdata: &Path,
    manifest: &Manifest,
    tablespaces: &[(u32, PathBuf)],
    created: &mut Vec<PathBuf>,
) -> Result<()> {
    prepare_empty_dir(pgdata, "the data directory", created)?;
    for (_, location) in tablespaces {
        prepare_empty_dir(location, "tablespace directory", created)?;
    }
    layout(pgdata, manifest, tablespaces)
}

/// The destination must be empty (or absent): restoring over a cluster would mix two.
fn prepare_empty_dir(dir: &Path, what: &str, created: &mut Vec<PathBuf>) -> Result<()> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(Error::new(ErrorKind::Conflict, format!("{what} {} is not empty", dir.display()))
                    .hint("restore into an empty or new directory, or stop and move away the old cluster first; over a stopped data directory of the same cluster, --delta writes only what differs"));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // The outermost missing ancestor: create_dir_durable makes the parents too.
            let outermost = dir
                .ancestors()
                .take_while(|a| !a.as_os_str().is_empty() && !a.exists())
                .last()
                .unwrap_or(dir)
                .to_path_buf();
            created.push(outermost);
            create_dir_durable(dir).at("creating", dir)?;
        }
        Err(e) => return Err(Error::io("opening", dir, e)),
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .at("setting permissions of", dir)
}

fn layout(pgdata: &Path, manifest: &Manifest, tablespaces: &[(u32, PathBuf)]) -> Result<()> {
    let links: BTreeMap<String, &PathBuf> = tablespaces
        .iter()
        .map(|(oid, loc)| (format!("pg_tblspc/{oid}"), loc))
        .collect();
    let mut dirs: Vec<_> = manifest.directories.iter().collect();
    dirs.sort_by(|a, b| a.path.cmp(&b.path));
    for dir in dirs {
        let path = pgdata.join(&dir.path);
        if let Some(target) = links.get(&dir.path) {
            std::os::unix::fs::symlink(target, &path).at("creating tablespace link", &path)?;
            continue;
        }
        match std::fs::create_dir(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(Error::io("creating", &path, e)),
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(dir.mode))
            .at("setting permissions of", &path)?;
    }
    Ok(())
}

/// Makes the restored cluster durable: its files with one `syncfs` per file system they
/// are on (they were written without an fsync each), then every directory.
fn sync_tree(pgdata: &Path, tablespaces: &[(u32, PathBuf)]) -> Result<()> {
    let mut synced = std::collections::HashSet::new();
    for root in std::iter::once(pgdata).chain(tablespaces.iter().map(|(_, l)| l.as_path())) {
        use std::os::unix::fs::MetadataExt;
        let device = std::fs::metadata(root).at("reading", root)?.dev();
        if synced.insert(device) {
            sync_filesystem(root).at("syncing the file system of", root)?;
        }
    }
    fn walk(dir: &Path) -> Result<()> {
        for entry in std::fs::read_dir(dir).at("listing", dir)? {
            let entry = entry.at("listing", dir)?;
            if entry.file_type().at("reading", entry.path())?.is_dir() {
                walk(&entry.path())?;
            }
        }
        sync_dir(dir).at("syncing", dir)
    }
    walk(pgdata)?;
    for (_, location) in tablespaces {
        walk(location)?;
    }
    if let Some(parent) = pgdata.parent() {
        sync_dir(parent).at("syncing", parent)?;
    }
    Ok(())
}
