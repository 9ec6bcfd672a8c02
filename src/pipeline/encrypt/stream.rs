//! The encrypted stream format: a 48-byte header (magic, version, cipher, key id, salt),
//! then the plaintext in 64 KiB chunks, each sealed with AES-256-GCM under a per-file key
//! (the STREAM construction). `EncryptWriter` writes it, `DecryptReader` reads and
//! authenticates it one chunk at a time.

use std::io::{self, Read, Write};

use aes_gcm::aead::AeadInOut;
use aes_gcm::{Aes256Gcm, Tag};
use zeroize::Zeroizing;

use super::{
    crypto_error, hex, random, CryptoError, MasterKey, Nonce, NONCE_PREFIX_LEN, SALT_LEN, TAG_LEN,
};

pub const MAGIC: &[u8; 4] = b"PGWE";
pub const VERSION: u8 = 1;
const CIPHER_AES_256_GCM: u8 = 1;
/// Plaintext bytes per chunk: big enough that the 16-byte tag costs 0.02%, small enough
/// that a reader holds little and verifies often.
pub const CHUNK_LEN: usize = 64 * 1024;
const SEALED_LEN: usize = CHUNK_LEN + TAG_LEN;
/// magic 4, version 1, cipher 1, reserved 2, key id 8, salt 32.
pub const HEADER_LEN: usize = 48;

/// Whether stored bytes start like an encrypted file. Readers should trust the repository's
/// configured cipher rather than sniff: an unencrypted, uncompressed file can start "PGWE".
pub fn is_encrypted(header_bytes: &[u8]) -> bool {
    header_bytes.starts_with(MAGIC)
}

fn chunk_count(plain_len: u64) -> u64 {
    plain_len.div_ceil(CHUNK_LEN as u64).max(1)
}

/// Exact stored size of `plain_len` bytes: header + data + one tag per chunk (an empty
/// file still has one, empty, last chunk).
pub fn encrypted_len(plain_len: u64) -> u64 {
    HEADER_LEN as u64 + plain_len + TAG_LEN as u64 * chunk_count(plain_len)
}

/// Inverse of `encrypted_len`; `None` for a size no encrypted file can have.
pub fn plain_len(encrypted_len_: u64) -> Option<u64> {
    let body = encrypted_len_.checked_sub(HEADER_LEN as u64)?;
    let chunks = body.div_ceil(SEALED_LEN as u64).max(1);
    let plain = body.checked_sub(chunks * TAG_LEN as u64)?;
    (encrypted_len(plain) == encrypted_len_).then_some(plain)
}

/// Holds the per-file cipher and nonce state shared by the writer and the reader.
struct Stream {
    cipher: Aes256Gcm,
    prefix: [u8; NONCE_PREFIX_LEN],
    header: [u8; HEADER_LEN],
    counter: u64,
}

impl Stream {
    fn nonce(&self, last: bool) -> Result<Nonce, CryptoError> {
        let counter = u32::try_from(self.counter).map_err(|_| CryptoError::TooLong)?;
        let mut n = [0u8; 12];
        n[..7].copy_from_slice(&self.prefix);
        n[7..11].copy_from_slice(&counter.to_be_bytes());
        n[11] = last as u8;
        Ok(Nonce::from(n))
    }

    fn seal(&mut self, chunk: &mut [u8], last: bool) -> Result<Tag, CryptoError> {
        let tag = self
            .cipher
            .encrypt_inout_detached(&self.nonce(last)?, &self.header, chunk.into())
            .map_err(|_| CryptoError::TooLong)?;
        self.counter += 1;
        Ok(tag)
    }

    /// Decrypts in place; on failure the buffer is left as ciphertext.
    fn open(&self, chunk: &mut [u8], tag: &Tag, last: bool) -> Result<(), CryptoError> {
        self.cipher
            .decrypt_inout_detached(&self.nonce(last)?, &self.header, chunk.into(), tag)
            .map_err(|_| CryptoError::Tampered)
    }
}

/// Encrypts everything written to it. `finish` must be called: a writer dropped without it
/// leaves no last chunk, and the result reads as truncated — by design.
pub struct EncryptWriter<W: Write> {
    inner: W,
    stream: Stream,
    buf: Zeroizing<Vec<u8>>,
}

impl<W: Write> EncryptWriter<W> {
    pub fn new(key: &MasterKey, mut inner: W) -> io::Result<Self> {
        let salt: [u8; SALT_LEN] = random()?;
        let mut header = [0u8; HEADER_LEN];
        header[..4].copy_from_slice(MAGIC);
        header[4] = VERSION;
        header[5] = CIPHER_AES_256_GCM;
        header[8..16].copy_from_slice(&key.key_id());
        header[16..].copy_from_slice(&salt);
        inner.write_all(&header)?;
        let (cipher, prefix) = key.file_cipher(&salt);
        Ok(EncryptWriter {
            inner,
            stream: Stream {
                cipher,
                prefix,
                header,
                counter: 0,
            },
            buf: Zeroizing::new(Vec::with_capacity(SEALED_LEN)),
        })
    }

    fn seal(&mut self, last: bool) -> io::Result<()> {
        let tag = self.stream.seal(&mut self.buf, last)?;
        self.buf.extend_from_slice(&tag);
        self.inner.write_all(&self.buf)?;
        self.buf.clear();
        Ok(())
    }

    /// Writes the last chunk (possibly empty or full) and returns the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.seal(true)?;
        self.inner.flush()?;
        Ok(self.inner)
    }
}

impl<W: Write> Write for EncryptWriter<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if data.is_empty() {
            return Ok(0);
        }
        // A full chunk is sealed only once more data arrives: until then it may be the
        // last one, and the last one carries the flag.
        if self.buf.len() == CHUNK_LEN {
            self.seal(false)?;
        }
        let n = data.len().min(CHUNK_LEN - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        Ok(n)
    }

    /// Flushes the inner writer only: a partial chunk cannot be emitted early, since chunk
    /// boundaries are fixed.
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Decrypts and verifies; no byte of a chunk is returned before its tag checks out. Reads
/// `inner` to its end, so give it exactly one file or frame (`take(length)` on a bundle).
/// After an error every further read fails with the same error.
pub struct DecryptReader<R: Read> {
    inner: R,
    stream: Stream,
    /// One sealed chunk plus one byte of look-ahead, which tells whether it is the last.
    buf: Zeroizing<Vec<u8>>,
    /// Plaintext of the current chunk is `buf[pos..end]`.
    pos: usize,
    end: usize,
    /// Look-ahead byte carried into the next chunk.
    carry: Option<u8>,
    done: bool,
    /// Set by the first error, replayed by every later read: the stream position is lost.
    failed: Option<(io::ErrorKind, Option<CryptoError>, String)>,
}

impl<R: Read> DecryptReader<R> {
    pub fn new(key: &MasterKey, mut inner: R) -> io::Result<Self> {
        let mut header = [0u8; HEADER_LEN];
        let got = read_full(&mut inner, &mut header)?;
        let h = &header[..got];
        if !(h.starts_with(MAGIC) || MAGIC.starts_with(h)) {
            return Err(CryptoError::NotEncrypted.into());
        }
        if got > 4 && header[4] != VERSION {
            return Err(CryptoError::UnsupportedVersion(header[4]).into());
        }
        if got > 5 && header[5] != CIPHER_AES_256_GCM {
            return Err(CryptoError::UnsupportedCipher(header[5]).into());
        }
        if got < HEADER_LEN {
            return Err(CryptoError::Truncated.into());
        }
        // Reserved bytes are not checked here: as part of the associated data, any change
        // to them fails authentication like any other header byte.
        let expected = key.key_id();
        if header[8..16] != expected {
            return Err(CryptoError::WrongKey {
                expected: hex::encode(&expected),
                found: hex::encode(&header[8..16]),
            }
            .into());
        }
        let salt: [u8; SALT_LEN] = header[16..].try_into().expect("32 bytes");
        let (cipher, prefix) = key.file_cipher(&salt);
        Ok(DecryptReader {
            inner,
            stream: Stream {
                cipher,
                prefix,
                header,
                counter: 0,
            },
            buf: Zeroizing::new(vec![0u8; SEALED_LEN + 1]),
            pos: 0,
            end: 0,
            carry: None,
            done: false,
            failed: None,
        })
    }

    fn next_chunk(&mut self) -> io::Result<()> {
        let mut len = 0;
        if let Some(b) = self.carry.take() {
            self.buf[0] = b;
            len = 1;
        }
        len += read_full(&mut self.inner, &mut self.buf[len..])?;
        let last = len <= SEALED_LEN;
        let sealed = if last { len } else { SEALED_LEN };
        if !last {
            self.carry = Some(self.buf[SEALED_LEN]);
        }
        if sealed < TAG_LEN {
            return Err(CryptoError::Truncated.into());
        }
        let (body, tag) = self.buf[..sealed].split_at_mut(sealed - TAG_LEN);
        let tag = Tag::try_from(&*tag).expect("16 bytes");
        if let Err(e) = self.stream.open(body, &tag, last) {
            // Retrying with the other flag costs nothing on the good path and turns a bare
            // "tampered" into the more useful "truncated" or "trailing data".
            return Err(match self.stream.open(body, &tag, !last) {
                Ok(()) if last => CryptoError::Truncated,
                Ok(()) => CryptoError::TrailingData,
                Err(_) => e,
            }
            .into());
        }
        self.stream.counter += 1;
        self.pos = 0;
        self.end = sealed - TAG_LEN;
        self.done = last;
        Ok(())
    }
}

impl<R: Read> Read for DecryptReader<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if let Some((kind, crypto, msg)) = &self.failed {
            return Err(match crypto {
                Some(c) => c.clone().into(),
                None => io::Error::new(*kind, msg.clone()),
            });
        }
        while self.pos == self.end {
            if self.done || out.is_empty() {
                return Ok(0);
            }
            if let Err(e) = self.next_chunk() {
                self.failed = Some((e.kind(), crypto_error(&e).cloned(), e.to_string()));
                return Err(e);
            }
        }
        let n = out.len().min(self.end - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Reads until `buf` is full or EOF; returns the count.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::super::tests::{data, decrypt, encrypt, key};
    use super::super::KeyFile;
    use super::*;

    #[test]
    fn round_trips_and_sizes_are_exact() {
        let k = key();
        for len in [
            0,
            1,
            CHUNK_LEN - 1,
            CHUNK_LEN,
            CHUNK_LEN + 1,
            3 * CHUNK_LEN,
            10 << 20,
        ] {
            let plain = data(len);
            let stored = encrypt(&k, &plain);
            assert_eq!(stored.len() as u64, encrypted_len(len as u64), "len {len}");
            assert_eq!(plain_len(stored.len() as u64), Some(len as u64));
            assert!(is_encrypted(&stored));
            assert_eq!(decrypt(&k, &stored).unwrap(), plain, "len {len}");
        }
        // Same plaintext, fresh salt: nothing repeats across files.
        assert_ne!(encrypt(&k, b"x"), encrypt(&k, b"x"));
        assert_eq!(plain_len(HEADER_LEN as u64 + 5), None);
    }

    #[test]
    fn frames_decrypt_alone_from_offset_and_length() {
        let k = key();
        let (a, b) = (data(100_000), data(5));
        let mut bundle = encrypt(&k, &a);
        let offset = bundle.len();
        bundle.extend(encrypt(&k, &b));
        let frame = &bundle[offset..offset + encrypted_len(5) as usize];
        assert_eq!(decrypt(&k, frame).unwrap(), b);
        // Without the length limit the first frame sees the second as trailing data.
        assert!(decrypt(&k, &bundle).is_err());
    }

    #[test]
    fn wrong_master_key_is_named() {
        let stored = encrypt(&key(), b"secret");
        assert!(matches!(
            decrypt(&key(), &stored),
            Err(CryptoError::WrongKey { .. })
        ));
    }

    #[test]
    fn any_flipped_byte_fails() {
        let k = key();
        let stored = encrypt(&k, &data(2 * CHUNK_LEN + 100));
        let first_tag = HEADER_LEN + CHUNK_LEN;
        let last_tag = stored.len() - TAG_LEN;
        let cases = [
            (0, CryptoError::NotEncrypted),
            (4, CryptoError::UnsupportedVersion(VERSION ^ 1)),
            (5, CryptoError::UnsupportedCipher(CIPHER_AES_256_GCM ^ 1)),
            (6, CryptoError::Tampered),               // reserved
            (20, CryptoError::Tampered),              // salt
            (HEADER_LEN + 10, CryptoError::Tampered), // chunk data
            (first_tag + 3, CryptoError::Tampered),
            (last_tag - 1, CryptoError::Tampered),
            (last_tag + 15, CryptoError::Tampered),
        ];
        for (at, want) in cases {
            let mut bad = stored.clone();
            bad[at] ^= 1;
            assert_eq!(decrypt(&k, &bad).unwrap_err(), want, "byte {at}");
        }
        let mut bad = stored.clone();
        bad[9] ^= 1; // key id
        assert!(matches!(
            decrypt(&k, &bad),
            Err(CryptoError::WrongKey { .. })
        ));
    }

    #[test]
    fn no_bytes_of_a_bad_chunk_are_released() {
        let k = key();
        let mut stored = encrypt(&k, &data(CHUNK_LEN + 10));
        stored[HEADER_LEN + SEALED_LEN + 2] ^= 1; // second chunk
        let mut r = DecryptReader::new(&k, &stored[..]).unwrap();
        let mut out = Vec::new();
        assert!(r.read_to_end(&mut out).is_err());
        assert_eq!(out.len(), CHUNK_LEN, "first chunk only");
        assert!(r.read(&mut [0u8; 10]).is_err(), "errors stick");
    }

    #[test]
    fn truncation_is_detected() {
        let k = key();
        let stored = encrypt(&k, &data(3 * CHUNK_LEN));
        let boundary = HEADER_LEN + 2 * SEALED_LEN;
        for (len, want) in [
            (0, CryptoError::Truncated),
            (2, CryptoError::Truncated),
            (HEADER_LEN - 1, CryptoError::Truncated),
            (HEADER_LEN, CryptoError::Truncated),
            (HEADER_LEN + SEALED_LEN, CryptoError::Truncated),
            (boundary, CryptoError::Truncated),
            (boundary + 8, CryptoError::Truncated), // shorter than a tag
            (boundary + 1000, CryptoError::Tampered), // mid-chunk
            (stored.len() - 1, CryptoError::Tampered),
        ] {
            assert_eq!(
                decrypt(&k, &stored[..len]).unwrap_err(),
                want,
                "cut at {len}"
            );
        }
        // An unfinished writer leaves a file that reads as truncated.
        let mut w = EncryptWriter::new(&k, Vec::new()).unwrap();
        w.write_all(&data(CHUNK_LEN * 2)).unwrap();
        let partial = std::mem::take(&mut w.inner);
        assert_eq!(decrypt(&k, &partial).unwrap_err(), CryptoError::Truncated);
    }

    #[test]
    fn reordering_splicing_and_trailing_data_are_detected() {
        let k = key();
        let stored = encrypt(&k, &data(3 * CHUNK_LEN + 5));
        let chunk = |i: usize| HEADER_LEN + i * SEALED_LEN..HEADER_LEN + (i + 1) * SEALED_LEN;

        let mut swapped = stored.clone();
        swapped[chunk(0)].copy_from_slice(&stored[chunk(1)]);
        swapped[chunk(1)].copy_from_slice(&stored[chunk(0)]);
        assert_eq!(decrypt(&k, &swapped).unwrap_err(), CryptoError::Tampered);

        // A chunk from another file under the same key, at the same position.
        let other = encrypt(&k, &data(3 * CHUNK_LEN + 5));
        let mut spliced = stored.clone();
        spliced[chunk(1)].copy_from_slice(&other[chunk(1)]);
        assert_eq!(decrypt(&k, &spliced).unwrap_err(), CryptoError::Tampered);

        // A whole sealed chunk dropped from the middle.
        let mut dropped = stored[..chunk(1).start].to_vec();
        dropped.extend_from_slice(&stored[chunk(2).start..]);
        assert_eq!(decrypt(&k, &dropped).unwrap_err(), CryptoError::Tampered);

        let mut trailing = encrypt(&k, &data(CHUNK_LEN));
        trailing.extend_from_slice(b"garbage");
        assert_eq!(
            decrypt(&k, &trailing).unwrap_err(),
            CryptoError::TrailingData
        );
        let mut trailing = stored.clone();
        trailing.push(0);
        assert!(decrypt(&k, &trailing).is_err());
        let mut two = encrypt(&k, b"");
        two.extend(encrypt(&k, b""));
        assert!(decrypt(&k, &two).is_err());
    }

    /// `cargo test --release -- --ignored --nocapture throughput`. Buffers are touched
    /// before timing and read in 1 MiB pieces, as the pipeline does: otherwise page faults
    /// on a fresh 256 MiB Vec cost more than the cipher.
    #[test]
    #[ignore]
    fn throughput() {
        use std::time::Instant;
        let rate = |bytes: usize, t: Instant| bytes as f64 / 1e6 / t.elapsed().as_secs_f64();
        let k = key();
        let plain = data(256 << 20);
        let mut stored = vec![1u8; encrypted_len(plain.len() as u64) as usize];

        let t = Instant::now();
        let mut w = EncryptWriter::new(&k, &mut stored[..]).unwrap();
        for part in plain.chunks(1 << 20) {
            w.write_all(part).unwrap();
        }
        w.finish().unwrap();
        let enc = rate(plain.len(), t);
        let t = Instant::now();
        let (mut r, mut buf, mut n) = (
            DecryptReader::new(&k, &stored[..]).unwrap(),
            vec![1u8; 1 << 20],
            0,
        );
        while let got @ 1.. = r.read(&mut buf).unwrap() {
            n += got;
        }
        let dec = rate(n, t);
        assert_eq!(n, plain.len());
        println!(
            "256 MiB: encrypt {enc:.0} MB/s, decrypt {dec:.0} MB/s, both {:.0} MB/s",
            1.0 / (1.0 / enc + 1.0 / dec)
        );

        // What the backup pays: zstd -3 of table-like rows, then encryption of its output.
        let rows: Vec<u8> = (0..(256u64 << 20) / 32)
            .flat_map(|i| {
                let h = i.wrapping_mul(0x9e37_79b9_7f4a_7c15);
                let word: &[u8; 8] =
                    [b"active  ", b"pending ", b"closed  ", b"archived"][(h >> 62) as usize];
                [
                    i.to_le_bytes(),
                    (1_700_000_000 + i * 3).to_le_bytes(),
                    (h >> 44).to_le_bytes(),
                    *word,
                ]
                .concat()
            })
            .collect();
        fn zstd_into<W: Write>(rows: &[u8], out: W) -> W {
            let mut z = zstd::Encoder::new(out, 3).unwrap();
            for part in rows.chunks(1 << 20) {
                z.write_all(part).unwrap();
            }
            z.finish().unwrap()
        }
        let mut out = vec![1u8; rows.len()];
        let t = Instant::now();
        let compressed = rows.len() - zstd_into(&rows, &mut out[..]).len();
        let plain_rate = rate(rows.len(), t);
        let t = Instant::now();
        zstd_into(&rows, EncryptWriter::new(&k, &mut out[..]).unwrap())
            .finish()
            .unwrap();
        let enc_rate = rate(rows.len(), t);
        println!(
            "zstd -3 ({:.1}x): {plain_rate:.0} MB/s, with encryption {enc_rate:.0} MB/s: {:.1}% slower",
            rows.len() as f64 / compressed as f64,
            100.0 * (1.0 - enc_rate / plain_rate)
        );

        let t = Instant::now();
        let (kf, _) = KeyFile::create(b"pw").unwrap();
        let create = t.elapsed().as_secs_f64();
        let t = Instant::now();
        kf.unlock(b"pw").unwrap();
        println!(
            "argon2id {:?}: create {create:.2} s, unlock {:.2} s",
            kf.kdf_params,
            t.elapsed().as_secs_f64()
        );
    }
}
