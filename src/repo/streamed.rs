//! Metadata objects read and written without holding their bytes whole. A manifest of
//! 100,000 files is about 50 MB of JSON: read whole, then copied out of its envelope, it
//! took three times that next to the parsed list, and written, twice that. The format is
//! `object.rs`'s envelope, unchanged; only unsealed objects stream (a sealed object is
//! one authenticated message, opened whole).
//!
//! Reading parses the payload as it arrives and hands the parsed value back only once
//! the whole envelope has checked (length, checksum, version, kind), in the order
//! `open_envelope` checks them, so a damaged object is reported as it would be when read
//! whole. Writing serializes twice: once to learn the payload's length and checksum,
//! which the header carries before the payload, and once into the object, hashed again
//! so that a payload that came out different fails the write before the object exists.

use std::io::{Read, Write};

use serde::Serialize;

use super::object::{
    damaged, decode_owned, Contents, EnvelopeError, Kind, ENVELOPE_VERSION, HEADER_LEN, MAGIC,
};
use super::Repo;
use crate::error::{Error, ErrorKind, Result};

/// What a streamed read found.
pub enum Streamed<T> {
    /// Enveloped and unsealed: parsed as it was read, and checked whole.
    Parsed(T),
    /// Sealed, or without an envelope: read whole (`object::decode`), to be parsed from
    /// memory.
    Whole(Contents),
}

/// Counts and hashes what passes through.
struct Hashing<W> {
    inner: W,
    hasher: blake3::Hasher,
    bytes: u64,
}

impl<W> Hashing<W> {
    fn new(inner: W, header: &[u8]) -> Self {
        let mut hasher = blake3::Hasher::new();
        hasher.update(&header[..16]);
        Hashing {
            inner,
            hasher,
            bytes: 0,
        }
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// The first 16 header bytes of a `kind` envelope of `length` payload bytes.
fn header_start(kind: Kind, length: u64) -> [u8; 16] {
    let mut h = [0u8; 16];
    h[..4].copy_from_slice(MAGIC);
    h[4] = ENVELOPE_VERSION;
    h[5] = kind.code();
    h[8..16].copy_from_slice(&length.to_le_bytes());
    h
}

/// Reads stored bytes from `stored`: an envelope of `kind` is parsed by `parse` as it
/// streams, then checked; anything else is read whole and decoded as `decode` would.
/// `what` names the object in errors.
/// JSON parsed from a payload as it streams. serde_json reads a byte at a time, and it
/// takes its fast path only from a `BufReader` it can see: through `&mut dyn Read` every
/// byte would be a call and a checksum update (a 40 MB manifest took 3.5 times as long
/// as read whole). What the buffer reads ahead is checksummed already; the envelope's
/// reader drains the rest.
pub(super) fn json_from<T: serde::de::DeserializeOwned>(
    payload: &mut dyn Read,
) -> serde_json::Result<T> {
    serde_json::from_reader(std::io::BufReader::with_capacity(64 << 10, payload))
}

pub fn read_envelope<T>(
    kind: Kind,
    mut stored: impl Read,
    parse: impl FnOnce(&mut dyn Read) -> T,
    what: &str,
) -> Result<Streamed<T>> {
    let io = |e| Error::io("reading", what, e);
    let mut header = [0u8; HEADER_LEN];
    let mut got = 0;
    while got < HEADER_LEN {
        match stored.read(&mut header[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io(e)),
        }
    }
    if !header[..got].starts_with(MAGIC) {
        let mut all = header[..got].to_vec();
        stored.read_to_end(&mut all).map_err(io)?;
        return decode_owned(None, kind, all, what).map(Streamed::Whole);
    }
    if got < HEADER_LEN {
        return Err(damaged(what, EnvelopeError::Truncated(got)));
    }
    let length = u64::from_le_bytes(header[8..16].try_into().expect("8 bytes"));
    let mut payload = Hashing::new((&mut stored).take(length), &header);
    let parsed = parse(&mut payload);
    // The rest of the payload (a parser stops at the first error), then anything after it.
    std::io::copy(&mut payload, &mut std::io::sink()).map_err(io)?;
    let (found, hash) = (payload.bytes, payload.hasher.finalize());
    let beyond = std::io::copy(&mut stored, &mut std::io::sink()).map_err(io)?;
    if found != length || beyond > 0 {
        return Err(damaged(
            what,
            EnvelopeError::Length {
                expected: length,
                found: found + beyond,
            },
        ));
    }
    let stored_sum: [u8; 32] = header[16..48].try_into().expect("32 bytes");
    if hash != blake3::Hash::from(stored_sum) {
        return Err(damaged(what, EnvelopeError::Checksum));
    }
    // Version, reserved bytes and kind, as `open_envelope` checks them (the payload is
    // already known sound: an empty one stands in for it).
    let mut check = header.to_vec();
    check[8..16].copy_from_slice(&0u64.to_le_bytes());
    let sum = blake3::Hasher::new().update(&check[..16]).finalize();
    check[16..48].copy_from_slice(sum.as_bytes());
    super::object::open_envelope(kind, &check).map_err(|e| damaged(what, e))?;
    Ok(Streamed::Parsed(parsed))
}

/// Writes `value` as a `kind` envelope into `out` without building its bytes, serializing
/// it twice (see the module's comment). Returns the bytes written.
pub fn write_envelope<T: Serialize>(
    kind: Kind,
    value: &T,
    out: &mut dyn Write,
    what: &str,
) -> Result<u64> {
    let serializing =
        |e: serde_json::Error| Error::new(ErrorKind::Io, format!("serializing {what}: {e}"));
    let mut sizing = Hashing::new(std::io::sink(), &[0u8; 16]);
    serde_json::to_writer(&mut sizing, value).map_err(serializing)?;
    let length = sizing.bytes;
    let start = header_start(kind, length);
    let mut sizing = Hashing::new(std::io::sink(), &start);
    serde_json::to_writer(&mut sizing, value).map_err(serializing)?;
    let sum = sizing.hasher.finalize();
    let io = |e| Error::io("writing", what, e);
    out.write_all(&start).map_err(io)?;
    out.write_all(sum.as_bytes()).map_err(io)?;
    let mut payload = Hashing::new(&mut *out, &start);
    serde_json::to_writer(&mut payload, value).map_err(serializing)?;
    if payload.bytes != length || payload.hasher.finalize() != sum {
        return Err(Error::new(
            ErrorKind::Io,
            format!("serializing {what}: the payload came out different on the second pass"),
        ));
    }
    Ok(HEADER_LEN as u64 + length)
}

impl Repo {
    /// Reads a `kind` object, parsing it with `parse` as it streams in when it is an
    /// unsealed envelope; Ok(None) when absent.
    pub(super) async fn read_streamed<T: Send + 'static>(
        &self,
        key: &str,
        kind: Kind,
        parse: impl FnOnce(&mut dyn Read) -> T + Send + 'static,
    ) -> Result<Option<Streamed<T>>> {
        if self.sealing_key(kind).is_some() {
            return Ok(self.read_contents(key, kind).await?.map(Streamed::Whole));
        }
        // A local file is read directly (no hop through the runtime per read).
        let stored: Box<dyn Read + Send> = match self.storage.local_root() {
            Some(root) => {
                let path = root.join(key);
                match std::fs::File::open(&path) {
                    Ok(file) => Box::new(file),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                    Err(e) => return Err(Error::io("opening", &path, e)),
                }
            }
            None => match self.storage.read(key).await {
                Ok(reader) => Box::new(crate::storage::blocking_reader(reader)),
                Err(e) if e.is_not_found() => return Ok(None),
                Err(e) => return Err(e),
            },
        };
        let what = key.to_string();
        tokio::task::spawn_blocking(move || {
            let stored = std::io::BufReader::with_capacity(256 << 10, stored);
            read_envelope(kind, stored, parse, &what).map(Some)
        })
        .await
        .unwrap_or_else(crate::error::task_panicked)
    }

    /// Writes a `kind` object (atomically: absent or complete), streaming it when it is
    /// not sealed.
    pub(super) async fn write_streamed<T: Serialize + Send + Sync + 'static>(
        &self,
        key: &str,
        kind: Kind,
        value: std::sync::Arc<T>,
    ) -> Result<()> {
        if self.sealing_key(kind).is_some() {
            return self.write_object(key, kind, &*value).await;
        }
        let what = key.to_string();
        crate::storage::write_blocking(self.storage.as_ref(), key, move |out| {
            write_envelope(kind, &*value, out, &what).map(|_| ())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::object::{decode, envelope};

    fn parse_value(r: &mut dyn Read) -> serde_json::Result<serde_json::Value> {
        serde_json::from_reader(r)
    }

    fn read(stored: &[u8]) -> Result<Streamed<serde_json::Result<serde_json::Value>>> {
        read_envelope(Kind::Manifest, stored, parse_value, "m")
    }

    #[test]
    fn a_streamed_envelope_is_byte_for_byte_the_one_written_whole() {
        let value = serde_json::json!({"label": "x", "files": [1, 2, {"a": "b"}]});
        let mut streamed = Vec::new();
        let n = write_envelope(Kind::Manifest, &value, &mut streamed, "m").unwrap();
        let whole = envelope(Kind::Manifest, &serde_json::to_vec(&value).unwrap());
        assert_eq!(streamed, whole);
        assert_eq!(n, whole.len() as u64);
        let Streamed::Parsed(back) = read(&streamed).unwrap() else {
            panic!("enveloped objects stream")
        };
        assert_eq!(back.unwrap(), value);
    }

    #[test]
    fn damage_is_reported_as_reading_whole_reports_it() {
        let whole = envelope(Kind::Manifest, br#"{"label": "x", "files": []}"#);
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut cases: Vec<Vec<u8>> = vec![
            whole[..HEADER_LEN - 1].to_vec(),
            whole[..whole.len() - 1].to_vec(),
            [whole.as_slice(), b" "].concat(),
            envelope(Kind::Pin, b"{}"),
        ];
        for _ in 0..200 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let mut bad = whole.clone();
            bad[(rng % whole.len() as u64) as usize] ^= 1 << (rng % 8);
            cases.push(bad);
        }
        for bad in cases {
            match (read(&bad), decode(None, Kind::Manifest, &bad, "m")) {
                (Ok(Streamed::Parsed(_)), Ok(Contents::Checked(_))) => {}
                (Ok(Streamed::Whole(Contents::Legacy(a))), Ok(Contents::Legacy(b))) => {
                    assert_eq!(a, b)
                }
                (Err(streamed), Err(whole)) => assert_eq!(streamed.to_string(), whole.to_string()),
                (streamed, whole) => panic!(
                    "{bad:?}: streamed {:?}, whole {:?}",
                    streamed.map(|s| matches!(s, Streamed::Parsed(_))),
                    whole.map(|c| matches!(c, Contents::Checked(_)))
                ),
            }
        }
    }
}
