//! The housekeeping of S3 uploads. What a killed process leaves behind, multipart
//! uploads that hold parts but never became objects, is found with
//! ListMultipartUploads (a signed request that object_store lacks) and aborted by
//! `remove_incomplete`. The writer itself is every object store's
//! (`storage::object::writer`).

use std::time::Duration;

use object_store::aws::AwsAuthorizer;
use object_store::client::HttpRequestBody;
use object_store::multipart::MultipartStore;
use object_store::path::Path;

use super::S3Storage;
use crate::error::{Error, ErrorKind, Result};
use crate::storage::object::Provider;

impl S3Storage {
    /// `Storage::remove_incomplete`: aborts the uploads in `dir` started more than
    /// `older_than` ago (all of them without it).
    pub(super) async fn remove_incomplete_uploads(
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
                Err(e) => {
                    let name = format!("s3://{}/{key}", self.bucket());
                    return Err(Provider::S3.error(&name, "aborting upload of", e));
                }
            }
        }
        Ok(removed)
    }

    /// ListMultipartUploads of the direct children of `dir` (object_store has no call
    /// for it): key, upload id and start time of each.
    pub(super) async fn list_uploads(
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
                self.bucket(),
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

#[cfg(test)]
mod tests {
    use super::*;

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
