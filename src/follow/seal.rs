//! The shared key of followers (`FOLLOWER_KEY_FILE`) and what is done with it, all with ring:
//! a follower proves it knows the key on each request (an HMAC over the request and the time, at
//! most [`MAX_SKEW`] apart from the agent's clock), and the agent seals every bundle (AES-256-GCM,
//! so certificate keys never cross the network in the clear) and signs the exact bytes it sends
//! (HMAC-SHA256), which the follower checks before it reads anything.
//!
//! Three keys are derived from the shared one (HMAC-SHA256 as a PRF, one label each), so that a
//! value made for one purpose is never valid for another. The key never appears in Debug output,
//! messages, logs or endpoints.

use std::fmt;
use std::path::Path;

use ring::{aead, hmac, rand::SecureRandom};
use thiserror::Error;

/// The fewest bytes a shared key may have.
pub const MIN_KEY_BYTES: usize = 32;
/// How far the follower's clock may be from the agent's, in seconds.
pub const MAX_SKEW: u64 = 120;
/// The header of a request's time (Unix seconds).
pub const TIME_HEADER: &str = "x-smart-proxy-time";
/// The header of a request's proof of the key.
pub const PROOF_HEADER: &str = "x-smart-proxy-proof";
/// The header of a bundle's signature.
pub const SIGNATURE_HEADER: &str = "x-smart-proxy-signature";

const NONCE_LEN: usize = 12;
const AAD: &[u8] = b"nginx-smart-proxy bundle v1";

#[derive(Debug, Error, PartialEq, Eq)]
pub enum SealError {
    #[error("FOLLOWER_KEY_FILE {path}: {reason}")]
    Key { path: String, reason: String },
    #[error("the bundle's signature does not verify (a different FOLLOWER_KEY_FILE on the agent, or the bundle was altered on the way)")]
    BadSignature,
    #[error("the bundle is signed but cannot be opened (corrupt)")]
    Corrupt,
    #[error("the request's proof of the key does not verify (a different FOLLOWER_KEY_FILE on the follower)")]
    BadProof,
    #[error("the request's time is {skew} s away from the agent's clock (at most {MAX_SKEW} s allowed): fix the clock of one of them")]
    Skew { skew: u64 },
}

/// The shared key, as the three keys derived from it.
#[derive(Clone)]
pub struct FollowerKey {
    proof: hmac::Key,
    signature: hmac::Key,
    seal: [u8; 32],
}

impl fmt::Debug for FollowerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FollowerKey([redacted])")
    }
}

impl FollowerKey {
    /// Reads the key from `path` (a Docker secret): trailing whitespace (a final newline) is not
    /// part of it, and at least [`MIN_KEY_BYTES`] must remain. Errors name the file, never its
    /// contents.
    pub fn read(path: &Path) -> Result<FollowerKey, SealError> {
        let bad = |reason: String| SealError::Key { path: path.display().to_string(), reason };
        let raw = std::fs::read(path).map_err(|e| bad(format!("cannot read it: {e}")))?;
        let end = raw.iter().rposition(|b| !b.is_ascii_whitespace()).map_or(0, |i| i + 1);
        if end < MIN_KEY_BYTES {
            return Err(bad(format!(
                "the key has {end} bytes; at least {MIN_KEY_BYTES} are needed (e.g. `head -c 32 /dev/urandom | base64 > key`)"
            )));
        }
        Ok(FollowerKey::from_bytes(&raw[..end]))
    }

    /// The keys derived from `raw` (callers check its length).
    pub fn from_bytes(raw: &[u8]) -> FollowerKey {
        let master = hmac::Key::new(hmac::HMAC_SHA256, raw);
        let derive = |label: &[u8]| hmac::sign(&master, label);
        let mut seal = [0u8; 32];
        seal.copy_from_slice(derive(b"nginx-smart-proxy follow: seal").as_ref());
        FollowerKey {
            proof: hmac::Key::new(hmac::HMAC_SHA256, derive(b"nginx-smart-proxy follow: proof").as_ref()),
            signature: hmac::Key::new(hmac::HMAC_SHA256, derive(b"nginx-smart-proxy follow: signature").as_ref()),
            seal,
        }
    }

    /// The proof for a request of `path_and_query` at `time` (Unix seconds), as hex.
    pub fn prove(&self, path_and_query: &str, time: u64) -> String {
        hex(hmac::sign(&self.proof, proof_message(path_and_query, time).as_bytes()).as_ref())
    }

    /// Checks a request's proof and that its time is within [`MAX_SKEW`] of `now`.
    pub fn check_proof(&self, path_and_query: &str, time: u64, proof: &str, now: u64) -> Result<(), SealError> {
        let tag = unhex(proof).ok_or(SealError::BadProof)?;
        hmac::verify(&self.proof, proof_message(path_and_query, time).as_bytes(), &tag)
            .map_err(|_| SealError::BadProof)?;
        let skew = now.abs_diff(time);
        if skew > MAX_SKEW {
            return Err(SealError::Skew { skew });
        }
        Ok(())
    }

    /// Seals `plain` (a fresh random nonce, then the ciphertext and its tag) and signs the result:
    /// (the bytes to send, their signature as hex).
    pub fn seal(&self, plain: &[u8]) -> (Vec<u8>, String) {
        let mut nonce = [0u8; NONCE_LEN];
        ring::rand::SystemRandom::new().fill(&mut nonce).expect("the system's random numbers");
        let key = aead::LessSafeKey::new(aead::UnboundKey::new(&aead::AES_256_GCM, &self.seal).expect("a 32-byte key"));
        let mut body = Vec::with_capacity(NONCE_LEN + plain.len() + aead::AES_256_GCM.tag_len());
        body.extend_from_slice(&nonce);
        body.extend_from_slice(plain);
        let tag = key
            .seal_in_place_separate_tag(
                aead::Nonce::assume_unique_for_key(nonce),
                aead::Aad::from(AAD),
                &mut body[NONCE_LEN..],
            )
            .expect("a bundle fits AES-GCM's limit");
        body.extend_from_slice(tag.as_ref());
        let signature = hex(hmac::sign(&self.signature, &body).as_ref());
        (body, signature)
    }

    /// Checks the signature of `body` first, then opens it: the bundle's bytes.
    pub fn open(&self, body: &[u8], signature: &str) -> Result<Vec<u8>, SealError> {
        let tag = unhex(signature).ok_or(SealError::BadSignature)?;
        hmac::verify(&self.signature, body, &tag).map_err(|_| SealError::BadSignature)?;
        if body.len() < NONCE_LEN {
            return Err(SealError::Corrupt);
        }
        let key = aead::LessSafeKey::new(aead::UnboundKey::new(&aead::AES_256_GCM, &self.seal).expect("a 32-byte key"));
        let nonce = aead::Nonce::try_assume_unique_for_key(&body[..NONCE_LEN]).map_err(|_| SealError::Corrupt)?;
        let mut data = body[NONCE_LEN..].to_vec();
        let plain = key.open_in_place(nonce, aead::Aad::from(AAD), &mut data).map_err(|_| SealError::Corrupt)?;
        let len = plain.len();
        data.truncate(len);
        Ok(data)
    }
}

fn proof_message(path_and_query: &str, time: u64) -> String {
    format!("GET {path_and_query}\n{time}")
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || text.len() > 256 {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> FollowerKey {
        FollowerKey::from_bytes(&[byte; 32])
    }

    #[test]
    fn a_sealed_bundle_opens_with_the_same_key_only() {
        let (body, signature) = key(1).seal(b"{\"revision\":1}");
        assert!(!body.windows(8).any(|w| w == b"revision"), "the bytes sent are not the plain bundle");
        assert_eq!(key(1).open(&body, &signature).unwrap(), b"{\"revision\":1}");
        assert_eq!(key(2).open(&body, &signature), Err(SealError::BadSignature));
        // A bundle sealed with another key but signed... with another key too: refused.
        let (forged, forged_sig) = key(2).seal(b"{\"revision\":9}");
        assert_eq!(key(1).open(&forged, &forged_sig), Err(SealError::BadSignature));
        // One flipped bit anywhere: the signature no longer verifies.
        for i in [0, 12, body.len() - 1] {
            let mut bad = body.clone();
            bad[i] ^= 1;
            assert_eq!(key(1).open(&bad, &signature), Err(SealError::BadSignature), "byte {i}");
        }
        assert_eq!(key(1).open(&body, "zz"), Err(SealError::BadSignature));
        assert_eq!(key(1).open(&body, ""), Err(SealError::BadSignature));
        // Two seals of the same bundle differ (fresh nonces).
        assert_ne!(key(1).seal(b"x").0, key(1).seal(b"x").0);
    }

    #[test]
    fn proofs_bind_the_request_and_the_time() {
        let k = key(7);
        let proof = k.prove("/bundle?after=1&node=a", 1000);
        assert_eq!(k.check_proof("/bundle?after=1&node=a", 1000, &proof, 1100), Ok(()));
        assert_eq!(k.check_proof("/bundle?after=1&node=b", 1000, &proof, 1000), Err(SealError::BadProof));
        assert_eq!(k.check_proof("/bundle?after=1&node=a", 1001, &proof, 1000), Err(SealError::BadProof));
        assert_eq!(key(8).check_proof("/bundle?after=1&node=a", 1000, &proof, 1000), Err(SealError::BadProof));
        assert_eq!(
            k.check_proof("/bundle?after=1&node=a", 1000, &proof, 1000 + MAX_SKEW + 1),
            Err(SealError::Skew { skew: MAX_SKEW + 1 })
        );
        assert_eq!(
            k.check_proof("/bundle?after=1&node=a", 1000, &proof, 1000 - MAX_SKEW - 1),
            Err(SealError::Skew { skew: MAX_SKEW + 1 })
        );
        assert_eq!(k.check_proof("/bundle?after=1&node=a", 1000, "not hex", 1000), Err(SealError::BadProof));
    }

    #[test]
    fn the_key_file_needs_32_bytes_and_never_shows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, "short-secret-value\n").unwrap();
        let e = FollowerKey::read(&path).unwrap_err().to_string();
        assert!(e.contains("18 bytes") && e.contains("at least 32"), "{e}");
        assert!(!e.contains("short-secret-value"), "{e}");
        let secret = "0123456789abcdef0123456789abcdef-the-key";
        std::fs::write(&path, format!("{secret}\n")).unwrap();
        let k = FollowerKey::read(&path).unwrap();
        assert_eq!(format!("{k:?}"), "FollowerKey([redacted])");
        // The newline is not part of the key: the same key without it opens its bundles.
        let (body, sig) = k.seal(b"x");
        assert_eq!(FollowerKey::from_bytes(secret.as_bytes()).open(&body, &sig).unwrap(), b"x");
        let missing = FollowerKey::read(&dir.path().join("nope")).unwrap_err().to_string();
        assert!(missing.starts_with("FOLLOWER_KEY_FILE ") && missing.contains("cannot read it"), "{missing}");
    }
}
