//! The shared AWS profile, as the AWS CLI reads it: `AWS_PROFILE` (or `default`) in the
//! credentials file (`AWS_SHARED_CREDENTIALS_FILE`, `~/.aws/credentials`, section
//! `[name]`) and the config file (`AWS_CONFIG_FILE`, `~/.aws/config`, section
//! `[profile name]`), the credentials file first. A profile holds static keys or a
//! `credential_process`, whose JSON answer may say when its keys expire.
//!
//! No I/O beyond reading these files and running that process; when to read them again
//! is `credentials.rs`'s business. A [`Stamp`] says cheaply whether the files changed.

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::SystemTime;

use chrono::{DateTime, Utc};
use object_store::aws::AwsCredential;

/// Where the profile lives.
#[derive(Debug, Clone)]
pub(super) struct ProfileFiles {
    pub name: String,
    pub credentials: PathBuf,
    pub config: PathBuf,
}

/// What one reading of the files says.
#[derive(Debug, Default, Clone, PartialEq)]
pub(super) struct Profile {
    pub key_id: Option<String>,
    pub secret: Option<String>,
    pub token: Option<String>,
    pub region: Option<String>,
    pub credential_process: Option<String>,
}

impl Profile {
    /// Static keys, when the profile has both halves (a file caught half-written has not).
    pub fn static_keys(&self) -> Option<AwsCredential> {
        Some(AwsCredential {
            key_id: self.key_id.clone()?,
            secret_key: self.secret.clone()?,
            token: self.token.clone(),
        })
    }

    pub fn has_credentials(&self) -> bool {
        self.static_keys().is_some() || self.credential_process.is_some()
    }
}

/// Identity, size and modification time of both files (None: absent): a rewrite in place,
/// a rename over, a deletion all change it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Stamp([Option<(u64, u64, u64, SystemTime)>; 2]);

impl ProfileFiles {
    pub fn from_env() -> ProfileFiles {
        let home = std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_default();
        let file = |var: &str, default: &str| {
            std::env::var_os(var)
                .map(PathBuf::from)
                .unwrap_or_else(|| home.join(default))
        };
        ProfileFiles {
            name: std::env::var("AWS_PROFILE").unwrap_or_else(|_| "default".into()),
            credentials: file("AWS_SHARED_CREDENTIALS_FILE", ".aws/credentials"),
            config: file("AWS_CONFIG_FILE", ".aws/config"),
        }
    }

    /// "AWS profile default (/home/u/.aws/credentials, /home/u/.aws/config)", for messages.
    pub fn describe(&self) -> String {
        format!(
            "AWS profile {} ({}, {})",
            self.name,
            self.credentials.display(),
            self.config.display()
        )
    }

    pub fn stamp(&self) -> Stamp {
        let one = |path: &PathBuf| {
            let m = std::fs::metadata(path).ok()?;
            Some((m.dev(), m.ino(), m.len(), m.modified().ok()?))
        };
        Stamp([one(&self.credentials), one(&self.config)])
    }

    /// The profile's settings; an unreadable or absent file contributes nothing.
    pub fn read(&self) -> Profile {
        let mut profile = Profile::default();
        let config_section = match self.name.as_str() {
            "default" => "default".to_string(),
            name => format!("profile {name}"),
        };
        for (path, section) in [
            (&self.credentials, self.name.as_str()),
            (&self.config, config_section.as_str()),
        ] {
            if let Ok(text) = std::fs::read_to_string(path) {
                read_section(&text, section, &mut profile);
            }
        }
        profile
    }
}

/// Fills what `profile` lacks from `[section]` of an INI text.
fn read_section(text: &str, section: &str, profile: &mut Profile) {
    let mut inside = false;
    for line in text.lines().map(str::trim) {
        if let Some(header) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            inside = header.trim() == section;
        } else if let (true, Some((k, v))) = (inside, line.split_once('=')) {
            let slot = match k.trim() {
                "aws_access_key_id" => &mut profile.key_id,
                "aws_secret_access_key" => &mut profile.secret,
                "aws_session_token" => &mut profile.token,
                "region" => &mut profile.region,
                "credential_process" => &mut profile.credential_process,
                _ => continue,
            };
            if slot.is_none() {
                *slot = Some(v.trim().to_string());
            }
        }
    }
}

/// What a `credential_process` prints (the AWS CLI's format, version 1).
#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ProcessAnswer {
    version: u32,
    access_key_id: String,
    secret_access_key: String,
    session_token: Option<String>,
    expiration: Option<DateTime<Utc>>,
}

/// Runs `command` (split as a shell would, not run by one, as the AWS CLI does) and reads
/// its credentials and when they expire. The error says what went wrong, for a message
/// that names the profile.
pub(super) async fn run_credential_process(
    command: &str,
) -> Result<(AwsCredential, Option<DateTime<Utc>>), String> {
    let words = shlex::split(command)
        .filter(|w| !w.is_empty())
        .ok_or_else(|| format!("credential_process {command:?} cannot be split into words"))?;
    let output = tokio::process::Command::new(&words[0])
        .args(&words[1..])
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| format!("running credential_process {command:?}: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "credential_process {command:?} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    let answer: ProcessAnswer = serde_json::from_slice(&output.stdout)
        .map_err(|e| format!("credential_process {command:?} printed no credentials: {e}"))?;
    if answer.version != 1 {
        return Err(format!(
            "credential_process {command:?} answered version {}, not 1",
            answer.version
        ));
    }
    Ok((
        AwsCredential {
            key_id: answer.access_key_id,
            secret_key: answer.secret_access_key,
            token: answer.session_token,
        },
        answer.expiration,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(dir: &std::path::Path, name: &str) -> ProfileFiles {
        ProfileFiles {
            name: name.into(),
            credentials: dir.join("credentials"),
            config: dir.join("config"),
        }
    }

    #[test]
    fn credentials_file_beats_config_file_and_sections_are_kept_apart() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("credentials"),
            "[default]\naws_access_key_id = D\naws_secret_access_key = DS\n\
             [prod]\naws_access_key_id=P\n aws_secret_access_key = PS \n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("config"),
            "[default]\nregion = eu-west-1\n[profile prod]\naws_access_key_id = other\n\
             region = us-west-2\naws_session_token = T\n[prod]\nregion = wrong\n",
        )
        .unwrap();
        let prod = files(dir.path(), "prod").read();
        assert_eq!(
            (prod.static_keys().unwrap(), prod.region.as_deref()),
            (
                AwsCredential {
                    key_id: "P".into(),
                    secret_key: "PS".into(),
                    token: Some("T".into())
                },
                Some("us-west-2")
            )
        );
        let default = files(dir.path(), "default").read();
        assert_eq!(default.key_id.as_deref(), Some("D"));
        assert_eq!(default.region.as_deref(), Some("eu-west-1"));
        assert!(!files(dir.path(), "absent").read().has_credentials());
    }

    #[test]
    fn a_half_written_file_has_no_static_keys() {
        let mut p = Profile::default();
        read_section("[default]\naws_access_key_id = K\n", "default", &mut p);
        assert!(p.static_keys().is_none());
        assert!(!p.has_credentials());
    }

    #[test]
    fn the_stamp_changes_when_a_file_is_rewritten_replaced_or_removed() {
        let dir = tempfile::tempdir().unwrap();
        let f = files(dir.path(), "default");
        let absent = f.stamp();
        std::fs::write(&f.credentials, "[default]\n").unwrap();
        let written = f.stamp();
        assert_ne!(absent, written);
        assert_eq!(written, f.stamp(), "nothing changed");
        std::fs::write(&f.credentials, "[default]\nx = 1\n").unwrap();
        assert_ne!(written, f.stamp(), "size");
        let rewritten = f.stamp();
        let other = dir.path().join("new");
        std::fs::write(&other, "[default]\nx = 2\n").unwrap();
        std::fs::rename(&other, &f.credentials).unwrap();
        assert_ne!(rewritten, f.stamp(), "renamed over: another inode");
        std::fs::remove_file(&f.credentials).unwrap();
        assert_eq!(absent, f.stamp());
    }

    #[tokio::test]
    async fn credential_process_answers_are_read_and_failures_explained() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("creds.sh");
        std::fs::write(
            &script,
            "#!/bin/sh\necho '{\"Version\": 1, \"AccessKeyId\": \"K\", \"SecretAccessKey\": \"S\", \
             \"SessionToken\": \"T\", \"Expiration\": \"2030-01-02T03:04:05Z\"}'\n",
        )
        .unwrap();
        let command = format!("sh '{}'", script.display());
        let (credential, expires) = run_credential_process(&command).await.unwrap();
        assert_eq!(credential.key_id, "K");
        assert_eq!(credential.token.as_deref(), Some("T"));
        assert_eq!(expires.unwrap().to_rfc3339(), "2030-01-02T03:04:05+00:00");

        let e = run_credential_process("sh -c 'echo no >&2; exit 3'")
            .await
            .unwrap_err();
        assert!(e.contains("failed") && e.contains("no"), "{e}");
        let e = run_credential_process("echo {}").await.unwrap_err();
        assert!(e.contains("printed no credentials"), "{e}");
        let e = run_credential_process("/nonexistent/helper")
            .await
            .unwrap_err();
        assert!(e.contains("running credential_process"), "{e}");
    }
}
