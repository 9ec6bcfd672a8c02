//! `completions SHELL`: generated from the same clap definitions as `--help`.

use super::{Outcome, Report};
use crate::cli::args::Cli;

pub fn run(shell: clap_complete::Shell) -> Outcome {
    let mut cmd = <Cli as clap::CommandFactory>::command();
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut cmd, "pgward", &mut script);
    Outcome::report(Script(String::from_utf8_lossy(&script).into_owned()))
}

struct Script(String);

impl Report for Script {
    fn text(&self) -> String {
        self.0.clone()
    }
}
