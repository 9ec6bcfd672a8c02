//! A command line clap rejects becomes a configuration error like every other: printed
//! as `pgward: error [config]: ...` with a `HINT:`, and ending with the same exit code
//! (main maps it once, with archive-get's 126). clap's own status 2 would be one more
//! code for scripts to know, and to restore_command's contract a "not in the archive".

use std::ffi::OsString;

use clap::CommandFactory;

use super::args::Cli;
use crate::error::Error;

/// clap's complaint about `argv`: its message (one line), with its tips and usage line
/// and where the full help is in the hint. Only for errors clap prints to stderr;
/// `--help` and `--version` are not errors.
pub fn command_line_error(e: &clap::Error, argv: &[OsString]) -> Error {
    let help = std::iter::once("pgward")
        .chain(command_words(argv).iter().map(String::as_str))
        .chain(["--help"])
        .collect::<Vec<_>>()
        .join(" ");
    if e.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
        // `pgward`, `pgward pitr`: clap's message is the whole help.
        let what = help.trim_end_matches(" --help");
        return Error::config(format!("`{what}` needs a command"))
            .hint(format!("the commands are listed above and in `{help}`"));
    }
    let rendered = e.render().to_string();
    let mut message = Vec::new();
    let mut tips = Vec::new();
    let mut usage = None;
    for (i, section) in rendered.split("\n\n").enumerate() {
        let section = section.trim();
        if i == 0 {
            let first = section.strip_prefix("error: ").unwrap_or(section);
            message.extend(first.lines().map(str::trim));
        } else if let Some(u) = section.strip_prefix("Usage: ") {
            usage = Some(u.lines().next().unwrap_or(u).trim().to_string());
        } else if section.starts_with("tip: ") {
            tips.extend(
                section
                    .lines()
                    .filter_map(|l| l.trim().strip_prefix("tip: ")),
            );
        }
        // "For more information, try '--help'." is replaced by the hint's own pointer.
    }
    let mut hint: Vec<String> = tips.into_iter().map(str::to_string).collect();
    if let Some(usage) = usage {
        hint.push(format!("usage: {usage}"));
    }
    hint.push(format!("`{help}` describes every option"));
    Error::config(message.join(" ")).hint(hint.join("; "))
}

/// The subcommands `argv` names (`["pitr", "enable"]`), as far as clap's definitions
/// recognize them: option values are skipped, so `--stanza backup` is no command.
fn command_words(argv: &[OsString]) -> Vec<String> {
    let top = Cli::command();
    let mut current = &top;
    let mut words = Vec::new();
    let mut args = argv.iter().skip(1).map(|a| a.to_string_lossy());
    while let Some(arg) = args.next() {
        if arg == "--" {
            break;
        }
        if let Some(long) = arg.strip_prefix("--") {
            let takes_value = !long.contains('=')
                && current
                    .get_arguments()
                    .chain(top.get_arguments().filter(|a| a.is_global_set()))
                    .any(|a| a.get_long() == Some(long) && a.get_action().takes_values());
            if takes_value {
                args.next();
            }
            continue;
        }
        if arg.starts_with('-') {
            continue; // -h, -V: no values
        }
        match current.find_subcommand(arg.as_ref()) {
            Some(sub) => {
                words.push(sub.get_name().to_string());
                current = sub;
            }
            None => break,
        }
    }
    words
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    fn rejected(line: &str) -> Error {
        let argv: Vec<OsString> = line.split(' ').map(OsString::from).collect();
        let e = Cli::try_parse_from(&argv).expect_err(line);
        assert!(e.use_stderr(), "{line}: not an error");
        command_line_error(&e, &argv)
    }

    #[test]
    fn an_unknown_option_is_a_config_error_with_usage_and_the_command_help_in_the_hint() {
        let e = rejected("pgward --repo /r restore --bogus");
        assert_eq!(e.kind, crate::error::ErrorKind::Config);
        assert_eq!(e.message, "unexpected argument '--bogus' found");
        let hint = e.hint.unwrap();
        assert!(hint.contains("usage: pgward restore [OPTIONS]"), "{hint}");
        assert!(
            hint.ends_with("`pgward restore --help` describes every option"),
            "{hint}"
        );
    }

    #[test]
    fn a_message_over_several_lines_becomes_one_line() {
        let e = rejected("pgward --log-level loud info");
        assert_eq!(
            e.message,
            "invalid value 'loud' for '--log-level <LOG_LEVEL>' \
             [possible values: error, warn, info, debug, trace]"
        );
        assert!(e.hint.unwrap().contains("`pgward info --help`"));
        let e = rejected("pgward archive-get");
        assert!(
            e.message.contains("not provided: <NAME> <DEST>"),
            "{}",
            e.message
        );
    }

    #[test]
    fn a_missing_command_is_named_not_answered_with_the_help_text() {
        assert_eq!(rejected("pgward").message, "`pgward` needs a command");
        let e = rejected("pgward --repo /r pitr");
        assert_eq!(e.message, "`pgward pitr` needs a command");
        assert!(e.hint.unwrap().contains("`pgward pitr --help`"));
    }

    #[test]
    fn a_misspelt_command_gets_the_suggestion_in_the_hint() {
        let hint = rejected("pgward --stanza backup bakup").hint.unwrap();
        assert!(hint.contains("'backup'"), "{hint}");
        assert!(
            hint.ends_with("`pgward --help` describes every option"),
            "{hint}"
        );
    }

    #[test]
    fn command_words_skip_option_values_and_follow_aliases() {
        let words = |line: &str| {
            let argv: Vec<OsString> = line.split(' ').map(OsString::from).collect();
            command_words(&argv)
        };
        assert_eq!(
            words("pgward --stanza backup pitr enable"),
            ["pitr", "enable"]
        );
        assert_eq!(words("pgward --stanza=x wal-fetch a b"), ["archive-get"]);
        assert_eq!(words("pgward restore --set info"), ["restore"]);
        assert!(words("pgward --repo").is_empty());
    }
}
