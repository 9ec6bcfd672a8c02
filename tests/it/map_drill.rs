//! The block-map drill (issue 12): a randomized workload, repeatable by seed, between a
//! full backup and a chain of incrementals (and a differential) under pgbench load, on a
//! cluster archiving with `--wal-maps on`. The steps are ordinary updates, inserts and
//! deletes, and the changes that reach files without an ordinary block reference:
//! truncation, new relfilenumbers, database copies (FILE_COPY and WAL_LOG, with a dropped
//! database's OID reused) and moves, a wal_level=minimal period, and two promotions
//! between a reference and its incremental (a restored copy, and the source in place).
//! Each run does every step kind at least once. Every backup is restored to its end and
//! compared with the source as it was then: every row of every table of every database,
//! the catalogs' relation list, pg_amcheck --heapallindexed and pg_checksums.
//!
//! Against page-LSN incrementals this proves the incremental and restore paths; when
//! `backup --block-map-check` exists, every backup runs it in `all` mode and must report
//! no miss, and some incremental of the run must have read files through the maps.
//!
//! Replay: the seed is printed at the start, and a failure prints the command that runs
//! it again (`PGWARD_DRILL_SEED=<seed> ...`) with the step list. Second tier:
//! `PGWARD_DRILL_SEEDS=<n>` seeds on every installed major (or `PGWARD_DRILL_MAJORS`).

use std::fs;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::harness::*;
use super::setup::Source;

/// xorshift64*, as in src/test_rng.rs (the test crate cannot import it).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n` (0 when `n` is 0).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// PGWARD_DRILL_SEED, else one from the clock (printed, so any run can be replayed).
fn drill_seed() -> u64 {
    match std::env::var("PGWARD_DRILL_SEED") {
        Ok(s) => s
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("PGWARD_DRILL_SEED={s:?} is not a number")),
        Err(_) => {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap();
            (t.as_nanos() as u64) % 1_000_000_007
        }
    }
}

/// A drill table: `(id, k, v, tags)` with a btree, a hash and a GIN index.
#[derive(Clone, Debug)]
struct Table {
    db: String,
    name: String,
    logged: bool,
    /// Explicit tablespace (None: the database's default).
    space: Option<String>,
}

#[derive(Clone, Debug)]
struct Db {
    name: String,
    oid: u32,
    space: String,
}

/// What a backup must restore to.
#[derive(Clone)]
struct Taken {
    label: String,
    /// Per database, as `all_databases_checksum` gives it, with load paused.
    expected: String,
    /// User tablespaces the backup holds: each restore maps them to fresh directories.
    spaces: Vec<u32>,
}

const SPACES: [&str; 2] = ["ts_a", "ts_b"];

/// The step kinds with their weights for random picks. Every run does each at least once.
const KINDS: [(&str, usize); 17] = [
    ("update-hot", 3),
    ("update-non-hot", 3),
    ("insert", 3),
    ("delete", 2),
    ("vacuum-truncate", 2),
    ("truncate", 1),
    ("vacuum-full", 1),
    ("cluster", 1),
    ("reindex", 1),
    ("set-tablespace", 1),
    ("set-logged-unlogged", 1),
    ("create-database", 2),
    ("drop-database", 1),
    ("move-database", 1),
    ("drop-recreate", 1),
    ("checkpoint", 1),
    ("vacuum-freeze", 1),
];

struct Drill {
    name: String,
    seed: u64,
    major: u32,
    rng: Rng,
    src: Source,
    /// The replay log: every step, in order.
    steps: Vec<String>,
    load: Option<Child>,
    tables: Vec<Table>,
    dbs: Vec<Db>,
    /// OIDs of dropped databases, for CREATE DATABASE ... OID = (15+): the same paths again.
    free_oids: Vec<u32>,
    counter: u32,
    taken: Vec<Taken>,
    /// `backup --block-map-check all` is available.
    map_check: bool,
    started: Instant,
    /// Relation files the incrementals read through block maps, once backups report it.
    files_mapped: Option<u64>,
    /// The command that runs this drill again.
    replay: String,
    /// The restore check of the newest backup, running while the next interval's steps do.
    checking: Option<(usize, JoinHandle<Result<(), String>>)>,
}

impl Drop for Drill {
    fn drop(&mut self) {
        if let Some(mut load) = self.load.take() {
            terminate(&mut load, Duration::from_secs(10));
        }
        if let Some((_, check)) = self.checking.take() {
            let _ = check.join();
        }
        if std::thread::panicking() {
            eprintln!("{}", self.replay());
        }
    }
}

impl Drill {
    fn replay(&self) -> String {
        format!(
            "map drill on PostgreSQL {}, seed {}: replay with `{}`; steps:\n  {}",
            self.major,
            self.seed,
            self.replay,
            self.steps.join("\n  ")
        )
    }

    fn fail(&self, what: String) -> ! {
        panic!("seed {}: {what}", self.seed)
    }

    fn log(&mut self, step: String) {
        let step = step.split_whitespace().collect::<Vec<_>>().join(" ");
        eprintln!(
            "drill {:>5.1}s: {step}",
            self.started.elapsed().as_secs_f64()
        );
        self.steps.push(step);
    }

    fn start(name: &str, major: u32, seed: u64, replay: &str) -> Drill {
        eprintln!("map drill {name} on PostgreSQL {major}: PGWARD_DRILL_SEED={seed}");
        let help = assert_success(&pgward(&["backup", "--help"], &[]), "backup --help");
        let map_check = help.contains("--block-map-check");
        if !map_check {
            eprintln!("drill: backup has no --block-map-check yet: page-LSN incrementals only");
        }
        let src = Source::start_full(
            name,
            ClusterOptions {
                major,
                ..Default::default()
            },
            vec!["--wal-maps".into(), "on".into()],
            &[],
        );
        let mut d = Drill {
            name: name.to_string(),
            seed,
            major,
            rng: Rng(seed ^ 0x9E37_79B9_7F4A_7C15),
            src,
            steps: Vec::new(),
            load: None,
            tables: Vec::new(),
            dbs: Vec::new(),
            free_oids: Vec::new(),
            counter: 0,
            taken: Vec::new(),
            map_check,
            started: Instant::now(),
            replay: replay.to_string(),
            files_mapped: None,
            checking: None,
        };
        for space in SPACES {
            let dir = work_dir(&format!("{name}-{space}"));
            d.src.sql(&format!(
                "CREATE TABLESPACE {space} LOCATION {}",
                sql_quote(&dir.display().to_string())
            ));
        }
        let out = d.src.cluster.pgbench(&["-i", "-s", "1", "-q"]);
        assert!(out.status.success(), "pgbench -i: {:?}", out);
        for (i, space) in [None, Some("ts_a"), None].into_iter().enumerate() {
            let t = Table {
                db: "postgres".into(),
                name: format!("t{i}"),
                logged: true,
                space: space.map(str::to_string),
            };
            let rows = 2000 + d.rng.below(3000);
            d.create_table(&t, rows);
            d.tables.push(t);
        }
        d.src.sql("CREATE DATABASE tpl");
        let tt = Table {
            db: "tpl".into(),
            name: "tt".into(),
            logged: true,
            space: None,
        };
        d.create_table(&tt, 1500);
        d.tables.push(tt);
        d
    }

    fn psql(&self, db: &str, sql: &str) -> String {
        self.src.cluster.psql(db, sql)
    }

    fn create_table(&self, t: &Table, rows: usize) {
        let sql = format!("{}{}", table_ddl(t), fill(&t.name, 1, rows, self.counter));
        self.psql(&t.db, &sql);
    }

    fn pages(&self, t: &Table) -> String {
        self.psql(
            &t.db,
            &format!("SELECT pg_relation_size('{}') / 8192", t.name),
        )
    }

    // ----------------------------------------------------------------------------------
    // Load

    fn pgbench_backends(&self) -> usize {
        self.src
            .sql("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgbench'")
            .parse()
            .unwrap()
    }

    fn wait_for(&self, what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !done() {
            if Instant::now() > deadline {
                self.fail(format!("timed out waiting for {what}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// pgbench in the background (throttled: the machine is shared), running once its
    /// clients are connected.
    fn start_load(&mut self) {
        assert!(self.load.is_none());
        let log = fs::File::create(self.src.cluster.dir.join("pgbench.log")).unwrap();
        let child = pg_command(
            &client_bin("pgbench"),
            &["-n", "-c", "2", "-T", "3600", "-R", "40"],
            &self.src.cluster.env(),
        )
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
        self.load = Some(child);
        self.wait_for("pgbench to connect", || self.pgbench_backends() == 2);
    }

    /// Stops pgbench and waits until its sessions are gone: nothing writes afterwards.
    fn stop_load(&mut self) {
        let mut load = self.load.take().expect("load running");
        if let Some(status) = load.try_wait().unwrap() {
            let log = fs::read_to_string(self.src.cluster.dir.join("pgbench.log"));
            self.fail(format!(
                "pgbench stopped by itself ({status}): {}",
                log.unwrap_or_default()
            ));
        }
        terminate(&mut load, Duration::from_secs(10));
        self.wait_for("pgbench's sessions to end", || self.pgbench_backends() == 0);
    }

    // ----------------------------------------------------------------------------------
    // Steps

    fn pick_table(&mut self, pred: impl Fn(&Table) -> bool) -> Option<usize> {
        let fit: Vec<usize> = (0..self.tables.len())
            .filter(|&i| pred(&self.tables[i]))
            .collect();
        if fit.is_empty() {
            None
        } else {
            Some(fit[self.rng.below(fit.len())])
        }
    }

    /// A step of `kind`, or of a random kind; returns false when the kind had nothing to
    /// act on.
    fn step(&mut self, interval: usize, kind: Option<&str>) -> bool {
        let kind = kind.unwrap_or_else(|| {
            let total: usize = KINDS.iter().map(|k| k.1).sum();
            let mut n = self.rng.below(total);
            KINDS
                .iter()
                .find(|k| {
                    if n < k.1 {
                        true
                    } else {
                        n -= k.1;
                        false
                    }
                })
                .unwrap()
                .0
        });
        let salt = self.rng.below(1000);
        let step = match kind {
            "create-database" if self.dbs.len() < 3 => self.create_database(),
            "drop-database" | "move-database" if !self.dbs.is_empty() => {
                let i = self.rng.below(self.dbs.len());
                if kind == "drop-database" {
                    self.drop_database(i)
                } else {
                    self.move_database(i)
                }
            }
            "create-database" | "drop-database" | "move-database" => return false,
            "checkpoint" => {
                self.src.sql("CHECKPOINT");
                "CHECKPOINT".to_string()
            }
            _ => {
                let only_postgres = kind == "set-tablespace";
                let Some(i) = self.pick_table(|t| !only_postgres || t.db == "postgres") else {
                    return false;
                };
                self.table_step(kind, i, salt)
            }
        };
        self.log(format!("[{interval}] {step}"));
        true
    }

    fn table_step(&mut self, kind: &str, i: usize, salt: usize) -> String {
        let t = self.tables[i].clone();
        let n = &t.name;
        let sql = match kind {
            "update-hot" => format!(
                "UPDATE {n} SET v = md5(v || '{salt}') WHERE id % {} = {}",
                7 + salt % 13,
                salt % 7
            ),
            "update-non-hot" => format!(
                "UPDATE {n} SET k = k + 1, tags = tags || {salt} WHERE id BETWEEN {} AND {}",
                salt * 3,
                salt * 3 + 40 + salt % 300
            ),
            "insert" => format!(
                "INSERT INTO {n} SELECT m + g, g % 89, md5((g * {salt})::text), ARRAY[g % 11, {salt}] \
                 FROM (SELECT coalesce(max(id), 0) AS m FROM {n}) s, generate_series(1, {}) g",
                100 + salt * 2
            ),
            "delete" => format!("DELETE FROM {n} WHERE id % {} = {}", 5 + salt % 11, salt % 5),
            "vacuum-truncate" => {
                // The physical tail: rows moved by updates are anywhere.
                let before = self.pages(&t);
                let keep = before.parse::<usize>().unwrap() * (30 + salt % 50) / 100;
                self.psql(
                    &t.db,
                    &format!("DELETE FROM {n} WHERE ctid >= '({keep},0)'::tid; VACUUM {n}"),
                );
                return format!(
                    "{}.{n}: delete the tail, VACUUM (pages {before} -> {})",
                    t.db,
                    self.pages(&t)
                );
            }
            "truncate" => format!("TRUNCATE {n}; {}", fill(n, 1, 200 + salt, salt as u32)),
            "vacuum-full" => format!("VACUUM FULL {n}"),
            "cluster" => format!("CLUSTER {n} USING {n}_k"),
            "reindex" => format!("REINDEX TABLE {n}"),
            "set-tablespace" => {
                let to = match &t.space {
                    None => SPACES[salt % 2].to_string(),
                    Some(s) if salt.is_multiple_of(2) => SPACES.iter().find(|x| *x != s).unwrap().to_string(),
                    Some(_) => "pg_default".to_string(),
                };
                self.tables[i].space = (to != "pg_default").then(|| to.clone());
                format!("ALTER TABLE {n} SET TABLESPACE {to}")
            }
            "set-logged-unlogged" => {
                self.tables[i].logged = !t.logged;
                format!(
                    "ALTER TABLE {n} SET {}",
                    if t.logged { "UNLOGGED" } else { "LOGGED" }
                )
            }
            "drop-recreate" => {
                let fresh = Table {
                    logged: true,
                    space: t.space.clone(),
                    ..t.clone()
                };
                self.tables[i] = fresh.clone();
                format!(
                    "DROP TABLE {n}; {}{}",
                    table_ddl(&fresh),
                    fill(n, 1, 500 + salt * 3, salt as u32)
                )
            }
            "vacuum-freeze" => format!("VACUUM (FREEZE) {n}"),
            other => unreachable!("{other}"),
        };
        self.psql(&t.db, &sql);
        format!("{}.{n}: {sql}", t.db)
    }

    fn create_database(&mut self) -> String {
        self.counter += 1;
        let name = format!("d{}", self.counter);
        let mut sql = format!("CREATE DATABASE {name} TEMPLATE tpl");
        if self.major >= 15 {
            sql += [" STRATEGY FILE_COPY", " STRATEGY WAL_LOG"][self.rng.below(2)];
        }
        let space = match self.rng.below(3) {
            0 => SPACES[self.rng.below(2)].to_string(),
            _ => "pg_default".to_string(),
        };
        sql += &format!(" TABLESPACE {space}");
        // A dropped database's OID again: the same paths, with the template's old page LSNs.
        let reuse = self.major >= 15 && !self.free_oids.is_empty() && self.rng.below(3) > 0;
        if reuse {
            let oid = self.free_oids.remove(0);
            sql += &format!(" OID = {oid}");
        }
        self.src.sql(&sql);
        let oid = self
            .src
            .sql(&format!(
                "SELECT oid FROM pg_database WHERE datname = '{name}'"
            ))
            .parse()
            .unwrap();
        let salt = self.rng.below(1000);
        let update = format!(
            "UPDATE tt SET v = md5(v || '{salt}') WHERE id % 10 = {}",
            salt % 10
        );
        self.psql(&name, &update);
        self.dbs.push(Db {
            name: name.clone(),
            oid,
            space,
        });
        self.tables.push(Table {
            db: name.clone(),
            name: "tt".into(),
            logged: true,
            space: None,
        });
        format!("{sql} (oid {oid}); {name}: {update}")
    }

    fn drop_database(&mut self, i: usize) -> String {
        let db = self.dbs.remove(i);
        self.tables.retain(|t| t.db != db.name);
        let sql = format!("DROP DATABASE {} WITH (FORCE)", db.name);
        self.src.sql(&sql);
        self.free_oids.push(db.oid);
        format!("{sql} (oid {})", db.oid)
    }

    fn move_database(&mut self, i: usize) -> String {
        let choices: Vec<&str> = ["pg_default", SPACES[0], SPACES[1]]
            .into_iter()
            .filter(|s| *s != self.dbs[i].space)
            .collect();
        let to = choices[self.rng.below(choices.len())].to_string();
        let sql = format!("ALTER DATABASE {} SET TABLESPACE {to}", self.dbs[i].name);
        self.src.sql(&sql);
        self.dbs[i].space = to;
        sql
    }

    /// wal_level = minimal for a while (archiving off: the archive has a gap), with a table
    /// created and filled by COPY in one transaction (its pages skip WAL), then back.
    fn minimal_period(&mut self, interval: usize) {
        let c = &self.src.cluster;
        c.stop();
        c.append_conf(&[
            "wal_level = minimal",
            "archive_mode = off",
            "max_wal_senders = 0",
            // Skipped relations are synced at commit, never logged at commit.
            "wal_skip_threshold = 0",
        ]);
        c.start();
        self.log(format!("[{interval}] restart with wal_level = minimal"));
        self.counter += 1;
        let t = Table {
            db: "postgres".into(),
            name: format!("m{}", self.counter),
            logged: true,
            space: None,
        };
        let rows: String = (1..=3000)
            .map(|i| format!("{i}\t{}\tcopied-{i}\t{{{},{}}}\n", i % 83, i % 10, i % 7))
            .collect();
        let sql = format!(
            "BEGIN;\n{}COPY {} FROM STDIN;\n{rows}\\.\nCOMMIT;\n",
            table_ddl(&t),
            t.name
        );
        self.psql("postgres", &sql);
        self.tables.push(t.clone());
        self.log(format!(
            "[{interval}] BEGIN; CREATE TABLE {} ...; COPY 3000 rows; COMMIT",
            t.name
        ));
        self.start_load();
        for _ in 0..2 {
            while !self.step(interval, None) {}
        }
        self.stop_load();
        let c = &self.src.cluster;
        c.stop();
        c.append_conf(&[
            "wal_level = replica",
            "archive_mode = on",
            "max_wal_senders = 10",
        ]);
        c.start();
        self.log(format!("[{interval}] restart with wal_level = replica"));
    }

    /// The newest backup restored to its end and promoted: a new timeline, archiving into
    /// the same stanza, becomes the source. The old primary writes on and archives more WAL
    /// of the old timeline past the switch point (what a map combiner must not follow),
    /// then stops.
    fn promote_newest_backup(&mut self, interval: usize) {
        let taken = self.taken.last().expect("a backup to promote");
        let label = taken.label.clone();
        let mut args = vec![
            "--set".to_string(),
            label.clone(),
            "--target".into(),
            "immediate".into(),
            "--target-action".into(),
            "promote".into(),
        ];
        for oid in &taken.spaces {
            let dir = work_dir(&format!("{}-tl2-ts{oid}", self.name));
            args.extend([
                "--tablespace-map".into(),
                format!("{oid}={}", dir.display()),
            ]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let promoted =
            self.src
                .restore_and_start_archiving(&format!("{}-tl2", self.name), &args, true);
        let timeline = promoted.psql(
            "postgres",
            "SELECT timeline_id FROM pg_control_checkpoint()",
        );
        let next = Source {
            cluster: promoted,
            repo: self.src.repo.clone(),
            url: self.src.url.clone(),
            stanza: self.src.stanza.clone(),
            extra: self.src.extra.clone(),
        };
        let old = std::mem::replace(&mut self.src, next);
        self.log(format!(
            "[{interval}] restore {label} to its end and promote: timeline {timeline}"
        ));
        old.sql("UPDATE t0 SET v = 'old timeline' WHERE id % 3 = 0; CHECKPOINT");
        old.archive_current_wal();
        old.cluster.stop();
        self.log(format!(
            "[{interval}] the old primary updates t0 on its old timeline, archives it, stops"
        ));
    }

    /// The source itself becomes a standby of the archive and is promoted: a new timeline
    /// on the same files (their birth times predate the reference, so the next incremental
    /// follows the maps across the switch instead of copying files a restore created).
    fn promote_in_place(&mut self, interval: usize) {
        // A restored copy keeps its restore's recovery target (postgresql.auto.conf), which
        // this recovery would never reach.
        self.src.sql(
            "ALTER SYSTEM RESET recovery_target; ALTER SYSTEM RESET recovery_target_name; \
             ALTER SYSTEM RESET recovery_target_time; ALTER SYSTEM RESET recovery_target_xid; \
             ALTER SYSTEM RESET recovery_target_lsn; ALTER SYSTEM RESET recovery_target_action",
        );
        let c = &self.src.cluster;
        c.stop();
        let signal = c.data.join("standby.signal");
        fs::write(&signal, "").unwrap();
        chown_pg(&signal);
        let restore_command = format!(
            "{} {} --repo {} --stanza {} archive-get %f \"%p\"",
            pgward_bin().display(),
            self.src.extra.join(" "),
            self.src.url,
            self.src.stanza
        );
        c.append_conf(&[format!(
            "restore_command = {}",
            conf_quote(&restore_command)
        )]);
        c.start();
        let data = c.data.display().to_string();
        let out = run_as_pg(
            &c.bin.join("pg_ctl"),
            &["-D", &data, "-w", "-t", "120", "promote"],
            &[],
        );
        if !out.status.success()
            || c.wait_for_recovery_end(Duration::from_secs(120)) != RecoveryEnd::Promoted
        {
            self.fail(format!(
                "promotion in place failed: {}{}\n--- server log ---\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                c.log_tail(40)
            ));
        }
        let timeline = self
            .src
            .sql("SELECT timeline_id FROM pg_control_checkpoint()");
        self.log(format!(
            "[{interval}] stop, start as a standby of the archive, promote in place: timeline {timeline}"
        ));
    }

    // ----------------------------------------------------------------------------------
    // Backups and their restores

    fn backup(&mut self, i: usize, kind: &str) {
        self.stop_load();
        let expected = all_databases_checksum(&self.src.cluster);
        let spaces: Vec<u32> = self
            .src
            .sql("SELECT oid FROM pg_tablespace WHERE spcname NOT LIKE 'pg\\_%' ORDER BY oid")
            .lines()
            .map(|l| l.parse().unwrap())
            .collect();
        let mut args = vec!["--type", kind];
        if self.map_check {
            args.extend(["--block-map-check", "all"]);
        }
        let label = self.src.backup(&args);
        self.log(format!("[{i}] backup {label} --type {kind}"));
        self.start_load();

        let info = self.src.info_json();
        let entry = info["backups"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["label"] == label.as_str())
            .cloned()
            .unwrap();
        if entry["type"] != kind {
            self.fail(format!(
                "backup {i} is {} instead of {kind}: {entry}",
                entry["type"]
            ));
        }
        self.check_cross_check(&label, &entry);
        self.taken.push(Taken {
            label,
            expected,
            spaces,
        });
        self.join_check();
        let restorer = Restorer {
            name: format!("{}-r{i}", self.name),
            major: self.major,
            pgward_args: [
                &self.src.extra[..],
                &[
                    "--repo".into(),
                    self.src.url.clone(),
                    "--stanza".into(),
                    self.src.stanza.clone(),
                ],
            ]
            .concat(),
            started: self.started,
        };
        let taken = self.taken[i].clone();
        self.checking = Some((i, std::thread::spawn(move || restorer.check(i, &taken))));
    }

    /// Waits for the running restore check; fails the drill if it failed.
    fn join_check(&mut self) {
        let Some((i, check)) = self.checking.take() else {
            return;
        };
        let label = self.taken[i].label.clone();
        match check.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => self.fail(format!("backup {i} ({label}): {e}")),
            Err(panic) => {
                let e = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                self.fail(format!("restoring backup {i} ({label}): {e}"))
            }
        }
    }

    /// With `--block-map-check all`, the backup must report no block the maps missed. The
    /// report's names are looked up loosely (any key naming a miss, at any depth), so that
    /// the drill runs before and after the report's shape settles; what it finds is logged.
    fn check_cross_check(&mut self, label: &str, entry: &Value) {
        let mut misses = Vec::new();
        keys_where(
            entry,
            "",
            &|k| k.contains("miss") && !k.contains("missing"),
            &mut misses,
        );
        let mut checked = Vec::new();
        keys_where(entry, "", &|k| k.contains("map_check"), &mut checked);
        let mut mapped = Vec::new();
        keys_where(entry, "", &|k| k == "files_mapped", &mut mapped);
        for (_, n) in &mapped {
            *self.files_mapped.get_or_insert(0) += n.as_u64().unwrap_or(0);
        }
        if let Some(reads) = entry.get("reads") {
            self.log(format!("backup {label} reads: {reads}"));
        }
        if !self.map_check {
            return;
        }
        if misses.is_empty() && checked.is_empty() {
            eprintln!("drill: NOTE info --output json of {label} names no block-map cross-check: no miss asserted");
        }
        for (key, value) in misses {
            let none = match &value {
                Value::Null | Value::Bool(false) => true,
                Value::Number(n) => n.as_f64() == Some(0.0),
                Value::Array(a) => a.is_empty(),
                Value::Object(o) => o.is_empty(),
                Value::String(s) => s.is_empty(),
                Value::Bool(true) => false,
            };
            if !none {
                self.fail(format!(
                    "backup {label}: the block-map cross-check found blocks the maps missed ({key} = {value})"
                ));
            }
        }
    }
}

/// What a restore check needs, apart from the drill (it runs in a thread of its own).
struct Restorer {
    name: String,
    major: u32,
    /// --repo, --stanza and the source's extra options.
    pgward_args: Vec<String>,
    started: Instant,
}

impl Restorer {
    /// Restores backup `i` to its end into a fresh directory (tablespaces into fresh ones),
    /// starts it beside the source and compares it with what the source held then; checks
    /// indexes against heaps and every page checksum. Harness failures panic.
    fn check(&self, i: usize, taken: &Taken) -> Result<(), String> {
        let name = &self.name;
        let data = work_dir(&format!("{name}-pgdata")).join("data");
        let mut args: Vec<String> = self.pgward_args.clone();
        args.extend(
            [
                "restore",
                "--pgdata",
                &data.display().to_string(),
                "--archive-mode",
                "off",
                "--set",
                &taken.label,
                "--target",
                "immediate",
                "--target-action",
                "promote",
            ]
            .map(String::from),
        );
        let mut dirs = vec![data.parent().unwrap().to_path_buf()];
        for oid in &taken.spaces {
            let dir = work_dir(&format!("{name}-ts{oid}"));
            args.extend([
                "--tablespace-map".into(),
                format!("{oid}={}", dir.display()),
            ]);
            dirs.push(dir);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        assert_success(&pgward(&args, &[]), "pgward restore");
        let restored = Cluster::from_existing(name, self.major, data);
        restored.start();
        let end = restored.wait_for_recovery_end(Duration::from_secs(120));
        if end != RecoveryEnd::Promoted {
            return Err(format!(
                "the restored cluster did not promote:\n{}",
                restored.log_tail(30)
            ));
        }

        let got = all_databases_checksum(&restored);
        if got != taken.expected {
            let diff: Vec<String> = got
                .lines()
                .zip(taken.expected.lines())
                .filter(|(g, e)| g != e)
                .map(|(g, e)| format!("restored {g}\n    source   {e}"))
                .collect();
            return Err(format!(
                "restored other contents:\n    {}\n(all restored:\n{got}\nall source:\n{})",
                diff.join("\n    "),
                taken.expected
            ));
        }
        amcheck(&restored)?;
        restored.stop();
        checksums(&restored)?;
        drop(restored);
        for d in dirs {
            let _ = fs::remove_dir_all(d);
        }
        eprintln!(
            "drill {:>5.1}s: backup {i} ({}) restored exactly",
            self.started.elapsed().as_secs_f64(),
            taken.label
        );
        Ok(())
    }
}

fn table_ddl(t: &Table) -> String {
    let n = &t.name;
    format!(
        "CREATE {}TABLE {n} (id int PRIMARY KEY, k int, v text, tags int[]) WITH (fillfactor = 70){};
         CREATE INDEX {n}_k ON {n} (k);
         CREATE INDEX {n}_h ON {n} USING hash (k);
         CREATE INDEX {n}_g ON {n} USING gin (tags);\n",
        if t.logged { "" } else { "UNLOGGED " },
        t.space
            .as_ref()
            .map(|s| format!(" TABLESPACE {s}"))
            .unwrap_or_default()
    )
}

/// Rows `from..from + count`; every 50th has a value long enough to be TOASTed.
fn fill(name: &str, from: usize, count: usize, salt: u32) -> String {
    format!(
        "INSERT INTO {name} SELECT g, g % 97, \
         CASE WHEN g % 50 = 0 THEN (SELECT string_agg(md5((g * i + {salt})::text), '') FROM generate_series(1, 150) i) \
         ELSE md5((g + {salt})::text) END, ARRAY[g % 10, (g + {salt}) % 13] \
         FROM generate_series({from}, {}) g;\n",
        from + count - 1
    )
}

/// One line per database that accepts connections: its name, the md5 of every row of
/// every permanent table (`Cluster::content_checksum`) and the md5 of its relation list
/// (oid, name, relfilenumber, tablespace, persistence): a restore is a physical copy, so
/// even the catalogs must agree.
fn all_databases_checksum(c: &Cluster) -> String {
    let dbs = c.psql(
        "postgres",
        "SELECT datname FROM pg_database WHERE datallowconn ORDER BY datname COLLATE \"C\"",
    );
    dbs.lines()
        .map(|db| {
            let catalog = c.psql(
                db,
                "SELECT md5(string_agg(format('%s:%s:%s:%s:%s', oid, relname, relfilenode, reltablespace, relpersistence), ',' ORDER BY oid)) FROM pg_class",
            );
            format!("{db}: rows {} relations {catalog}", c.content_checksum(db))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// pg_amcheck --heapallindexed over every database (13 has no verify_heapam: its btree
/// indexes are checked against their heaps with bt_index_check).
fn amcheck(c: &Cluster) -> Result<(), String> {
    if c.major < 14 {
        for db in c
            .psql(
                "postgres",
                "SELECT datname FROM pg_database WHERE datallowconn",
            )
            .lines()
        {
            c.try_psql(
                db,
                "CREATE EXTENSION IF NOT EXISTS amcheck; \
                 SELECT count(bt_index_check(i.oid, true)) FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid \
                 JOIN pg_am a ON a.oid = i.relam WHERE a.amname = 'btree' AND i.relpersistence <> 't' AND x.indisvalid",
            )
            .map_err(|e| format!("bt_index_check in {db}: {e}"))?;
        }
        return Ok(());
    }
    let own = c.bin.join("pg_amcheck");
    let bin = if own.is_file() {
        own
    } else {
        client_bin("pg_amcheck")
    };
    let port = c.port.to_string();
    let sock = c.socket_dir.display().to_string();
    let out = run_as_pg(
        &bin,
        &[
            "--heapallindexed",
            "--all",
            "--install-missing",
            "-h",
            &sock,
            "-p",
            &port,
            "-U",
            "postgres",
        ],
        &[],
    );
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "pg_amcheck --heapallindexed --all failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// pg_checksums --check on the stopped cluster (the server's own: another major's looks
/// for its own tablespace subdirectory; 13's build has none, skipped with a note).
fn checksums(c: &Cluster) -> Result<(), String> {
    let own = c.bin.join("pg_checksums");
    let bin: PathBuf = if own.is_file() {
        own
    } else if c.major == CLIENT_MAJOR {
        client_bin("pg_checksums")
    } else {
        eprintln!(
            "drill: NOTE no pg_checksums of PostgreSQL {}: page checksums not checked",
            c.major
        );
        return Ok(());
    };
    let data = c.data.display().to_string();
    let out = run_as_pg(&bin, &["--check", "-D", &data], &[]);
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "pg_checksums --check failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// (path, value) of every key of `v`, at any depth, whose lowercase name satisfies `pred`.
fn keys_where(v: &Value, path: &str, pred: &dyn Fn(&str) -> bool, out: &mut Vec<(String, Value)>) {
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                let p = format!("{path}.{k}");
                if pred(&k.to_lowercase()) {
                    out.push((p.clone(), v.clone()));
                }
                keys_where(v, &p, pred, out);
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                keys_where(v, &format!("{path}[{i}]"), pred, out);
            }
        }
        _ => {}
    }
}

/// One drill: a full, then `backups - 1` incrementals (one of them a differential) with
/// random steps between them, a wal_level=minimal period before one and a promotion
/// before another (never the same).
fn drill(name: &str, major: u32, seed: u64, backups: usize, replay: &str) {
    assert!(backups >= 4);
    let mut d = Drill::start(name, major, seed, replay);
    let mut kinds = vec!["incr"; backups];
    kinds[0] = "full";
    let diff = 2 + d.rng.below(backups - 2);
    kinds[diff] = "diff";
    // Three different intervals: a wal_level=minimal period, a promotion of a restored
    // copy, a promotion in place.
    let mut slots: Vec<usize> = (1..backups).collect();
    for i in (1..slots.len()).rev() {
        let j = d.rng.below(i + 1);
        slots.swap(i, j);
    }
    let (minimal, promote, in_place) = (slots[0], slots[1], slots[2]);
    d.log(format!(
        "plan: {kinds:?}; before backup {minimal} wal_level=minimal, before {promote} a restored \
         copy promoted, before {in_place} a promotion in place"
    ));
    let mut deck: Vec<&str> = KINDS.iter().map(|k| k.0).collect();
    for i in (1..deck.len()).rev() {
        let j = d.rng.below(i + 1);
        deck.swap(i, j);
    }
    d.start_load();
    for (i, kind) in kinds.iter().enumerate() {
        if i == promote {
            d.stop_load();
            d.promote_newest_backup(i);
            d.start_load();
        }
        if i == in_place {
            d.stop_load();
            d.promote_in_place(i);
            d.start_load();
        }
        if i == minimal {
            d.stop_load();
            d.minimal_period(i);
            d.start_load();
        }
        // Deal the deck over the intervals after the full, plus a random step in each.
        let mut todo: Vec<&str> = if i == 0 {
            Vec::new()
        } else {
            let quota = deck.len().div_ceil(backups - i);
            deck.split_off(deck.len() - quota)
        };
        while let Some(kind) = todo.pop() {
            if !d.step(i, Some(kind)) {
                // Nothing to drop or move yet, or no room for another database.
                let enabler = if kind == "create-database" {
                    "drop-database"
                } else {
                    "create-database"
                };
                assert!(d.step(i, Some(enabler)));
                assert!(d.step(i, Some(kind)), "{kind} after {enabler}");
            }
        }
        while !d.step(i, None) {}
        d.backup(i, kind);
    }
    d.join_check();
    d.stop_load();
    // Once incrementals read through the maps, a drill in which none did proved nothing
    // about them.
    if d.files_mapped == Some(0) {
        d.fail("no incremental read any file through the block maps".into());
    }
    d.src.ok(&["verify"]);
    eprintln!("map drill {name}: seed {seed} passed, {} backups", backups);
}

#[test]
fn map_drill_random_workload_every_incremental_restores_exactly_on_postgres_15() {
    let seed = drill_seed();
    let replay = format!("PGWARD_DRILL_SEED={seed} cargo test --test it map_drill_random_workload");
    drill("mapdrill", 15, seed, 6, &replay);
}

#[test]
#[ignore = "second tier: PGWARD_DRILL_SEEDS seeds (default 3) on every installed major, or those in PGWARD_DRILL_MAJORS"]
fn map_drill_several_seeds_on_postgres_13_to_18() {
    let seeds: usize = std::env::var("PGWARD_DRILL_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let required = std::env::var("PGWARD_REQUIRE_VERSIONS").unwrap_or_default();
    let only = std::env::var("PGWARD_DRILL_MAJORS").unwrap_or_default();
    let first = drill_seed();
    for major in [13, 14, 15, 16, 17, 18] {
        if !only.is_empty() && !only.split(',').any(|v| v.trim() == major.to_string()) {
            continue;
        }
        if pg_bin(major).is_none() {
            assert!(
                !required.split(',').any(|v| v.trim() == major.to_string()),
                "PostgreSQL {major} is required but not installed"
            );
            eprintln!("map drill: PostgreSQL {major} not installed, skipped");
            continue;
        }
        let mut rng = Rng(first | 1);
        for n in 0..seeds {
            let seed = if n == 0 {
                first
            } else {
                rng.next() % 1_000_000_007
            };
            let replay = format!("PGWARD_DRILL_SEED={seed} PGWARD_DRILL_SEEDS=1 PGWARD_DRILL_MAJORS={major} cargo test --test it map_drill_several -- --ignored");
            drill(&format!("mapdrill{major}"), major, seed, 8, &replay);
        }
    }
}
