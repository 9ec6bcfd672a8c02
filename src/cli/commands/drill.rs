//! `drill`: restore a backup into scratch space, recover, check it, remove it.

use std::time::Duration;

use super::{pretty, Outcome, Report};
use crate::cli::args::DrillArgs;
use crate::cli::Resolved;
use crate::drill::{DrillOptions, DrillReport, DrillTarget};
use crate::error::Result;
use crate::units::human_bytes;

pub async fn run(resolved: &Resolved, args: DrillArgs) -> Result<Outcome> {
    let repo = resolved.repo().await?;
    let random = args.target.as_deref() == Some("random");
    let target = if random {
        DrillTarget::Random { seed: args.seed }
    } else {
        if args.seed.is_some() {
            return Err(crate::error::Error::config(
                "--seed goes with --target random",
            ));
        }
        DrillTarget::Restore(args.recovery.target(args.target.is_some())?)
    };
    if random {
        // Checked here too: the random draw does not go through `target`.
        args.recovery.target(false)?;
    }
    let r = &args.recovery;
    let target_text = [
        ("--target", args.target.as_ref().map(String::to_string)),
        ("--target-time", r.target_time.clone()),
        ("--target-xid", r.target_xid.map(|x| x.to_string())),
        ("--target-lsn", r.target_lsn.clone()),
        ("--target-name", r.target_name.clone()),
    ]
    .into_iter()
    .find_map(|(flag, value)| value.map(|v| format!("{flag} {v}")));
    let opts = DrillOptions {
        set: args.set,
        target,
        target_text,
        target_timeline: args.recovery.target_timeline,
        target_exclusive: args.recovery.target_exclusive,
        target_unchecked: args.recovery.target_unchecked,
        scratch: args.scratch,
        source_pgdata: resolved.global.pgdata.clone(),
        run_as: args.run_as,
        pg_bin: args.pg_bin,
        check_sql: args.check_sql,
        check_database: args.check_database,
        db_user: resolved.global.pg_user.clone(),
        keep: args.keep,
        timeout: Duration::from_secs(args.timeout),
        jobs: resolved.jobs(),
        restore_command: resolved.restore_command(&repo),
        // The copy's restore_command runs under the scratch server, which pgward starts:
        // a passphrase from the environment or command line reaches it there.
        server_env: resolved.background(&repo, &[]).env,
    };
    let plan = crate::drill::plan(&repo, opts).await?;
    let (report, failure) = plan.execute(&repo).await?;
    Ok(Outcome::report(report).then_fail(failure))
}

impl Report for DrillReport {
    fn text(&self) -> String {
        let r = &self.record;
        let mut s = format!(
            "drill of backup {} (stanza {}): {}\n",
            r.backup,
            self.stanza,
            if r.passed { "PASSED" } else { "FAILED" }
        );
        s.push_str(&format!(
            "  target: {}\n",
            r.target.as_deref().unwrap_or("the end of the archive")
        ));
        if let Some(random) = &self.random {
            s.push_str(&format!(
                "  random point {} drawn with seed {} from the window {} .. {} (timeline {})\n",
                random.lsn,
                random.seed,
                random.window_start_lsn,
                random.window_end_lsn,
                random.timeline
            ));
        }
        s.push_str(&format!("  restore: {:.1}s\n", r.restore_seconds));
        if r.reached_lsn.is_some() || r.recovery_seconds > 0.0 {
            s.push_str(&format!(
                "  recovery: {:.1}s, reached {}{}, WAL replayed {}\n",
                r.recovery_seconds,
                r.reached_lsn.as_deref().unwrap_or("?"),
                r.reached_time
                    .map(|t| format!(" (last commit {})", t.format("%Y-%m-%d %H:%M:%S%.3f UTC")))
                    .unwrap_or_default(),
                r.wal_replayed_bytes.map_or("?".into(), human_bytes)
            ));
        }
        for c in &r.checks {
            s.push_str(&format!(
                "  {} {}: {}\n",
                if c.passed { "ok  " } else { "FAIL" },
                c.name,
                c.detail.trim().replace('\n', "\n        ")
            ));
        }
        if let Some(e) = &r.error {
            s.push_str(&format!("  error: {e}\n"));
        }
        if self.kept {
            s.push_str(&format!(
                "  scratch directory kept: {}\n",
                self.scratch.display()
            ));
        }
        s
    }

    fn json(&self) -> Option<String> {
        pretty(self)
    }
}
