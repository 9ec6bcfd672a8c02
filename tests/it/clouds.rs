//! GCS and Azure repositories from the command line: what an operator who got the
//! bucket, the account or the key wrong is told. (Everything else they do is the
//! storage-independent pass of scripts/test.sh, `PGWARD_IT_STORE=gcs|azure`.)

use super::harness::*;
use super::setup::stderr;
use super::stores::{
    azurite, create_container, create_gcs_bucket, gcs_emulator, AZURITE_ACCOUNT, AZURITE_KEY,
};

/// `pgward ... info` on `url` with `options`: exit code and stderr.
fn info(url: &str, options: &[&str]) -> (Option<i32>, String) {
    let mut args = vec!["--repo", url, "--stanza", "main"];
    args.extend_from_slice(options);
    args.push("info");
    let out = pgward(&args, &[]);
    (out.status.code(), stderr(&out))
}

#[test]
fn azure_names_a_missing_container_a_wrong_key_and_a_missing_account() {
    let endpoint = format!("http://127.0.0.1:{}/{AZURITE_ACCOUNT}", azurite());
    let with = |key: &str| {
        [
            "--azure-endpoint".to_string(),
            endpoint.clone(),
            "--azure-account".to_string(),
            AZURITE_ACCOUNT.to_string(),
            "--azure-key".to_string(),
            key.to_string(),
        ]
    };
    let options = with(AZURITE_KEY);
    let options: Vec<&str> = options.iter().map(String::as_str).collect();
    let (code, err) = info("az://no-such-container/repo", &options);
    assert_eq!(code, Some(3), "{err}");
    assert!(
        err.contains("container no-such-container does not exist") && err.contains("HINT"),
        "{err}"
    );

    create_container(azurite(), "wrong-key");
    let wrong = with(&AZURITE_KEY.replace('E', "F"));
    let wrong: Vec<&str> = wrong.iter().map(String::as_str).collect();
    let (code, err) = info("az://wrong-key/repo", &wrong);
    assert_eq!(code, Some(3), "{err}");
    assert!(err.contains("--azure-key"), "{err}");

    if std::env::var_os("AZURE_STORAGE_ACCOUNT_NAME").is_none() {
        let (code, err) = info("az://wrong-key/repo", &[]);
        assert_eq!(code, Some(3), "{err}");
        assert!(
            err.contains("no Azure storage account") && err.contains("--azure-account"),
            "{err}"
        );
    }
}

#[test]
fn gcs_names_a_missing_bucket_and_a_missing_key_file_and_serves_an_existing_one() {
    let port = gcs_emulator();
    let dir = work_dir("gcs-cli");
    let key = dir.join("key.json");
    std::fs::write(
        &key,
        r#"{"private_key": "", "private_key_id": "", "client_email": "", "disable_oauth": true}"#,
    )
    .unwrap();
    chown_pg(&dir);
    let endpoint = format!("http://127.0.0.1:{port}");
    let key = key.display().to_string();
    let options = ["--gcs-endpoint", &endpoint, "--gcs-key-file", &key];

    let (code, err) = info("gs://no-such-bucket/repo", &options);
    assert_eq!(code, Some(3), "{err}");
    assert!(
        err.contains("bucket no-such-bucket does not exist") && err.contains("HINT"),
        "{err}"
    );

    let missing = [
        "--gcs-endpoint",
        &endpoint,
        "--gcs-key-file",
        "/nonexistent/key.json",
    ];
    let (code, err) = info("gs://no-such-bucket/repo", &missing);
    assert_ne!(code, Some(0), "{err}");
    assert!(
        err.contains("--gcs-key-file") && err.contains("/nonexistent/key.json"),
        "{err}"
    );

    // An existing bucket without a stanza: the stanza is what is missing, not the bucket.
    create_gcs_bucket(port, "cli-empty");
    let (code, err) = info("gs://cli-empty/repo", &options);
    assert_ne!(code, Some(0), "{err}");
    assert!(!err.contains("does not exist: check its name"), "{err}");
    assert!(err.contains("gs://cli-empty/repo"), "{err}");
}
