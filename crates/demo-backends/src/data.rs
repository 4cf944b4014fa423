//! The seeded demo data set.
//!
//! Everything is derived from record indices through `splitmix64`, never from
//! a random source or the clock, so every process (and every test run) serves
//! byte-for-byte the same users, items, ads and recommendations.

use serde::Serialize;

use crate::proto::{preferences::Preferences, subscription::Subscription, user::User};

/// Number of seeded users: `user-0001` … `user-1000`.
pub const USER_COUNT: usize = 1_000;
/// Number of catalogue items: `item-001` … `item-500`.
pub const ITEM_COUNT: usize = 500;
/// Size of the ad inventory ads are drawn from.
const AD_COUNT: usize = 60;
/// Number of items in each curated list.
const LIST_LEN: usize = 12;
/// The curated lists served under `/content/lists/{list}`.
pub(crate) const LIST_NAMES: [&str; 3] = ["featured", "trending", "new-releases"];

/// 2024-01-01T00:00:00Z: seeded timestamps hang off a fixed instant so they
/// never change between runs.
const SEED_EPOCH: i64 = 1_704_067_200;
pub(crate) const DAY_SECS: i64 = 86_400;

pub(crate) const PLANS: [&str; 3] = ["basic", "standard", "premium"];

const FIRST_NAMES: [&str; 16] = [
    "Ada", "Ben", "Chloe", "Dev", "Elena", "Farid", "Grace", "Hiro", "Ines", "Jonas", "Kemi",
    "Liam", "Maya", "Noah", "Priya", "Rosa",
];
const LAST_NAMES: [&str; 16] = [
    "Adams", "Berg", "Costa", "Dubois", "Eze", "Fischer", "Garcia", "Hughes", "Ito", "Jensen",
    "Khan", "Larsen", "Moreau", "Okafor", "Patel", "Rossi",
];
/// (country, locale, currency)
const COUNTRIES: [(&str, &str, &str); 8] = [
    ("GB", "en-GB", "GBP"),
    ("US", "en-US", "USD"),
    ("DE", "de-DE", "EUR"),
    ("FR", "fr-FR", "EUR"),
    ("ES", "es-ES", "EUR"),
    ("IE", "en-IE", "EUR"),
    ("NL", "nl-NL", "EUR"),
    ("CA", "en-CA", "CAD"),
];
const GENRES: [&str; 10] = [
    "drama",
    "comedy",
    "documentary",
    "thriller",
    "sci-fi",
    "animation",
    "romance",
    "horror",
    "crime",
    "family",
];
const ADJECTIVES: [&str; 12] = [
    "Silent", "Crimson", "Hidden", "Last", "Golden", "Broken", "Midnight", "Electric", "Distant",
    "Wild", "Frozen", "Secret",
];
const NOUNS: [&str; 12] = [
    "Harbour",
    "Signal",
    "Garden",
    "Frontier",
    "Orchestra",
    "Kingdom",
    "Archive",
    "Voyage",
    "Engine",
    "Lighthouse",
    "Circuit",
    "Meadow",
];
const SUBJECTS: [&str; 8] = [
    "two estranged siblings",
    "a retired detective",
    "a crew of misfit engineers",
    "an unlikely friendship",
    "a family secret",
    "a small-town band",
    "the last of a dynasty",
    "a stolen manuscript",
];
const PLACES: [&str; 8] = [
    "a coastal village",
    "a city that never sleeps",
    "the far north",
    "a drifting space station",
    "a crumbling estate",
    "the desert",
    "a border town",
    "an island archive",
];
const ADVERTISERS: [&str; 8] = [
    "Acme Coffee",
    "Northwind Travel",
    "Globex Mobile",
    "Initech Cloud",
    "Umbrella Outdoors",
    "Stark Audio",
    "Wayne Motors",
    "Hooli Home",
];
const HEADLINES: [&str; 8] = [
    "Your next favourite starts here",
    "Limited time: 50% off",
    "Upgrade your evenings",
    "Made for binge nights",
    "Try it free for 30 days",
    "The sound you deserve",
    "Go further this weekend",
    "Smarter homes, calmer minds",
];
const OTHER_REASONS: [&str; 3] = ["trending now", "popular near you", "new for you"];

// Domains keep streams derived from the same index uncorrelated.
const D_USER: u64 = 1;
const D_PREFS: u64 = 2;
const D_SUB: u64 = 3;
const D_ITEM: u64 = 4;
const D_RELATED: u64 = 5;
const D_TRENDING: u64 = 6;
const D_AD: u64 = 7;
const D_AD_PICK: u64 = 8;
const D_RECS: u64 = 9;

/// The splitmix64 finaliser: a cheap, well-mixed, deterministic hash of `x`.
pub(crate) fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn mix(domain: u64, index: u64) -> u64 {
    splitmix64(splitmix64(domain) ^ index)
}

/// FNV-1a, to turn client-supplied strings into hash seeds.
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xCBF2_9CE4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01B3)
    })
}

fn pick<T: Copy>(options: &[T], h: u64) -> T {
    options[(h % options.len() as u64) as usize]
}

/// Parses `<prefix><digits>` with exactly `width` digits into a zero-based
/// index below `count`; `user-1` and `user-00001` are deliberately unknown.
fn parse_index(id: &str, prefix: &str, width: usize, count: usize) -> Option<usize> {
    let digits = id.strip_prefix(prefix)?;
    if digits.len() != width || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: usize = digits.parse().ok()?;
    (1..=count).contains(&n).then(|| n - 1)
}

/// Zero-based index of a seeded user id.
pub(crate) fn user_index(id: &str) -> Option<usize> {
    parse_index(id, "user-", 4, USER_COUNT)
}

/// Zero-based index of a seeded subscription id (`sub-u0001`).
pub(crate) fn seeded_subscription_index(id: &str) -> Option<usize> {
    parse_index(id, "sub-u", 4, USER_COUNT)
}

/// Monthly price of a plan, the same number in every currency.
pub(crate) fn plan_price_cents(plan: &str) -> Option<i64> {
    match plan {
        "basic" => Some(799),
        "standard" => Some(1_299),
        "premium" => Some(1_999),
        _ => None,
    }
}

/// A catalogue item as served by the content API.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Item {
    pub id: String,
    pub title: String,
    pub description: String,
    pub genre: &'static str,
    pub year: u16,
    pub duration_min: u16,
    pub rating: f64,
    /// Base URL; gateways append size parameters.
    pub image_url: String,
    pub related: Vec<String>,
    pub internal_cost_cents: u64,
}

/// An ad as served by the ads API.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Ad {
    pub id: String,
    pub advertiser: &'static str,
    pub headline: &'static str,
    pub image_url: String,
    pub click_url: String,
    pub internal_bid_cents: u64,
}

/// One personalised recommendation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Recommendation {
    pub item_id: String,
    pub score: f64,
    pub reason: String,
}

/// The immutable seeded data set.
#[derive(Debug, PartialEq)]
pub(crate) struct Catalogue {
    users: Vec<User>,
    preferences: Vec<Preferences>,
    subscriptions: Vec<Subscription>,
    items: Vec<Item>,
    lists: Vec<Vec<usize>>,
    ads: Vec<Ad>,
}

impl Catalogue {
    pub(crate) fn new() -> Self {
        let items: Vec<Item> = (0..ITEM_COUNT).map(seed_item).collect();
        let lists = LIST_NAMES
            .iter()
            .map(|name| seed_list(name, &items))
            .collect();
        Self {
            users: (0..USER_COUNT).map(seed_user).collect(),
            preferences: (0..USER_COUNT).map(seed_preferences).collect(),
            subscriptions: (0..USER_COUNT).map(seed_subscription).collect(),
            items,
            lists,
            ads: (0..AD_COUNT).map(seed_ad).collect(),
        }
    }

    pub(crate) fn user(&self, id: &str) -> Option<&User> {
        self.users.get(user_index(id)?)
    }

    pub(crate) fn preferences(&self, user_id: &str) -> Option<&Preferences> {
        self.preferences.get(user_index(user_id)?)
    }

    /// The seeded subscriptions, one per user, in user order.
    pub(crate) fn seeded_subscriptions(&self) -> &[Subscription] {
        &self.subscriptions
    }

    pub(crate) fn items(&self) -> &[Item] {
        &self.items
    }

    pub(crate) fn item(&self, id: &str) -> Option<&Item> {
        self.items.get(parse_index(id, "item-", 3, ITEM_COUNT)?)
    }

    /// The items of a curated list, or `None` for an unknown list name.
    pub(crate) fn list(&self, name: &str) -> Option<impl Iterator<Item = &Item>> {
        let position = LIST_NAMES.iter().position(|n| *n == name)?;
        Some(self.lists[position].iter().map(|&i| &self.items[i]))
    }

    /// `limit` distinct ads, deterministic per (user, placement).
    pub(crate) fn ads(&self, user_id: &str, placement: &str, limit: usize) -> Vec<Ad> {
        let seed = fnv1a(user_id) ^ fnv1a(placement).rotate_left(29);
        distinct_indices(limit.min(AD_COUNT), AD_COUNT, |k| mix(D_AD_PICK, seed ^ k))
            .into_iter()
            .map(|i| {
                let ad = &self.ads[i];
                Ad {
                    click_url: format!("{}?placement={placement}", ad.click_url),
                    ..ad.clone()
                }
            })
            .collect()
    }

    /// Up to `limit` recommendations for a seeded user, ordered by descending
    /// score and biased towards the user's favourite genres.
    pub(crate) fn recommendations(
        &self,
        user_id: &str,
        limit: usize,
    ) -> Option<Vec<Recommendation>> {
        let user = user_index(user_id)?;
        let favourites = &self.preferences[user].favourite_genres;
        let is_favourite = |item: &Item| favourites.iter().any(|g| g == item.genre);
        let seed = (user as u64) << 32;
        let mut picked: Vec<usize> = Vec::with_capacity(limit);
        // Favourite genres are always taken, others only a third of the
        // time; the bound only matters if `limit` approached ITEM_COUNT.
        for k in 0..20 * ITEM_COUNT as u64 {
            if picked.len() >= limit {
                break;
            }
            let h = mix(D_RECS, seed | k);
            let candidate = (h % ITEM_COUNT as u64) as usize;
            if !picked.contains(&candidate)
                && (is_favourite(&self.items[candidate]) || (h >> 32).is_multiple_of(3))
            {
                picked.push(candidate);
            }
        }
        let recommendations = picked
            .into_iter()
            .enumerate()
            .map(|(rank, i)| {
                let item = &self.items[i];
                let h = mix(D_RECS, i as u64);
                // Jitter stays below the 0.015 step so scores keep decreasing.
                let score = 0.99 - rank as f64 * 0.015 - (h % 10) as f64 / 1_000.0;
                let reason = if is_favourite(item) {
                    format!("because you like {}", item.genre)
                } else {
                    pick(&OTHER_REASONS, h >> 8).to_owned()
                };
                Recommendation {
                    item_id: item.id.clone(),
                    score: (score * 1_000.0).round() / 1_000.0,
                    reason,
                }
            })
            .collect();
        Some(recommendations)
    }
}

/// `count` distinct indices below `bound`, drawn from the hash stream `h(k)`.
fn distinct_indices(count: usize, bound: usize, h: impl Fn(u64) -> u64) -> Vec<usize> {
    let mut picked = Vec::with_capacity(count);
    let mut k = 0;
    while picked.len() < count.min(bound) {
        let i = (h(k) % bound as u64) as usize;
        if !picked.contains(&i) {
            picked.push(i);
        }
        k += 1;
    }
    picked
}

fn seed_user(i: usize) -> User {
    let h = mix(D_USER, i as u64);
    let n = i + 1;
    let first = pick(&FIRST_NAMES, h);
    let last = pick(&LAST_NAMES, h >> 8);
    let (country, locale, _) = country_of(i);
    User {
        id: format!("user-{n:04}"),
        display_name: format!("{first} {last}"),
        email: format!(
            "{}.{}.{n:04}@mail.demo.invalid",
            first.to_lowercase(),
            last.to_lowercase()
        ),
        avatar_url: format!("https://img.demo.invalid/avatars/user-{n:04}"),
        country: country.to_owned(),
        locale: locale.to_owned(),
        created_at: SEED_EPOCH - ((h >> 24) % 1_500) as i64 * DAY_SECS,
        internal_risk_score: format!("INTERNAL-risk-{:.2}", ((h >> 40) % 100) as f64 / 100.0),
        internal_notes: format!(
            "INTERNAL ONLY: support ticket #{} - never show to users",
            (h >> 20) % 90_000 + 10_000
        ),
        password_hash: format!("$argon2id$v=19$INTERNAL-DO-NOT-EXPOSE${h:016x}"),
    }
}

fn seed_preferences(i: usize) -> Preferences {
    let h = mix(D_PREFS, i as u64);
    let (_, locale, _) = country_of(i);
    let genre_count = 1 + (h % 3) as usize;
    let favourite_genres = distinct_indices(genre_count, GENRES.len(), |k| mix(D_PREFS, h ^ k))
        .into_iter()
        .map(|g| GENRES[g].to_owned())
        .collect();
    Preferences {
        user_id: format!("user-{:04}", i + 1),
        language: locale.split('-').next().unwrap_or(locale).to_owned(),
        theme: pick(&["light", "dark", "system"], h >> 8).to_owned(),
        autoplay: (h >> 16) & 1 == 1,
        notifications: (h >> 17) & 3 != 0,
        favourite_genres,
        internal_segment: pick(
            &[
                "INTERNAL-seg-high-value",
                "INTERNAL-seg-churn-risk",
                "INTERNAL-seg-casual",
            ],
            h >> 20,
        )
        .to_owned(),
    }
}

/// (country, locale, currency) of a seeded user.
fn country_of(i: usize) -> (&'static str, &'static str, &'static str) {
    pick(&COUNTRIES, mix(D_USER, i as u64) >> 16)
}

/// The currency a user pays in, for subscriptions created at runtime.
pub(crate) fn user_currency(user_id: &str) -> Option<&'static str> {
    user_index(user_id).map(|i| country_of(i).2)
}

fn seed_subscription(i: usize) -> Subscription {
    let h = mix(D_SUB, i as u64);
    let n = i + 1;
    let plan = pick(&PLANS, h);
    let status = match (h >> 8) % 20 {
        0..=13 => "active",
        14..=16 => "trial",
        _ => "cancelled",
    };
    let started_at = SEED_EPOCH - ((h >> 16) % 700) as i64 * DAY_SECS;
    Subscription {
        id: format!("sub-u{n:04}"),
        user_id: format!("user-{n:04}"),
        plan: plan.to_owned(),
        status: status.to_owned(),
        price_cents: plan_price_cents(plan).unwrap_or_default(),
        currency: country_of(i).2.to_owned(),
        started_at,
        renews_at: SEED_EPOCH + (1 + (h >> 32) % 30) as i64 * DAY_SECS,
        partner_id: String::new(),
        internal_billing_id: format!("INTERNAL-bill-{:012x}", h >> 16),
    }
}

fn seed_item(i: usize) -> Item {
    let h = mix(D_ITEM, i as u64);
    let id = format!("item-{:03}", i + 1);
    let genre = pick(&GENRES, h);
    let sequel = if (h >> 60) == 0 { " II" } else { "" };
    let related_count = 3 + ((h >> 40) % 3) as usize;
    let related = distinct_indices(related_count + 1, ITEM_COUNT, |k| {
        mix(D_RELATED, (i as u64) << 16 | k)
    })
    .into_iter()
    .filter(|&r| r != i)
    .take(related_count)
    .map(|r| format!("item-{:03}", r + 1))
    .collect();
    Item {
        title: format!(
            "The {} {}{sequel}",
            pick(&ADJECTIVES, h >> 4),
            pick(&NOUNS, h >> 8)
        ),
        description: format!(
            "A {genre} about {} in {}.",
            pick(&SUBJECTS, h >> 12),
            pick(&PLACES, h >> 16)
        ),
        genre,
        year: 1980 + ((h >> 20) % 45) as u16,
        duration_min: 20 + ((h >> 28) % 160) as u16,
        rating: (10 + (h >> 36) % 90) as f64 / 10.0,
        image_url: format!("https://img.demo.invalid/items/{id}"),
        related,
        internal_cost_cents: 10_000 + (h >> 44) % 5_000_000,
        id,
    }
}

/// The item indices of a curated list, each with its own deterministic order.
fn seed_list(name: &str, items: &[Item]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..items.len()).collect();
    match name {
        // Best rated first; ids break ties so the order is total.
        "featured" => {
            order.sort_by(|&a, &b| items[b].rating.total_cmp(&items[a].rating).then(a.cmp(&b)))
        }
        "new-releases" => order.sort_by(|&a, &b| items[b].year.cmp(&items[a].year).then(a.cmp(&b))),
        _ => order.sort_by_key(|&i| mix(D_TRENDING, i as u64)),
    }
    order.truncate(LIST_LEN);
    order
}

fn seed_ad(i: usize) -> Ad {
    let h = mix(D_AD, i as u64);
    let id = format!("ad-{:03}", i + 1);
    Ad {
        advertiser: pick(&ADVERTISERS, h),
        headline: pick(&HEADLINES, h >> 8),
        image_url: format!("https://img.demo.invalid/ads/{id}"),
        click_url: format!("https://ads.demo.invalid/click/{id}"),
        internal_bid_cents: 50 + (h >> 16) % 450,
        id,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeding_is_deterministic() {
        assert_eq!(Catalogue::new(), Catalogue::new());
    }

    #[test]
    fn ids_parse_strictly() {
        assert_eq!(user_index("user-0001"), Some(0));
        assert_eq!(user_index("user-1000"), Some(999));
        for bad in [
            "user-0000",
            "user-1001",
            "user-1",
            "user-00001",
            "user-+001",
            "",
            "sub-u0001",
        ] {
            assert_eq!(user_index(bad), None, "{bad}");
        }
        assert_eq!(seeded_subscription_index("sub-u0042"), Some(41));
    }

    #[test]
    fn items_are_well_formed() {
        let catalogue = Catalogue::new();
        let first = catalogue.item("item-001").expect("seeded item");
        assert_eq!(first.image_url, "https://img.demo.invalid/items/item-001");
        assert!(catalogue.item("item-501").is_none());
        for item in catalogue.items() {
            assert!((3..=5).contains(&item.related.len()), "{}", item.id);
            assert!(
                !item.related.contains(&item.id),
                "{} relates to itself",
                item.id
            );
            assert!((1.0..=9.9).contains(&item.rating));
        }
    }

    #[test]
    fn lists_have_twelve_distinct_items() {
        let catalogue = Catalogue::new();
        for name in LIST_NAMES {
            let mut ids: Vec<_> = catalogue
                .list(name)
                .expect("known list")
                .map(|i| &i.id)
                .collect();
            ids.sort();
            ids.dedup();
            assert_eq!(ids.len(), LIST_LEN, "{name}");
        }
        assert!(catalogue.list("unknown").is_none());
    }

    #[test]
    fn recommendations_are_personalised_and_ranked() {
        let catalogue = Catalogue::new();
        let a = catalogue
            .recommendations("user-0001", 50)
            .expect("known user");
        let b = catalogue
            .recommendations("user-0002", 50)
            .expect("known user");
        assert_eq!(a.len(), 50);
        assert_ne!(a, b);
        assert!(a.windows(2).all(|w| w[0].score > w[1].score));
        assert!(catalogue.recommendations("user-4242", 10).is_none());
    }

    #[test]
    fn ads_depend_on_user_and_placement() {
        let catalogue = Catalogue::new();
        let feed = catalogue.ads("user-0001", "feed", 10);
        assert_eq!(feed.len(), 10);
        assert_eq!(feed, catalogue.ads("user-0001", "feed", 10));
        assert_ne!(feed, catalogue.ads("user-0002", "feed", 10));
        assert_ne!(feed, catalogue.ads("user-0001", "banner", 10));
        assert!(feed[0].click_url.ends_with("?placement=feed"));
    }
}
