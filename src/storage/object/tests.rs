//! The storage contract, run against each provider's emulator (installed on first use
//! by its script, one server per test process, stopped by the script's watcher when the
//! process exits). Each test works in its own bucket or container. S3 has its own
//! copy in `s3/mod.rs`, which also covers ListMultipartUploads.

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use std::path::PathBuf;

use super::*;
use crate::storage::write_blocking;

/// Not compressible, position-dependent bytes, so a misplaced part shows.
pub(crate) fn pattern(len: usize) -> Vec<u8> {
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

/// A free loopback port for an emulator.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// Runs `scripts/NAME.sh start PORT DIR` with the watcher that stops it after us.
fn start_emulator(script: &str, parent_var: &str) -> u16 {
    let port = free_port();
    let dir = std::env::temp_dir().join(format!("pgward-{script}-{}", std::process::id()));
    let path = format!("{}/scripts/{script}.sh", env!("CARGO_MANIFEST_DIR"));
    let status = std::process::Command::new("bash")
        .args([&path, "start", &port.to_string()])
        .arg(&dir)
        .env(parent_var, std::process::id().to_string())
        .status()
        .unwrap_or_else(|e| panic!("running {path}: {e}"));
    assert!(status.success(), "{path} start failed");
    port
}

async fn read(s: &ObjectStorage, key: &str) -> Result<Vec<u8>> {
    s.read_all(key).await
}

async fn read_range(s: &ObjectStorage, key: &str, offset: u64, len: u64) -> Vec<u8> {
    let mut got = Vec::new();
    s.read_range(key, offset, len)
        .await
        .unwrap()
        .read_to_end(&mut got)
        .await
        .unwrap();
    got
}

/// `root`: the same bucket opened without the repository's prefix.
pub(crate) async fn put_read_list_delete(s: ObjectStorage, root: ObjectStorage) {
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
    assert_eq!(read_range(&s, "a/one", 8, 6).await, b"longer");
    assert!(read_range(&s, "a/one", 3, 0).await.is_empty());

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
    let top = s.list("").await.unwrap();
    assert_eq!(top.dirs, ["a"]);
    assert_eq!(top.files.len(), 1);
    assert!(s.list("missing").await.unwrap().files.is_empty());

    // The prefix is where objects land.
    assert_eq!(root.list("").await.unwrap().dirs, ["repo"]);
    assert_eq!(read(&root, "repo/top").await.unwrap(), b"t");

    // Narrowed listings: names that start with a string, files and directories, one
    // level down, under the repository's prefix or at the bucket's root.
    let names = |l: Listing| {
        let files: Vec<String> = l.files.into_iter().map(|f| f.name).collect();
        (files, l.dirs)
    };
    let listed = |dir: &'static str, start: &'static str| {
        let s = &s;
        async move { names(s.list_starting(dir, start).await.unwrap()) }
    };
    assert_eq!(listed("a", "o").await, (vec!["one".into()], vec![]));
    assert_eq!(
        listed("a", "s").await,
        (vec![], vec!["sub".into(), "sub2".into()])
    );
    assert_eq!(listed("a", "sub2").await, (vec![], vec!["sub2".into()]));
    assert_eq!(listed("a", "x").await, (vec![], vec![]));
    assert_eq!(listed("", "to").await, (vec!["top".into()], vec![]));
    assert_eq!(listed("missing", "o").await, (vec![], vec![]));
    let at_root = names(root.list_starting("", "rep").await.unwrap());
    assert_eq!(at_root, (vec![], vec!["repo".into()]));

    s.delete("a/one").await.unwrap();
    s.delete("a/one").await.unwrap(); // absent is fine
    assert_eq!(s.list("a").await.unwrap().files.len(), 1);
}

pub(crate) async fn missing_object_is_not_found(s: ObjectStorage) {
    let name = s.url_of("nope");
    for result in [
        s.read("nope").await.map(|_| ()),
        s.read_range("nope", 0, 10).await.map(|_| ()),
        s.read_range("nope", 0, 0).await.map(|_| ()),
    ] {
        let e = result.expect_err("an error");
        assert_eq!(e.kind, ErrorKind::NotFound, "{e}");
        assert!(e.to_string().contains(&name), "{e}");
    }
}

pub(crate) async fn missing_bucket_fails_the_first_request_with_a_hint(
    opened: Result<ObjectStorage>,
    bucket: &str,
) {
    let e = opened.expect_err("an error");
    assert_eq!(e.kind, ErrorKind::Config, "{e}");
    assert!(e.to_string().contains(bucket), "{e}");
    assert!(e.hint.unwrap().contains("does not exist"));
}

/// Multipart: invisible until `finish`, then whole, with ranges across part bounds.
pub(crate) async fn multipart_round_trip(s: ObjectStorage, large: bool) {
    let part = if large { LARGE_PART_SIZE } else { PART_SIZE };
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
    // Parts are up by now, but nothing is under the key.
    assert!(read(&s, "big").await.unwrap_err().is_not_found());
    assert!(s.list("").await.unwrap().files.is_empty());
    writer.finish().await.unwrap();

    assert_eq!(s.list("").await.unwrap().files[0].size, data.len() as u64);
    assert!(read(&s, "big").await.unwrap() == data);
    let (offset, len) = (part - 1000, 5000);
    assert!(read_range(&s, "big", offset as u64, len as u64).await == data[offset..offset + len]);
}

pub(crate) async fn dropped_writers_leave_nothing(s: ObjectStorage) {
    s.put("d/kept", b"old").await.unwrap();

    let mut small = s.create("d/small").await.unwrap();
    small.write_all(b"never finished").await.unwrap();
    small.shutdown().await.unwrap(); // only `finish` publishes
    drop(small);

    let mut big = s.create("d/kept").await.unwrap();
    big.write_all(&pattern(PART_SIZE + 1)).await.unwrap();
    big.flush().await.unwrap();
    drop(big);

    let listing = s.list("d").await.unwrap();
    assert_eq!(listing.files.len(), 1);
    assert_eq!(read(&s, "d/kept").await.unwrap(), b"old");
    assert_eq!(s.remove_incomplete("d", None).await.unwrap(), 0);
}

pub(crate) async fn write_blocking_commits_or_leaves_nothing(s: ObjectStorage) {
    let data = pattern(PART_SIZE + 4096);
    let copy = data.clone();
    write_blocking(&s, "ok", move |w| {
        w.write_all(&copy)
            .map_err(|e| Error::io("writing", "ok", e))
    })
    .await
    .unwrap();
    assert!(read(&s, "ok").await.unwrap() == data);

    let failed = write_blocking(&s, "failed", move |w| {
        w.write_all(&data)
            .map_err(|e| Error::io("writing", "failed", e))?;
        Err::<(), _>(Error::corrupt("producer gave up"))
    })
    .await;
    assert!(failed.is_err());
    assert!(read(&s, "failed").await.unwrap_err().is_not_found());
}

pub(crate) async fn conditional_create_has_one_winner(s: ObjectStorage) {
    assert_eq!(
        s.create_exclusive("claim", b"mine").await.unwrap(),
        Some(true)
    );
    assert_eq!(
        s.create_exclusive("claim", b"theirs").await.unwrap(),
        Some(false)
    );
    assert_eq!(read(&s, "claim").await.unwrap(), b"mine");
    // Racing claims of one name: exactly one wins.
    let s = Arc::new(s);
    let racers: Vec<_> = (0..8u8)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move { s.create_exclusive("race", &[i]).await.unwrap() })
        })
        .collect();
    let mut winners = 0;
    for racer in racers {
        winners += usize::from(racer.await.unwrap() == Some(true));
    }
    assert_eq!(winners, 1);
}

/// One `#[tokio::test]` per contract test, for a provider module that has
/// `storage(bucket)`, `root(bucket)` (the bucket opened without the prefix) and
/// `missing(bucket)` (opening a bucket that does not exist). S3's is in `s3/mod.rs`.
macro_rules! contract_tests {
    ($prefix:literal) => {
        #[tokio::test]
        async fn put_read_list_delete() {
            let b = concat!($prefix, "-basics");
            $crate::storage::object::tests::put_read_list_delete(storage(b).await, root(b).await)
                .await;
        }

        #[tokio::test]
        async fn missing_object_is_not_found() {
            $crate::storage::object::tests::missing_object_is_not_found(
                storage(concat!($prefix, "-missing")).await,
            )
            .await;
        }

        #[tokio::test]
        async fn missing_bucket_fails_the_first_request_with_a_hint() {
            let b = concat!($prefix, "-no-such-bucket");
            $crate::storage::object::tests::missing_bucket_fails_the_first_request_with_a_hint(
                missing(b).await,
                b,
            )
            .await;
        }

        #[tokio::test]
        async fn multipart_object_is_invisible_until_finished() {
            $crate::storage::object::tests::multipart_round_trip(
                storage(concat!($prefix, "-multipart")).await,
                false,
            )
            .await;
        }

        #[tokio::test]
        async fn large_objects_go_up_in_smaller_parts_and_read_back_whole() {
            $crate::storage::object::tests::multipart_round_trip(
                storage(concat!($prefix, "-large")).await,
                true,
            )
            .await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn dropped_writers_leave_nothing() {
            $crate::storage::object::tests::dropped_writers_leave_nothing(
                storage(concat!($prefix, "-dropped")).await,
            )
            .await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn write_blocking_commits_or_leaves_nothing() {
            $crate::storage::object::tests::write_blocking_commits_or_leaves_nothing(
                storage(concat!($prefix, "-blocking")).await,
            )
            .await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn conditional_create_has_one_winner() {
            $crate::storage::object::tests::conditional_create_has_one_winner(
                storage(concat!($prefix, "-conditional")).await,
            )
            .await;
        }
    };
}
pub(crate) use contract_tests;

/// Azurite (scripts/azurite.sh), its well-known account and key.
mod azure {
    use super::*;
    use crate::storage::azure::{open, AzureOptions};

    pub const ACCOUNT: &str = "devstoreaccount1";
    pub const KEY: &str =
        "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

    fn azurite() -> u16 {
        static PORT: std::sync::OnceLock<u16> = std::sync::OnceLock::new();
        *PORT.get_or_init(|| start_emulator("azurite", "PGWARD_AZURITE_PARENT"))
    }

    fn options() -> AzureOptions {
        AzureOptions {
            account: Some(ACCOUNT.into()),
            key: Some(KEY.into()),
            sas: None,
            endpoint: Some(format!("http://127.0.0.1:{}/{ACCOUNT}", azurite())),
        }
    }

    /// Create Container, signed with the account key (Azurite takes no anonymous one).
    async fn create_container(name: &str) {
        use object_store::azure::{AzureAccessKey, AzureAuthorizer, AzureCredential};
        use object_store::client::{HttpClient, HttpConnector, HttpRequestBody};
        let url = format!(
            "http://127.0.0.1:{}/{ACCOUNT}/{name}?restype=container",
            azurite()
        );
        let mut request = http::Request::put(&url)
            .header("content-length", "0")
            .body(HttpRequestBody::empty())
            .unwrap();
        let credential = AzureCredential::AccessKey(AzureAccessKey::try_new(KEY).unwrap());
        AzureAuthorizer::new(&credential, ACCOUNT)
            .try_authorize(&mut request)
            .unwrap();
        let client: HttpClient = object_store::client::ReqwestConnector::default()
            .connect(&object_store::ClientOptions::new().with_allow_http(true))
            .unwrap();
        let response = client.execute(request).await.unwrap();
        assert_eq!(response.status().as_u16(), 201, "Create Container {name}");
    }

    async fn storage(container: &str) -> ObjectStorage {
        create_container(container).await;
        open(
            &format!("az://{container}/repo/"),
            &options(),
            &Transport::default(),
        )
        .await
        .expect("opening")
    }

    async fn root(container: &str) -> ObjectStorage {
        open(
            &format!("az://{container}"),
            &options(),
            &Transport::default(),
        )
        .await
        .expect("opening")
    }

    /// Azure opens without a request, as S3 does: a missing container shows at the first.
    async fn missing(container: &str) -> Result<ObjectStorage> {
        let s = open(
            &format!("az://{container}/repo"),
            &options(),
            &Transport::default(),
        )
        .await?;
        s.list("").await?;
        Ok(s)
    }

    contract_tests!("az");

    #[tokio::test]
    async fn a_wrong_key_is_a_configuration_error_naming_the_credentials() {
        create_container("az-wrong-key").await;
        let mut options = options();
        options.key = Some(KEY.replace('E', "F"));
        let s = open("az://az-wrong-key/repo", &options, &Transport::default())
            .await
            .unwrap();
        let e = s.list("").await.expect_err("an error");
        assert_eq!(e.kind, ErrorKind::Config, "{e}");
        assert!(e.hint.clone().unwrap().contains("--azure-key"), "{e}");
    }

    #[tokio::test]
    async fn no_account_is_refused_before_any_request() {
        let e = open(
            "az://c/repo",
            &AzureOptions::default(),
            &Transport::default(),
        )
        .await
        .expect_err("an error");
        if std::env::var_os("AZURE_STORAGE_ACCOUNT_NAME").is_none() {
            assert!(e.to_string().contains("no Azure storage account"), "{e}");
            assert!(e.hint.unwrap().contains("--azure-account"));
        }
    }
}

/// fake-gcs-server behind scripts/gcs-xml-front.py (scripts/gcs-emulator.sh), reached
/// with a service account key that turns OAuth off, as object_store allows for emulators.
mod gcs {
    use super::*;
    use crate::storage::gcs::{open, GcsOptions};

    fn emulator() -> u16 {
        static PORT: std::sync::OnceLock<u16> = std::sync::OnceLock::new();
        *PORT.get_or_init(|| start_emulator("gcs-emulator", "PGWARD_GCS_PARENT"))
    }

    fn options() -> GcsOptions {
        static KEY_FILE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
        let key_file = KEY_FILE.get_or_init(|| {
            let path =
                std::env::temp_dir().join(format!("pgward-gcs-key-{}.json", std::process::id()));
            std::fs::write(
                &path,
                r#"{"private_key": "", "private_key_id": "", "client_email": "", "disable_oauth": true}"#,
            )
            .unwrap();
            path
        });
        GcsOptions {
            endpoint: Some(format!("http://127.0.0.1:{}", emulator())),
            key_file: Some(key_file.clone()),
        }
    }

    /// The JSON API's bucket insert, which the emulator takes unsigned.
    fn create_bucket(name: &str) {
        use std::io::{Read, Write};
        let port = emulator();
        let body = format!(r#"{{"name":"{name}"}}"#);
        let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        write!(
            conn,
            "POST /storage/v1/b HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: \
             application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut answer = String::new();
        conn.read_to_string(&mut answer).unwrap();
        assert!(
            answer.starts_with("HTTP/1.1 200"),
            "bucket {name}: {answer}"
        );
    }

    async fn storage(bucket: &str) -> ObjectStorage {
        create_bucket(bucket);
        open(
            &format!("gs://{bucket}/repo/"),
            &options(),
            &Transport::default(),
        )
        .await
        .expect("opening")
    }

    async fn root(bucket: &str) -> ObjectStorage {
        open(&format!("gs://{bucket}"), &options(), &Transport::default())
            .await
            .expect("opening")
    }

    /// GCS opens without a request, as S3 does: a missing bucket shows at the first.
    async fn missing(bucket: &str) -> Result<ObjectStorage> {
        let s = open(
            &format!("gs://{bucket}/repo"),
            &options(),
            &Transport::default(),
        )
        .await?;
        s.list("").await?;
        Ok(s)
    }

    contract_tests!("gs");

    #[tokio::test]
    async fn a_missing_key_file_is_named() {
        let mut options = options();
        options.key_file = Some("/nonexistent/key.json".into());
        let e = open("gs://b/repo", &options, &Transport::default())
            .await
            .expect_err("an error");
        assert!(e.to_string().contains("--gcs-key-file"), "{e}");
        assert!(e.to_string().contains("/nonexistent/key.json"), "{e}");
    }
}

#[test]
fn urls_name_a_bucket_and_a_clean_prefix() {
    assert_eq!(
        split_url("gs://b/x/y/", Provider::Gcs).unwrap(),
        ("b".to_string(), "x/y".to_string())
    );
    assert_eq!(
        split_url("az://c", Provider::Azure).unwrap(),
        ("c".to_string(), String::new())
    );
    let e = split_url("az:///p", Provider::Azure).unwrap_err();
    assert!(e.to_string().contains("names no container"), "{e}");
    assert!(e.hint.unwrap().contains("az://CONTAINER/PREFIX"));
    assert!(split_url("gs://b/a//b", Provider::Gcs).is_err());
    let (url, http) = endpoint_url("--gcs-endpoint", "http://127.0.0.1:4443/").unwrap();
    assert_eq!((url.as_str(), http), ("http://127.0.0.1:4443", true));
    for bad in ["127.0.0.1:4443", "ftp://h", "http://"] {
        assert!(endpoint_url("--gcs-endpoint", bad).is_err(), "{bad}");
    }
}
