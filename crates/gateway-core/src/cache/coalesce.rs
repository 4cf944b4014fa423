//! Coalescing of concurrent identical work ("single flight"): the first caller for a key computes,
//! callers that arrive while it runs wait for its result instead of repeating the upstream calls.
//!
//! If the computing caller goes away (its client hung up), waiters are released and compute for
//! themselves, so a cancelled request can never strand others.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::watch;

/// In-flight computations by key. Entries live exactly as long as their computation.
pub struct Coalescer<V> {
    inflight: Mutex<HashMap<String, watch::Receiver<Option<V>>>>,
}

impl<V> Default for Coalescer<V> {
    fn default() -> Self {
        Self {
            inflight: Mutex::new(HashMap::new()),
        }
    }
}

/// What a caller is to do for its key.
pub enum Role<'a, V> {
    /// Compute, then hand the result to [`Leader::finish`].
    Leader(Leader<'a, V>),
    /// Wait for the leader's result with [`Follower::wait`].
    Follower(Follower<V>),
}

/// The caller that computes. Dropped without finishing, it releases the followers.
pub struct Leader<'a, V> {
    owner: &'a Coalescer<V>,
    key: String,
    tx: watch::Sender<Option<V>>,
}

/// A caller waiting for the leader.
pub struct Follower<V> {
    rx: watch::Receiver<Option<V>>,
}

impl<V: Clone> Coalescer<V> {
    /// Joins the computation for `key`, or starts it.
    pub fn join(&self, key: &str) -> Role<'_, V> {
        let mut inflight = self
            .inflight
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(rx) = inflight.get(key) {
            return Role::Follower(Follower { rx: rx.clone() });
        }
        let (tx, rx) = watch::channel(None);
        inflight.insert(key.to_owned(), rx);
        Role::Leader(Leader {
            owner: self,
            key: key.to_owned(),
            tx,
        })
    }

    /// Computations in flight (for tests and metrics).
    pub fn len(&self) -> usize {
        self.inflight
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    }

    /// Whether nothing is in flight.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<V> Leader<'_, V> {
    /// Publishes the result to every follower.
    pub fn finish(self, value: V) {
        // Removed before sending, so a caller arriving now starts afresh rather than joining a
        // finished computation.
        self.remove();
        let _ = self.tx.send(Some(value));
    }

    fn remove(&self) {
        self.owner
            .inflight
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&self.key);
    }
}

impl<V> Drop for Leader<'_, V> {
    fn drop(&mut self) {
        self.remove();
    }
}

impl<V: Clone> Follower<V> {
    /// The leader's result, or `None` if the leader went away without one.
    pub async fn wait(mut self) -> Option<V> {
        match self.rx.wait_for(Option::is_some).await {
            Ok(value) => value.clone(),
            Err(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn followers_get_the_leaders_result() {
        let c = Coalescer::<u32>::default();
        let Role::Leader(leader) = c.join("k") else {
            panic!("first is the leader")
        };
        let Role::Follower(f1) = c.join("k") else {
            panic!("second follows")
        };
        let Role::Follower(f2) = c.join("k") else {
            panic!("third follows")
        };
        leader.finish(7);
        assert_eq!((f1.wait().await, f2.wait().await), (Some(7), Some(7)));
        assert!(c.is_empty());
        assert!(
            matches!(c.join("k"), Role::Leader(_)),
            "a finished key starts afresh"
        );
    }

    #[tokio::test]
    async fn a_vanished_leader_releases_its_followers() {
        let c = Coalescer::<u32>::default();
        let leader = c.join("k");
        let Role::Follower(f) = c.join("k") else {
            panic!("follows")
        };
        drop(leader);
        assert_eq!(f.wait().await, None);
        assert!(c.is_empty());
    }
}
