//! Idempotency keys for writes, as Stripe and the IETF `Idempotency-Key` draft describe them.
//!
//! A client sends `Idempotency-Key: <unique value>` with a write. The first request with a key
//! claims it, performs the write and stores its answer; a retry with the same key and the same
//! request gets the stored answer without a second write; the same key with another request is
//! refused with 422; a duplicate that arrives while the first is still running waits for its answer
//! (and gets 409 if that takes longer than `idempotency.wait_ms`).
//!
//! Records live in memory (bounded, per-record lifetimes) or in Redis, so every instance of a BFF
//! sees the same records. Keys are scoped by their owner (the partner), so two owners can never
//! collide or read each other's answers, and stored under the SHA-256 of owner and key, so a key's
//! size or content cannot shape the store.
//!
//! Only successful answers are stored. A failed write releases its key at once, so the client can
//! retry it; a gateway that dies mid-write frees the key after `idempotency.lock_ms`. The write
//! runs on its own task: a client that disconnects does not cancel a write half-way, and the
//! answer is still recorded for its retry.

use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use moka::Expiry;
use moka::ops::compute::Op;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::cache::Weight;
use crate::config::IdempotencyConfig;
use crate::error::GatewayError;
use crate::store::redis::{self, Script};
use crate::store::{Redis, StoreError, bounded};

/// The request header naming a write's idempotency key.
pub const HEADER: &str = "idempotency-key";
/// The response header set on an answer replayed from a record.
pub const REPLAYED_HEADER: &str = "idempotent-replayed";
/// Longest key accepted.
pub const MAX_KEY_BYTES: usize = 255;
/// First pause of a duplicate waiting for the original's answer; it doubles up to [`MAX_POLL`].
const FIRST_POLL: Duration = Duration::from_millis(5);
const MAX_POLL: Duration = Duration::from_millis(100);

/// An answer as stored: status and body, in the API's current internal shape (a versioned API
/// renders it for each request's version).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// JSON body.
    pub body: Value,
}

/// What the store holds under a key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Record {
    /// A write in progress. `token` tells its holder's record from a later one.
    Pending {
        /// SHA-256 of the request, hex.
        fingerprint: String,
        /// Random, per claim.
        token: String,
    },
    /// A finished write and its answer.
    Done {
        /// SHA-256 of the request, hex.
        fingerprint: String,
        /// What the write answered.
        answer: Answer,
    },
}

impl Record {
    fn fingerprint(&self) -> &str {
        match self {
            Self::Pending { fingerprint, .. } | Self::Done { fingerprint, .. } => fingerprint,
        }
    }
}

/// Where records live.
#[async_trait]
pub trait IdempotencyStore: Send + Sync + 'static {
    /// Stores `pending` under `key` for `hold` unless a record is there already. Returns that
    /// record, or `None` when the key is now claimed by the caller.
    async fn claim(
        &self,
        key: &str,
        pending: &Record,
        hold: Duration,
    ) -> Result<Option<Record>, StoreError>;
    /// Replaces the caller's pending record with the finished one, kept for `keep`.
    async fn complete(&self, key: &str, done: &Record, keep: Duration) -> Result<(), StoreError>;
    /// Removes `pending` if it is still the record under `key`.
    async fn release(&self, key: &str, pending: &Record) -> Result<(), StoreError>;
}

// === impl MemoryIdempotencyStore ===

/// Records in this process: bounded, each with its own lifetime, each held as its JSON (as Redis
/// holds it), which the byte bound weighs exactly. A record held as a `serde_json::Value` takes
/// several times its JSON: every string, number and object of the answer a value of its own.
pub struct MemoryIdempotencyStore {
    inner: moka::sync::Cache<String, (Box<[u8]>, Duration)>,
}

struct Lifetime;

impl Expiry<String, (Box<[u8]>, Duration)> for Lifetime {
    fn expire_after_create(
        &self,
        _: &String,
        v: &(Box<[u8]>, Duration),
        _: std::time::Instant,
    ) -> Option<Duration> {
        Some(v.1)
    }
    fn expire_after_update(
        &self,
        _: &String,
        v: &(Box<[u8]>, Duration),
        _: std::time::Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(v.1)
    }
}

impl MemoryIdempotencyStore {
    /// A store of at most `max_entries` records and about `max_bytes` bytes (records as JSON,
    /// keys and bookkeeping): whichever bound is reached first evicts.
    pub fn new(max_entries: u64, max_bytes: u64) -> Self {
        let weight = Weight::new(max_bytes, max_entries);
        Self {
            inner: moka::sync::Cache::builder()
                .max_capacity(max_bytes)
                .weigher(move |key: &String, (json, _): &(Box<[u8]>, Duration)| {
                    weight.of(key.len().saturating_add(json.len()))
                })
                .expire_after(Lifetime)
                .build(),
        }
    }
}

/// `record` as the store holds it.
fn to_json(record: &Record) -> Result<Box<[u8]>, StoreError> {
    serde_json::to_vec(record)
        .map(Vec::into_boxed_slice)
        .map_err(|e| StoreError::Protocol(e.to_string()))
}

#[async_trait]
impl IdempotencyStore for MemoryIdempotencyStore {
    async fn claim(
        &self,
        key: &str,
        pending: &Record,
        hold: Duration,
    ) -> Result<Option<Record>, StoreError> {
        let json = to_json(pending)?;
        let entry = self
            .inner
            .entry(key.to_owned())
            .or_insert_with(|| (json, hold));
        if entry.is_fresh() {
            return Ok(None);
        }
        serde_json::from_slice(&entry.value().0)
            .map(Some)
            .map_err(|e| StoreError::Protocol(e.to_string()))
    }

    async fn complete(&self, key: &str, done: &Record, keep: Duration) -> Result<(), StoreError> {
        self.inner.insert(key.to_owned(), (to_json(done)?, keep));
        Ok(())
    }

    async fn release(&self, key: &str, pending: &Record) -> Result<(), StoreError> {
        // The same record always makes the same JSON: the pending record is matched by its bytes.
        let json = to_json(pending)?;
        self.inner
            .entry(key.to_owned())
            .and_compute_with(|current| match current {
                Some(e) if e.value().0 == json => Op::Remove,
                _ => Op::Nop,
            });
        Ok(())
    }
}

// === impl RedisIdempotencyStore ===

/// Claims a key atomically: returns the record already there, or stores ours and returns nil.
static CLAIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "local cur = redis.call('GET', KEYS[1])
if cur then return cur end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return false",
    )
});

/// Deletes a key only while it still holds our pending record.
static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0",
    )
});

/// Records in Redis under `{prefix}:idem:{<hash>}`, as JSON, each with its own expiry.
pub struct RedisIdempotencyStore {
    redis: Redis,
    bound: Duration,
}

impl RedisIdempotencyStore {
    /// A store on `redis`; each operation is bounded by `bound`.
    pub fn new(redis: Redis, bound: Duration) -> Self {
        Self { redis, bound }
    }
}

fn encode(record: &Record) -> Result<String, StoreError> {
    serde_json::to_string(record).map_err(|e| StoreError::Protocol(e.to_string()))
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

#[async_trait]
impl IdempotencyStore for RedisIdempotencyStore {
    async fn claim(
        &self,
        key: &str,
        pending: &Record,
        hold: Duration,
    ) -> Result<Option<Record>, StoreError> {
        let mut call = CLAIM.key(self.redis.key("idem", key));
        call.arg(encode(pending)?).arg(millis(hold));
        let existing: Option<String> = self
            .redis
            .run(self.bound, |mut conn| async move {
                Ok(call.invoke_async(&mut conn).await?)
            })
            .await?;
        existing
            .map(|raw| serde_json::from_str(&raw).map_err(|e| StoreError::Protocol(e.to_string())))
            .transpose()
    }

    async fn complete(&self, key: &str, done: &Record, keep: Duration) -> Result<(), StoreError> {
        let (key, value, ms) = (self.redis.key("idem", key), encode(done)?, millis(keep));
        self.redis
            .run(self.bound, |mut conn| async move {
                let () = redis::AsyncCommands::pset_ex(&mut conn, key, value, ms).await?;
                Ok(())
            })
            .await
    }

    async fn release(&self, key: &str, pending: &Record) -> Result<(), StoreError> {
        let mut call = RELEASE.key(self.redis.key("idem", key));
        call.arg(encode(pending)?);
        self.redis
            .run(self.bound, |mut conn| async move {
                let _: i64 = call.invoke_async(&mut conn).await?;
                Ok(())
            })
            .await
    }
}

// === impl Idempotency ===

/// How an answer came about.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// This request performed the write.
    Performed(Answer),
    /// The answer of an earlier request with the same key, replayed.
    Replayed(Answer),
}

/// One BFF's idempotency records and their settings.
#[derive(Clone)]
pub struct Idempotency {
    store: Arc<dyn IdempotencyStore>,
    keep: Duration,
    hold: Duration,
    wait: Duration,
    bound: Duration,
}

impl Idempotency {
    /// Records in `store` (memory when `None`), kept as `cfg` says.
    pub fn new(cfg: &IdempotencyConfig, redis: Option<&Redis>) -> Self {
        let bound = Duration::from_millis(cfg.timeout_ms);
        let store: Arc<dyn IdempotencyStore> = match redis {
            Some(r) => Arc::new(RedisIdempotencyStore::new(r.clone(), bound)),
            None => Arc::new(MemoryIdempotencyStore::new(cfg.max_entries, cfg.max_bytes)),
        };
        Self {
            store,
            keep: Duration::from_secs(cfg.ttl_secs),
            hold: Duration::from_millis(cfg.lock_ms),
            wait: Duration::from_millis(cfg.wait_ms),
            bound,
        }
    }

    /// Runs the write `op` at most once for `owner`'s `key` and this `request` (what makes two
    /// requests the same: method, path and the body in a canonical form).
    ///
    /// Errors: `IDEMPOTENCY_KEY_INVALID` (400) for an empty, overlong or non-printable key;
    /// `IDEMPOTENCY_KEY_REUSED` (422) for a key already used with another request;
    /// `IDEMPOTENCY_IN_PROGRESS` (409) when the original is still running after the wait;
    /// `UNAVAILABLE` (503) when the store cannot be reached, since writing without a record
    /// could write twice.
    pub async fn run<F>(
        &self,
        owner: &str,
        key: &str,
        request: &[u8],
        op: F,
    ) -> Result<Outcome, GatewayError>
    where
        F: Future<Output = Result<Answer, GatewayError>> + Send + 'static,
    {
        check_key(key)?;
        let id = record_id(owner, key);
        let fingerprint = hex(&Sha256::digest(request));
        let pending = Record::Pending {
            fingerprint: fingerprint.clone(),
            token: uuid::Uuid::new_v4().simple().to_string(),
        };
        let give_up = Instant::now() + self.wait;
        let mut pause = FIRST_POLL;
        loop {
            let found = self
                .store
                .claim(&id, &pending, self.hold)
                .await
                .map_err(unavailable)?;
            match found {
                None => break,
                Some(other) if other.fingerprint() != fingerprint => {
                    metrics::counter!("bff_idempotency_total", "outcome" => "reused").increment(1);
                    return Err(GatewayError::Unprocessable {
                        code: "IDEMPOTENCY_KEY_REUSED",
                        detail: "This Idempotency-Key was already used with a different request; \
                                 use a new key for a new request."
                            .into(),
                    });
                }
                Some(Record::Done { answer, .. }) => {
                    metrics::counter!("bff_idempotency_total", "outcome" => "replayed")
                        .increment(1);
                    return Ok(Outcome::Replayed(answer));
                }
                Some(Record::Pending { .. }) if Instant::now() + pause > give_up => {
                    metrics::counter!("bff_idempotency_total", "outcome" => "in_progress")
                        .increment(1);
                    return Err(GatewayError::Conflict {
                        code: "IDEMPOTENCY_IN_PROGRESS",
                        detail: "A request with this Idempotency-Key is still being processed; \
                                 retry shortly to get its answer."
                            .into(),
                    });
                }
                Some(Record::Pending { .. }) => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(MAX_POLL);
                }
            }
        }
        metrics::counter!("bff_idempotency_total", "outcome" => "performed").increment(1);
        // Detached, so a client that goes away cannot cancel a write half-way or leave its key
        // claimed: the task finishes, records the answer (or frees the key) either way.
        let (store, keep, bound) = (self.store.clone(), self.keep, self.bound);
        let task = tokio::spawn(async move {
            let result = op.await;
            let stored = match &result {
                Ok(answer) if answer.status < 500 => {
                    let done = Record::Done {
                        fingerprint,
                        answer: answer.clone(),
                    };
                    bounded(bound, store.complete(&id, &done, keep)).await
                }
                _ => bounded(bound, store.release(&id, &pending)).await,
            };
            if let Err(err) = stored {
                // The write itself happened; its answer goes back. A retry may find the key
                // still claimed (409) until `lock_ms` frees it.
                tracing::error!(error = %err, "cannot record an idempotent write's outcome");
            }
            result
        });
        match task.await {
            Ok(result) => result.map(Outcome::Performed),
            Err(err) => {
                tracing::error!(error = %err, "idempotent write panicked");
                Err(GatewayError::Internal)
            }
        }
    }
}

fn unavailable(err: StoreError) -> GatewayError {
    tracing::warn!(error = %err, "idempotency store unavailable");
    metrics::counter!("bff_idempotency_total", "outcome" => "store_error").increment(1);
    GatewayError::Unavailable
}

/// Refuses keys that are empty, longer than [`MAX_KEY_BYTES`] or not printable ASCII.
pub fn check_key(key: &str) -> Result<(), GatewayError> {
    if key.is_empty() || key.len() > MAX_KEY_BYTES || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(GatewayError::BadRequest {
            code: "IDEMPOTENCY_KEY_INVALID",
            detail: format!(
                "`Idempotency-Key` must be 1 to {MAX_KEY_BYTES} printable ASCII characters, \
                 such as a UUID."
            ),
        });
    }
    Ok(())
}

/// The record's id: SHA-256 of owner and key, so neither can shape the store's key space.
fn record_id(owner: &str, key: &str) -> String {
    let mut h = Sha256::new();
    h.update(owner.as_bytes());
    h.update([0]);
    h.update(key.as_bytes());
    hex(&h.finalize())
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use serde_json::json;

    use super::*;

    fn memory() -> Idempotency {
        Idempotency::new(&IdempotencyConfig::default(), None)
    }

    fn write(
        count: &Arc<AtomicUsize>,
        status: u16,
        delay: Duration,
    ) -> impl Future<Output = Result<Answer, GatewayError>> + Send + 'static {
        let count = count.clone();
        async move {
            tokio::time::sleep(delay).await;
            let n = count.fetch_add(1, Ordering::SeqCst) + 1;
            Ok(Answer {
                status,
                body: json!({ "n": n }),
            })
        }
    }

    #[tokio::test]
    async fn a_retry_replays_the_answer_without_a_second_write() {
        let (idem, count) = (memory(), Arc::new(AtomicUsize::new(0)));
        let first = idem
            .run("acme", "k1", b"body", write(&count, 201, Duration::ZERO))
            .await
            .expect("first");
        let again = idem
            .run("acme", "k1", b"body", write(&count, 201, Duration::ZERO))
            .await
            .expect("retry");
        let answer = Answer {
            status: 201,
            body: json!({"n": 1}),
        };
        assert_eq!(first, Outcome::Performed(answer.clone()));
        assert_eq!(again, Outcome::Replayed(answer));
        assert_eq!(count.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn another_body_under_the_same_key_is_refused() {
        let (idem, count) = (memory(), Arc::new(AtomicUsize::new(0)));
        idem.run("acme", "k1", b"one", write(&count, 201, Duration::ZERO))
            .await
            .expect("first");
        let err = idem
            .run("acme", "k1", b"two", write(&count, 201, Duration::ZERO))
            .await
            .expect_err("reused");
        assert_eq!(err.code(), "IDEMPOTENCY_KEY_REUSED");
        assert_eq!(count.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn owners_do_not_share_keys() {
        let (idem, count) = (memory(), Arc::new(AtomicUsize::new(0)));
        for owner in ["acme", "globex"] {
            let out = idem
                .run(owner, "k1", b"body", write(&count, 201, Duration::ZERO))
                .await
                .expect("write");
            assert!(matches!(out, Outcome::Performed(_)), "{owner}");
        }
        assert_eq!(count.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn concurrent_duplicates_write_once_and_share_the_answer() {
        let (idem, count) = (memory(), Arc::new(AtomicUsize::new(0)));
        let runs = (0..20).map(|_| {
            idem.run(
                "acme",
                "k1",
                b"body",
                write(&count, 201, Duration::from_millis(50)),
            )
        });
        let outcomes = futures::future::join_all(runs).await;
        assert_eq!(count.load(Ordering::SeqCst), 1);
        let performed = outcomes
            .iter()
            .filter(|o| matches!(o, Ok(Outcome::Performed(_))))
            .count();
        assert_eq!(performed, 1);
        for o in outcomes {
            let Ok(Outcome::Performed(a) | Outcome::Replayed(a)) = o else {
                panic!("{o:?}")
            };
            assert_eq!(a.body, json!({"n": 1}));
        }
    }

    #[tokio::test]
    async fn a_failed_write_frees_its_key() {
        let (idem, count) = (memory(), Arc::new(AtomicUsize::new(0)));
        let failed = idem
            .run("acme", "k1", b"body", async {
                Err(GatewayError::UpstreamFailed("subscription".into()))
            })
            .await;
        assert!(failed.is_err());
        let out = idem
            .run("acme", "k1", b"body", write(&count, 201, Duration::ZERO))
            .await
            .expect("retry");
        assert!(matches!(out, Outcome::Performed(_)));
    }

    /// Records of about 1 KB in a store of 16 KB: about a dozen stay, whatever the record bound.
    #[tokio::test]
    async fn the_memory_store_keeps_to_its_bytes() {
        let store = MemoryIdempotencyStore::new(1_000, 16 * 1024);
        let done = Record::Done {
            fingerprint: "f".repeat(64),
            answer: Answer {
                status: 201,
                body: json!({ "note": "x".repeat(1000) }),
            },
        };
        for i in 0..64 {
            let key = format!("k{i}");
            store
                .complete(&key, &done, Duration::from_secs(60))
                .await
                .expect("complete");
        }
        store.inner.run_pending_tasks();
        let (kept, weight) = (store.inner.entry_count(), store.inner.weighted_size());
        assert!((1..=12).contains(&kept), "{kept} records");
        assert!(weight <= 16 * 1024, "{weight} bytes");
    }

    #[tokio::test]
    async fn a_duplicate_that_outwaits_the_original_gets_409() {
        let cfg = IdempotencyConfig {
            wait_ms: 30,
            ..IdempotencyConfig::default()
        };
        let (idem, count) = (Idempotency::new(&cfg, None), Arc::new(AtomicUsize::new(0)));
        let slow = idem.run(
            "acme",
            "k1",
            b"body",
            write(&count, 201, Duration::from_millis(300)),
        );
        let dup = async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            idem.run("acme", "k1", b"body", write(&count, 201, Duration::ZERO))
                .await
        };
        let (slow, dup) = tokio::join!(slow, dup);
        assert!(matches!(slow, Ok(Outcome::Performed(_))));
        assert_eq!(
            dup.expect_err("in progress").code(),
            "IDEMPOTENCY_IN_PROGRESS"
        );
    }

    #[test]
    fn keys_are_checked() {
        assert!(check_key("8e0c2c4e-5b1a-4c1e-9a57-1f0f6d4b1c2a").is_ok());
        for bad in ["", "with space", "tab\t", &"k".repeat(256), "é"] {
            assert_eq!(
                check_key(bad).expect_err(bad).code(),
                "IDEMPOTENCY_KEY_INVALID"
            );
        }
    }
}
