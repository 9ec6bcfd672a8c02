//! Configuration of an S3 repository: the URL's bucket and prefix, endpoint and region
//! (resolved as the AWS CLI does), credentials (environment, shared profile files, web
//! identity, container and instance roles), TLS roots and the retry budget. The result is
//! a connected client; `S3Storage` only uses it.

use std::sync::Arc;

use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey};
use object_store::client::{HttpClient, HttpConnector};
use object_store::path::Path;

use super::credentials::Credentials;
use super::profile::ProfileFiles;
use super::reauth::Reauthorizing;
use super::retry_report::RetryReporter;
use crate::error::{Error, Result};
use crate::storage::object::Transport;

#[derive(Clone, Debug, Default)]
pub struct S3Options {
    /// `host[:port]` or a URL; https unless the URL says http. Default: AWS for the region.
    pub endpoint: Option<String>,
    /// Default: AWS_REGION / AWS_DEFAULT_REGION, the profile's, else asked of AWS.
    pub region: Option<String>,
    /// `https://endpoint/bucket/key` instead of `https://bucket.endpoint/key`. Unset:
    /// virtual-host style, except for an endpoint that is an IP address (no name to put
    /// the bucket in), which implies path style.
    pub uri_style_path: Option<bool>,
    /// For new objects (STANDARD_IA, GLACIER_IR, ...).
    pub storage_class: Option<String>,
    /// Static credentials (`s3-key`/`s3-key-secret`), beating every other source.
    pub access_key: Option<String>,
    pub secret_key: Option<String>,
    /// Timeouts, retry budget, trusted CAs and read-ahead, as for every object store.
    pub transport: Transport,
}

/// A configured, not yet probed, connection to one repository in one bucket.
pub(super) struct Connection {
    pub store: AmazonS3,
    pub bucket: String,
    /// Key prefix of the repository, without slashes at either end ("" for the bucket root).
    pub prefix: String,
    /// For the one request object_store lacks: ListMultipartUploads.
    pub http: HttpClient,
    pub bucket_url: String,
    pub region: String,
}

/// `keys`: static credentials that override every other source.
pub(super) async fn connect(
    url: &str,
    options: &S3Options,
    keys: Option<(&str, &str)>,
) -> Result<Connection> {
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
    // object_store reads no shared files: AWS_PROFILE's credentials come from
    // `credentials.rs`, after the keys given and those in the environment.
    let profile_files = ProfileFiles::from_env();
    let profile = profile_files.read();
    let from_profile = keys.is_none()
        && std::env::var_os("AWS_ACCESS_KEY_ID").is_none()
        && profile.has_credentials();
    if let Some((id, secret)) = keys {
        builder = builder
            .with_access_key_id(id)
            .with_secret_access_key(secret);
    }

    let mut client = options.transport.client_options(false)?;

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
    let endpoint = endpoint.as_deref().map(parse_endpoint).transpose()?;
    let path_style = match (&endpoint, options.uri_style_path) {
        (Some(e), Some(false)) if e.is_ip => {
            return Err(Error::config(format!(
                "S3 endpoint {}: an IP address cannot be addressed virtual-host style \
                 (bucket.{})",
                e.url, e.host
            ))
            .hint("use --s3-uri-style path (or leave it unset), or a host name"))
        }
        (Some(e), None) if e.is_ip => {
            tracing::debug!(
                "S3 endpoint {} is an IP address: path-style requests",
                e.url
            );
            true
        }
        (_, style) => style.unwrap_or(false),
    };
    let bucket_url = match &endpoint {
        Some(e) => {
            client = client.with_allow_http(e.url.starts_with("http://"));
            if path_style {
                format!("{}/{bucket}", e.url)
            } else {
                // object_store takes a virtual-hosted endpoint with the bucket in it.
                format!("{}://{bucket}.{}", e.scheme, e.host)
            }
        }
        None if path_style => format!("https://s3.{region}.amazonaws.com/{bucket}"),
        None => format!("https://{bucket}.s3.{region}.amazonaws.com"),
    };
    let reporter = RetryReporter::new(bucket, options.transport.retry_budget());
    builder = builder
        .with_region(&region)
        .with_virtual_hosted_style_request(!path_style)
        .with_client_options(client.clone())
        .with_retry(options.transport.retry_config());
    if endpoint.is_some() {
        let endpoint = match path_style {
            true => bucket_url
                .strip_suffix(&format!("/{bucket}"))
                .unwrap_or(&bucket_url),
            false => bucket_url.as_str(),
        };
        builder = builder.with_endpoint(endpoint);
    }
    let bad = |e| Error::config(format!("repository {url}: bad S3 configuration")).source(e);
    let credentials = Arc::new(match from_profile {
        true => Credentials::profile(profile_files)
            .await
            .map_err(|e| Error::config(format!("repository {url}: {e}")))?,
        false => Credentials::chain(
            builder.clone().with_http_connector(reporter.clone()),
            keys.is_some(),
        )
        .map_err(bad)?,
    });
    let connector = Reauthorizing::new(reporter, credentials.clone(), &region);
    let store = builder
        .with_http_connector(connector.clone())
        .with_credentials(credentials)
        .build()
        .map_err(bad)?;
    let http = connector
        .connect(&client)
        .map_err(|e| Error::config(format!("repository {url}: HTTP client")).source(e))?;
    Ok(Connection {
        store,
        bucket: bucket.to_string(),
        prefix,
        http,
        bucket_url,
        region,
    })
}

/// An endpoint as the user wrote it, checked: object_store would panic later on a host it
/// cannot put into a URL.
struct Endpoint {
    /// `scheme://host[:port][/path]`, no trailing slash.
    url: String,
    scheme: String,
    /// `host[:port]`.
    host: String,
    is_ip: bool,
}

/// `host[:port]` means https (credentials never go out in clear by guess); a plain-HTTP
/// store (MinIO on a laptop, moto) is written `http://host:port`.
fn parse_endpoint(endpoint: &str) -> Result<Endpoint> {
    let trimmed = endpoint.trim();
    let trimmed = match trimmed.split_once("://") {
        // Not "http:" from "http://": the empty host must stay visible.
        Some((_, rest)) if !rest.is_empty() => trimmed.trim_end_matches('/'),
        _ => trimmed,
    };
    let with_scheme = if trimmed.contains("://") {
        trimmed.to_string()
    } else {
        format!("https://{trimmed}")
    };
    let bad = |why: String| {
        Error::config(format!("S3 endpoint {endpoint:?}: {why}"))
            .hint("write it as host[:port] (https) or http://host:port, e.g. http://127.0.0.1:9000")
    };
    let url = url::Url::parse(&with_scheme).map_err(|e| bad(e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad(format!(
            "scheme {:?} is not http or https",
            url.scheme()
        )));
    }
    let host = match url.host() {
        Some(host) => host,
        None => return Err(bad("no host".into())),
    };
    let is_ip = !matches!(host, url::Host::Domain(_));
    let authority = match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_string(),
    };
    Ok(Endpoint {
        url: with_scheme,
        scheme: url.scheme().to_string(),
        host: authority,
        is_ip,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_checked_and_ip_addresses_recognised() {
        let e = parse_endpoint("127.0.0.1:9000").unwrap();
        assert_eq!(
            (e.url.as_str(), e.host.as_str(), e.is_ip),
            ("https://127.0.0.1:9000", "127.0.0.1:9000", true)
        );
        let e = parse_endpoint("http://[::1]:9000/").unwrap();
        assert_eq!(
            (e.url.as_str(), e.scheme.as_str(), e.is_ip),
            ("http://[::1]:9000", "http", true)
        );
        let e = parse_endpoint("minio.internal").unwrap();
        assert_eq!((e.url.as_str(), e.is_ip), ("https://minio.internal", false));
        for bad in ["http://[::1", "ftp://host", "http://", "host:port"] {
            let err = parse_endpoint(bad)
                .err()
                .unwrap_or_else(|| panic!("{bad} accepted"));
            assert_eq!(err.kind, crate::error::ErrorKind::Config, "{bad}");
        }
    }

    #[tokio::test]
    async fn an_ip_endpoint_is_path_style_unless_told_host_which_is_refused() {
        let options = |style| S3Options {
            endpoint: Some("http://127.0.0.1:9".into()),
            region: Some("us-east-1".into()),
            uri_style_path: style,
            ..Default::default()
        };
        let c = connect("s3://b/p", &options(None), Some(("k", "s")))
            .await
            .unwrap();
        assert_eq!(c.bucket_url, "http://127.0.0.1:9/b");
        let e = connect("s3://b/p", &options(Some(false)), Some(("k", "s")))
            .await
            .err()
            .unwrap();
        assert!(
            e.to_string()
                .contains("cannot be addressed virtual-host style"),
            "{e}"
        );
    }
}
