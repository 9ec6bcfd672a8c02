//! S3-compatible storage (AWS S3, MinIO, Ceph, ...): the common object storage
//! (`storage::object`: reads, listing, the part writer, errors) over object_store's S3
//! client, plus what only S3 needs. Visibility matches the local backend: an object
//! smaller than a part is one PutObject at `finish`; a bigger one is a multipart upload
//! that only CompleteMultipartUpload, at `finish`, makes visible. Until then nothing is
//! under the key. `config` turns options and the environment into a client; `upload`
//! cleans up the uploads that interrupted writers left behind (ListMultipartUploads,
//! which object_store lacks). Conditional PutObject is probed (not every S3-compatible
//! server honours it), and the answer remembered on the host for an hour
//! (`put_probe`). Opening makes no request: a wrong bucket, endpoint or credentials
//! fail the first real request with the same hint (`Provider::error`).

use std::sync::Arc;

use async_trait::async_trait;
use object_store::aws::AmazonS3;
use object_store::client::HttpClient;
use object_store::Attribute;

use super::object::{ObjectStorage, Provider};
use super::{Listing, ObjectWriter, Reader, Storage};
use crate::error::Result;

mod config;
mod credentials;
mod profile;
mod put_probe;
mod reauth;
mod upload;

pub use config::S3Options;
/// Credentials S3 refused even after going back to their source (`reauth`).
pub(crate) use reauth::Rejected;
// config.rs names it `super::retry_report`; it is shared with the other stores.
use super::object::retry_report;
#[cfg(test)]
use super::object::PART_SIZE;

#[derive(Debug)]
pub struct S3Storage {
    object: ObjectStorage,
    /// The same client as `object`'s, typed: its credentials sign ListMultipartUploads.
    store: Arc<AmazonS3>,
    /// For the one request object_store lacks: ListMultipartUploads.
    http: HttpClient,
    bucket_url: String,
    region: String,
    conditional_put: tokio::sync::OnceCell<bool>,
    /// Where the conditional-put probe's answer is remembered (`put_probe`); None in
    /// unit tests, which probe every time.
    put_probe_answer: Option<std::path::PathBuf>,
}

impl S3Storage {
    pub async fn open(url: &str, options: S3Options) -> Result<S3Storage> {
        let (id, secret) = (options.access_key.clone(), options.secret_key.clone());
        let mut storage =
            Self::open_with_keys(url, options, id.as_deref().zip(secret.as_deref())).await?;
        storage.put_probe_answer = Some(put_probe::answer_path(&storage.bucket_url));
        Ok(storage)
    }

    /// `keys`: static credentials that override every other source (tests).
    async fn open_with_keys(
        url: &str,
        options: S3Options,
        keys: Option<(&str, &str)>,
    ) -> Result<S3Storage> {
        let c = config::connect(url, &options, keys).await?;
        let store = Arc::new(c.store);
        let read_ahead = options.transport.read_ahead();
        let mut object =
            ObjectStorage::new(store.clone(), Provider::S3, c.bucket, c.prefix, read_ahead);
        if let Some(class) = options.storage_class {
            object
                .attributes
                .insert(Attribute::StorageClass, class.into());
        }
        let storage = S3Storage {
            object,
            store,
            http: c.http,
            bucket_url: c.bucket_url,
            region: c.region,
            conditional_put: Default::default(),
            put_probe_answer: None,
        };
        Ok(storage)
    }

    /// Whether the server honours `If-None-Match: *` on PutObject (AWS since 2024-08,
    /// MinIO, moto 5). Probed with a throwaway object, unless this host probed the same
    /// endpoint and bucket within the hour (`put_probe`).
    pub async fn supports_conditional_put(&self) -> bool {
        *self
            .conditional_put
            .get_or_init(|| async {
                let remembered = self.put_probe_answer.as_deref();
                if let Some(answer) = remembered.and_then(put_probe::recall) {
                    return answer;
                }
                let key = format!(
                    ".pgward-probe-{}-{}",
                    std::process::id(),
                    chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default()
                );
                let supported = matches!(self.put_if_absent(&key, b"1").await, Ok(true))
                    && matches!(self.put_if_absent(&key, b"2").await, Ok(false));
                let _ = self.delete(&key).await;
                if let Some(path) = remembered {
                    put_probe::remember(path, supported);
                }
                supported
            })
            .await
    }

    /// Creates `key` unless an object is there; false if one was. Atomic only where
    /// `supports_conditional_put`; elsewhere the server may overwrite.
    pub async fn put_if_absent(&self, key: &str, bytes: &[u8]) -> Result<bool> {
        self.object.put_if_absent(key, bytes).await
    }

    fn bucket(&self) -> &str {
        &self.object.bucket
    }

    fn full_key(&self, key: &str) -> String {
        self.object.full_key(key)
    }
}

#[async_trait]
impl Storage for S3Storage {
    fn read_ahead(&self) -> usize {
        self.object.read_ahead()
    }

    fn large_writer_memory(&self) -> u64 {
        self.object.large_writer_memory()
    }

    async fn create_exclusive(&self, key: &str, bytes: &[u8]) -> Result<Option<bool>> {
        if !self.supports_conditional_put().await {
            return Ok(None);
        }
        self.put_if_absent(key, bytes).await.map(Some)
    }

    fn location(&self) -> String {
        self.object.location()
    }

    async fn list(&self, dir: &str) -> Result<Listing> {
        self.object.list(dir).await
    }

    async fn list_starting(&self, dir: &str, start: &str) -> Result<Listing> {
        self.object.list_starting(dir, start).await
    }

    async fn read(&self, key: &str) -> Result<Reader> {
        self.object.read(key).await
    }

    async fn read_range(&self, key: &str, offset: u64, len: u64) -> Result<Reader> {
        self.object.read_range(key, offset, len).await
    }

    async fn create(&self, key: &str) -> Result<Box<dyn ObjectWriter>> {
        self.object.create(key).await
    }

    async fn create_large(&self, key: &str) -> Result<Box<dyn ObjectWriter>> {
        self.object.create_large(key).await
    }

    async fn delete(&self, key: &str) -> Result<()> {
        self.object.delete(key).await
    }

    /// Aborts the multipart uploads of interrupted writers in `dir` (their parts cost
    /// storage until then). Uploads that never got a part are found too.
    async fn remove_incomplete(
        &self,
        dir: &str,
        older_than: Option<std::time::Duration>,
    ) -> Result<usize> {
        self.remove_incomplete_uploads(dir, older_than).await
    }
}

/// Against a real moto server (scripts/moto.sh installs it on first use, ~30 s), one per
/// test process, stopped by moto.sh's watcher when the process exits. Each test works in
/// its own bucket.
#[cfg(test)]
mod tests {
    use std::time::Duration;

    use object_store::multipart::MultipartStore;
    use object_store::path::Path;
    use tokio::io::AsyncWriteExt;

    use super::*;
    use crate::storage::object::tests::pattern;

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
            uri_style_path: Some(true),
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

    /// The storage contract every object store keeps (`object/tests.rs`), on moto;
    /// what only S3 has (upload listings, the conditional-put probe) is tested below.
    mod contract {
        use crate::error::Result;
        use crate::storage::object::ObjectStorage;
        use crate::storage::Storage;

        async fn storage(bucket: &str) -> ObjectStorage {
            super::storage(bucket).await.object
        }

        async fn root(bucket: &str) -> ObjectStorage {
            super::open(&format!("s3://{bucket}")).await.unwrap().object
        }

        /// S3 opens without a request: a missing bucket shows at the first one.
        async fn missing(bucket: &str) -> Result<ObjectStorage> {
            let s = super::open(&format!("s3://{bucket}/repo")).await?;
            s.list("").await?;
            Ok(s.object)
        }

        crate::storage::object::tests::contract_tests!("s3");
    }

    #[tokio::test]
    async fn a_missing_bucket_fails_the_first_request_with_a_hint_not_as_a_missing_object() {
        // Opening makes no request; every kind of first request names the bucket.
        let s = open("s3://no-such-bucket/repo").await.unwrap();
        for result in [
            s.read_all("main/keyfile.json").await.map(|_| ()),
            s.list("main/archive").await.map(|_| ()),
            s.put("main/stanza.json", b"{}").await,
        ] {
            let e = result.expect_err("an error");
            assert_eq!(e.kind, crate::error::ErrorKind::Config, "{e}");
            assert!(e.to_string().contains("no-such-bucket"), "{e}");
            assert!(e.hint.unwrap().contains("does not exist"));
        }
    }

    /// A multipart upload is listed (and nothing is under the key) until `finish`.
    #[tokio::test]
    async fn a_multipart_upload_is_listed_until_finished() {
        let s = storage("multipart-listed").await;
        let mut writer = s.create("big").await.unwrap();
        writer.write_all(&pattern(PART_SIZE + 1)).await.unwrap();
        writer.flush().await.unwrap();
        assert!(read(&s, "big").await.unwrap_err().is_not_found());
        assert_eq!(s.list_uploads("").await.unwrap().len(), 1);
        writer.finish().await.unwrap();
        assert!(s.list_uploads("").await.unwrap().is_empty());
    }

    /// What S3 adds to the contract's `dropped_writers_leave_nothing`: a dropped
    /// writer's multipart upload is aborted, not left to be billed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dropped_writers_abort_their_uploads() {
        let s = storage("dropped").await;
        let mut big = s.create("d/big").await.unwrap();
        big.write_all(&pattern(PART_SIZE + 1)).await.unwrap();
        big.flush().await.unwrap();
        assert_eq!(s.list_uploads("d").await.unwrap().len(), 1);
        drop(big);
        assert!(s.list("d").await.unwrap().files.is_empty());
        // Drop aborts the upload in the background.
        for _ in 0..100 {
            if s.list_uploads("d").await.unwrap().is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(s.list_uploads("d").await.unwrap().is_empty());
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
}
