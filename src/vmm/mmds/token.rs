//! MMDS session tokens (`PUT /latest/api/token`).
//!
//! A token carries its own expiry: the expiry (milliseconds on this
//! process's monotonic clock) and a serial number, followed by an
//! HMAC-SHA256 over both under a key drawn at random when the authority
//! is made. Without the key a guest can neither forge a token nor stretch
//! one's lifetime; nothing is stored per token, so a guest asking for
//! millions costs nothing. The key lives only in this process, so tokens
//! die with it (a restored snapshot hands out new ones), as Firecracker's
//! do.

use std::time::Instant;

use base64::Engine;
use ring::hmac;

/// Shortest and longest lifetime a guest may ask for, in seconds.
pub const MIN_TTL_SECONDS: u32 = 1;
pub const MAX_TTL_SECONDS: u32 = 21600;

/// expiry (8) + serial (8) + HMAC-SHA256 tag (32).
const TOKEN_BYTES: usize = 48;
/// Longer strings are refused before any decoding.
const TOKEN_TEXT_MAX: usize = 70;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("Invalid time to live value provided for token: {0}. Please provide a value between {MIN_TTL_SECONDS} and {MAX_TTL_SECONDS}.")]
    InvalidTtl(u32),
    #[error("cannot draw a random key for MMDS tokens")]
    Entropy,
}

pub struct TokenAuthority {
    key: hmac::Key,
    epoch: Instant,
    serial: u64,
}

impl std::fmt::Debug for TokenAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenAuthority")
            .field("serial", &self.serial)
            .finish_non_exhaustive()
    }
}

impl TokenAuthority {
    /// A new authority with a fresh random key.
    pub fn new() -> Result<Self, TokenError> {
        let rng = ring::rand::SystemRandom::new();
        let key = hmac::Key::generate(hmac::HMAC_SHA256, &rng).map_err(|_| TokenError::Entropy)?;
        Ok(TokenAuthority {
            key,
            epoch: Instant::now(),
            serial: 0,
        })
    }

    fn now_ms(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX)
    }

    /// A token valid for `ttl_seconds` from `now`.
    pub fn generate_at(&mut self, ttl_seconds: u32, now: Instant) -> Result<String, TokenError> {
        if !(MIN_TTL_SECONDS..=MAX_TTL_SECONDS).contains(&ttl_seconds) {
            return Err(TokenError::InvalidTtl(ttl_seconds));
        }
        let expiry = self.now_ms(now) + u64::from(ttl_seconds) * 1000;
        self.serial = self.serial.wrapping_add(1);
        let mut bytes = [0u8; TOKEN_BYTES];
        bytes[..8].copy_from_slice(&expiry.to_be_bytes());
        bytes[8..16].copy_from_slice(&self.serial.to_be_bytes());
        let tag = hmac::sign(&self.key, &bytes[..16]);
        bytes[16..].copy_from_slice(tag.as_ref());
        Ok(B64.encode(bytes))
    }

    pub fn generate(&mut self, ttl_seconds: u32) -> Result<String, TokenError> {
        self.generate_at(ttl_seconds, Instant::now())
    }

    /// Whether `token` came from this authority and has not expired at
    /// `now`.
    pub fn is_valid_at(&self, token: &str, now: Instant) -> bool {
        if token.len() > TOKEN_TEXT_MAX {
            return false;
        }
        let mut bytes = [0u8; TOKEN_BYTES];
        match B64.decode_slice(token, &mut bytes) {
            Ok(TOKEN_BYTES) => {}
            _ => return false,
        }
        if hmac::verify(&self.key, &bytes[..16], &bytes[16..]).is_err() {
            return false;
        }
        let mut expiry = [0u8; 8];
        expiry.copy_from_slice(&bytes[..8]);
        u64::from_be_bytes(expiry) > self.now_ms(now)
    }

    pub fn is_valid(&self, token: &str) -> bool {
        self.is_valid_at(token, Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn tokens_expire_and_cannot_be_forged() {
        let mut a = TokenAuthority::new().unwrap();
        let t0 = Instant::now();
        let tok = a.generate_at(2, t0).unwrap();
        assert!(tok.len() <= TOKEN_TEXT_MAX);
        assert!(a.is_valid_at(&tok, t0));
        assert!(a.is_valid_at(&tok, t0 + Duration::from_millis(1999)));
        assert!(!a.is_valid_at(&tok, t0 + Duration::from_secs(2)));
        // Another authority's token, a flipped bit, garbage, a long string.
        let other = TokenAuthority::new().unwrap();
        assert!(!other.is_valid_at(&tok, t0));
        let mut raw = B64.decode(&tok).unwrap();
        raw[7] ^= 1; // a later expiry
        assert!(!a.is_valid_at(&B64.encode(&raw), t0));
        for bad in ["", "abc", "!!!!", &"A".repeat(64), &"A".repeat(500)] {
            assert!(!a.is_valid_at(bad, t0), "{bad}");
        }
        // Two tokens for the same instant differ.
        assert_ne!(a.generate_at(2, t0).unwrap(), tok);
    }

    #[test]
    fn ttl_bounds() {
        let mut a = TokenAuthority::new().unwrap();
        assert_eq!(a.generate(0), Err(TokenError::InvalidTtl(0)));
        assert_eq!(a.generate(21601), Err(TokenError::InvalidTtl(21601)));
        assert!(a.generate(1).is_ok());
        assert!(a.generate(21600).is_ok());
        assert_eq!(
            TokenError::InvalidTtl(0).to_string(),
            "Invalid time to live value provided for token: 0. Please provide a value between 1 and 21600."
        );
    }
}
