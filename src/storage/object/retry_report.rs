//! Says what is going on while object_store retries. object_store retries transient
//! failures (connection errors, 5xx, 429) inside one call for up to `--s3-retry-seconds`
//! and says nothing until it gives up: five minutes of silence looked like a hang. This
//! wraps the HTTP client it uses, sees every attempt, and while attempts keep failing
//! warns every few seconds what fails and how long pgward will keep trying.
//!
//! Attempts are not tied to the call they belong to (object_store does not say), so the
//! budget is counted from the first failure of a run of failures, which any success
//! ends: "until" is when that run's budget ends, close to the call's own.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use object_store::client::{
    HttpClient, HttpConnector, HttpError, HttpErrorKind, HttpRequest, HttpResponse, HttpService,
    ReqwestConnector,
};
use object_store::ClientOptions;

/// The first warning waits this long, so that a single retried blip stays quiet.
const FIRST_WARNING_AFTER: Duration = Duration::from_secs(1);
const WARNING_EVERY: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub(crate) struct RetryReporter(Arc<State>);

#[derive(Debug)]
struct State {
    /// `s3://bucket`, `gs://bucket` or `az://container`, as the messages name it.
    name: String,
    budget: Duration,
    failing: Mutex<Option<Run>>,
}

/// A run of failed attempts.
#[derive(Debug)]
struct Run {
    started: Instant,
    warned: Option<Instant>,
}

impl RetryReporter {
    /// For an S3 bucket (`s3://bucket` in messages).
    pub(crate) fn new(bucket: &str, budget: Duration) -> RetryReporter {
        Self::named(&format!("s3://{bucket}"), budget)
    }

    /// `name`: how messages name the store (`gs://bucket`).
    pub(crate) fn named(name: &str, budget: Duration) -> RetryReporter {
        RetryReporter(Arc::new(State {
            name: name.to_string(),
            budget,
            failing: Mutex::new(None),
        }))
    }
}

impl HttpConnector for RetryReporter {
    fn connect(&self, options: &ClientOptions) -> object_store::Result<HttpClient> {
        Ok(HttpClient::new(Reporting {
            inner: OnceLock::new(),
            options: options.clone(),
            state: self.0.clone(),
        }))
    }
}

#[derive(Debug)]
struct Reporting {
    /// The HTTP client, built at the first request: building one loads the system's CA
    /// store (hundreds of files), and opening a store builds clients that may never
    /// send anything (S3's credential chain is taken from a store built for it; the
    /// client for ListMultipartUploads serves only cleanups). A short command such as
    /// archive-get, run once per WAL segment, paid for three.
    inner: OnceLock<Result<HttpClient, String>>,
    options: ClientOptions,
    state: Arc<State>,
}

impl Reporting {
    fn client(&self) -> Result<&HttpClient, HttpError> {
        let built = self.inner.get_or_init(|| {
            ReqwestConnector::default()
                .connect(&self.options)
                .map_err(|e| e.to_string())
        });
        // Not a transient failure (Unknown is not retried): the same options fail again.
        built.as_ref().map_err(|why| {
            HttpError::new(
                HttpErrorKind::Unknown,
                std::io::Error::other(format!("building the HTTP client: {why}")),
            )
        })
    }
}

#[async_trait]
impl HttpService for Reporting {
    async fn call(&self, request: HttpRequest) -> Result<HttpResponse, HttpError> {
        let uri = request.uri().to_string();
        // object_store's reqwest client unwraps this parse: a host it rejects
        // (bucket.127.0.0.1) must be an error here, not a panic there.
        if let Err(e) = url::Url::parse(&uri) {
            return Err(HttpError::new(HttpErrorKind::Unknown, e));
        }
        let what = format!("{} {uri}", request.method());
        let result = self.client()?.execute(request).await;
        match &result {
            Ok(r) if r.status().is_server_error() || r.status().as_u16() == 429 => {
                self.state.failed(&what, &format!("status {}", r.status()))
            }
            Ok(_) => self.state.succeeded(),
            Err(e) => self.state.failed(&what, &innermost(e)),
        }
        result
    }
}

/// The root cause of an HTTP error ("Connection refused (os error 111)"), which the
/// outer layers only wrap.
fn innermost(e: &HttpError) -> String {
    let mut cause: &dyn std::error::Error = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

impl State {
    fn failed(&self, what: &str, why: &str) {
        let now = Instant::now();
        let mut failing = self.failing.lock().unwrap_or_else(|e| e.into_inner());
        // A run older than the budget belongs to calls that gave up: this is a new call.
        if failing
            .as_ref()
            .is_none_or(|run| now.duration_since(run.started) > self.budget)
        {
            *failing = Some(Run {
                started: now,
                warned: None,
            });
        }
        let run = failing.as_mut().expect("set above");
        tracing::debug!("{}: {what}: {why}", self.name);
        let due = match run.warned {
            None => now.duration_since(run.started) >= FIRST_WARNING_AFTER,
            Some(at) => now.duration_since(at) >= WARNING_EVERY,
        };
        let left = self.budget.saturating_sub(now.duration_since(run.started));
        if due && left >= Duration::from_secs(1) {
            run.warned = Some(now);
            let until = chrono::Local::now() + left;
            tracing::warn!(
                "{}: {what} failed ({why}) for {} s, retrying for another {} s (until {})",
                self.name,
                now.duration_since(run.started).as_secs(),
                left.as_secs(),
                until.format("%H:%M:%S")
            );
        }
    }

    fn succeeded(&self) {
        *self.failing.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}
