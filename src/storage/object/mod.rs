//! What every object store has in common (S3, Google Cloud Storage, Azure Blob Storage),
//! over one `object_store::ObjectStore`: keys under a prefix, listing one level,
//! streamed and ranged GETs that object_store resumes after a dropped connection, the
//! part writer (`writer.rs`), conditional creation, and errors that name the object and
//! say what to check. object_store signs the requests and retries transient failures
//! (5xx, 429, timeouts, resets) with backoff; `retry_report.rs` says so while it does.
//! `config.rs` holds what every provider's connection takes (URL, endpoint, transport).
//!
//! `ObjectStorage` is the whole `Storage` of GCS and Azure; `s3::S3Storage` wraps it
//! with what only S3 needs (ListMultipartUploads, the conditional-put probe). What
//! interrupted writers leave on GCS and Azure is invisible and needs no cleanup by
//! pgward: Azure discards uncommitted blocks after a week by itself, and GCS's XML
//! multipart uploads are left to the bucket's lifecycle rule (object_store cannot list
//! them), as `docs/guide.md` says.

use std::sync::Arc;

use async_trait::async_trait;
use futures::TryStreamExt;
use object_store::list::{PaginatedListOptions, PaginatedListStore};
use object_store::path::Path;
use object_store::{
    Attributes, GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutMode, PutOptions,
};

use super::{Listing, ObjectInfo, ObjectWriter, Reader, Storage};
use crate::error::{Error, ErrorKind, Result};

mod config;
pub(crate) mod retry_report;
mod writer;

pub(crate) use config::{endpoint_url, split_url};
pub use config::{Transport, DEFAULT_RETRY_SECONDS, DEFAULT_TIMEOUT_SECONDS};

pub(crate) use writer::{LARGE_PARTS_IN_FLIGHT, LARGE_PART_SIZE, PARTS_IN_FLIGHT, PART_SIZE};

/// Which service a store is: decides the URL scheme and what errors tell the user.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Provider {
    S3,
    Gcs,
    Azure,
}

impl Provider {
    pub fn scheme(self) -> &'static str {
        match self {
            Provider::S3 => "s3",
            Provider::Gcs => "gs",
            Provider::Azure => "az",
        }
    }

    fn bucket_word(self) -> &'static str {
        match self {
            Provider::Azure => "container",
            _ => "bucket",
        }
    }

    /// Names the object (`name`: `s3://bucket/key`), keeps object_store's cause (status
    /// and the service's error body), and sorts permanent setup problems from a missing
    /// object.
    pub(crate) fn error(self, name: &str, action: &str, e: object_store::Error) -> Error {
        use object_store::Error as E;
        let message = format!("{action} {name}");
        if let Some(rejected) = super::s3::Rejected::find(&e) {
            return Error::new(ErrorKind::Config, format!("{message}: {rejected}"))
                .hint(rejected.hint.clone());
        }
        let text = e.to_string();
        let bucket = name
            .split_once("://")
            .map_or(name, |(_, rest)| rest.split('/').next().unwrap_or(rest));
        let missing_bucket = match self {
            Provider::S3 | Provider::Gcs => text.contains("NoSuchBucket"),
            Provider::Azure => text.contains("ContainerNotFound"),
        };
        match e {
            _ if missing_bucket => Error::new(ErrorKind::Config, message)
                .source(e)
                .hint(format!(
                    "{} {bucket} does not exist: check its name{}",
                    self.bucket_word(),
                    match self {
                        Provider::S3 => ", region and endpoint",
                        Provider::Gcs => " and the endpoint (--gcs-endpoint)",
                        Provider::Azure => ", the account (--azure-account) and the endpoint",
                    }
                )),
            E::NotFound { .. } => Error::new(ErrorKind::NotFound, message).source(e),
            // Listings come back as Generic errors that only their text says are 401/403.
            E::PermissionDenied { .. } | E::Unauthenticated { .. } => {
                Error::new(ErrorKind::Config, message)
                    .source(e)
                    .hint(self.credentials_hint())
            }
            E::Generic { .. }
                if text.contains("403 Forbidden") || text.contains("401 Unauthorized") =>
            {
                Error::new(ErrorKind::Config, message)
                    .source(e)
                    .hint(self.credentials_hint())
            }
            // No credential could be had (e.g. no metadata server off GCP or Azure).
            E::Generic { .. } if text.contains("token request") || text.contains("credential") => {
                Error::new(ErrorKind::Config, message)
                    .source(e)
                    .hint(self.credentials_hint())
            }
            E::Generic { .. }
                if text.contains("retry_timeout") || text.contains("sending request") =>
            {
                Error::new(ErrorKind::Io, message)
                    .source(e)
                    .hint(self.endpoint_hint())
            }
            _ => Error::new(ErrorKind::Io, message).source(e),
        }
    }

    /// Where credentials come from, in the order each provider's client looks.
    pub(crate) fn credentials_hint(self) -> String {
        let sources = match self {
            Provider::S3 => {
                "the credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, \
                 the instance role)"
            }
            Provider::Gcs => {
                "the credentials (--gcs-key-file, GOOGLE_APPLICATION_CREDENTIALS, \
                 `gcloud auth application-default login`, the instance's service account)"
            }
            Provider::Azure => {
                "the account (--azure-account) and its credentials (--azure-key, \
                 --azure-sas, AZURE_STORAGE_ACCOUNT_KEY, AZURE_STORAGE_SAS_KEY, a service \
                 principal's AZURE_CLIENT_ID/AZURE_CLIENT_SECRET/AZURE_TENANT_ID, the \
                 managed identity)"
            }
        };
        format!(
            "check {sources} and that they may use this {}",
            self.bucket_word()
        )
    }

    fn endpoint_hint(self) -> String {
        let (what, option) = match self {
            Provider::S3 => ("S3", "--s3-endpoint; host[:port] means https"),
            Provider::Gcs => ("GCS", "--gcs-endpoint"),
            Provider::Azure => ("Azure", "--azure-endpoint, --azure-account"),
        };
        format!(
            "the {what} endpoint did not answer successfully: check the endpoint ({option}), \
             the network and the credentials; pgward retries transient failures for \
             --s3-retry-seconds (default 300)"
        )
    }
}

#[derive(Debug)]
pub struct ObjectStorage {
    pub(crate) store: Arc<dyn ObjectStore>,
    /// The same store, for listings by any key prefix (`list_starting`).
    paged: Arc<dyn PagedStore>,
    pub(crate) provider: Provider,
    /// Bucket or container name.
    pub(crate) bucket: String,
    /// Key prefix of the repository, without slashes at either end ("" for the root).
    pub(crate) prefix: String,
    /// Given to every new object (S3's storage class).
    pub(crate) attributes: Attributes,
    pub(crate) read_ahead: usize,
}

/// What every provider's store is besides an `ObjectStore`.
pub(crate) trait PagedStore: PaginatedListStore + std::fmt::Debug {}
impl<S: PaginatedListStore + std::fmt::Debug> PagedStore for S {}

impl ObjectStorage {
    pub(crate) fn new<S: ObjectStore + PagedStore>(
        store: Arc<S>,
        provider: Provider,
        bucket: String,
        prefix: String,
        read_ahead: usize,
    ) -> ObjectStorage {
        ObjectStorage {
            store: store.clone(),
            paged: store,
            provider,
            bucket,
            prefix,
            attributes: Attributes::new(),
            read_ahead,
        }
    }

    pub(crate) fn full_key(&self, key: &str) -> String {
        match (self.prefix.is_empty(), key.trim_matches('/')) {
            (_, "") => self.prefix.clone(),
            (true, key) => key.to_string(),
            (false, key) => format!("{}/{key}", self.prefix),
        }
    }

    pub(crate) fn path(&self, key: &str) -> Result<Path> {
        Path::parse(self.full_key(key))
            .map_err(|e| Error::new(ErrorKind::Io, format!("bad object key {key:?}")).source(e))
    }

    /// `s3://bucket/prefix/key`: how messages name an object.
    pub(crate) fn url_of(&self, key: &str) -> String {
        format!(
            "{}://{}/{}",
            self.provider.scheme(),
            self.bucket,
            self.full_key(key)
        )
    }

    pub(crate) fn error(&self, action: &str, key: &str, e: object_store::Error) -> Error {
        self.provider.error(&self.url_of(key), action, e)
    }

    /// Creates `key` unless an object is there; false if one was. Atomic where the
    /// service honours the condition (GCS, Azure; S3 where `supports_conditional_put`).
    pub async fn put_if_absent(&self, key: &str, bytes: &[u8]) -> Result<bool> {
        let opts = PutOptions {
            mode: PutMode::Create,
            attributes: self.attributes.clone(),
            ..Default::default()
        };
        let payload = bytes::Bytes::copy_from_slice(bytes).into();
        match self.store.put_opts(&self.path(key)?, payload, opts).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. })
            | Err(object_store::Error::Precondition { .. }) => Ok(false),
            Err(e) => Err(self.error("creating", key, e)),
        }
    }

    async fn get(&self, key: &str, range: Option<GetRange>) -> Result<Reader> {
        let options = GetOptions {
            range,
            ..Default::default()
        };
        let result = self
            .store
            .get_opts(&self.path(key)?, options)
            .await
            .map_err(|e| self.error("reading", key, e))?;
        let name = self.url_of(key);
        // Streams the body; object_store resumes it after a dropped connection.
        let stream = result.into_stream().map_err(move |e| {
            let kind = match e {
                object_store::Error::NotFound { .. } => std::io::ErrorKind::NotFound,
                _ => std::io::ErrorKind::Other,
            };
            std::io::Error::new(kind, format!("{name}: {e}"))
        });
        Ok(Box::new(tokio_util::io::StreamReader::new(stream)))
    }
}

#[async_trait]
impl Storage for ObjectStorage {
    fn read_ahead(&self) -> usize {
        self.read_ahead
    }

    fn large_writer_memory(&self) -> u64 {
        (LARGE_PART_SIZE * (1 + LARGE_PARTS_IN_FLIGHT)) as u64
    }

    /// GCS (`x-goog-if-generation-match: 0`) and Azure (`If-None-Match: *`) always
    /// honour the condition.
    async fn create_exclusive(&self, key: &str, bytes: &[u8]) -> Result<Option<bool>> {
        self.put_if_absent(key, bytes).await.map(Some)
    }

    fn location(&self) -> String {
        let scheme = self.provider.scheme();
        match self.prefix.as_str() {
            "" => format!("{scheme}://{}", self.bucket),
            prefix => format!("{scheme}://{}/{prefix}", self.bucket),
        }
    }

    async fn list(&self, dir: &str) -> Result<Listing> {
        let prefix = if self.full_key(dir).is_empty() {
            None
        } else {
            Some(self.path(dir)?)
        };
        // Delimiter '/': direct children only; object_store follows continuation tokens.
        let result = self
            .store
            .list_with_delimiter(prefix.as_ref())
            .await
            .map_err(|e| self.error("listing", dir, e))?;
        let mut listing = Listing::default();
        for object in result.objects {
            listing.files.push(ObjectInfo {
                name: object.location.filename().unwrap_or_default().to_string(),
                size: object.size,
                modified: object.last_modified.timestamp(),
            });
        }
        for dir in result.common_prefixes {
            listing.dirs.extend(dir.filename().map(str::to_string));
        }
        listing.files.sort_by(|a, b| a.name.cmp(&b.name));
        listing.dirs.sort();
        Ok(listing)
    }

    async fn list_starting(&self, dir: &str, start: &str) -> Result<Listing> {
        if start.is_empty() || start.contains('/') {
            return self.list(dir).await; // `start` names no prefix within `dir`
        }
        let prefix = match self.full_key(dir) {
            dir_key if dir_key.is_empty() => start.to_string(),
            dir_key => format!("{dir_key}/{start}"),
        };
        // A prefix that ends inside a name: object_store's listing takes whole path
        // segments only, its paginated one any string (and follows no tokens itself).
        let mut listing = Listing::default();
        let mut page_token = None;
        loop {
            let options = PaginatedListOptions {
                delimiter: Some("/".into()),
                page_token,
                ..Default::default()
            };
            let page = self
                .paged
                .list_paginated(Some(&prefix), options)
                .await
                .map_err(|e| self.error("listing", dir, e))?;
            for object in page.result.objects {
                listing.files.push(ObjectInfo {
                    name: object.location.filename().unwrap_or_default().to_string(),
                    size: object.size,
                    modified: object.last_modified.timestamp(),
                });
            }
            for dir in page.result.common_prefixes {
                listing.dirs.extend(dir.filename().map(str::to_string));
            }
            match page.page_token {
                Some(token) => page_token = Some(token),
                None => break,
            }
        }
        listing.files.sort_by(|a, b| a.name.cmp(&b.name));
        listing.dirs.sort();
        Ok(listing)
    }

    async fn read(&self, key: &str) -> Result<Reader> {
        self.get(key, None).await
    }

    async fn read_range(&self, key: &str, offset: u64, len: u64) -> Result<Reader> {
        if len == 0 {
            // There is no empty range; still report a missing object.
            let path = self.path(key)?;
            self.store
                .head(&path)
                .await
                .map_err(|e| self.error("reading", key, e))?;
            return Ok(Box::new(tokio::io::empty()));
        }
        self.get(key, Some(GetRange::Bounded(offset..offset + len)))
            .await
    }

    async fn create(&self, key: &str) -> Result<Box<dyn ObjectWriter>> {
        self.writer(key, PART_SIZE, PARTS_IN_FLIGHT)
    }

    async fn create_large(&self, key: &str) -> Result<Box<dyn ObjectWriter>> {
        self.writer(key, LARGE_PART_SIZE, LARGE_PARTS_IN_FLIGHT)
    }

    async fn delete(&self, key: &str) -> Result<()> {
        match self.store.delete(&self.path(key)?).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.error("deleting", key, e)),
        }
    }

    /// Nothing visible to remove (see the module comment).
    async fn remove_incomplete(
        &self,
        _dir: &str,
        _older_than: Option<std::time::Duration>,
    ) -> Result<usize> {
        Ok(0)
    }
}

#[cfg(test)]
pub(crate) mod tests;
