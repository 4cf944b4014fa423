//! Traffic experiments: a configured share of principals goes to an alternate version of an
//! upstream (an A/B test or a canary), always the same principals.
//!
//! A principal's place is a stable hash (XXH3, seeded by the variant's name) of its subject,
//! mapped to [0, 100): below the split's percentage it goes to the alternate version. The hash is
//! specified, not `std`'s randomised one, so every gateway instance, and every restart, puts a
//! principal in the same variant. Seeding by the name rather than the upstream means splits
//! sharing a name pick the same principals, so one experiment across several upstreams sees one
//! cohort.

use std::sync::{Arc, Mutex};

use metrics::SharedString;
use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

/// 2^-53: maps the top 53 bits of a hash onto [0, 1) exactly, as `f64` has 53 bits of mantissa.
const UNIT: f64 = 1.0 / (1u64 << 53) as f64;

/// Who goes to the alternate version.
#[derive(Debug, Clone, Copy)]
pub struct Cohort {
    seed: u64,
    percent: f64,
}

impl Cohort {
    /// `percent` (0 to 100) of the subjects, chosen by a hash seeded with `name`.
    pub fn new(name: &str, percent: f64) -> Self {
        Self {
            seed: xxh3_64(name.as_bytes()),
            percent,
        }
    }

    /// Where `subject` falls in [0, 100).
    pub fn position(&self, subject: &str) -> f64 {
        let h = xxh3_64_with_seed(subject.as_bytes(), self.seed);
        (h >> 11) as f64 * UNIT * 100.0
    }

    /// Whether `subject` is in the cohort. No allocation.
    pub fn contains(&self, subject: &str) -> bool {
        self.position(subject) < self.percent
    }
}

/// The variants one request's upstream calls went to, for its access-log line: present (in the
/// request's extensions) only when some upstream has a split.
#[derive(Debug, Clone, Default)]
pub struct Variants(Arc<Mutex<Vec<(SharedString, SharedString)>>>);

impl Variants {
    /// Notes that a call to `upstream` went to `variant`; once per upstream.
    pub(crate) fn record(&self, upstream: &SharedString, variant: &SharedString) {
        if let Ok(mut seen) = self.0.lock()
            && !seen.iter().any(|(u, _)| u == upstream)
        {
            seen.push((upstream.clone(), variant.clone()));
        }
    }

    /// `upstream=variant` pairs, comma-separated, in the order of the first calls.
    pub fn render(&self) -> String {
        match self.0.lock() {
            Ok(seen) => seen
                .iter()
                .map(|(u, v)| format!("{u}={v}"))
                .collect::<Vec<_>>()
                .join(","),
            Err(_) => String::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cohort_is_the_configured_share_of_subjects_and_stable() {
        let cohort = Cohort::new("v2", 10.0);
        let subjects: Vec<String> = (0..2_000).map(|i| format!("user-{i:04}")).collect();
        let chosen: Vec<bool> = subjects.iter().map(|s| cohort.contains(s)).collect();
        let share = chosen.iter().filter(|c| **c).count() as f64 / 20.0;
        assert!((8.0..=12.0).contains(&share), "{share}%");
        // The same subjects, whatever the instance: a fresh cohort of the same name agrees.
        let again = Cohort::new("v2", 10.0);
        assert!(
            subjects
                .iter()
                .zip(&chosen)
                .all(|(s, c)| again.contains(s) == *c)
        );
    }

    #[test]
    fn a_larger_share_of_the_same_name_keeps_the_smaller_one() {
        let (small, large) = (Cohort::new("v2", 5.0), Cohort::new("v2", 20.0));
        let other = Cohort::new("v3", 5.0);
        let subjects: Vec<String> = (0..2_000).map(|i| format!("user-{i}")).collect();
        assert!(
            subjects
                .iter()
                .filter(|s| small.contains(s))
                .all(|s| large.contains(s))
        );
        // Another name draws another cohort.
        let both = subjects
            .iter()
            .filter(|s| small.contains(s) && other.contains(s))
            .count();
        assert!(both < 20, "{both} of about 100 shared");
    }

    #[test]
    fn zero_and_one_hundred_percent_are_exact() {
        let (none, all) = (Cohort::new("c", 0.0), Cohort::new("c", 100.0));
        for i in 0..1_000 {
            let s = format!("s{i}");
            assert!(!none.contains(&s) && all.contains(&s));
        }
    }

    #[test]
    fn variants_are_noted_once_per_upstream() {
        let v = Variants::default();
        let (content, ads) = (SharedString::from("content"), SharedString::from("ads"));
        v.record(&content, &SharedString::from("v2"));
        v.record(&ads, &SharedString::from("primary"));
        v.record(&content, &SharedString::from("v2"));
        assert_eq!(v.render(), "content=v2,ads=primary");
    }
}
