//! The Prometheus text exposition format (version 0.0.4, which node_exporter's textfile
//! collector reads and every Prometheus scrapes): one `# HELP` and `# TYPE` per metric
//! family, then its samples for every stanza. Names follow Prometheus conventions: the
//! `pgward_` prefix, base units in the name (`_seconds`, `_bytes`), `_total` on counters,
//! timestamps as seconds since the epoch; labels `stanza`, `timeline`, `type`.

use std::fmt::Write as _;

use chrono::{DateTime, Utc};

use super::StanzaMetrics;

/// The HTTP content type of [`render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// One stanza's outcome: its metrics, or the stanza that could not be read (`pgward_up`
/// 0; the caller logs why).
pub enum Collected {
    Read(Box<StanzaMetrics>),
    Unreadable { stanza: String },
}

#[derive(Clone, Copy)]
enum Kind {
    Gauge,
    Counter,
}

struct Family {
    name: &'static str,
    kind: Kind,
    help: &'static str,
    samples: Vec<(Vec<(&'static str, String)>, f64)>,
}

/// Families in the order they are first named; each gathers every stanza's samples.
#[derive(Default)]
struct Families(Vec<Family>);

impl Families {
    fn add(
        &mut self,
        name: &'static str,
        kind: Kind,
        help: &'static str,
        labels: Vec<(&'static str, String)>,
        value: f64,
    ) {
        let family = match self.0.iter().position(|f| f.name == name) {
            Some(i) => &mut self.0[i],
            None => {
                self.0.push(Family {
                    name,
                    kind,
                    help,
                    samples: Vec::new(),
                });
                self.0.last_mut().expect("just pushed")
            }
        };
        family.samples.push((labels, value));
    }

    fn gauge(
        &mut self,
        name: &'static str,
        help: &'static str,
        labels: Vec<(&'static str, String)>,
        value: f64,
    ) {
        self.add(name, Kind::Gauge, help, labels, value)
    }

    fn counter(
        &mut self,
        name: &'static str,
        help: &'static str,
        labels: Vec<(&'static str, String)>,
        value: f64,
    ) {
        self.add(name, Kind::Counter, help, labels, value)
    }

    fn render(&self) -> String {
        let mut out = String::new();
        for f in &self.0 {
            let kind = match f.kind {
                Kind::Gauge => "gauge",
                Kind::Counter => "counter",
            };
            let _ = writeln!(out, "# HELP {} {}", f.name, f.help);
            let _ = writeln!(out, "# TYPE {} {kind}", f.name);
            for (labels, value) in &f.samples {
                out.push_str(f.name);
                if !labels.is_empty() {
                    let pairs: Vec<String> = labels
                        .iter()
                        .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
                        .collect();
                    let _ = write!(out, "{{{}}}", pairs.join(","));
                }
                let _ = writeln!(out, " {value}");
            }
        }
        out
    }
}

/// A label value as the format quotes it.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn epoch(t: DateTime<Utc>) -> f64 {
    t.timestamp_millis() as f64 / 1000.0
}

/// The exposition of every stanza collected.
pub fn render(stanzas: &[Collected]) -> String {
    let mut f = Families::default();
    for collected in stanzas {
        match collected {
            Collected::Unreadable { stanza } => f.gauge(
                "pgward_up",
                "1 when the stanza's metadata was read; 0 when it could not be (pgward logs why)",
                vec![("stanza", stanza.clone())],
                0.0,
            ),
            Collected::Read(m) => stanza_families(&mut f, m),
        }
    }
    f.render()
}

fn stanza_families(f: &mut Families, m: &StanzaMetrics) {
    let stanza = || vec![("stanza", m.stanza.clone())];
    let with = |k: &'static str, v: String| vec![("stanza", m.stanza.clone()), (k, v)];
    f.gauge(
        "pgward_up",
        "1 when the stanza's metadata was read; 0 when it could not be (pgward logs why)",
        stanza(),
        1.0,
    );
    f.gauge(
        "pgward_backups",
        "Backups in the stanza whose manifest reads and checks",
        stanza(),
        m.backups as f64,
    );
    f.gauge(
        "pgward_backups_damaged",
        "Backups whose manifest is damaged: listed, never restored (pgward verify says more)",
        stanza(),
        m.damaged_backups as f64,
    );
    f.gauge(
        "pgward_records_damaged",
        "Records of the last verify or drill that do not read: their metrics are absent until the next run",
        stanza(),
        m.damaged_records.len() as f64,
    );
    for b in &m.newest {
        let labels = || with("type", b.backup_type.to_string());
        f.gauge(
            "pgward_backup_last_completion_timestamp_seconds",
            "When the newest backup of each type ended",
            labels(),
            epoch(b.stop_time),
        );
        f.gauge(
            "pgward_backup_last_duration_seconds",
            "How long the newest backup of each type took",
            labels(),
            b.duration_seconds,
        );
        f.gauge(
            "pgward_backup_last_database_size_bytes",
            "Size of the cluster as the newest backup of each type copied it",
            labels(),
            b.database_size as f64,
        );
        f.gauge(
            "pgward_backup_last_stored_bytes",
            "Bytes the newest backup of each type added to the repository",
            labels(),
            b.stored_size as f64,
        );
    }
    for t in &m.archive {
        let labels = || with("timeline", t.timeline.0.to_string());
        f.gauge(
            "pgward_archive_segments",
            "Complete WAL segments archived on each timeline",
            labels(),
            t.segments as f64,
        );
        f.gauge(
            "pgward_archive_gaps",
            "Ranges of missing segments between the first and newest archived on each timeline",
            labels(),
            t.gaps as f64,
        );
        f.gauge(
            "pgward_archive_stored_bytes",
            "Bytes of archived WAL on each timeline, as stored",
            labels(),
            t.stored_bytes as f64,
        );
        f.gauge(
            "pgward_archive_newest_position_bytes",
            "WAL position (LSN as a byte offset) at the end of the newest archived segment",
            labels(),
            t.newest_end.0 as f64,
        );
        f.gauge(
            "pgward_archive_newest_timestamp_seconds",
            "When the newest segment on each timeline was archived",
            labels(),
            epoch(t.newest_archived),
        );
    }
    if let Some(lag) = &m.lag {
        let labels = || with("timeline", lag.timeline.0.to_string());
        f.gauge(
            "pgward_archive_lag_bytes",
            "WAL the server wrote that is not archived yet (the segment being filled included); only while the server answers",
            labels(),
            lag.bytes as f64,
        );
        f.gauge(
            "pgward_archive_lag_seconds",
            "Time since the newest segment was archived while complete segments wait; 0 when none waits",
            labels(),
            lag.seconds,
        );
    }
    if let Some(failures) = m.archive_command_failures {
        f.counter(
            "pgward_archive_command_failures_total",
            "Failed archive_command runs the server counted (pg_stat_archiver.failed_count)",
            stanza(),
            failures as f64,
        );
    }
    if let Some(spool) = &m.spool {
        f.gauge(
            "pgward_spool_queued_files",
            "WAL files waiting in the archive-push --async spool",
            stanza(),
            spool.queued as f64,
        );
        f.counter(
            "pgward_spool_push_failures_total",
            "Background pushes from the archive-push --async spool that failed (each retry counts)",
            stanza(),
            spool.push_failures as f64,
        );
        if let Some(at) = spool.last_failure {
            f.gauge(
                "pgward_spool_last_failure_timestamp_seconds",
                "When a background push from the spool last failed",
                stanza(),
                epoch(at),
            );
        }
    }
    for w in &m.windows {
        let labels = || with("timeline", w.timeline.0.to_string());
        if let Some(from) = w.from_time {
            f.gauge(
                "pgward_recoverable_window_start_timestamp_seconds",
                "Earliest time point-in-time recovery reaches on each timeline (the end of its first restorable backup)",
                labels(),
                epoch(from),
            );
        }
        f.gauge(
            "pgward_recoverable_window_end_timestamp_seconds",
            "Latest time point-in-time recovery reaches at least on each timeline (when its newest gap-free WAL was archived)",
            labels(),
            epoch(w.to_archived_time),
        );
    }
    if let Some(w) = &m.window {
        f.gauge(
            "pgward_recoverable_window_seconds",
            "Length of the recoverable window: from the end of the oldest restorable backup to the newest WAL reachable from the newest one",
            stanza(),
            (epoch(w.latest_archived_time) - epoch(w.earliest_time)).max(0.0),
        );
    }
    f.gauge(
        "pgward_repository_stored_bytes",
        "Bytes the stanza occupies in the repository: bundles, manifests, records and archived WAL",
        stanza(),
        m.stored_bytes as f64,
    );
    if let Some(v) = &m.last_verify {
        f.gauge(
            "pgward_verify_last_timestamp_seconds",
            "When the last pgward verify ended",
            stanza(),
            epoch(v.time),
        );
        f.gauge(
            "pgward_verify_last_success",
            "1 when the last pgward verify found no problem",
            stanza(),
            if v.passed { 1.0 } else { 0.0 },
        );
        f.gauge(
            "pgward_verify_last_problems",
            "Problems the last pgward verify found",
            stanza(),
            v.problems as f64,
        );
        f.gauge(
            "pgward_verify_last_duration_seconds",
            "How long the last pgward verify took",
            stanza(),
            v.seconds,
        );
    }
    if let Some(d) = &m.last_drill {
        f.gauge(
            "pgward_drill_last_timestamp_seconds",
            "When the last pgward drill ended",
            stanza(),
            epoch(d.time),
        );
        f.gauge(
            "pgward_drill_last_success",
            "1 when the last pgward drill restored its backup and every check passed",
            stanza(),
            if d.passed { 1.0 } else { 0.0 },
        );
        f.gauge(
            "pgward_drill_last_restore_duration_seconds",
            "How long the last drill's restore took",
            stanza(),
            d.restore_seconds,
        );
        f.gauge(
            "pgward_drill_last_recovery_duration_seconds",
            "How long the last drill's recovery took",
            stanza(),
            d.recovery_seconds,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::records::VerifyRecord;

    fn empty(stanza: &str) -> StanzaMetrics {
        StanzaMetrics {
            stanza: stanza.into(),
            backups: 0,
            damaged_backups: 0,
            newest: Vec::new(),
            archive: Vec::new(),
            windows: Vec::new(),
            window: None,
            stored_bytes: 0,
            last_verify: None,
            last_drill: None,
            damaged_records: Vec::new(),
            lag: None,
            archive_command_failures: None,
            spool: None,
        }
    }

    #[test]
    fn each_family_is_described_once_with_every_stanzas_samples() {
        let mut a = empty("a");
        a.last_verify = Some(VerifyRecord {
            time: DateTime::from_timestamp(1_700_000_000, 500_000_000).unwrap(),
            passed: false,
            problems: 2,
            seconds: 1.5,
            backups: 1,
            wal_segments: 3,
        });
        let text = render(&[
            Collected::Read(Box::new(a)),
            Collected::Unreadable {
                stanza: "b\"\\\n".into(),
            },
        ]);
        assert_eq!(text.matches("# TYPE pgward_up gauge").count(), 1, "{text}");
        assert!(text.contains("pgward_up{stanza=\"a\"} 1\n"), "{text}");
        assert!(
            text.contains("pgward_up{stanza=\"b\\\"\\\\\\n\"} 0\n"),
            "{text}"
        );
        assert!(text.contains("pgward_verify_last_timestamp_seconds{stanza=\"a\"} 1700000000.5\n"));
        assert!(text.contains("pgward_verify_last_success{stanza=\"a\"} 0\n"));
        assert!(text.contains("pgward_verify_last_problems{stanza=\"a\"} 2\n"));
        // Nothing is said of what is not known: no drill, no lag, no spool.
        for absent in ["pgward_drill_", "pgward_archive_lag", "pgward_spool_"] {
            assert!(!text.contains(absent), "{absent} in {text}");
        }
    }
}
