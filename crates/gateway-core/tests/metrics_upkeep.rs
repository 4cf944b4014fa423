//! The metrics recorder keeps every latency sample until it is folded into its histogram's
//! buckets. The gateway folds them in every second, so a gateway that nobody scrapes holds a
//! second's samples, not every sample since it started. Measured with a counting allocator: this
//! test binary allocates nothing else meanwhile.

use std::alloc::System;
use std::time::{Duration, Instant};

use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[path = "support/counting.rs"]
mod counting;
use counting::live;

#[global_allocator]
static ALLOCATOR: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

#[test]
fn latency_samples_are_folded_in_without_a_scrape() {
    gateway_core::telemetry::metrics_handle();
    let histogram = metrics::histogram!("upkeep_test_duration_seconds", "route" => "/api/test");
    let region = Region::new(ALLOCATOR);
    const SAMPLES: usize = 200_000;
    for i in 0..SAMPLES {
        histogram.record(i as f64 * 1e-6);
    }
    // 16 bytes a sample, in blocks; counted as allocated whether or not an upkeep already folded
    // some of them in meanwhile.
    let recorded = region.change().bytes_allocated as isize;
    assert!(
        recorded > (SAMPLES * 16) as isize,
        "{recorded} bytes for {SAMPLES} samples"
    );
    // Traffic goes on, a little: what was folded in is freed as the recording threads move on.
    let bound = 10 * gateway_core::telemetry::METRICS_UPKEEP_PERIOD;
    let started = Instant::now();
    let mut held = recorded;
    while started.elapsed() < bound {
        for _ in 0..100 {
            histogram.record(0.001);
        }
        std::thread::sleep(Duration::from_millis(10));
        held = live(&region);
        if held < recorded / 10 {
            return;
        }
    }
    panic!("{held} bytes still held {bound:?} after recording {recorded} bytes of samples");
}
