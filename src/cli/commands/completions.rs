//! `completions SHELL`: generated from the same clap definitions as `--help`.

use super::{Outcome, Report};
use crate::cli::args::Cli;

pub fn run(shell: clap_complete::Shell) -> Outcome {
    let mut cmd = without_hidden_commands(<Cli as clap::CommandFactory>::command());
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut cmd, "pgward", &mut script);
    Outcome::report(Script(String::from_utf8_lossy(&script).into_owned()))
}

/// The command without the subcommands hidden from `--help` (those pgward starts itself):
/// clap_complete's generators offer hidden subcommands, and clap has no way to remove
/// one, so the top level is rebuilt from everything else it has.
fn without_hidden_commands(full: clap::Command) -> clap::Command {
    clap::Command::new("pgward")
        .version(env!("CARGO_PKG_VERSION"))
        .args(full.get_arguments().cloned())
        .subcommands(full.get_subcommands().filter(|c| !c.is_hide_set()).cloned())
}

struct Script(String);

impl Report for Script {
    fn text(&self) -> String {
        self.0.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_shell_is_offered_the_internal_commands() {
        for shell in [
            clap_complete::Shell::Bash,
            clap_complete::Shell::Zsh,
            clap_complete::Shell::Fish,
        ] {
            let script = run(shell).report.expect("a script").text();
            for internal in ["archive-push-worker", "archive-get-prefetch"] {
                assert!(!script.contains(internal), "{shell}: offers {internal}");
            }
            for command in [
                "restore",
                "archive-get",
                "stanza-create",
                "wal",
                "log-level",
            ] {
                assert!(script.contains(command), "{shell}: lacks {command}");
            }
        }
    }
}
