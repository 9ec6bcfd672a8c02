//! What reaches an object store, whichever it is: the repository URL taken apart, an
//! endpoint option checked, and the transport settings (timeouts, retry budget, trusted
//! CAs, read-ahead) that every provider's client gets.

use std::path::PathBuf;
use std::time::Duration;

use object_store::path::Path;
use object_store::{BackoffConfig, Certificate, ClientOptions, RetryConfig};

use super::Provider;
use crate::error::{Error, Result};

/// How requests travel, the same for every provider: `--s3-retry-seconds`,
/// `--s3-timeout` and `--s3-ca-file` (named for the first store pgward had) and
/// `--repo-read-ahead`.
#[derive(Clone, Debug, Default)]
pub struct Transport {
    pub retry_seconds: Option<u64>,
    pub timeout_seconds: Option<u64>,
    pub ca_file: Option<PathBuf>,
    pub read_ahead: Option<usize>,
}

/// [`Transport::retry_seconds`] when unset.
pub const DEFAULT_RETRY_SECONDS: u64 = 300;
/// [`Transport::timeout_seconds`] when unset.
pub const DEFAULT_TIMEOUT_SECONDS: u64 = 60;

impl Transport {
    /// Timeouts and trusted CAs (the system's, or only `--s3-ca-file`'s); plain http only
    /// for an endpoint that says so.
    pub(crate) fn client_options(&self, allow_http: bool) -> Result<ClientOptions> {
        let mut client = ClientOptions::new()
            .with_allow_http(allow_http)
            .with_connect_timeout(Duration::from_secs(10))
            // A stalled request is cut after a minute (by default) and retried; the
            // whole-request cap is long because GETs stream whole bundles (an
            // interrupted GET resumes where it was).
            .with_read_timeout(Duration::from_secs(
                self.timeout_seconds
                    .unwrap_or(DEFAULT_TIMEOUT_SECONDS)
                    .max(1),
            ))
            .with_timeout(Duration::from_secs(15 * 60));
        if let Some(ca) = &self.ca_file {
            let pem = std::fs::read(ca).map_err(|e| Error::io("reading CA file", ca, e))?;
            let certs = Certificate::from_pem_bundle(&pem).map_err(|e| {
                Error::config(format!("CA file {}: no usable certificate", ca.display())).source(e)
            })?;
            for cert in certs {
                client = client.with_root_certificate(cert);
            }
            // Only the file's CAs, as pgBackRest's repo-storage-ca-file: a private
            // endpoint's certificate chains to none of the system's, and loading them
            // took every process hundreds of file reads (a tenth of an archive-get's CPU).
            client = client.with_no_system_certificates(true);
        }
        Ok(client)
    }

    pub(crate) fn retry_budget(&self) -> Duration {
        Duration::from_secs(self.retry_seconds.unwrap_or(DEFAULT_RETRY_SECONDS))
    }

    pub(crate) fn retry_config(&self) -> RetryConfig {
        RetryConfig {
            backoff: BackoffConfig::default(), // 100 ms doubling to 15 s, with jitter
            // The time budget decides, not a count: ten quick retries are over in
            // seconds, shorter than a storage node's restart.
            max_retries: 10_000,
            retry_timeout: self.retry_budget(),
        }
    }

    pub(crate) fn read_ahead(&self) -> usize {
        self.read_ahead
            .unwrap_or(crate::repo::read_plan::DEFAULT_AHEAD)
    }
}

/// `scheme://bucket/prefix` taken apart: the bucket (or container) and the key prefix
/// without slashes at either end ("" for the bucket's root).
pub(crate) fn split_url(url: &str, provider: Provider) -> Result<(String, String)> {
    let scheme = provider.scheme();
    let word = provider.bucket_word();
    let rest = url.strip_prefix(&format!("{scheme}://")).ok_or_else(|| {
        Error::config(format!("repository {url:?} is not a {scheme}:// URL")).hint(format!(
            "write it as {scheme}://{}/PREFIX",
            word.to_uppercase()
        ))
    })?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    let prefix = prefix.trim_matches('/').to_string();
    if bucket.is_empty() {
        return Err(
            Error::config(format!("repository {url:?} names no {word}")).hint(format!(
                "write it as {scheme}://{}/PREFIX",
                word.to_uppercase()
            )),
        );
    }
    if !prefix.is_empty() {
        Path::parse(&prefix)
            .map_err(|e| Error::config(format!("repository {url:?}: bad prefix")).source(e))?;
    }
    Ok((bucket.to_string(), prefix))
}

/// An endpoint option (`option`: its flag) checked: `http(s)://host[:port][/path]`,
/// without a trailing slash, and whether it is plain http (an emulator's).
pub(crate) fn endpoint_url(option: &str, endpoint: &str) -> Result<(String, bool)> {
    let trimmed = endpoint.trim().trim_end_matches('/');
    let bad = |why: String| {
        Error::config(format!("{option} {endpoint:?}: {why}")).hint(
            "write it as https://host[:port] or http://host:port, e.g. http://127.0.0.1:10000",
        )
    };
    let url = url::Url::parse(trimmed).map_err(|e| bad(e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad(format!(
            "scheme {:?} is not http or https",
            url.scheme()
        )));
    }
    if url.host().is_none() {
        return Err(bad("no host".into()));
    }
    Ok((trimmed.to_string(), url.scheme() == "http"))
}
