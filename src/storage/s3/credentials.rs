//! Where S3 credentials come from, and how a long run keeps them current (issue 13).
//!
//! Two kinds of source:
//! - **object_store's own chain**: `--s3-key`, `AWS_ACCESS_KEY_ID`, web identity
//!   (`AWS_WEB_IDENTITY_TOKEN_FILE` + `AWS_ROLE_ARN`), container credentials (ECS, EKS pod
//!   identity), instance metadata. object_store caches temporary credentials in a
//!   `TokenCache` and fetches new ones once fewer than 5 minutes of their validity are
//!   left (the web identity token file is read again at each fetch); a failed fetch
//!   is an error for that request only. Static keys never change.
//! - **the shared profile** (object_store reads no shared files): static keys or a
//!   `credential_process`. Checked every few seconds: when a file's identity, size or
//!   modification time changed, it is read again (a rotation script rewrites it while a
//!   backup runs); a process is run again 5 minutes before its keys expire.
//!
//! When S3 rejects a request's credentials mid-run (expired, unknown, revoked: see
//! `reauth.rs`), [`Credentials::renew`] goes back to the source at once: the profile is
//! read again whatever its stamp says, object_store's chain is built anew (a new cache,
//! so it fetches rather than trusting what it holds). Many workers rejected together
//! renew once.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use object_store::aws::{AmazonS3Builder, AwsCredential, AwsCredentialProvider};
use object_store::CredentialProvider;

use super::profile::{run_credential_process, ProfileFiles, Stamp};

/// How often the profile's files are looked at (a `stat` of each).
const CHECK_EVERY: Duration = Duration::from_secs(2);
/// Expiring credentials are replaced this long before they expire (as object_store does).
const EXPIRY_MARGIN: Duration = Duration::from_secs(5 * 60);

#[derive(Debug)]
pub(super) struct Credentials {
    source: Source,
    /// The last renewal: when it ended and whether it found other credentials.
    renewed: tokio::sync::Mutex<Option<(Instant, bool)>>,
}

enum Source {
    Chain {
        /// What the chain picked, for messages.
        what: String,
        /// Without credentials: built again to renew.
        builder: Box<AmazonS3Builder>,
        provider: Mutex<AwsCredentialProvider>,
    },
    Profile {
        files: ProfileFiles,
        state: tokio::sync::Mutex<ProfileState>,
    },
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

#[derive(Debug)]
struct ProfileState {
    credential: Arc<AwsCredential>,
    /// When a credential_process's keys expire.
    expires: Option<DateTime<Utc>>,
    /// The files as they were when `credential` was read from them.
    stamp: Stamp,
    checked: Instant,
}

/// What [`Credentials::renew`] found.
pub(super) struct Renewed {
    pub credential: Arc<AwsCredential>,
    /// Whether the source gave other credentials than it gave before.
    pub changed: bool,
}

impl Credentials {
    /// object_store's chain as `builder` (everything but credentials set) picks it;
    /// `static_keys`: whether `--s3-key` set them.
    pub fn chain(builder: AmazonS3Builder, static_keys: bool) -> object_store::Result<Self> {
        let provider = builder.clone().build()?.credentials().clone();
        let env = |name: &str| std::env::var_os(name).is_some();
        let what = if static_keys {
            "--s3-key".to_string()
        } else if env("AWS_ACCESS_KEY_ID") {
            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY".to_string()
        } else if env("AWS_WEB_IDENTITY_TOKEN_FILE") && env("AWS_ROLE_ARN") {
            "web identity (AWS_WEB_IDENTITY_TOKEN_FILE, AWS_ROLE_ARN)".to_string()
        } else if env("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")
            || env("AWS_CONTAINER_CREDENTIALS_FULL_URI")
        {
            "container credentials (AWS_CONTAINER_CREDENTIALS_*)".to_string()
        } else {
            "the instance metadata service (instance role)".to_string()
        };
        Ok(Credentials::new(Source::Chain {
            what,
            builder: Box::new(builder),
            provider: Mutex::new(provider),
        }))
    }

    /// The shared profile, which has credentials now (`ProfileFiles::read`).
    pub async fn profile(files: ProfileFiles) -> Result<Self, String> {
        let stamp = files.stamp();
        let (credential, expires) = read_profile(&files).await?;
        let state = ProfileState {
            credential: Arc::new(credential),
            expires,
            stamp,
            checked: Instant::now(),
        };
        Ok(Credentials::new(Source::Profile {
            files,
            state: tokio::sync::Mutex::new(state),
        }))
    }

    fn new(source: Source) -> Self {
        Credentials {
            source,
            renewed: Default::default(),
        }
    }

    /// Where the credentials come from, for messages.
    pub fn describe(&self) -> String {
        self.source.describe()
    }

    /// What to do when the source's credentials are rejected.
    pub fn hint(&self) -> String {
        match &self.source {
            Source::Chain { what, .. } if what == "--s3-key" => {
                "give current keys with --s3-key and --s3-key-secret (or s3-key and s3-key-secret \
                 in the configuration file)"
                    .into()
            }
            Source::Chain { what, .. } if what.starts_with("AWS_ACCESS_KEY_ID") => {
                "environment variables are read once, at start: set current keys and run again, \
                 or keep them in a shared profile (AWS_PROFILE), which pgward re-reads while it \
                 runs"
                    .into()
            }
            Source::Chain { .. } => "check that the role exists, may use this bucket, and that \
                 its token or metadata endpoint gives current credentials"
                .into(),
            Source::Profile { files, .. } => format!(
                "write current aws_access_key_id and aws_secret_access_key (or a working \
                 credential_process) for profile {} in {} or {}: pgward reads them again \
                 while it runs",
                files.name,
                files.credentials.display(),
                files.config.display()
            ),
        }
    }

    /// Goes back to the source for credentials, unless a renewal ended after `since`
    /// (when the rejected request was signed): then its result serves.
    pub async fn renew(&self, since: Instant) -> object_store::Result<Renewed> {
        let mut renewed = self.renewed.lock().await;
        if let Some((at, changed)) = *renewed {
            if at > since {
                let credential = self.get_credential().await?;
                return Ok(Renewed {
                    credential,
                    changed,
                });
            }
        }
        let before = self.get_credential().await?;
        let credential = match &self.source {
            Source::Chain {
                builder, provider, ..
            } => {
                let fresh = (**builder).clone().build()?.credentials().clone();
                *provider.lock().unwrap_or_else(|e| e.into_inner()) = fresh.clone();
                fresh.get_credential().await?
            }
            Source::Profile { files, state } => {
                let mut state = state.lock().await;
                state.reload(files).await.map_err(|e| generic(e.into()))?;
                state.credential.clone()
            }
        };
        let changed = credential != before;
        tracing::info!(
            "S3 rejected the credentials; read them again from {}: {}",
            self.describe(),
            if changed { "new ones" } else { "unchanged" }
        );
        *renewed = Some((Instant::now(), changed));
        Ok(Renewed {
            credential,
            changed,
        })
    }
}

impl Source {
    fn describe(&self) -> String {
        match self {
            Source::Chain { what, .. } => what.clone(),
            Source::Profile { files, .. } => files.describe(),
        }
    }
}

#[async_trait]
impl CredentialProvider for Credentials {
    type Credential = AwsCredential;

    async fn get_credential(&self) -> object_store::Result<Arc<AwsCredential>> {
        match &self.source {
            Source::Chain { provider, .. } => {
                let provider = provider.lock().unwrap_or_else(|e| e.into_inner()).clone();
                provider.get_credential().await
            }
            Source::Profile { files, state } => {
                let mut state = state.lock().await;
                state.refresh_if_due(files).await?;
                Ok(state.credential.clone())
            }
        }
    }
}

impl ProfileState {
    /// Reads the files again if they changed since `checked` (at most every
    /// [`CHECK_EVERY`]), and runs the credential process again if its keys expire soon.
    async fn refresh_if_due(&mut self, files: &ProfileFiles) -> object_store::Result<()> {
        let expiring = self
            .expires
            .is_some_and(|at| (at - Utc::now()).to_std().unwrap_or_default() < EXPIRY_MARGIN);
        let expired = self.expires.is_some_and(|at| at <= Utc::now());
        if self.checked.elapsed() < CHECK_EVERY && !expired {
            return Ok(());
        }
        self.checked = Instant::now();
        if !expiring && files.stamp() == self.stamp {
            return Ok(());
        }
        match self.reload(files).await {
            Ok(()) => Ok(()),
            // Keep what works: a file may be caught half-written, a process may fail once.
            Err(e) if !expired => {
                tracing::warn!(
                    "{}: {e}; keeping the credentials read before",
                    files.describe()
                );
                Ok(())
            }
            Err(e) => Err(generic(e.into())),
        }
    }

    /// Reads the profile now; on failure keeps the current credentials and stamp, so
    /// that the next check reads it again.
    async fn reload(&mut self, files: &ProfileFiles) -> Result<(), String> {
        let stamp = files.stamp();
        let (credential, expires) = read_profile(files).await?;
        if *self.credential != credential {
            tracing::info!(
                "{}: new credentials (access key {})",
                files.describe(),
                credential.key_id
            );
        }
        (self.credential, self.expires, self.stamp) = (Arc::new(credential), expires, stamp);
        Ok(())
    }
}

/// Static keys beat a credential_process, as in the AWS CLI.
async fn read_profile(
    files: &ProfileFiles,
) -> Result<(AwsCredential, Option<DateTime<Utc>>), String> {
    let profile = files.read();
    if let Some(keys) = profile.static_keys() {
        return Ok((keys, None));
    }
    match &profile.credential_process {
        Some(command) => run_credential_process(command).await,
        None => Err(format!(
            "{} has no aws_access_key_id and aws_secret_access_key, nor a credential_process",
            files.describe()
        )),
    }
}

fn generic(source: Box<dyn std::error::Error + Send + Sync>) -> object_store::Error {
    object_store::Error::Generic {
        store: "S3",
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &std::path::Path, key: &str) {
        std::fs::write(
            path,
            format!("[default]\naws_access_key_id = {key}\naws_secret_access_key = s-{key}\n"),
        )
        .unwrap();
    }

    #[tokio::test]
    async fn a_rotated_profile_is_read_again_once_checked_or_renewed() {
        let dir = tempfile::tempdir().unwrap();
        let files = ProfileFiles {
            name: "default".into(),
            credentials: dir.path().join("credentials"),
            config: dir.path().join("config"),
        };
        write(&files.credentials, "one");
        let c = Credentials::profile(files.clone()).await.unwrap();
        assert_eq!(c.get_credential().await.unwrap().key_id, "one");

        // Rotated: the next check (due at once here) reads it again.
        write(&files.credentials, "two-");
        let Source::Profile { state, .. } = &c.source else {
            unreachable!()
        };
        state.lock().await.checked -= CHECK_EVERY;
        assert_eq!(c.get_credential().await.unwrap().key_id, "two-");

        // Half written: the check keeps the keys it has.
        std::fs::write(&files.credentials, "[default]\naws_access_key_id = thr").unwrap();
        state.lock().await.checked -= CHECK_EVERY;
        assert_eq!(c.get_credential().await.unwrap().key_id, "two-");

        // A renewal reads now, whatever the stamp (here the check is not due).
        let signed = Instant::now();
        write(&files.credentials, "four");
        let r = c.renew(signed).await.unwrap();
        assert_eq!((r.credential.key_id.as_str(), r.changed), ("four", true));
        // Requests signed before that renewal take its result; later ones renew again.
        let r = c.renew(signed).await.unwrap();
        assert_eq!((r.credential.key_id.as_str(), r.changed), ("four", true));
        let r = c.renew(Instant::now()).await.unwrap();
        assert_eq!((r.credential.key_id.as_str(), r.changed), ("four", false));
        assert!(c.describe().contains("AWS profile default"));
        assert!(c.hint().contains(&files.credentials.display().to_string()));
    }

    #[tokio::test]
    async fn credential_process_keys_are_replaced_before_they_expire() {
        let dir = tempfile::tempdir().unwrap();
        let counter = dir.path().join("n");
        let script = dir.path().join("creds.sh");
        // Each run answers another key, expiring in a minute (inside the margin).
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\necho x >> '{n}'\nn=$(wc -l < '{n}')\n\
                 echo \"{{\\\"Version\\\": 1, \\\"AccessKeyId\\\": \\\"K$n\\\", \
                 \\\"SecretAccessKey\\\": \\\"S\\\", \\\"Expiration\\\": \\\"$(date -u -d '+1 min' +%Y-%m-%dT%H:%M:%SZ)\\\"}}\"\n",
                n = counter.display()
            ),
        )
        .unwrap();
        let files = ProfileFiles {
            name: "default".into(),
            credentials: dir.path().join("credentials"),
            config: dir.path().join("config"),
        };
        std::fs::write(
            &files.config,
            format!("[default]\ncredential_process = sh {}\n", script.display()),
        )
        .unwrap();
        let c = Credentials::profile(files).await.unwrap();
        assert_eq!(c.get_credential().await.unwrap().key_id, "K1");
        // Not before the next check...
        assert_eq!(c.get_credential().await.unwrap().key_id, "K1");
        let Source::Profile { state, .. } = &c.source else {
            unreachable!()
        };
        state.lock().await.checked -= CHECK_EVERY;
        // ...then, expiring within the margin, it is run again.
        assert_eq!(c.get_credential().await.unwrap().key_id, "K2");
    }

    #[tokio::test]
    async fn static_keys_renew_to_themselves() {
        let builder = AmazonS3Builder::new()
            .with_bucket_name("b")
            .with_region("us-east-1")
            .with_access_key_id("k")
            .with_secret_access_key("s");
        let c = Credentials::chain(builder, true).unwrap();
        assert_eq!(c.get_credential().await.unwrap().key_id, "k");
        let r = c.renew(Instant::now()).await.unwrap();
        assert!(!r.changed);
        assert_eq!(c.describe(), "--s3-key");
        assert!(c.hint().contains("--s3-key-secret"));
    }
}
