//! Partner API keys: generated with 256 bits of entropy, stored only as their SHA-256, looked up by
//! that hash. A fast hash is the right tool here (as for GitHub's tokens): the keys are random, so
//! there is nothing to brute-force.
//!
//! Timing: a lookup never compares the presented key itself, only its SHA-256, and an attacker who
//! learnt how many leading bytes of a stored hash their guess matched would still need a preimage
//! to use it. Even so, [`KeyHash`] equality (what a map lookup ends with) runs in constant time, so
//! the configured-keys map leaks nothing; Redis looks the hash up as a key name.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::store::{Redis, StoreError, redis::AsyncCommands};

/// Prefix of every key we mint, so leaked keys are easy to recognise in logs and secret scanners.
pub const KEY_PREFIX: &str = "bffk_";
/// Bound on keys the in-memory store holds.
pub const MAX_MEMORY_KEYS: usize = 100_000;
/// Longest key a client may present; anything longer is refused before hashing.
pub const MAX_KEY_BYTES: usize = 128;

/// What a key grants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKeyRecord {
    /// The partner the key belongs to.
    pub partner: String,
    /// Rate-limit tier.
    pub tier: String,
    /// API version pinned to the key (`YYYY-MM-DD`), if any.
    #[serde(default)]
    pub version: Option<String>,
}

/// The SHA-256 of a key, the only form in which keys are stored. Compared in constant time.
#[derive(Debug, Clone, Copy)]
pub struct KeyHash(pub [u8; 32]);

// Written out because equality is: the two must agree, and hashing the bytes is what derive does.
impl std::hash::Hash for KeyHash {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.hash(state);
    }
}

impl PartialEq for KeyHash {
    fn eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl Eq for KeyHash {}

impl KeyHash {
    /// Hashes a presented key.
    pub fn of(key: &str) -> Self {
        Self(Sha256::digest(key.as_bytes()).into())
    }

    /// Lower-case hex, as written in configuration files and Redis keys.
    pub fn to_hex(self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Parses 64 hex digits.
    pub fn from_hex(hex: &str) -> Option<Self> {
        if hex.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(Self(out))
    }
}

/// Mints a new random key. Only its hash should ever be stored.
pub fn generate_key() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("{KEY_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes))
}

/// Where API keys live.
#[async_trait]
pub trait ApiKeyStore: Send + Sync + 'static {
    /// The record for a key hash, if the key exists.
    async fn lookup(&self, hash: &KeyHash) -> Result<Option<ApiKeyRecord>, StoreError>;
    /// Adds or replaces a key.
    async fn insert(&self, hash: KeyHash, record: ApiKeyRecord) -> Result<(), StoreError>;
}

/// Keys held in this process (devstack, tests, keys from the configuration file).
#[derive(Default)]
pub struct MemoryApiKeyStore {
    keys: RwLock<HashMap<KeyHash, ApiKeyRecord>>,
}

#[async_trait]
impl ApiKeyStore for MemoryApiKeyStore {
    async fn lookup(&self, hash: &KeyHash) -> Result<Option<ApiKeyRecord>, StoreError> {
        let keys = self
            .keys
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Ok(keys.get(hash).cloned())
    }

    async fn insert(&self, hash: KeyHash, record: ApiKeyRecord) -> Result<(), StoreError> {
        let mut keys = self
            .keys
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if keys.len() >= MAX_MEMORY_KEYS && !keys.contains_key(&hash) {
            return Err(StoreError::Protocol("API key store is full".into()));
        }
        keys.insert(hash, record);
        Ok(())
    }
}

/// Keys in Redis under `{prefix}:apikey:{<sha256>}`, shared by every gateway and the identity provider.
pub struct RedisApiKeyStore {
    redis: Redis,
    bound: Duration,
}

impl RedisApiKeyStore {
    /// A store on `redis`, each operation bounded by `bound`.
    pub fn new(redis: Redis, bound: Duration) -> Self {
        Self { redis, bound }
    }
}

#[async_trait]
impl ApiKeyStore for RedisApiKeyStore {
    async fn lookup(&self, hash: &KeyHash) -> Result<Option<ApiKeyRecord>, StoreError> {
        let key = self.redis.key("apikey", &hash.to_hex());
        let raw: Option<String> = self
            .redis
            .run(
                self.bound,
                |mut conn| async move { Ok(conn.get(key).await?) },
            )
            .await?;
        raw.map(|s| serde_json::from_str(&s).map_err(|e| StoreError::Protocol(e.to_string())))
            .transpose()
    }

    async fn insert(&self, hash: KeyHash, record: ApiKeyRecord) -> Result<(), StoreError> {
        let key = self.redis.key("apikey", &hash.to_hex());
        let value =
            serde_json::to_string(&record).map_err(|e| StoreError::Protocol(e.to_string()))?;
        self.redis
            .run(self.bound, |mut conn| async move {
                let () = conn.set(key, value).await?;
                Ok(())
            })
            .await
    }
}

/// Keys from the configuration file first, then the shared store.
pub struct LayeredApiKeyStore {
    pub(crate) configured: HashMap<KeyHash, ApiKeyRecord>,
    pub(crate) shared: Arc<dyn ApiKeyStore>,
}

#[async_trait]
impl ApiKeyStore for LayeredApiKeyStore {
    async fn lookup(&self, hash: &KeyHash) -> Result<Option<ApiKeyRecord>, StoreError> {
        match self.configured.get(hash) {
            Some(record) => Ok(Some(record.clone())),
            None => self.shared.lookup(hash).await,
        }
    }

    async fn insert(&self, hash: KeyHash, record: ApiKeyRecord) -> Result<(), StoreError> {
        self.shared.insert(hash, record).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_round_trips_through_hex() {
        let h = KeyHash::of("bffk_example");
        assert_eq!(KeyHash::from_hex(&h.to_hex()), Some(h));
        assert_eq!(KeyHash::from_hex("zz"), None);
    }

    #[test]
    fn generated_keys_are_distinct_and_prefixed() {
        let (a, b) = (generate_key(), generate_key());
        assert_ne!(a, b);
        assert!(a.starts_with(KEY_PREFIX) && a.len() == KEY_PREFIX.len() + 43);
    }

    #[tokio::test]
    async fn memory_store_finds_by_hash_only() {
        let store = MemoryApiKeyStore::default();
        let rec = ApiKeyRecord {
            partner: "acme".into(),
            tier: "standard".into(),
            version: None,
        };
        store
            .insert(KeyHash::of("k1"), rec.clone())
            .await
            .expect("insert");
        assert_eq!(
            store.lookup(&KeyHash::of("k1")).await.expect("ok"),
            Some(rec)
        );
        assert_eq!(store.lookup(&KeyHash::of("k2")).await.expect("ok"), None);
    }
}
