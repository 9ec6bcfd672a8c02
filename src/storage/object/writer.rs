//! The writer of every object store. It buffers one part; an object that outgrows it
//! becomes a multipart upload (S3 and GCS: parts completed by CompleteMultipartUpload;
//! Azure: uncommitted blocks committed by Put Block List) that only `finish` makes
//! visible, and a writer dropped unfinished aborts it.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use async_trait::async_trait;
use object_store::buffered::BufWriter;
use object_store::ObjectStore;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::ObjectStorage;
use crate::error::{Error, ErrorKind, Result};
use crate::storage::ObjectWriter;

/// Objects up to this size are one PUT (a WAL segment always is); bigger ones are
/// uploaded in parts of it.
pub(crate) const PART_SIZE: usize = 16 << 20;
/// Parts uploading at once per writer: a writer holds at most (1 + this) parts in memory.
pub(crate) const PARTS_IN_FLIGHT: usize = 3;
/// Bundles, written by every backup worker at once, use the smallest parts S3 and GCS
/// take and one in flight: 10 MiB per worker, so that the memory budget
/// (`crate::memory`) affords three workers writing to object storage.
pub(crate) const LARGE_PART_SIZE: usize = 5 << 20;
pub(crate) const LARGE_PARTS_IN_FLIGHT: usize = 1;

impl ObjectStorage {
    pub(crate) fn writer(
        &self,
        key: &str,
        part: usize,
        in_flight: usize,
    ) -> Result<Box<dyn ObjectWriter>> {
        let store: Arc<dyn ObjectStore> = self.store.clone();
        let writer = BufWriter::with_capacity(store, self.path(key)?, part)
            .with_max_concurrency(in_flight)
            .with_attributes(self.attributes.clone());
        Ok(Box::new(PartWriter {
            inner: Some(writer),
            name: self.url_of(key),
            provider: self.provider,
        }))
    }
}

/// Buffers one part; from the first full part on it is a multipart upload whose parts
/// go up in the background, at most `in_flight` at once (writes wait for room).
struct PartWriter {
    inner: Option<BufWriter>,
    /// `s3://bucket/key`, as messages name the object.
    name: String,
    provider: super::Provider,
}

impl PartWriter {
    fn inner(&mut self) -> &mut BufWriter {
        self.inner.as_mut().expect("writer used after finish")
    }
}

impl AsyncWrite for PartWriter {
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
impl ObjectWriter for PartWriter {
    async fn finish(mut self: Box<Self>) -> Result<()> {
        let mut writer = self.inner.take().expect("finish called once");
        // One PUT, or the last part and the completion. If this fails the upload may
        // stay behind, invisible, until remove_incomplete (or, on Azure, until its
        // uncommitted blocks expire).
        let Err(e) = writer.shutdown().await else {
            return Ok(());
        };
        let cause = match e.into_inner().map(|e| e.downcast::<object_store::Error>()) {
            Some(Ok(e)) => return Err(self.provider.error(&self.name, "writing", *e)),
            Some(Err(e)) => e.to_string(),
            None => "upload failed".into(),
        };
        Err(Error::new(
            ErrorKind::Io,
            format!("writing {}: {cause}", self.name),
        ))
    }
}

impl Drop for PartWriter {
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
