//! `serve`: the metrics of `pgward metrics` on `/metrics` over HTTP/1.1, for Prometheus
//! to scrape. Each scrape computes them afresh unless the last computation is younger
//! than [`CACHE_FOR`] (several Prometheus servers, or a dashboard, may scrape at once;
//! concurrent scrapes wait for one computation). Anything but `/metrics` is a 404.
//! SIGTERM or SIGINT stops accepting, lets open connections finish the request they are
//! on, and ends with exit 0.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};
use tokio::sync::{watch, Mutex};

use super::Outcome;
use crate::cli::args::MetricsArgs;
use crate::cli::Resolved;
use crate::error::{Error, Result};
use crate::metrics::exposition::CONTENT_TYPE;

/// How long one computation answers scrapes.
const CACHE_FOR: Duration = Duration::from_secs(5);
/// How long open connections get to finish after SIGTERM.
const DRAIN_FOR: Duration = Duration::from_secs(10);

struct Server {
    resolved: Resolved,
    args: MetricsArgs,
    cache: Mutex<Option<(Instant, Bytes)>>,
}

pub async fn run(resolved: &Resolved, listen: SocketAddr, args: MetricsArgs) -> Result<Outcome> {
    let listener = tokio::net::TcpListener::bind(listen).await.map_err(|e| {
        Error::io("listening on", listen.to_string(), e)
            .hint("choose another --listen address or port, or stop what listens there")
    })?;
    let local = listener
        .local_addr()
        .map_err(|e| Error::io("listening on", listen.to_string(), e))?;
    tracing::info!("serving metrics on http://{local}/metrics");
    let server = Arc::new(Server {
        resolved: Resolved {
            global: resolved.global.clone(),
            explicit: resolved.explicit.clone(),
        },
        args,
        cache: Mutex::new(None),
    });
    let signal =
        |kind| tokio::signal::unix::signal(kind).map_err(|e| Error::io("handling", "signals", e));
    let mut term = signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut int = signal(tokio::signal::unix::SignalKind::interrupt())?;
    let (stop, stopping) = watch::channel(false);
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    connections.spawn(serve_connection(stream, server.clone(), stopping.clone()));
                }
                // Out of file descriptors and the like: the next accept may succeed.
                Err(e) => {
                    tracing::warn!("accepting a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            _ = term.recv() => break,
            _ = int.recv() => break,
            // Reap finished connections as they end.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    tracing::info!("stopping: no new connections");
    let _ = stop.send(true);
    let drained = tokio::time::timeout(DRAIN_FOR, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            "{} connection(s) still open after {}s: closed",
            connections.len(),
            DRAIN_FOR.as_secs()
        );
        connections.shutdown().await;
    }
    Ok(Outcome::quiet())
}

async fn serve_connection(
    stream: tokio::net::TcpStream,
    server: Arc<Server>,
    mut stopping: watch::Receiver<bool>,
) {
    let service = hyper::service::service_fn(move |request| {
        let server = server.clone();
        async move { Ok::<_, Infallible>(answer(&server, &request).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                tracing::debug!("connection: {e}");
            }
        }
        _ = stopping.changed() => {
            // Finish the request in progress, then close (keep-alive ends here).
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

async fn answer<B>(server: &Server, request: &Request<B>) -> Response<Full<Bytes>> {
    if request.uri().path() != "/metrics" {
        return plain(
            StatusCode::NOT_FOUND,
            "not found: metrics are on /metrics\n",
        );
    }
    if !matches!(*request.method(), Method::GET | Method::HEAD) {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "use GET\n");
    }
    match metrics(server).await {
        Ok(body) => Response::builder()
            .header(hyper::header::CONTENT_TYPE, CONTENT_TYPE)
            .body(Full::new(body))
            .expect("a valid response"),
        Err(e) => {
            tracing::warn!("metrics: {e}");
            plain(StatusCode::INTERNAL_SERVER_ERROR, &format!("{e}\n"))
        }
    }
}

/// The cached metrics, or fresh ones once the cache is older than [`CACHE_FOR`].
async fn metrics(server: &Server) -> Result<Bytes> {
    let mut cache = server.cache.lock().await;
    if let Some((at, body)) = &*cache {
        if at.elapsed() < CACHE_FOR {
            return Ok(body.clone());
        }
    }
    let body = Bytes::from(super::metrics::exposition(&server.resolved, &server.args).await?);
    *cache = Some((Instant::now(), body.clone()));
    Ok(body)
}

fn plain(status: StatusCode, text: &str) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(hyper::header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from(text.to_string())))
        .expect("a valid response")
}
