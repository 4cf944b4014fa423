//! Subscriptions: the seeded ones plus those created at runtime, in memory.

use std::collections::HashMap;
use std::sync::{PoisonError, RwLock, RwLockReadGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::data::{self, DAY_SECS};
use crate::proto::subscription::Subscription;

/// Created subscriptions are kept in memory, so their number is bounded.
pub(crate) const MAX_CREATED: usize = 100_000;

/// The store is full: no more subscriptions can be created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StoreFull;

#[derive(Debug, Default)]
struct Created {
    /// `sub-<n>` lives at index `n - 1`.
    subscriptions: Vec<Subscription>,
    /// Index of each user's most recently created subscription.
    latest_by_user: HashMap<String, usize>,
}

/// All subscriptions, addressed by a stable position: seeded ones first, then
/// created ones in creation order. The store is append-only, so positions
/// (and therefore page tokens) stay valid while records are added.
#[derive(Debug)]
pub(crate) struct SubscriptionStore {
    seeded: Vec<Subscription>,
    created: RwLock<Created>,
}

impl SubscriptionStore {
    pub(crate) fn new(seeded: Vec<Subscription>) -> Self {
        Self {
            seeded,
            created: RwLock::default(),
        }
    }

    fn created(&self) -> RwLockReadGuard<'_, Created> {
        self.created.read().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn get(&self, id: &str) -> Option<Subscription> {
        if let Some(i) = data::seeded_subscription_index(id) {
            return self.seeded.get(i).cloned();
        }
        // Canonical decimal only, so every subscription has exactly one id.
        let digits = id.strip_prefix("sub-")?;
        if digits.starts_with('0') || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let n: usize = digits.parse().ok()?;
        self.created().subscriptions.get(n - 1).cloned()
    }

    /// Cancels created subscription `id` if `partner_id` created it: the cancelled record, or
    /// `None` when there is no such subscription for that partner.
    pub(crate) fn cancel(&self, id: &str, partner_id: &str) -> Option<Subscription> {
        let digits = id.strip_prefix("sub-")?;
        if digits.starts_with('0') || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let n: usize = digits.parse().ok()?;
        let mut created = self.created.write().unwrap_or_else(PoisonError::into_inner);
        let subscription = created.subscriptions.get_mut(n.checked_sub(1)?)?;
        if subscription.partner_id != partner_id || partner_id.is_empty() {
            return None;
        }
        "cancelled".clone_into(&mut subscription.status);
        Some(subscription.clone())
    }

    /// The user's most recently created subscription, else their seeded one.
    pub(crate) fn current_for_user(&self, user_id: &str) -> Option<Subscription> {
        let created = self.created();
        match created.latest_by_user.get(user_id) {
            Some(&i) => created.subscriptions.get(i).cloned(),
            None => self.seeded.get(data::user_index(user_id)?).cloned(),
        }
    }

    /// Up to `page_size` matching subscriptions from position `start`, and the
    /// position of the next match if there is one.
    pub(crate) fn page(
        &self,
        start: usize,
        page_size: usize,
        matches: impl Fn(&Subscription) -> bool,
    ) -> (Vec<Subscription>, Option<usize>) {
        let created = self.created();
        let all = self.seeded.iter().chain(&created.subscriptions).enumerate();
        let mut page = Vec::with_capacity(page_size);
        for (position, subscription) in all.skip(start).filter(|(_, s)| matches(s)) {
            if page.len() == page_size {
                return (page, Some(position));
            }
            page.push(subscription.clone());
        }
        (page, None)
    }

    /// Creates an active subscription for a seeded user and plan, which the
    /// caller has already validated.
    pub(crate) fn create(
        &self,
        user_id: &str,
        plan: &str,
        partner_id: &str,
    ) -> Result<Subscription, StoreFull> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs().try_into().unwrap_or(i64::MAX));
        let mut created = self.created.write().unwrap_or_else(PoisonError::into_inner);
        let index = created.subscriptions.len();
        if index >= MAX_CREATED {
            return Err(StoreFull);
        }
        let n = index + 1;
        let subscription = Subscription {
            id: format!("sub-{n}"),
            user_id: user_id.to_owned(),
            plan: plan.to_owned(),
            status: "active".to_owned(),
            price_cents: data::plan_price_cents(plan).unwrap_or_default(),
            currency: data::user_currency(user_id).unwrap_or("EUR").to_owned(),
            started_at: now,
            renews_at: now + 30 * DAY_SECS,
            partner_id: partner_id.to_owned(),
            internal_billing_id: format!("INTERNAL-bill-created-{n:06}"),
        };
        created.subscriptions.push(subscription.clone());
        created.latest_by_user.insert(user_id.to_owned(), index);
        Ok(subscription)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> SubscriptionStore {
        SubscriptionStore::new(data::Catalogue::new().seeded_subscriptions().to_vec())
    }

    #[test]
    fn created_subscriptions_become_current_and_addressable() {
        let store = store();
        let seeded = store.current_for_user("user-0007").expect("seeded");
        assert_eq!(seeded.id, "sub-u0007");
        assert_eq!(store.get("sub-u0007"), Some(seeded));

        let created = store.create("user-0007", "premium", "acme").expect("room");
        assert_eq!(created.id, "sub-1");
        assert_eq!(created.price_cents, 1_999);
        assert_eq!(store.get("sub-1").as_ref(), Some(&created));
        assert_eq!(store.current_for_user("user-0007"), Some(created));
        for unknown in [
            "sub-0",
            "sub-01",
            "sub-+1",
            "sub-2",
            "sub-",
            "sub-u9999",
            "user-0007",
        ] {
            assert_eq!(store.get(unknown), None, "{unknown}");
        }
    }

    #[test]
    fn pages_resume_from_the_returned_position() {
        let store = store();
        for _ in 0..5 {
            store.create("user-0001", "basic", "p1").expect("room");
        }
        let by_partner = |s: &Subscription| s.partner_id == "p1";
        let (first, next) = store.page(0, 2, by_partner);
        assert_eq!(first.len(), 2);
        let (second, next) = store.page(next.expect("more"), 2, by_partner);
        let (third, next) = store.page(next.expect("more"), 2, by_partner);
        assert_eq!(next, None);
        let ids: Vec<_> = [first, second, third]
            .concat()
            .into_iter()
            .map(|s| s.id)
            .collect();
        assert_eq!(ids, ["sub-1", "sub-2", "sub-3", "sub-4", "sub-5"]);

        let (all, next) = store.page(0, 100, |_| true);
        assert_eq!((all.len(), next), (100, Some(100)));
    }

    #[test]
    fn creation_is_bounded() {
        let store = store();
        for _ in 0..MAX_CREATED {
            store.create("user-0002", "basic", "").expect("room");
        }
        assert_eq!(store.create("user-0002", "basic", ""), Err(StoreFull));
    }
}
