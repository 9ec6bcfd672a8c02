//! Whether a server's `archive_command` archives into a given repository and stanza:
//! what `check` refuses and `pitr status` reports. The inverse of `Repo::cli_options`,
//! which writes the options such a command carries.

use super::Repo;

/// What is wrong with an archive_command for this repository and stanza, if anything.
pub fn command_problem(command: &str, repo: &Repo) -> Option<String> {
    let words: Vec<&str> = command
        .split_whitespace()
        .map(|w| w.trim_matches('\'').trim_matches('"'))
        .collect();
    if command.trim().is_empty() || command.trim() == "(disabled)" {
        return Some("is empty".into());
    }
    if !words
        .iter()
        .any(|w| *w == "archive-push" || *w == "wal-push")
    {
        return Some("does not run pgward archive-push".into());
    }
    let value_after = |flag: &str| {
        words
            .windows(2)
            .find(|w| w[0] == flag)
            .map(|w| w[1].to_string())
            .or_else(|| {
                words
                    .iter()
                    .find_map(|w| w.strip_prefix(&format!("{flag}=")).map(str::to_string))
            })
    };
    let location = repo.storage.location();
    match value_after("--repo") {
        Some(r) if r.trim_end_matches('/') == location.trim_end_matches('/') => {}
        Some(r) => return Some(format!("archives into repository {r}, not {location}")),
        None => {}
    }
    match value_after("--stanza") {
        Some(s) if s == repo.stanza => None,
        Some(s) => Some(format!("archives into stanza {s:?}, not {:?}", repo.stanza)),
        None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::local::LocalStorage;

    fn repo() -> Repo {
        let storage = std::sync::Arc::new(LocalStorage::new("/var/lib/pgward/repo"));
        Repo::plain_for_tests(storage, "main")
    }

    #[test]
    fn archive_commands_for_another_repository_or_stanza_are_named() {
        let repo = repo();
        let ok = "pgward --repo /var/lib/pgward/repo --stanza main archive-push %p";
        assert_eq!(command_problem(ok, &repo), None);
        assert_eq!(
            command_problem(
                "'pgward' --repo=/var/lib/pgward/repo/ archive-push %p",
                &repo
            ),
            None
        );
        assert_eq!(command_problem("", &repo).as_deref(), Some("is empty"));
        assert_eq!(
            command_problem("(disabled)", &repo).as_deref(),
            Some("is empty")
        );
        assert!(command_problem("cp %p /mnt/wal/%f", &repo)
            .unwrap()
            .contains("does not run pgward archive-push"));
        assert!(command_problem(
            "pgward --repo /elsewhere --stanza main archive-push %p",
            &repo
        )
        .unwrap()
        .contains("/elsewhere"));
        assert!(command_problem(
            "pgward --repo /var/lib/pgward/repo --stanza other archive-push %p",
            &repo
        )
        .unwrap()
        .contains("\"other\""));
    }
}
