//! The object stores the storage-independent tests run a second time against
//! (`PGWARD_IT_STORE=s3|gcs|azure`; `PGWARD_IT_S3=1` is s3): a local server of each,
//! started once per test process by its script (stopped by the script's watcher when the
//! process exits), and a bucket or container per test.

use super::setup::{create_bucket, moto};

/// Which object store `PGWARD_IT_STORE` (or `PGWARD_IT_S3`) asks for; None: local.
pub fn selected() -> Option<&'static str> {
    match std::env::var("PGWARD_IT_STORE").ok().as_deref() {
        Some("s3") => Some("s3"),
        Some("gcs") => Some("gcs"),
        Some("azure") => Some("azure"),
        Some("") | None => std::env::var_os("PGWARD_IT_S3").map(|_| "s3"),
        Some(other) => panic!("PGWARD_IT_STORE={other}: expected s3, gcs or azure"),
    }
}

/// A fresh bucket (container) in `store` for the test `name`: the repository URL and
/// the configuration file text that reaches it (`dir`: where it may put files it names).
pub fn repository(store: &str, name: &str, dir: &std::path::Path) -> (String, String) {
    // Valid for all three: lowercase letters, digits and single hyphens.
    let bucket = format!("it-{}", name.to_lowercase().replace('_', "-"));
    match store {
        "s3" => {
            let port = moto();
            create_bucket(port, &bucket);
            (
                format!("s3://{bucket}/repo"),
                format!(
                    "[global]\ns3-endpoint = \"http://127.0.0.1:{port}\"\ns3-region = \
                     \"us-east-1\"\ns3-uri-style = \"path\"\ns3-key = \"test\"\n\
                     s3-key-secret = \"test\"\n"
                ),
            )
        }
        "azure" => {
            let port = azurite();
            create_container(port, &bucket);
            (
                format!("az://{bucket}/repo"),
                format!(
                    "[global]\nazure-endpoint = \"http://127.0.0.1:{port}/{AZURITE_ACCOUNT}\"\n\
                     azure-account = \"{AZURITE_ACCOUNT}\"\nazure-key = \"{AZURITE_KEY}\"\n"
                ),
            )
        }
        "gcs" => {
            let port = gcs_emulator();
            create_gcs_bucket(port, &bucket);
            // object_store's way to an emulator: a service account key without OAuth.
            let key = dir.join("gcs-key.json");
            std::fs::write(
                &key,
                r#"{"private_key": "", "private_key_id": "", "client_email": "", "disable_oauth": true}"#,
            )
            .unwrap();
            (
                format!("gs://{bucket}/repo"),
                format!(
                    "[global]\ngcs-endpoint = \"http://127.0.0.1:{port}\"\n\
                     gcs-key-file = \"{}\"\n",
                    key.display()
                ),
            )
        }
        other => panic!("no object store {other}"),
    }
}

fn start_server(script: &str, parent_var: &str) -> u16 {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let dir = std::env::temp_dir().join(format!("pgward-it-{script}-{}", std::process::id()));
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

/// Azurite's account and its well-known key.
pub const AZURITE_ACCOUNT: &str = "devstoreaccount1";
pub const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// An Azurite for this test process (scripts/azurite.sh).
pub fn azurite() -> u16 {
    static PORT: std::sync::OnceLock<u16> = std::sync::OnceLock::new();
    *PORT.get_or_init(|| start_server("azurite", "PGWARD_AZURITE_PARENT"))
}

/// Create Container, signed with the account key (Azurite takes no anonymous one).
pub fn create_container(port: u16, name: &str) {
    use object_store::azure::{AzureAccessKey, AzureAuthorizer, AzureCredential};
    use object_store::client::{HttpConnector, HttpRequestBody};
    let url = format!("http://127.0.0.1:{port}/{AZURITE_ACCOUNT}/{name}?restype=container");
    let mut request = http::Request::put(&url)
        .header("content-length", "0")
        .body(HttpRequestBody::empty())
        .unwrap();
    let credential = AzureCredential::AccessKey(AzureAccessKey::try_new(AZURITE_KEY).unwrap());
    AzureAuthorizer::new(&credential, AZURITE_ACCOUNT)
        .try_authorize(&mut request)
        .unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let status = runtime.block_on(async {
        let client = object_store::client::ReqwestConnector::default()
            .connect(&object_store::ClientOptions::new().with_allow_http(true))
            .unwrap();
        client.execute(request).await.unwrap().status()
    });
    assert_eq!(status.as_u16(), 201, "Create Container {name}");
}

/// A GCS emulator for this test process (scripts/gcs-emulator.sh).
pub fn gcs_emulator() -> u16 {
    static PORT: std::sync::OnceLock<u16> = std::sync::OnceLock::new();
    *PORT.get_or_init(|| start_server("gcs-emulator", "PGWARD_GCS_PARENT"))
}

/// The JSON API's bucket insert, which the emulator takes unsigned.
pub fn create_gcs_bucket(port: u16, name: &str) {
    use std::io::{Read, Write};
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
