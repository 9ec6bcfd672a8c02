//! The key file: the repository's random master key, wrapped (AES-256-GCM) under a key
//! that Argon2id stretches from the passphrase. Opening a stanza unwraps it once per
//! command; rotating the passphrase rewrites only this small object.

use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::{Aes256Gcm, Tag};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::{hex, random, CryptoError, MasterKey, Nonce, KEY_ID_LEN, TAG_LEN};

const KEYFILE_AAD: &[u8] = b"pgward keyfile v1";

/// Argon2id cost. Stored in the key file so defaults can grow without breaking old ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KdfParams {
    pub m_cost_kib: u32,
    pub t_cost: u32,
    pub p_cost: u32,
}

impl Default for KdfParams {
    /// OWASP's Argon2id recommendation (19 MiB, 2 passes, 1 lane). Every command that
    /// opens the stanza pays this once (archive-push runs per WAL segment), so the
    /// stronger RFC 9106 setting (64 MiB, ~0.2 s) would cost 10x an archive-push and
    /// push peak memory past 64 MiB. Key files record their parameters, so a
    /// repository created with other costs keeps them.
    fn default() -> Self {
        KdfParams {
            m_cost_kib: 19 * 1024,
            t_cost: 2,
            p_cost: 1,
        }
    }
}

impl KdfParams {
    /// Bounds checked on load: a damaged or hostile key file must not make us allocate
    /// terabytes or spin for hours before reporting a wrong passphrase.
    fn check(&self) -> Result<(), CryptoError> {
        let ok = (1..=64).contains(&self.p_cost)
            && (8 * self.p_cost..=4 * 1024 * 1024).contains(&self.m_cost_kib)
            && (1..=100).contains(&self.t_cost);
        if ok {
            Ok(())
        } else {
            Err(CryptoError::InvalidKeyFile(format!(
                "argon2id parameters out of range: {self:?}"
            )))
        }
    }

    fn stretch(&self, passphrase: &[u8], salt: &[u8]) -> Result<Aes256Gcm, CryptoError> {
        self.check()?;
        let params = argon2::Params::new(self.m_cost_kib, self.t_cost, self.p_cost, Some(32))
            .map_err(|e| CryptoError::Kdf(e.to_string()))?;
        let argon =
            argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let mut kek = Zeroizing::new([0u8; 32]);
        argon
            .hash_password_into(passphrase, salt, kek.as_mut())
            .map_err(|e| CryptoError::Kdf(e.to_string()))?;
        Ok(Aes256Gcm::new_from_slice(kek.as_ref()).expect("32-byte key"))
    }
}

/// The small object holding the master key wrapped under the passphrase.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyFile {
    pub format: u32,
    pub cipher: String,
    pub kdf: String,
    pub kdf_params: KdfParams,
    #[serde(with = "hex")]
    pub salt: [u8; 16],
    #[serde(with = "hex")]
    pub nonce: [u8; 12],
    /// Master key encrypted with AES-256-GCM under the Argon2id output: 32 bytes + tag.
    #[serde(with = "hex")]
    pub wrapped_key: [u8; 32 + TAG_LEN],
    /// `MasterKey::key_id`, to tell keys apart in messages without unlocking.
    #[serde(with = "hex")]
    pub key_id: [u8; KEY_ID_LEN],
    pub created: chrono::DateTime<chrono::Utc>,
}

impl KeyFile {
    /// A new repository key: random master key wrapped under `passphrase`.
    pub fn create(passphrase: &[u8]) -> Result<(KeyFile, MasterKey), CryptoError> {
        Self::create_with(passphrase, KdfParams::default())
    }

    pub fn create_with(
        passphrase: &[u8],
        params: KdfParams,
    ) -> Result<(KeyFile, MasterKey), CryptoError> {
        let master = MasterKey(random()?);
        Ok((Self::wrap(&master, passphrase, params)?, master))
    }

    fn wrap(
        master: &MasterKey,
        passphrase: &[u8],
        params: KdfParams,
    ) -> Result<KeyFile, CryptoError> {
        if passphrase.is_empty() {
            return Err(CryptoError::EmptyPassphrase);
        }
        let (salt, nonce) = (random()?, random()?);
        let mut wrapped = [0u8; 32 + TAG_LEN];
        wrapped[..32].copy_from_slice(&master.0);
        let tag = params
            .stretch(passphrase, &salt)?
            .encrypt_inout_detached(
                &Nonce::from(nonce),
                KEYFILE_AAD,
                (&mut wrapped[..32]).into(),
            )
            .expect("32 bytes is within GCM limits");
        wrapped[32..].copy_from_slice(&tag);
        Ok(KeyFile {
            format: 1,
            cipher: "aes-256-gcm".into(),
            kdf: "argon2id".into(),
            kdf_params: params,
            salt,
            nonce,
            wrapped_key: wrapped,
            key_id: master.key_id(),
            created: chrono::Utc::now(),
        })
    }

    pub fn unlock(&self, passphrase: &[u8]) -> Result<MasterKey, CryptoError> {
        self.check()?;
        let mut key = MasterKey([0u8; 32]);
        key.0.copy_from_slice(&self.wrapped_key[..32]);
        let tag = Tag::try_from(&self.wrapped_key[32..]).expect("16 bytes");
        self.kdf_params
            .stretch(passphrase, &self.salt)?
            .decrypt_inout_detached(
                &Nonce::from(self.nonce),
                KEYFILE_AAD,
                (&mut key.0[..]).into(),
                &tag,
            )
            .map_err(|_| CryptoError::WrongPassphrase)?;
        if key.key_id() != self.key_id {
            return Err(CryptoError::InvalidKeyFile(
                "key id does not match the key".into(),
            ));
        }
        Ok(key)
    }

    /// Key rotation: the same master key under a new passphrase, fresh salt and nonce, the
    /// same KDF cost, so no stored data is rewritten. Store it in place of the old one.
    pub fn rekey(&self, old: &[u8], new: &[u8]) -> Result<KeyFile, CryptoError> {
        self.rekey_with(old, new, self.kdf_params)
    }

    /// Rotation that also changes the KDF cost (e.g. to raise it to today's default).
    pub fn rekey_with(
        &self,
        old: &[u8],
        new: &[u8],
        params: KdfParams,
    ) -> Result<KeyFile, CryptoError> {
        Self::wrap(&self.unlock(old)?, new, params)
    }

    fn check(&self) -> Result<(), CryptoError> {
        if self.format != 1 || self.cipher != "aes-256-gcm" || self.kdf != "argon2id" {
            return Err(CryptoError::InvalidKeyFile(format!(
                "format {} with {}/{} is not supported by this pgward",
                self.format, self.cipher, self.kdf
            )));
        }
        self.kdf_params.check()
    }

    pub fn to_json(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("key file serializes");
        v.push(b'\n');
        v
    }

    pub fn from_json(bytes: &[u8]) -> Result<KeyFile, CryptoError> {
        let kf: KeyFile = serde_json::from_slice(bytes)
            .map_err(|e| CryptoError::InvalidKeyFile(e.to_string()))?;
        kf.check()?;
        Ok(kf)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{decrypt, encrypt, FAST};
    use super::*;

    #[test]
    fn passphrase_unlock_rekey_and_json() {
        let (kf, master) = KeyFile::create(b"correct horse").unwrap(); // default cost
        assert_eq!(kf.unlock(b"correct horse").unwrap().0, master.0);
        assert_eq!(
            kf.unlock(b"wrong").unwrap_err(),
            CryptoError::WrongPassphrase
        );

        let back = KeyFile::from_json(&kf.to_json()).unwrap();
        assert_eq!(back, kf);
        assert_eq!(back.unlock(b"correct horse").unwrap().0, master.0);

        let rotated = kf.rekey(b"correct horse", b"battery staple").unwrap();
        assert_eq!(rotated.unlock(b"battery staple").unwrap().0, master.0);
        assert_eq!(
            rotated.unlock(b"correct horse").unwrap_err(),
            CryptoError::WrongPassphrase
        );
        assert_eq!(
            kf.rekey(b"nope", b"x").unwrap_err(),
            CryptoError::WrongPassphrase
        );
        assert_eq!(
            kf.rekey(b"correct horse", b"").unwrap_err(),
            CryptoError::EmptyPassphrase
        );

        // Data written before rotation reads after it.
        let stored = encrypt(&master, b"before");
        assert_eq!(
            decrypt(&rotated.unlock(b"battery staple").unwrap(), &stored).unwrap(),
            b"before"
        );
    }

    #[test]
    fn damaged_or_hostile_key_files_are_refused() {
        let (kf, _) = KeyFile::create_with(b"pw", FAST).unwrap();
        let mut bad = kf.clone();
        bad.wrapped_key[3] ^= 1;
        assert_eq!(bad.unlock(b"pw").unwrap_err(), CryptoError::WrongPassphrase);
        let mut huge = kf.clone();
        huge.kdf_params.m_cost_kib = u32::MAX;
        assert!(matches!(
            huge.unlock(b"pw"),
            Err(CryptoError::InvalidKeyFile(_))
        ));
        let json = String::from_utf8(kf.to_json()).unwrap();
        let short = json.replace(&format!("\"{}\"", hex::encode(&kf.salt)), "\"abcd\"");
        assert!(matches!(
            KeyFile::from_json(short.as_bytes()),
            Err(CryptoError::InvalidKeyFile(_))
        ));
        // from_str_radix alone would read "+f" as 15.
        let salt = hex::encode(&kf.salt);
        let signed = json.replace(&salt, &format!("+f{}", &salt[2..]));
        assert!(matches!(
            KeyFile::from_json(signed.as_bytes()),
            Err(CryptoError::InvalidKeyFile(_))
        ));
        assert!(KeyFile::from_json(b"{}").is_err());
    }
}
