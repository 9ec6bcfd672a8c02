//! S3-compatible storage (AWS S3, MinIO, Ceph, ...) through the `object_store` crate. It
//! signs requests, retries transient failures (5xx, 429/SlowDown, timeouts, resets) with
//! exponential backoff and jitter, fails at once on other 4xx, and resumes interrupted
//! GET streams. Visibility matches the local backend: an object smaller than a part is
//! one PutObject at `finish`; a bigger one is a multipart upload that only
//! CompleteMultipartUpload, at `finish`, makes visible. Until then nothing is under the key.

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use futures::TryStreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey, AwsAuthorizer};
use object_store::buffered::BufWriter;
use object_store::client::{HttpClient, HttpConnector, HttpRequestBody, ReqwestConnector};
use object_store::multipart::MultipartStore;
use object_store::path::Path;
use object_store::{
    Attribute, Attributes, BackoffConfig, Certificate, ClientOptions, GetOptions, GetRange,
    ObjectStore, ObjectStoreExt, PutMode, PutOptions, RetryConfig,
};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::{Listing, ObjectInfo, ObjectWriter, Reader, Storage};
use crate::error::{Error, ErrorKind, Result};

/// Objects up to this size are one PutObject (a WAL segment always is); bigger ones are
/// uploaded in parts of it.
const PART_SIZE: usize = 16 << 20;
/// Parts uploading at once per writer: a writer holds at most (1 + this) parts in memory.
const PARTS_IN_FLIGHT: usize = 3;
/// Bundles, written by every backup worker at once, use smaller parts (S3's minimum is
/// 5 MiB) and fewer in flight: 18 MiB per worker instead of 64 MiB kept a 2-job backup
/// to object storage within the 64 MiB memory budget.
const LARGE_PART_SIZE: usize = 6 << 20;
const LARGE_PARTS_IN_FLIGHT: usize = 2;

#[derive(Clone, Debug, Default)]
pub struct S3Options {
    /// `host[:port]` or a URL; https unless the URL says http. Default: AWS for the region.
    pub endpoint: Option<String>,
    /// Default: AWS_REGION / AWS_DEFAULT_REGION, the profile's, else asked of AWS.
    pub region: Option<String>,
    /// `https://endpoint/bucket/key` instead of `https://bucket.endpoint/key`.
    pub uri_style_path: bool,
    /// For new objects (STANDARD_IA, GLACIER_IR, ...).
    pub storage_class: Option<String>,
    /// PEM bundle of CAs to trust besides the system's (a private endpoint's).
    pub ca_file: Option<PathBuf>,
    /// How long a transient outage may last before a request gives up [default: 300 s].
    pub retry_seconds: Option<u64>,
    /// Static credentials (`s3-key`/`s3-key-secret`), beating every other source.
    pub access_key: Option<String>,
    pub secret_key: Option<String>,
}

#[derive(Debug)]
pub struct S3Storage {
    store: Arc<AmazonS3>,
    bucket: String,
    /// Key prefix of the repository, without slashes at either end ("" for the bucket root).
    prefix: String,
    storage_class: Option<String>,
    /// For the one request object_store lacks: ListMultipartUploads.
    http: HttpClient,
    bucket_url: String,
    region: String,
    conditional_put: tokio::sync::OnceCell<bool>,
}

impl S3Storage {
    pub async fn open(url: &str, options: S3Options) -> Result<S3Storage> {
        let (id, secret) = (options.access_key.clone(), options.secret_key.clone());
        Self::open_with_keys(url, options, id.as_deref().zip(secret.as_deref())).await
    }

    /// `keys`: static credentials that override every other source (tests).
    async fn open_with_keys(
        url: &str,
        options: S3Options,
        keys: Option<(&str, &str)>,
    ) -> Result<S3Storage> {
        let rest = url.strip_prefix("s3://").ok_or_else(|| {
            Error::config(format!("repository {url:?} is not an s3:// URL"))
                .hint("write it as s3://BUCKET/PREFIX")
        })?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let prefix = prefix.trim_matches('/').to_string();
        if bucket.is_empty() {
            return Err(Error::config(format!("repository {url:?} names no bucket")));
        }
        if !prefix.is_empty() {
            Path::parse(&prefix)
                .map_err(|e| Error::config(format!("repository {url:?}: bad prefix")).source(e))?;
        }

        // from_env: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_REGION,
        // AWS_WEB_IDENTITY_TOKEN_FILE + AWS_ROLE_ARN, ECS container credentials; IMDS last.
        let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
        // object_store reads no shared files: take static keys of AWS_PROFILE from them.
        let mut profile = match keys {
            None if std::env::var_os("AWS_ACCESS_KEY_ID").is_none() => shared_profile(),
            _ => Profile::default(),
        };
        if let Some((id, secret)) = keys {
            (profile.key_id, profile.secret) = (Some(id.into()), Some(secret.into()));
        }
        if let (Some(id), Some(secret)) = (profile.key_id, profile.secret) {
            builder = builder
                .with_access_key_id(id)
                .with_secret_access_key(secret);
            if let Some(token) = profile.token {
                builder = builder.with_token(token);
            }
        }

        let mut client = ClientOptions::new()
            .with_connect_timeout(Duration::from_secs(10))
            // A stalled connection fails after a minute; the whole-request cap is long
            // because GETs stream whole bundles (an interrupted GET resumes where it was).
            .with_read_timeout(Duration::from_secs(60))
            .with_timeout(Duration::from_secs(15 * 60));
        if let Some(ca) = &options.ca_file {
            let pem = std::fs::read(ca).map_err(|e| Error::io("reading CA file", ca, e))?;
            let certs = Certificate::from_pem_bundle(&pem).map_err(|e| {
                Error::config(format!("CA file {}: no usable certificate", ca.display())).source(e)
            })?;
            for cert in certs {
                client = client.with_root_certificate(cert);
            }
        }

        // As the AWS CLI: the option, AWS_REGION / AWS_DEFAULT_REGION, the profile's; else
        // ask AWS where the bucket is (a custom endpoint gets us-east-1, which MinIO takes).
        let env_region = builder.get_config_value(&AmazonS3ConfigKey::Region);
        let endpoint = (options.endpoint.clone())
            .or_else(|| builder.get_config_value(&AmazonS3ConfigKey::Endpoint));
        let region = match options.region.clone().or(env_region).or(profile.region) {
            Some(region) => region,
            None if endpoint.is_none() => object_store::aws::resolve_bucket_region(bucket, &client)
                .await
                .map_err(|e| {
                    Error::config(format!("finding the region of S3 bucket {bucket}"))
                        .source(e)
                        .hint("set the region, or AWS_REGION")
                })?,
            None => "us-east-1".to_string(),
        };
        let bucket_url = match &endpoint {
            Some(endpoint) => {
                let endpoint = if endpoint.contains("://") {
                    endpoint.trim_end_matches('/').to_string()
                } else {
                    format!("https://{}", endpoint.trim_end_matches('/'))
                };
                client = client.with_allow_http(endpoint.starts_with("http://"));
                let (scheme, host) = endpoint.split_once("://").expect("has a scheme");
                if options.uri_style_path {
                    format!("{endpoint}/{bucket}")
                } else {
                    // object_store takes a virtual-hosted endpoint with the bucket in it.
                    format!("{scheme}://{bucket}.{host}")
                }
            }
            None if options.uri_style_path => format!("https://s3.{region}.amazonaws.com/{bucket}"),
            None => format!("https://{bucket}.s3.{region}.amazonaws.com"),
        };
        builder = builder
            .with_region(&region)
            .with_virtual_hosted_style_request(!options.uri_style_path)
            .with_client_options(client.clone())
            .with_retry(RetryConfig {
                backoff: BackoffConfig::default(), // 100 ms doubling to 15 s, with jitter
                // The time budget decides, not a count: ten quick retries are over in
                // seconds, shorter than a storage node's restart.
                max_retries: 10_000,
                retry_timeout: Duration::from_secs(options.retry_seconds.unwrap_or(300)),
            });
        if endpoint.is_some() {
            let endpoint = match options.uri_style_path {
                true => bucket_url
                    .strip_suffix(&format!("/{bucket}"))
                    .unwrap_or(&bucket_url),
                false => bucket_url.as_str(),
            };
            builder = builder.with_endpoint(endpoint);
        }
        let store = builder.build().map_err(|e| {
            Error::config(format!("repository {url}: bad S3 configuration")).source(e)
        })?;
        let http = ReqwestConnector::default()
            .connect(&client)
            .map_err(|e| Error::config(format!("repository {url}: HTTP client")).source(e))?;
        let storage = S3Storage {
            store: Arc::new(store),
            bucket: bucket.to_string(),
            prefix,
            storage_class: options.storage_class,
            http,
            bucket_url,
            region,
            conditional_put: Default::default(),
        };
        // Fail now, with the cause, on a wrong bucket, endpoint or credentials.
        storage.list("").await?;
        Ok(storage)
    }

    /// Whether the server honours `If-None-Match: *` on PutObject (AWS since 2024-08,
    /// MinIO, moto 5). Probed once with a throwaway object.
    pub async fn supports_conditional_put(&self) -> bool {
        *self
            .conditional_put
            .get_or_init(|| async {
                let key = format!(
                    ".pgward-probe-{}-{}",
                    std::process::id(),
                    chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default()
                );
                let supported = matches!(self.put_if_absent(&key, b"1").await, Ok(true))
                    && matches!(self.put_if_absent(&key, b"2").await, Ok(false));
                let _ = self.delete(&key).await;
                supported
            })
            .await
    }

    /// Creates `key` unless an object is there; false if one was. Atomic only where
    /// `supports_conditional_put`; elsewhere the server may overwrite.
    pub async fn put_if_absent(&self, key: &str, bytes: &[u8]) -> Result<bool> {
        let opts = PutOptions {
            mode: PutMode::Create,
            attributes: self.attributes(),
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

    fn full_key(&self, key: &str) -> String {
        match (self.prefix.is_empty(), key.trim_matches('/')) {
            (_, "") => self.prefix.clone(),
            (true, key) => key.to_string(),
            (false, key) => format!("{}/{key}", self.prefix),
        }
    }

    fn path(&self, key: &str) -> Result<Path> {
        Path::parse(self.full_key(key))
            .map_err(|e| Error::new(ErrorKind::Io, format!("bad object key {key:?}")).source(e))
    }

    fn attributes(&self) -> Attributes {
        let mut attributes = Attributes::new();
        if let Some(class) = &self.storage_class {
            attributes.insert(Attribute::StorageClass, class.clone().into());
        }
        attributes
    }

    fn error(&self, action: &str, key: &str, e: object_store::Error) -> Error {
        error(&self.bucket, &self.full_key(key), action, e)
    }

    /// ListMultipartUploads of the direct children of `dir` (object_store has no call
    /// for it): (key, upload id) pairs.
    /// Key, upload id and start time of each multipart upload under `dir`.
    async fn list_uploads(
        &self,
        dir: &str,
    ) -> Result<Vec<(String, String, Option<chrono::DateTime<chrono::Utc>>)>> {
        let prefix = match self.full_key(dir) {
            p if p.is_empty() => p,
            p => p + "/",
        };
        let (mut uploads, mut key_marker, mut id_marker) =
            (Vec::new(), None::<String>, None::<String>);
        loop {
            let mut url = format!(
                "{}/?uploads&delimiter=%2F&prefix={}",
                self.bucket_url,
                escape(&prefix)
            );
            if let (Some(k), Some(i)) = (&key_marker, &id_marker) {
                url += &format!("&key-marker={}&upload-id-marker={}", escape(k), escape(i));
            }
            let body = self.signed_get(&url, dir).await?;
            for upload in xml_all(&body, "Upload") {
                let key = xml_one(upload, "Key").unwrap_or_default();
                // Direct children only; moto ignores the delimiter here.
                let child = key
                    .strip_prefix(&prefix)
                    .is_some_and(|rest| !rest.contains('/'));
                if let (true, Some(id)) = (child, xml_one(upload, "UploadId")) {
                    let initiated = xml_one(upload, "Initiated")
                        .and_then(|t| chrono::DateTime::parse_from_rfc3339(&t).ok())
                        .map(|t| t.with_timezone(&chrono::Utc));
                    uploads.push((key, id, initiated));
                }
            }
            if xml_one(&body, "IsTruncated").as_deref() != Some("true") {
                return Ok(uploads);
            }
            key_marker = xml_one(&body, "NextKeyMarker");
            id_marker = xml_one(&body, "NextUploadIdMarker");
        }
    }

    /// A signed GET with its own small retry loop (object_store's is private).
    async fn signed_get(&self, url: &str, dir: &str) -> Result<String> {
        let what = || {
            format!(
                "listing multipart uploads in s3://{}/{}",
                self.bucket,
                self.full_key(dir)
            )
        };
        let mut delay = Duration::from_millis(200);
        for attempt in 1.. {
            let credential = self
                .store
                .credentials()
                .get_credential()
                .await
                .map_err(|e| Error::new(ErrorKind::Config, what()).source(e))?;
            let mut request = http::Request::get(url)
                .body(HttpRequestBody::empty())
                .map_err(|e| Error::new(ErrorKind::Io, what()).source(e))?;
            AwsAuthorizer::new(&credential, "s3", &self.region)
                .try_authorize(&mut request, None)
                .map_err(|e| Error::new(ErrorKind::Io, what()).source(e))?;
            let failure = match self.http.execute(request).await {
                Ok(response) => {
                    let status = response.status();
                    match response.into_body().bytes().await {
                        Ok(body) if status.is_success() => {
                            return Ok(String::from_utf8_lossy(&body).into_owned())
                        }
                        Ok(body) => {
                            let body = String::from_utf8_lossy(&body);
                            let message = format!("{}: HTTP {status}: {body}", what());
                            if !(status.is_server_error() || status.as_u16() == 429) {
                                return Err(Error::new(ErrorKind::Io, message));
                            }
                            message
                        }
                        Err(e) => format!("{}: {e}", what()),
                    }
                }
                Err(e) => format!("{}: {e}", what()),
            };
            if attempt >= 6 {
                return Err(Error::new(ErrorKind::Io, failure));
            }
            tracing::debug!("{failure}; retrying");
            tokio::time::sleep(delay + Duration::from_millis(jitter_ms(delay))).await;
            delay *= 2;
        }
        unreachable!()
    }
}

/// Names bucket and key, keeps object_store's cause (status and S3's error body), and
/// sorts permanent setup problems from a missing object.
fn error(bucket: &str, key: &str, action: &str, e: object_store::Error) -> Error {
    use object_store::Error as E;
    let message = format!("{action} s3://{bucket}/{key}");
    let text = e.to_string();
    match e {
        _ if text.contains("NoSuchBucket") => Error::new(ErrorKind::Config, message)
            .source(e)
            .hint(format!(
                "bucket {bucket} does not exist: check its name, region and endpoint"
            )),
        E::NotFound { .. } => Error::new(ErrorKind::NotFound, message).source(e),
        E::PermissionDenied { .. } | E::Unauthenticated { .. } => {
            Error::new(ErrorKind::Config, message).source(e).hint(
                "check the credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, \
                 the instance role) and that they may use this bucket",
            )
        }
        _ => Error::new(ErrorKind::Io, message).source(e),
    }
}

/// Percent-encodes a query value (SigV4 wants everything but unreserved characters).
fn escape(value: &str) -> String {
    let mut out = String::new();
    for b in value.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(b as char)
            }
            _ => out += &format!("%{b:02X}"),
        }
    }
    out
}

fn jitter_ms(delay: Duration) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos() as u64;
    nanos % (delay.as_millis() as u64 + 1)
}

/// The text of every `<tag>...</tag>` in `xml` (S3's answers are flat enough for this).
fn xml_all<'a>(xml: &'a str, tag: &str) -> Vec<&'a str> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(start) = rest.find(&open) {
        let after = &rest[start + open.len()..];
        let Some(end) = after.find(&close) else { break };
        out.push(&after[..end]);
        rest = &after[end + close.len()..];
    }
    out
}

fn xml_one(xml: &str, tag: &str) -> Option<String> {
    let text = xml_all(xml, tag).into_iter().next()?;
    Some(
        text.replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&apos;", "'")
            .replace("&amp;", "&"),
    )
}

#[derive(Default)]
struct Profile {
    key_id: Option<String>,
    secret: Option<String>,
    token: Option<String>,
    region: Option<String>,
}

/// Static keys and region of AWS_PROFILE (or `default`) from the shared credentials and
/// config files, as the AWS CLI reads them.
fn shared_profile() -> Profile {
    let name = std::env::var("AWS_PROFILE").unwrap_or_else(|_| "default".into());
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    let file = |var: &str, default: &str| {
        std::env::var_os(var)
            .map(PathBuf::from)
            .unwrap_or_else(|| home.join(default))
    };
    let mut profile = Profile::default();
    let sources = [
        (
            file("AWS_SHARED_CREDENTIALS_FILE", ".aws/credentials"),
            name.clone(),
        ),
        (
            file("AWS_CONFIG_FILE", ".aws/config"),
            if name == "default" {
                name.clone()
            } else {
                format!("profile {name}")
            },
        ),
    ];
    for (path, section) in sources {
        let Ok(text) = std::fs::read_to_string(path) else {
            continue;
        };
        let mut inside = false;
        for line in text.lines().map(str::trim) {
            if let Some(header) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                inside = header.trim() == section;
            } else if let (true, Some((k, v))) = (inside, line.split_once('=')) {
                let v = Some(v.trim().to_string());
                match k.trim() {
                    "aws_access_key_id" if profile.key_id.is_none() => profile.key_id = v,
                    "aws_secret_access_key" if profile.secret.is_none() => profile.secret = v,
                    "aws_session_token" if profile.token.is_none() => profile.token = v,
                    "region" if profile.region.is_none() => profile.region = v,
                    _ => {}
                }
            }
        }
    }
    profile
}

#[async_trait]
impl Storage for S3Storage {
    async fn create_exclusive(&self, key: &str, bytes: &[u8]) -> Result<Option<bool>> {
        if !self.supports_conditional_put().await {
            return Ok(None);
        }
        self.put_if_absent(key, bytes).await.map(Some)
    }

    fn location(&self) -> String {
        match self.prefix.as_str() {
            "" => format!("s3://{}", self.bucket),
            prefix => format!("s3://{}/{prefix}", self.bucket),
        }
    }

    async fn list(&self, dir: &str) -> Result<Listing> {
        let full = self.full_key(dir);
        let prefix = if full.is_empty() {
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

    async fn read(&self, key: &str) -> Result<Reader> {
        self.get(key, None).await
    }

    async fn read_range(&self, key: &str, offset: u64, len: u64) -> Result<Reader> {
        if len == 0 {
            // S3 has no empty range; still report a missing object.
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

    /// Aborts the multipart uploads of interrupted writers in `dir` (their parts cost
    /// storage until then). Uploads that never got a part are found too.
    async fn remove_incomplete(
        &self,
        dir: &str,
        older_than: Option<std::time::Duration>,
    ) -> Result<usize> {
        let cutoff = older_than.map(|age| chrono::Utc::now() - age);
        let mut removed = 0;
        for (key, id, initiated) in self.list_uploads(dir).await? {
            if let Some(cutoff) = cutoff {
                if initiated.is_none_or(|t| t >= cutoff) {
                    continue;
                }
            }
            let path = Path::parse(&key).map_err(|e| {
                Error::new(ErrorKind::Io, format!("bad upload key {key:?}")).source(e)
            })?;
            match self.store.abort_multipart(&path, &id).await {
                Ok(()) => removed += 1,
                Err(object_store::Error::NotFound { .. }) => {} // finished or aborted meanwhile
                Err(e) => return Err(error(&self.bucket, &key, "aborting upload of", e)),
            }
        }
        Ok(removed)
    }
}

impl S3Storage {
    fn writer(&self, key: &str, part: usize, in_flight: usize) -> Result<Box<dyn ObjectWriter>> {
        let store: Arc<dyn ObjectStore> = self.store.clone();
        let writer = BufWriter::with_capacity(store, self.path(key)?, part)
            .with_max_concurrency(in_flight)
            .with_attributes(self.attributes());
        Ok(Box::new(S3Writer {
            inner: Some(writer),
            bucket: self.bucket.clone(),
            key: self.full_key(key),
        }))
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
        let (bucket, full) = (self.bucket.clone(), self.full_key(key));
        // Streams the body; object_store resumes it after a dropped connection.
        let stream = result.into_stream().map_err(move |e| {
            let kind = match e {
                object_store::Error::NotFound { .. } => std::io::ErrorKind::NotFound,
                _ => std::io::ErrorKind::Other,
            };
            std::io::Error::new(kind, format!("s3://{bucket}/{full}: {e}"))
        });
        Ok(Box::new(tokio_util::io::StreamReader::new(stream)))
    }
}

/// Buffers one part; from the first full part on it is a multipart upload whose parts
/// go up in the background, at most PARTS_IN_FLIGHT at once (writes wait for room).
struct S3Writer {
    inner: Option<BufWriter>,
    bucket: String,
    key: String,
}

impl S3Writer {
    fn inner(&mut self) -> &mut BufWriter {
        self.inner.as_mut().expect("writer used after finish")
    }
}

impl AsyncWrite for S3Writer {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(self.inner()).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(self.inner()).poll_flush(cx)
    }
    /// Not BufWriter's shutdown, which would publish the object: only `finish` may.
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(self.inner()).poll_flush(cx)
    }
}

#[async_trait]
impl ObjectWriter for S3Writer {
    async fn finish(mut self: Box<Self>) -> Result<()> {
        let mut writer = self.inner.take().expect("finish called once");
        // PutObject, or the last part and CompleteMultipartUpload. If this fails the
        // upload may stay behind, invisible, until remove_incomplete.
        let Err(e) = writer.shutdown().await else {
            return Ok(());
        };
        let cause = match e.into_inner().map(|e| e.downcast::<object_store::Error>()) {
            Some(Ok(e)) => return Err(error(&self.bucket, &self.key, "writing", *e)),
            Some(Err(e)) => e.to_string(),
            None => "upload failed".into(),
        };
        let (bucket, key) = (&self.bucket, &self.key);
        Err(Error::new(
            ErrorKind::Io,
            format!("writing s3://{bucket}/{key}: {cause}"),
        ))
    }
}

impl Drop for S3Writer {
    /// Abandoned: abort the multipart upload, if one started, in the background (best
    /// effort: a runtime shutting down may drop the task; remove_incomplete cleans up).
    fn drop(&mut self) {
        if let (Some(mut writer), Ok(runtime)) =
            (self.inner.take(), tokio::runtime::Handle::try_current())
        {
            runtime.spawn(async move {
                let _ = writer.abort().await;
            });
        }
    }
}

/// Against a real moto server (scripts/moto.sh installs it on first use, ~30 s), one per
/// test process, stopped by moto.sh's watcher when the process exits. Each test works in
/// its own bucket.
#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    fn moto() -> &'static str {
        static ENDPOINT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        ENDPOINT.get_or_init(|| {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("free port")
                .port();
            let dir = std::env::temp_dir().join(format!("pgward-moto-{}", std::process::id()));
            let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/moto.sh");
            let status = std::process::Command::new("bash")
                .args([script, "start", &port.to_string()])
                .arg(&dir)
                .env("PGWARD_MOTO_PARENT", std::process::id().to_string())
                .status()
                .expect("running scripts/moto.sh");
            assert!(status.success(), "scripts/moto.sh start failed");
            format!("http://127.0.0.1:{port}")
        })
    }

    /// CreateBucket; moto takes it unsigned.
    fn create_bucket(bucket: &str) {
        use std::io::{Read, Write};
        let host = moto().trim_start_matches("http://");
        let mut conn = std::net::TcpStream::connect(host).expect("connecting to moto");
        write!(
            conn,
            "PUT /{bucket} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut answer = String::new();
        conn.read_to_string(&mut answer).unwrap();
        assert!(
            answer.starts_with("HTTP/1.1 200"),
            "CreateBucket {bucket}: {answer}"
        );
    }

    async fn open(url: &str) -> Result<S3Storage> {
        let options = S3Options {
            endpoint: Some(moto().to_string()),
            region: Some("us-east-1".into()),
            uri_style_path: true,
            ..Default::default()
        };
        S3Storage::open_with_keys(url, options, Some(("test", "test"))).await
    }

    async fn storage(bucket: &str) -> S3Storage {
        create_bucket(bucket);
        open(&format!("s3://{bucket}/repo/"))
            .await
            .expect("opening")
    }

    async fn read(s: &S3Storage, key: &str) -> Result<Vec<u8>> {
        s.read_all(key).await
    }

    /// Not compressible, position-dependent bytes, so a misplaced part shows.
    fn pattern(len: usize) -> Vec<u8> {
        let mut x = 0x9e3779b97f4a7c15u64;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[tokio::test]
    async fn put_read_list_delete() {
        let s = storage("basics").await;
        assert_eq!(s.location(), "s3://basics/repo");
        s.put("a/one", b"first").await.unwrap();
        s.put("a/two", b"").await.unwrap();
        s.put("a/sub/x", b"x").await.unwrap();
        s.put("a/sub2/deeper/y", b"y").await.unwrap();
        s.put("top", b"t").await.unwrap();
        assert_eq!(read(&s, "a/one").await.unwrap(), b"first");
        assert_eq!(read(&s, "a/two").await.unwrap(), b"");

        // Overwrite replaces.
        s.put("a/one", b"second, longer").await.unwrap();
        assert_eq!(read(&s, "a/one").await.unwrap(), b"second, longer");

        let mut range = String::new();
        s.read_range("a/one", 8, 6)
            .await
            .unwrap()
            .read_to_string(&mut range)
            .await
            .unwrap();
        assert_eq!(range, "longer");
        let mut empty = Vec::new();
        s.read_range("a/one", 3, 0)
            .await
            .unwrap()
            .read_to_end(&mut empty)
            .await
            .unwrap();
        assert!(empty.is_empty());

        let listing = s.list("a").await.unwrap();
        let files: Vec<_> = listing
            .files
            .iter()
            .map(|f| (f.name.as_str(), f.size))
            .collect();
        assert_eq!(files, [("one", 14), ("two", 0)]);
        assert_eq!(listing.dirs, ["sub", "sub2"]);
        let now = chrono::Utc::now().timestamp();
        assert!(listing.files.iter().all(|f| (now - f.modified).abs() < 300));
        let root = s.list("").await.unwrap();
        assert_eq!(root.dirs, ["a"]);
        assert_eq!(root.files.len(), 1);
        assert!(s.list("missing").await.unwrap().files.is_empty());

        // The prefix is where objects land.
        let bucket_root = open("s3://basics").await.unwrap();
        assert_eq!(bucket_root.list("").await.unwrap().dirs, ["repo"]);
        assert_eq!(read(&bucket_root, "repo/top").await.unwrap(), b"t");

        s.delete("a/one").await.unwrap();
        s.delete("a/one").await.unwrap(); // absent is fine
        assert_eq!(s.list("a").await.unwrap().files.len(), 1);
    }

    #[tokio::test]
    async fn missing_object_is_not_found() {
        let s = storage("missing").await;
        for result in [
            s.read("nope").await.map(|_| ()),
            s.read_range("nope", 0, 10).await.map(|_| ()),
            s.read_range("nope", 0, 0).await.map(|_| ()),
        ] {
            let e = result.expect_err("an error");
            assert_eq!(e.kind, ErrorKind::NotFound, "{e}");
            assert!(e.to_string().contains("s3://missing/repo/nope"), "{e}");
        }
    }

    #[tokio::test]
    async fn missing_bucket_fails_at_open() {
        let e = open("s3://no-such-bucket/repo")
            .await
            .expect_err("an error");
        assert_eq!(e.kind, ErrorKind::Config, "{e}");
        assert!(e.to_string().contains("no-such-bucket"), "{e}");
        assert!(e.hint.unwrap().contains("does not exist"));
    }

    async fn multipart_round_trip(bucket: &str, large: bool, part: usize) {
        let s = storage(bucket).await;
        let data = pattern(2 * part + 12345);
        let mut writer = if large {
            s.create_large("big").await.unwrap()
        } else {
            s.create("big").await.unwrap()
        };
        for chunk in data.chunks(1 << 20) {
            writer.write_all(chunk).await.unwrap();
        }
        writer.flush().await.unwrap();
        // Parts are up by now, but only a multipart upload exists.
        assert!(read(&s, "big").await.unwrap_err().is_not_found());
        assert!(s.list("").await.unwrap().files.is_empty());
        assert_eq!(s.list_uploads("").await.unwrap().len(), 1);
        writer.finish().await.unwrap();

        assert_eq!(s.list("").await.unwrap().files[0].size, data.len() as u64);
        assert!(read(&s, "big").await.unwrap() == data);
        // A range across the first part boundary.
        let (offset, len) = (part - 1000, 5000);
        let mut got = Vec::new();
        let mut reader = s
            .read_range("big", offset as u64, len as u64)
            .await
            .unwrap();
        reader.read_to_end(&mut got).await.unwrap();
        assert!(got == data[offset..offset + len]);
        assert!(s.list_uploads("").await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn multipart_object_is_invisible_until_finished() {
        multipart_round_trip("multipart", false, PART_SIZE).await;
    }

    #[tokio::test]
    async fn large_objects_go_up_in_smaller_parts_and_read_back_whole() {
        multipart_round_trip("multipart-large", true, LARGE_PART_SIZE).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dropped_writers_leave_nothing() {
        let s = storage("dropped").await;
        s.put("d/kept", b"old").await.unwrap();

        let mut small = s.create("d/small").await.unwrap();
        small.write_all(b"never finished").await.unwrap();
        small.shutdown().await.unwrap(); // only `finish` publishes
        drop(small);

        let mut big = s.create("d/kept").await.unwrap();
        big.write_all(&pattern(PART_SIZE + 1)).await.unwrap();
        big.flush().await.unwrap();
        assert_eq!(s.list_uploads("d").await.unwrap().len(), 1);
        drop(big);

        let listing = s.list("d").await.unwrap();
        assert_eq!(listing.files.len(), 1);
        assert_eq!(read(&s, "d/kept").await.unwrap(), b"old");
        // Drop aborts the upload in the background.
        for _ in 0..100 {
            if s.list_uploads("d").await.unwrap().is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(s.list_uploads("d").await.unwrap().is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn write_blocking_commits_or_leaves_nothing() {
        let s = storage("blocking").await;
        let data = pattern(PART_SIZE + 4096);
        let copy = data.clone();
        super::super::write_blocking(&s, "ok", move |w| {
            w.write_all(&copy)
                .map_err(|e| Error::io("writing", "ok", e))
        })
        .await
        .unwrap();
        assert!(read(&s, "ok").await.unwrap() == data);

        let failed = super::super::write_blocking(&s, "failed", move |w| {
            w.write_all(&data)
                .map_err(|e| Error::io("writing", "failed", e))?;
            Err::<(), _>(Error::corrupt("producer gave up"))
        })
        .await;
        assert!(failed.is_err());
        assert!(read(&s, "failed").await.unwrap_err().is_not_found());
        for _ in 0..100 {
            if s.list_uploads("").await.unwrap().is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(s.list_uploads("").await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn remove_incomplete_aborts_stale_uploads() {
        let s = storage("stale").await;
        // What a killed process leaves: uploads, one with a part, never completed.
        for key in ["repo/d/a", "repo/d/b", "repo/d/sub/c", "repo/other"] {
            let id = s
                .store
                .create_multipart(&Path::parse(key).unwrap())
                .await
                .unwrap();
            if key.ends_with('a') {
                let part = bytes::Bytes::from(pattern(1000)).into();
                s.store
                    .put_part(&Path::parse(key).unwrap(), &id, 0, part)
                    .await
                    .unwrap();
            }
        }
        assert_eq!(s.remove_incomplete("d", None).await.unwrap(), 2);
        assert!(s.list_uploads("d").await.unwrap().is_empty());
        assert_eq!(s.list_uploads("d/sub").await.unwrap().len(), 1);
        assert_eq!(s.list_uploads("").await.unwrap().len(), 1);
        assert_eq!(s.remove_incomplete("d", None).await.unwrap(), 0);
        assert!(s.list("d").await.unwrap().files.is_empty());
    }

    #[tokio::test]
    async fn conditional_put() {
        let s = storage("conditional").await;
        assert!(s.supports_conditional_put().await);
        assert!(s.list("").await.unwrap().files.is_empty(), "probe removed");
        assert!(s.put_if_absent("lock", b"mine").await.unwrap());
        assert!(!s.put_if_absent("lock", b"theirs").await.unwrap());
        assert_eq!(read(&s, "lock").await.unwrap(), b"mine");
    }

    #[test]
    fn xml_and_keys() {
        let xml = "<R><Upload><Key>a&amp;b</Key><UploadId>1</UploadId></Upload>\
                   <Upload><Key>c</Key><UploadId>2</UploadId></Upload><IsTruncated>false</IsTruncated></R>";
        let uploads = xml_all(xml, "Upload");
        assert_eq!(uploads.len(), 2);
        assert_eq!(xml_one(uploads[0], "Key").unwrap(), "a&b");
        assert_eq!(escape("a/b c~"), "a%2Fb%20c~");
    }
}
