//! Per-service fault injection, hit counters and trace-propagation evidence,
//! shared by the gRPC and REST front ends.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use serde::Serialize;

/// The largest injectable latency; longer waits would only hang test suites.
pub(crate) const MAX_LATENCY_MS: u64 = 60_000;

/// A demo service that can be faulted and whose calls are counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Service {
    User,
    Preferences,
    Subscription,
    Content,
    Ads,
    Recommendations,
}

impl Service {
    pub(crate) const ALL: [Self; 6] = [
        Self::User,
        Self::Preferences,
        Self::Subscription,
        Self::Content,
        Self::Ads,
        Self::Recommendations,
    ];

    /// The name used in the admin API.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Preferences => "preferences",
            Self::Subscription => "subscription",
            Self::Content => "content",
            Self::Ads => "ads",
            Self::Recommendations => "recommendations",
        }
    }

    pub(crate) fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }
}

/// The fault configured for one service.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub(crate) struct Fault {
    /// Delay added before every call is handled.
    pub latency_ms: u64,
    /// Probability in `[0, 1]` that a call fails after the delay.
    pub error_rate: f64,
}

/// Identity and tracing headers of one call, from HTTP headers or gRPC metadata.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct CallContext<'a> {
    pub user_id: Option<&'a str>,
    pub traceparent: Option<&'a str>,
}

impl<'a> CallContext<'a> {
    pub(crate) fn from_http(headers: &'a axum::http::HeaderMap) -> Self {
        let get = |name| headers.get(name).and_then(|v| v.to_str().ok());
        Self {
            user_id: get("x-user-id"),
            traceparent: get("traceparent"),
        }
    }

    pub(crate) fn from_grpc(metadata: &'a tonic::metadata::MetadataMap) -> Self {
        let get = |name| metadata.get(name).and_then(|v| v.to_str().ok());
        Self {
            user_id: get("x-user-id"),
            traceparent: get("traceparent"),
        }
    }
}

/// A call failed on purpose because of the service's configured error rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct InjectedFault;

/// The mutable control plane behind the admin API.
#[derive(Debug, Default)]
pub(crate) struct Control {
    faults: Mutex<[Fault; Service::ALL.len()]>,
    hits: [AtomicU64; Service::ALL.len()],
    subscription_creates: AtomicU64,
    last_traceparent: Mutex<[Option<String>; Service::ALL.len()]>,
    last_user_id: Mutex<[Option<String>; Service::ALL.len()]>,
}

/// Nothing panics while these locks are held, but a poisoned table is still
/// consistent, so recover rather than propagate the panic.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Control {
    /// Entry point of every call to `service`: counts it, records its
    /// headers, then applies the service's fault (sleep first, then maybe fail).
    pub(crate) async fn admit(
        &self,
        service: Service,
        call: CallContext<'_>,
    ) -> Result<(), InjectedFault> {
        self.hits[service as usize].fetch_add(1, Ordering::Relaxed);
        tracing::debug!(
            service = service.name(),
            user_id = call.user_id,
            traceparent = call.traceparent,
            "call"
        );
        if let Some(traceparent) = call.traceparent {
            lock(&self.last_traceparent)[service as usize] = Some(traceparent.to_owned());
        }
        if let Some(user_id) = call.user_id {
            lock(&self.last_user_id)[service as usize] = Some(user_id.to_owned());
        }
        let fault = lock(&self.faults)[service as usize];
        if fault.latency_ms > 0 {
            delay(Duration::from_millis(fault.latency_ms)).await;
        }
        if fault.error_rate > 0.0 && rand::random::<f64>() < fault.error_rate {
            tracing::debug!(service = service.name(), "injecting failure");
            return Err(InjectedFault);
        }
        Ok(())
    }

    /// Counts a CreateSubscription call, on top of its `subscription` hit.
    pub(crate) fn count_subscription_create(&self) {
        self.subscription_creates.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn set_fault(&self, service: Service, fault: Fault) {
        lock(&self.faults)[service as usize] = fault;
    }

    /// Clears every fault; hit counters are left alone because they are monotonic.
    pub(crate) fn reset_faults(&self) {
        *lock(&self.faults) = Default::default();
    }

    /// The fault table keyed by service name.
    pub(crate) fn faults(&self) -> BTreeMap<&'static str, Fault> {
        let faults = *lock(&self.faults);
        Service::ALL
            .into_iter()
            .map(|s| (s.name(), faults[s as usize]))
            .collect()
    }

    /// Call counts keyed by service name, plus `subscription_create`.
    pub(crate) fn hits(&self) -> BTreeMap<&'static str, u64> {
        let mut hits: BTreeMap<_, _> = Service::ALL
            .into_iter()
            .map(|s| (s.name(), self.hits[s as usize].load(Ordering::Relaxed)))
            .collect();
        hits.insert(
            "subscription_create",
            self.subscription_creates.load(Ordering::Relaxed),
        );
        hits
    }

    /// The last `traceparent` each service received, if any.
    pub(crate) fn last_traceparents(&self) -> BTreeMap<&'static str, Option<String>> {
        snapshot(&self.last_traceparent)
    }

    /// The last `x-user-id` each service received, if any: what the gateway said about the caller.
    pub(crate) fn last_user_ids(&self) -> BTreeMap<&'static str, Option<String>> {
        snapshot(&self.last_user_id)
    }
}

fn snapshot(
    last: &Mutex<[Option<String>; Service::ALL.len()]>,
) -> BTreeMap<&'static str, Option<String>> {
    let last = lock(last).clone();
    Service::ALL
        .into_iter()
        .zip(last)
        .map(|(s, value)| (s.name(), value))
        .collect()
}

/// How much of a delay is left to a blocking thread's sleep.
const FINE_DELAY: Duration = Duration::from_millis(3);

/// How early the blocking thread's sleep ends: more than its overshoot and the wake of the task
/// after it, which together took 110 to 390 µs on a virtual machine whose CPU idled meanwhile.
const EARLY: Duration = Duration::from_micros(500);

/// Waits `duration`, to within a few microseconds rather than tokio's milliseconds. Tokio's timer
/// counts whole milliseconds and fires up to about two of them late, and a blocking thread's
/// `nanosleep` and the wake of the task after it end 0.1 to 0.4 ms late (the kernel's timer
/// slack, and on a virtual machine the wake of an idle CPU): a 20 ms fault would last 21 to 22 ms
/// on the first, 20.2 to 20.3 on the second, and blur what a test or a benchmark measures through
/// the gateway. So the delay sleeps on tokio's timer until 3 ms before the deadline, then on a
/// blocking thread until 0.5 ms before it, and yields on its worker for the rest, letting the
/// worker's other tasks run meanwhile. One such thread sleeps per delayed call, for at most
/// those 3 ms.
pub(crate) async fn delay(duration: Duration) {
    let deadline = std::time::Instant::now() + duration;
    if let Some(coarse) = duration.checked_sub(FINE_DELAY) {
        tokio::time::sleep(coarse).await;
    }
    let rest = deadline.saturating_duration_since(std::time::Instant::now());
    if let Some(sleep) = rest.checked_sub(EARLY).filter(|d| !d.is_zero())
        && tokio::task::spawn_blocking(move || std::thread::sleep(sleep))
            .await
            .is_err()
    {
        tokio::time::sleep_until(deadline.into()).await;
    }
    while std::time::Instant::now() < deadline {
        tokio::task::yield_now().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn admit_counts_records_and_faults() {
        let control = Control::default();
        let call = CallContext {
            user_id: Some("user-0001"),
            traceparent: Some("00-abc-def-01"),
        };
        assert_eq!(control.admit(Service::Ads, call).await, Ok(()));
        control.set_fault(
            Service::Ads,
            Fault {
                latency_ms: 0,
                error_rate: 1.0,
            },
        );
        assert_eq!(
            control.admit(Service::Ads, CallContext::default()).await,
            Err(InjectedFault)
        );
        control.reset_faults();
        assert_eq!(
            control.admit(Service::Ads, CallContext::default()).await,
            Ok(())
        );

        assert_eq!(control.hits()["ads"], 3);
        assert_eq!(control.hits()["user"], 0);
        let last = control.last_traceparents();
        assert_eq!(last["ads"].as_deref(), Some("00-abc-def-01"));
        assert_eq!(last["user"], None);
        assert_eq!(control.last_user_ids()["ads"].as_deref(), Some("user-0001"));
    }

    #[tokio::test]
    async fn a_delay_lasts_at_least_its_duration() {
        // 300 µs is shorter than the blocking thread's part: the worker's yields alone wait it.
        for micros in [0, 300, 1_000, 3_000, 7_000] {
            let duration = Duration::from_micros(micros);
            let started = std::time::Instant::now();
            delay(duration).await;
            assert!(started.elapsed() >= duration, "{micros} µs");
        }
    }

    #[test]
    fn service_names_round_trip() {
        for service in Service::ALL {
            assert_eq!(Service::from_name(service.name()), Some(service));
        }
        assert_eq!(Service::from_name("subscription_create"), None);
    }
}
