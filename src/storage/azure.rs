//! Azure Blob Storage repositories, `az://container/prefix`: the common object storage
//! (`storage::object`) over object_store's Azure client. A large object goes up as
//! uncommitted blocks that Put Block List commits at `finish`; blocks of an interrupted
//! writer are never visible and the service discards them after a week. Conditional
//! creation is native (`If-None-Match: *`).
//!
//! The storage account comes from `--azure-account` or AZURE_STORAGE_ACCOUNT_NAME.
//! Credentials, in order: the account key (`--azure-key`, AZURE_STORAGE_ACCOUNT_KEY), a
//! SAS token (`--azure-sas`, AZURE_STORAGE_SAS_KEY), a bearer token, a service principal
//! (AZURE_CLIENT_ID, AZURE_CLIENT_SECRET, AZURE_TENANT_ID), workload identity
//! (AZURE_FEDERATED_TOKEN_FILE), the managed identity. `--azure-endpoint` replaces
//! `https://ACCOUNT.blob.core.windows.net` (Azurite: `http://127.0.0.1:10000/ACCOUNT`).

use std::sync::Arc;

use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};

use super::object::retry_report::RetryReporter;
use super::object::{endpoint_url, split_url, ObjectStorage, Provider, Transport};
use crate::error::{Error, Result};

#[derive(Clone, Debug, Default)]
pub struct AzureOptions {
    /// Storage account name.
    pub account: Option<String>,
    /// The account's shared key (base64).
    pub key: Option<String>,
    /// A shared access signature (`sv=...&sig=...`).
    pub sas: Option<String>,
    /// The account's blob endpoint URL.
    pub endpoint: Option<String>,
}

/// The container `url` names, configured; nothing is asked of it yet.
pub async fn open(
    url: &str,
    options: &AzureOptions,
    transport: &Transport,
) -> Result<ObjectStorage> {
    let (container, prefix) = split_url(url, Provider::Azure)?;
    // from_env: every AZURE_* variable object_store knows (account, key, SAS, service
    // principal, federated token file, managed identity endpoint).
    let mut builder = MicrosoftAzureBuilder::from_env().with_container_name(&container);
    if let Some(account) = &options.account {
        builder = builder.with_account(account);
    }
    if builder
        .get_config_value(&AzureConfigKey::AccountName)
        .is_none()
    {
        return Err(
            Error::config(format!("repository {url}: no Azure storage account given"))
                .hint("pass --azure-account NAME or set AZURE_STORAGE_ACCOUNT_NAME"),
        );
    }
    if let Some(key) = &options.key {
        builder = builder.with_access_key(key);
    }
    if let Some(sas) = &options.sas {
        builder = builder.with_config(AzureConfigKey::SasKey, sas.trim_start_matches('?'));
    }
    let mut allow_http = false;
    if let Some(endpoint) = &options.endpoint {
        let (endpoint, http) = endpoint_url("--azure-endpoint", endpoint)?;
        allow_http = http;
        builder = builder.with_endpoint(endpoint);
    }
    let reporter = RetryReporter::named(&format!("az://{container}"), transport.retry_budget());
    let store = builder
        .with_client_options(transport.client_options(allow_http)?)
        .with_retry(transport.retry_config())
        .with_http_connector(reporter)
        .build()
        .map_err(|e| {
            Error::config(format!("repository {url}: bad Azure configuration"))
                .source(e)
                .hint(Provider::Azure.credentials_hint())
        })?;
    // No request yet, as for S3: a missing container or rejected credentials show at the
    // first one, with the same hints (archive-get, run once per WAL segment, would
    // pay a listing for nothing).
    Ok(ObjectStorage::new(
        Arc::new(store),
        Provider::Azure,
        container,
        prefix,
        transport.read_ahead(),
    ))
}
