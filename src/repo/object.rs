//! The one path for metadata objects (`stanza.json`, manifests and their headers, pins,
//! the key file, the saved PITR settings, lock objects). Bundles and archived WAL have
//! their own paths.
//!
//! write: serialize to JSON -> envelope (kind, length, BLAKE3 over header and payload)
//! -> seal with the stanza key when the stanza is encrypted -> atomic put.
//! read: get -> unseal -> check the envelope and its checksum -> parse -> the caller
//! checks identity (a manifest's label against its key, and so on).
//!
//! Envelope, version 1 (docs/repository-format.md, "Metadata envelope"):
//!
//! ```text
//! offset size
//!  0      4   magic "PGWM"
//!  4      1   envelope version, 1
//!  5      1   kind (Kind::code)
//!  6      2   reserved, 0
//!  8      8   payload length n, u64 little-endian
//! 16     32   BLAKE3 of bytes 0..16 followed by the payload
//! 48      n   payload: UTF-8 JSON
//! ```
//!
//! The payload stays uncompressed JSON so that `tail -c +49` shows it. Objects written by
//! formats 1-3 have no envelope (raw JSON, or a sealed raw JSON); they are read only
//! while the stanza itself is at an older format (see `Repo::upgrade_metadata`).

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::Repo;
use crate::error::{Error, ErrorKind, Result};
use crate::pipeline::encrypt::MasterKey;
use crate::storage::SharedStorage;

pub const MAGIC: &[u8; 4] = b"PGWM";
pub const ENVELOPE_VERSION: u8 = 1;
pub const HEADER_LEN: usize = 48;

/// What an object is; stored in the envelope so that an object copied over another kind
/// is named as such.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Stanza,
    Manifest,
    Pin,
    KeyFile,
    PitrSettings,
    Lock,
    BlockMap,
    Claim,
    DrillRecord,
    VerifyRecord,
    BackupHeader,
}

impl Kind {
    pub fn code(self) -> u8 {
        match self {
            Kind::Stanza => 1,
            Kind::Manifest => 2,
            Kind::Pin => 3,
            Kind::KeyFile => 4,
            Kind::PitrSettings => 5,
            Kind::Lock => 6,
            Kind::BlockMap => 7,
            Kind::Claim => 8,
            Kind::DrillRecord => 9,
            Kind::VerifyRecord => 10,
            Kind::BackupHeader => 11,
        }
    }

    fn from_code(code: u8) -> Option<Kind> {
        [
            Kind::Stanza,
            Kind::Manifest,
            Kind::Pin,
            Kind::KeyFile,
            Kind::PitrSettings,
            Kind::Lock,
            Kind::BlockMap,
            Kind::Claim,
            Kind::DrillRecord,
            Kind::VerifyRecord,
            Kind::BackupHeader,
        ]
        .into_iter()
        .find(|k| k.code() == code)
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::Stanza => "stanza.json",
            Kind::Manifest => "a manifest",
            Kind::Pin => "a pin marker",
            Kind::KeyFile => "keyfile.json",
            Kind::PitrSettings => "saved PITR settings",
            Kind::Lock => "a lock object",
            Kind::BlockMap => "a WAL block map",
            Kind::Claim => "a WAL name claim",
            Kind::DrillRecord => "a drill record",
            Kind::VerifyRecord => "a verify record",
            Kind::BackupHeader => "a backup header",
        }
    }
}

/// Why stored bytes are not a sound envelope of the expected kind.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("truncated: {0} bytes, an envelope has at least {HEADER_LEN}")]
    Truncated(usize),
    #[error("envelope version {0} is newer than this pgward reads")]
    Version(u8),
    #[error("reserved header bytes are not zero")]
    Reserved,
    #[error("length field says {expected} payload bytes, {found} are stored")]
    Length { expected: u64, found: u64 },
    #[error("checksum mismatch: the object changed after it was written")]
    Checksum,
    #[error("holds {found}, not {expected}")]
    WrongKind {
        expected: &'static str,
        found: String,
    },
}

fn checksum(header: &[u8], payload: &[u8]) -> blake3::Hash {
    let mut h = blake3::Hasher::new();
    h.update(&header[..16]);
    h.update(payload);
    h.finalize()
}

/// Wraps `payload` in an envelope of `kind`.
pub fn envelope(kind: Kind, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(MAGIC);
    out.push(ENVELOPE_VERSION);
    out.push(kind.code());
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    let sum = checksum(&out, payload);
    out.extend_from_slice(sum.as_bytes());
    out.extend_from_slice(payload);
    out
}

/// Whether stored (unsealed) bytes are enveloped at all; anything else is a format 1-3
/// object or damage.
pub fn is_enveloped(bytes: &[u8]) -> bool {
    bytes.starts_with(MAGIC)
}

/// Checks an envelope of `kind` and returns its payload.
pub fn open_envelope(kind: Kind, bytes: &[u8]) -> Result<&[u8], EnvelopeError> {
    if bytes.len() < HEADER_LEN {
        return Err(EnvelopeError::Truncated(bytes.len()));
    }
    let (header, payload) = bytes.split_at(HEADER_LEN);
    // The checksum first: a damaged header must not be reported as a wrong kind.
    let stored_sum: [u8; 32] = header[16..48].try_into().expect("32 bytes");
    let length = u64::from_le_bytes(header[8..16].try_into().expect("8 bytes"));
    if length != payload.len() as u64 {
        return Err(EnvelopeError::Length {
            expected: length,
            found: payload.len() as u64,
        });
    }
    if checksum(header, payload) != blake3::Hash::from(stored_sum) {
        return Err(EnvelopeError::Checksum);
    }
    if header[4] != ENVELOPE_VERSION {
        return Err(EnvelopeError::Version(header[4]));
    }
    if header[6..8] != [0, 0] {
        return Err(EnvelopeError::Reserved);
    }
    if header[5] != kind.code() {
        return Err(EnvelopeError::WrongKind {
            expected: kind.name(),
            found: Kind::from_code(header[5]).map_or_else(
                || format!("unknown kind {}", header[5]),
                |k| k.name().into(),
            ),
        });
    }
    Ok(payload)
}

/// The contents of a stored object, unsealed, before it is parsed.
pub enum Contents {
    /// Enveloped and checked: the payload.
    Checked(Vec<u8>),
    /// No envelope: written by format 1-3 (or damaged so that its magic is gone).
    Legacy(Vec<u8>),
}

/// Seals `bytes` with `key` (nothing without one).
fn seal(key: Option<&MasterKey>, bytes: &[u8], what: &str) -> Result<Vec<u8>> {
    let Some(key) = key else {
        return Ok(bytes.to_vec());
    };
    let mut sealed = crate::pipeline::seal(Some(key), Vec::with_capacity(bytes.len() + 80))
        .map_err(|e| Error::io("encrypting", what, e))?;
    std::io::Write::write_all(&mut sealed, bytes).map_err(|e| Error::io("encrypting", what, e))?;
    sealed
        .finish()
        .map_err(|e| Error::io("encrypting", what, e))
}

/// The stored bytes of a `kind` object with this payload.
pub fn encode(key: Option<&MasterKey>, kind: Kind, payload: &[u8], what: &str) -> Result<Vec<u8>> {
    seal(key, &envelope(kind, payload), what)
}

/// Unseals and opens stored bytes. `what` names the object in errors.
pub fn decode(key: Option<&MasterKey>, kind: Kind, stored: &[u8], what: &str) -> Result<Contents> {
    decode_owned(key, kind, stored.to_vec(), what)
}

/// [`decode`] of bytes it may keep: an unsealed object's payload is its stored bytes,
/// opened in place (a large manifest's bytes were copied twice on the way).
pub fn decode_owned(
    key: Option<&MasterKey>,
    kind: Kind,
    stored: Vec<u8>,
    what: &str,
) -> Result<Contents> {
    let mut plain = match key {
        None if crate::pipeline::encrypt::is_encrypted(&stored) && !is_enveloped(&stored) => {
            return Err(damaged(
                what,
                "is encrypted, but the stanza has no keyfile.json to unlock it (deleted?)",
            ))
        }
        None => stored,
        Some(key) => {
            let mut out = Vec::new();
            crate::pipeline::unseal(Some(key), &stored[..])
                .and_then(|mut r| std::io::Read::read_to_end(&mut r, &mut out))
                .map_err(|e| super::cipher::decrypt_error(what, e))?;
            drop(stored);
            out
        }
    };
    if !is_enveloped(&plain) {
        return Ok(Contents::Legacy(plain));
    }
    if let Err(e) = open_envelope(kind, &plain) {
        return Err(damaged(what, e));
    }
    plain.drain(..HEADER_LEN);
    Ok(Contents::Checked(plain))
}

/// A Corrupt error naming a damaged object.
pub fn damaged(what: &str, why: impl std::fmt::Display) -> Error {
    Error::corrupt(format!("{what}: {why}"))
}

/// Parses a JSON payload, naming the object when it does not parse.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| damaged(what, format!("does not parse: {e}")))
}

/// Reads the raw stored bytes; Ok(None) when absent.
pub async fn get(storage: &SharedStorage, key: &str) -> Result<Option<Vec<u8>>> {
    match storage.read_all(key).await {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e),
    }
}

impl Repo {
    /// The stored bytes of `value` as a `kind` object of this stanza.
    pub(super) fn encode_object<T: Serialize>(
        &self,
        key: &str,
        kind: Kind,
        value: &T,
    ) -> Result<Vec<u8>> {
        // Manifests are large and read by programs; the small objects stay readable.
        let json = if kind == Kind::Manifest {
            serde_json::to_vec(value)
        } else {
            serde_json::to_vec_pretty(value)
        }
        .map_err(|e| Error::new(ErrorKind::Io, format!("serializing {key}: {e}")))?;
        encode(self.sealing_key(kind), kind, &json, key)
    }

    /// Writes a metadata object (atomically: absent or complete).
    pub(super) async fn write_object<T: Serialize>(
        &self,
        key: &str,
        kind: Kind,
        value: &T,
    ) -> Result<()> {
        let bytes = self.encode_object(key, kind, value)?;
        self.storage.put(key, &bytes).await
    }

    /// Writes an already serialized payload (legacy objects being upgraded keep their bytes).
    pub(super) async fn write_payload(&self, key: &str, kind: Kind, payload: &[u8]) -> Result<()> {
        let bytes = self.encode_payload(key, kind, payload)?;
        self.storage.put(key, &bytes).await
    }

    /// The stored bytes of an already serialized payload.
    pub(super) fn encode_payload(&self, key: &str, kind: Kind, payload: &[u8]) -> Result<Vec<u8>> {
        encode(self.sealing_key(kind), kind, payload, key)
    }

    /// Reads a metadata object's contents; Ok(None) when it is absent.
    pub(super) async fn read_contents(&self, key: &str, kind: Kind) -> Result<Option<Contents>> {
        match get(&self.storage, key).await? {
            None => Ok(None),
            Some(stored) => decode_owned(self.sealing_key(kind), kind, stored, key).map(Some),
        }
    }

    /// Reads and parses a metadata object; a format 1-3 object (no envelope) is accepted
    /// only while the stanza is at format 3 or older. Ok(None) when absent.
    pub(super) async fn read_object<T: DeserializeOwned>(
        &self,
        key: &str,
        kind: Kind,
    ) -> Result<Option<T>> {
        match self.read_contents(key, kind).await? {
            None => Ok(None),
            Some(Contents::Checked(p)) => parse_json(&p, key).map(Some),
            Some(Contents::Legacy(raw)) => {
                self.legacy_allowed(key).await?;
                parse_json(&raw, key).map(Some)
            }
        }
    }

    /// Objects without an envelope belong to stanzas of format 3 or older; in a format 4
    /// stanza one is damage (or a copy from an older repository).
    pub(super) async fn legacy_allowed(&self, key: &str) -> Result<()> {
        let info = self.stanza_info().await?;
        if info.format_version >= 4 {
            return Err(damaged(
                key,
                format!(
                    "has no envelope (written by format 3 or older, or damaged), but stanza {:?} is at format {}",
                    self.stanza, info.format_version
                ),
            ));
        }
        Ok(())
    }

    /// The key objects of `kind` are sealed with: none for the key file, which must be
    /// read before the stanza is unlocked.
    pub(super) fn sealing_key(&self, kind: Kind) -> Option<&MasterKey> {
        match kind {
            Kind::KeyFile => None,
            _ => self.master_key(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const JSON: &[u8] = br#"{"label": "20261121-120000F", "mode": 384}"#;

    #[test]
    fn envelope_round_trips_and_names_the_kind() {
        let e = envelope(Kind::Manifest, JSON);
        assert_eq!(e.len(), HEADER_LEN + JSON.len());
        assert_eq!(&e[..4], b"PGWM");
        assert_eq!(open_envelope(Kind::Manifest, &e).unwrap(), JSON);
        assert_eq!(
            open_envelope(Kind::Pin, &e).unwrap_err(),
            EnvelopeError::WrongKind {
                expected: "a pin marker",
                found: "a manifest".into()
            }
        );
        let empty = envelope(Kind::Pin, b"");
        assert_eq!(open_envelope(Kind::Pin, &empty).unwrap(), b"");
    }

    #[test]
    fn every_single_byte_change_is_detected() {
        let e = envelope(Kind::Stanza, JSON);
        for i in 0..e.len() {
            for bit in 0..8 {
                let mut bad = e.clone();
                bad[i] ^= 1 << bit;
                let opened = if is_enveloped(&bad) {
                    open_envelope(Kind::Stanza, &bad).map(|_| ())
                } else {
                    Err(EnvelopeError::Checksum) // read as legacy: does not parse as JSON
                };
                assert!(
                    opened.is_err(),
                    "flip of bit {bit} in byte {i} went unnoticed"
                );
                if !is_enveloped(&bad) {
                    assert!(serde_json::from_slice::<serde_json::Value>(&bad).is_err());
                }
            }
        }
    }

    #[test]
    fn truncation_and_extension_are_detected() {
        let e = envelope(Kind::Manifest, JSON);
        for len in 0..e.len() {
            assert!(open_envelope(Kind::Manifest, &e[..len]).is_err(), "{len}");
        }
        let mut longer = e.clone();
        longer.push(b' ');
        assert!(matches!(
            open_envelope(Kind::Manifest, &longer),
            Err(EnvelopeError::Length { .. })
        ));
    }

    #[test]
    fn legacy_objects_are_told_apart_and_sealed_objects_round_trip() {
        assert!(matches!(
            decode(None, Kind::Manifest, JSON, "m").unwrap(),
            Contents::Legacy(b) if b == JSON
        ));
        let cheap = crate::pipeline::encrypt::KdfParams {
            m_cost_kib: 64,
            t_cost: 1,
            p_cost: 1,
        };
        let key = crate::pipeline::encrypt::KeyFile::create_with(b"pw", cheap)
            .unwrap()
            .1;
        let stored = encode(Some(&key), Kind::Manifest, JSON, "m").unwrap();
        assert!(stored.starts_with(b"PGWE"));
        assert!(matches!(
            decode(Some(&key), Kind::Manifest, &stored, "m").unwrap(),
            Contents::Checked(b) if b == JSON
        ));
        let mut bad = stored.clone();
        let last = bad.len() - 20;
        bad[last] ^= 1;
        let e = decode(Some(&key), Kind::Manifest, &bad, "m")
            .err()
            .expect("a changed byte");
        assert_eq!(e.kind, ErrorKind::Corrupt);
    }
}

/// Readers of every metadata object, fed arbitrary, mutated and truncated bytes: errors
/// are fine, panics are not. Deterministic (a fixed xorshift seed) and bounded in time.
#[cfg(test)]
mod fuzz {
    use super::*;
    use crate::pipeline::encrypt::{KdfParams, KeyFile};

    use crate::test_rng::Rng;

    fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
        let mut b = seed.to_vec();
        for _ in 0..=rng.below(4) {
            match rng.below(6) {
                0 if !b.is_empty() => {
                    let i = rng.below(b.len());
                    b[i] ^= 1 << rng.below(8);
                }
                1 => b.truncate(rng.below(b.len() + 1)),
                2 => {
                    let i = rng.below(b.len() + 1);
                    b.insert(i, rng.next() as u8);
                }
                3 if !b.is_empty() => {
                    let i = rng.below(b.len());
                    b[i] = b"{}[]\",:0123456789 -\\"[rng.below(20)];
                }
                4 => b = (0..rng.below(96)).map(|_| rng.next() as u8).collect(),
                _ if !b.is_empty() => {
                    let i = rng.below(b.len());
                    b.remove(i);
                }
                _ => {}
            }
        }
        b
    }

    /// Every reader a stored object of `kind` goes through.
    fn read_all_ways(key: Option<&MasterKey>, kind: Kind, stored: &[u8]) {
        let Ok(contents) = decode(key, kind, stored, "fuzz") else {
            return;
        };
        let payload = match &contents {
            Contents::Checked(p) | Contents::Legacy(p) => p.clone(),
        };
        match kind {
            Kind::Stanza => {
                let _ = crate::repo::stanza::parse_stanza(contents, "fuzz", "main");
            }
            Kind::Manifest => {
                let _ = crate::repo::manifest::parse_manifest(&payload);
            }
            Kind::Pin => {
                let _ = crate::repo::manifest::pin_label(contents, "fuzz");
            }
            Kind::KeyFile => {
                let _ = crate::repo::cipher::parse_key_file(stored, "fuzz");
            }
            Kind::BlockMap => {
                let _ = crate::repo::blockmap::BlockMap::decode(&payload);
            }
            _ => {
                let _ = parse_json::<serde_json::Value>(&payload, "fuzz");
            }
        }
    }

    #[test]
    fn metadata_readers_never_panic_on_mutated_or_truncated_bytes() {
        let cheap = KdfParams {
            m_cost_kib: 64,
            t_cost: 1,
            p_cost: 1,
        };
        let (key_file, key) = KeyFile::create_with(b"pw", cheap).unwrap();
        let stanza = include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/format-v3/stanza.json"
        ));
        let manifest = include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/format-v3/20261121-124507F.manifest"
        ));
        let seeds: Vec<(Kind, Vec<u8>)> = vec![
            (Kind::Stanza, stanza.to_vec()),
            (Kind::Manifest, manifest.to_vec()),
            (Kind::Pin, br#"{"label": "20261121-124507F"}"#.to_vec()),
            (Kind::KeyFile, key_file.to_json()),
            (
                Kind::PitrSettings,
                br#"[{"name": "archive_mode"}]"#.to_vec(),
            ),
            (
                Kind::BlockMap,
                crate::repo::blockmap::tests::sample().encode(),
            ),
        ];
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let started = std::time::Instant::now();
        for (kind, payload) in &seeds {
            let plain = envelope(*kind, payload);
            let sealed = encode(Some(&key), *kind, payload, "fuzz").unwrap();
            for len in 0..plain.len().min(200) {
                read_all_ways(None, *kind, &plain[..len]);
            }
            for _ in 0..1500 {
                read_all_ways(None, *kind, &mutate(&mut rng, &plain));
                read_all_ways(None, *kind, &mutate(&mut rng, payload));
                if *kind != Kind::KeyFile {
                    read_all_ways(Some(&key), *kind, &mutate(&mut rng, &sealed));
                }
            }
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(30));
    }
}
