//! Requests whose credentials S3 rejects mid-run are signed again with renewed ones.
//!
//! object_store signs a request once and retries only 5xx, 429 and transport errors: a
//! 403 `ExpiredToken` ends the call, and with it a backup hours long. This layer wraps
//! the HTTP client object_store sends through (around `retry_report`'s), so it sees every
//! signed request and its answer. On an answer that blames the credentials it asks the
//! source for current ones ([`Credentials::renew`]), signs a copy of the request with
//! them and sends it again, a few times with a short pause (new IAM keys take seconds to
//! be accepted everywhere). When the source has nothing new, or the new credentials are
//! refused too, the request fails with [`Rejected`], which names the source, and
//! `S3Storage` turns that into an error with a hint.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use http::header::AUTHORIZATION;
use http::StatusCode;
use object_store::aws::{AwsAuthorizer, AwsCredential};
use object_store::client::{
    HttpClient, HttpConnector, HttpError, HttpErrorKind, HttpRequest, HttpResponse,
    HttpResponseBody, HttpService,
};
use object_store::ClientOptions;

use super::credentials::Credentials;
use super::retry_report::RetryReporter;

/// Error codes that mean "these credentials", not "this request" (AccessDenied is a
/// policy, which new keys of the same identity do not change).
const CREDENTIAL_ERRORS: [&str; 5] = [
    "ExpiredToken",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "TokenRefreshRequired",
    "InvalidToken",
];
/// Pauses before the sends with renewed credentials.
const PAUSES: [Duration; 3] = [
    Duration::ZERO,
    Duration::from_millis(500),
    Duration::from_millis(1500),
];

#[derive(Debug, Clone)]
pub(super) struct Reauthorizing {
    inner: RetryReporter,
    credentials: Arc<Credentials>,
    region: String,
}

impl Reauthorizing {
    pub(super) fn new(inner: RetryReporter, credentials: Arc<Credentials>, region: &str) -> Self {
        Reauthorizing {
            inner,
            credentials,
            region: region.to_string(),
        }
    }
}

impl HttpConnector for Reauthorizing {
    fn connect(&self, options: &ClientOptions) -> object_store::Result<HttpClient> {
        Ok(HttpClient::new(Client {
            inner: self.inner.connect(options)?,
            credentials: self.credentials.clone(),
            region: self.region.clone(),
        }))
    }
}

#[derive(Debug)]
struct Client {
    inner: HttpClient,
    credentials: Arc<Credentials>,
    region: String,
}

/// S3 refused the credentials of a request, also after they were read again.
#[derive(Debug)]
pub(crate) struct Rejected {
    /// Where the credentials came from.
    pub source: String,
    pub hint: String,
    /// S3's error code and message ("ExpiredToken: The provided token has expired.").
    pub why: String,
    /// Whether the source gave other credentials, which were refused too.
    pub renewed: bool,
}

impl std::fmt::Display for Rejected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "S3 rejected the credentials from {} ({}), ",
            self.source, self.why
        )?;
        match self.renewed {
            true => write!(f, "also after reading them again"),
            false => write!(f, "and reading them again found none newer"),
        }
    }
}

impl std::error::Error for Rejected {}

impl Rejected {
    /// The rejection behind an object_store error, if that is what it is.
    pub(crate) fn find<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a Rejected> {
        let mut cause = Some(e);
        while let Some(e) = cause {
            if let Some(r) = e.downcast_ref::<Rejected>() {
                return Some(r);
            }
            cause = e.source();
        }
        None
    }
}

#[async_trait]
impl HttpService for Client {
    async fn call(&self, request: HttpRequest) -> Result<HttpResponse, HttpError> {
        let signed = request
            .headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("AWS4-HMAC-SHA256 Credential="))
            .and_then(|v| v.split_once('/'))
            .map(|(key_id, _)| key_id.to_string());
        let Some(mut key_id) = signed else {
            // Unsigned: credential services themselves (STS, metadata).
            return self.inner.execute(request).await;
        };
        let mut signed_at = Instant::now();
        let copy = request.clone();
        let mut response = self.inner.execute(request).await?;
        let mut renewed_any = false;
        for pause in PAUSES {
            let (answer, why) = match rejection(response).await? {
                Ok(accepted) => return Ok(accepted),
                Err(rejected) => rejected,
            };
            let renewed = self
                .credentials
                .renew(signed_at)
                .await
                .map_err(|e| HttpError::new(HttpErrorKind::Unknown, e))?;
            // Other keys, or the same key id with another secret or token. Once new
            // ones were refused, they are sent again after a pause (propagation).
            let fresh = renewed.credential.key_id != key_id || renewed.changed;
            if !fresh && !renewed_any {
                return match why {
                    // A HEAD's 403 has no body to say why: it was about something else.
                    None => Ok(answer),
                    Some(why) => Err(self.rejected(why, false)),
                };
            }
            renewed_any = true;
            tokio::time::sleep(pause).await;
            let mut again = copy.clone();
            sign(&mut again, &renewed.credential, &self.region)?;
            (key_id, signed_at) = (renewed.credential.key_id.clone(), Instant::now());
            response = self.inner.execute(again).await?;
        }
        match rejection(response).await? {
            Ok(accepted) => Ok(accepted),
            Err((answer, None)) => Ok(answer),
            Err((_, Some(why))) => Err(self.rejected(why, true)),
        }
    }
}

impl Client {
    fn rejected(&self, why: String, renewed: bool) -> HttpError {
        HttpError::new(
            HttpErrorKind::Unknown,
            Rejected {
                source: self.credentials.describe(),
                hint: self.credentials.hint(),
                why,
                renewed,
            },
        )
    }
}

/// `Ok(response)` unless it blames the credentials; then the response rebuilt (its body
/// was read) and S3's code and message (None for a 403 without a body: a HEAD's).
async fn rejection(
    response: HttpResponse,
) -> Result<Result<HttpResponse, (HttpResponse, Option<String>)>, HttpError> {
    if !matches!(
        response.status(),
        StatusCode::FORBIDDEN | StatusCode::BAD_REQUEST
    ) {
        return Ok(Ok(response));
    }
    let (parts, body) = response.into_parts();
    let body = body.bytes().await?;
    let text = String::from_utf8_lossy(&body);
    let element = |name: &str| {
        let start = text.find(&format!("<{name}>"))? + name.len() + 2;
        let len = text[start..].find(&format!("</{name}>"))?;
        Some(text[start..start + len].to_string())
    };
    let code = element("Code");
    let why = match code.as_deref() {
        Some(code) if CREDENTIAL_ERRORS.contains(&code) => Some(match element("Message") {
            Some(message) => format!("{code}: {message}"),
            None => code.to_string(),
        }),
        None if body.is_empty() && parts.status == StatusCode::FORBIDDEN => None,
        _ => {
            let response = HttpResponse::from_parts(parts, HttpResponseBody::from(body));
            return Ok(Ok(response));
        }
    };
    let response = HttpResponse::from_parts(parts, HttpResponseBody::from(body));
    Ok(Err((response, why)))
}

/// Signs `request` again with `credential`, keeping its payload hash (the body may be
/// in several pieces, which the signer would not hash).
fn sign(
    request: &mut HttpRequest,
    credential: &AwsCredential,
    region: &str,
) -> Result<(), HttpError> {
    let headers = request.headers_mut();
    let digest = headers.remove("x-amz-content-sha256");
    for name in ["authorization", "x-amz-date", "x-amz-security-token"] {
        headers.remove(name);
    }
    let digest = digest.as_ref().and_then(|v| v.to_str().ok());
    let unsigned = digest == Some("UNSIGNED-PAYLOAD");
    let digest = digest.and_then(unhex);
    AwsAuthorizer::new(credential, "s3", region)
        .with_sign_payload(!unsigned)
        .try_authorize(request, digest.as_deref())
        .map_err(|e| HttpError::new(HttpErrorKind::Unknown, e))
}

/// The bytes of a SHA-256 in hex; None for anything else.
fn unhex(hex: &str) -> Option<Vec<u8>> {
    if hex.len() != 64 {
        return None;
    }
    (0..32)
        .map(|i| u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_signed_again_carries_the_new_key_and_the_same_payload_hash() {
        let old = AwsCredential {
            key_id: "OLD".into(),
            secret_key: "s1".into(),
            token: Some("t1".into()),
        };
        let new = AwsCredential {
            key_id: "NEW".into(),
            secret_key: "s2".into(),
            token: None,
        };
        let mut request = http::Request::put("http://127.0.0.1:9/b/key")
            .body(object_store::client::HttpRequestBody::from(
                bytes::Bytes::from_static(b"x"),
            ))
            .unwrap();
        AwsAuthorizer::new(&old, "s3", "us-east-1")
            .try_authorize(&mut request, None)
            .unwrap();
        let hash = request.headers()["x-amz-content-sha256"].clone();
        sign(&mut request, &new, "us-east-1").unwrap();
        let h = request.headers();
        assert!(h["authorization"]
            .to_str()
            .unwrap()
            .starts_with("AWS4-HMAC-SHA256 Credential=NEW/"));
        assert_eq!(h["x-amz-content-sha256"], hash);
        assert!(
            h.get("x-amz-security-token").is_none(),
            "the old token went"
        );
        assert_eq!(unhex(hash.to_str().unwrap()).unwrap().len(), 32);
        assert_eq!(unhex("UNSIGNED-PAYLOAD"), None);
    }

    #[test]
    fn rejection_names_the_source_and_says_whether_new_keys_failed_too() {
        let r = Rejected {
            source: "AWS profile default (a, b)".into(),
            hint: String::new(),
            why: "ExpiredToken: The provided token has expired.".into(),
            renewed: false,
        };
        let e = HttpError::new(HttpErrorKind::Unknown, r);
        let found = Rejected::find(&e).expect("found through the chain");
        assert!(found.to_string().contains("AWS profile default"));
        assert!(found.to_string().contains("found none newer"));
    }
}
