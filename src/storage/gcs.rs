//! Google Cloud Storage repositories, `gs://bucket/prefix`: the common object storage
//! (`storage::object`) over object_store's GCS client, which speaks GCS's XML API
//! (S3-like requests, OAuth bearer tokens). Conditional creation is native
//! (`x-goog-if-generation-match: 0`). Credentials, in order: `--gcs-key-file` (a
//! service account's JSON key), the `GOOGLE_SERVICE_ACCOUNT*` variables,
//! `GOOGLE_APPLICATION_CREDENTIALS`, gcloud's application default credentials
//! (`gcloud auth application-default login`), the instance's service account (metadata
//! server). An emulator takes a key file with `"disable_oauth": true`.

use std::path::PathBuf;
use std::sync::Arc;

use object_store::gcp::GoogleCloudStorageBuilder;

use super::object::retry_report::RetryReporter;
use super::object::{endpoint_url, split_url, ObjectStorage, Provider, Transport};
use crate::error::{Error, Result};

#[derive(Clone, Debug, Default)]
pub struct GcsOptions {
    /// Base URL of the service, e.g. an emulator's `http://127.0.0.1:4443`
    /// [default: https://storage.googleapis.com].
    pub endpoint: Option<String>,
    /// A service account's JSON key file.
    pub key_file: Option<PathBuf>,
}

/// The bucket `url` names, configured; nothing is asked of it yet.
pub async fn open(url: &str, options: &GcsOptions, transport: &Transport) -> Result<ObjectStorage> {
    let (bucket, prefix) = split_url(url, Provider::Gcs)?;
    // from_env: GOOGLE_SERVICE_ACCOUNT(_PATH), GOOGLE_SERVICE_ACCOUNT_KEY,
    // GOOGLE_APPLICATION_CREDENTIALS; build() then looks for gcloud's ADC file and
    // falls back to the metadata server.
    let mut builder = GoogleCloudStorageBuilder::from_env().with_bucket_name(&bucket);
    if let Some(file) = &options.key_file {
        // object_store's own message would not name the option.
        std::fs::metadata(file).map_err(|e| {
            Error::io("reading --gcs-key-file", file, e)
                .hint("give the path of a service account's JSON key")
        })?;
        builder = builder.with_service_account_path(file.display().to_string());
    }
    let mut allow_http = false;
    if let Some(endpoint) = &options.endpoint {
        let (endpoint, http) = endpoint_url("--gcs-endpoint", endpoint)?;
        allow_http = http;
        builder = builder.with_base_url(&endpoint);
    }
    let reporter = RetryReporter::named(&format!("gs://{bucket}"), transport.retry_budget());
    let store = builder
        .with_client_options(transport.client_options(allow_http)?)
        .with_retry(transport.retry_config())
        .with_http_connector(reporter)
        .build()
        .map_err(|e| {
            Error::config(format!("repository {url}: bad GCS configuration"))
                .source(e)
                .hint(Provider::Gcs.credentials_hint())
        })?;
    // No request yet, as for S3: a missing bucket or rejected credentials show at the
    // first one, with the same hints (archive-get, run once per WAL segment, would
    // pay a listing for nothing).
    Ok(ObjectStorage::new(
        Arc::new(store),
        Provider::Gcs,
        bucket,
        prefix,
        transport.read_ahead(),
    ))
}
