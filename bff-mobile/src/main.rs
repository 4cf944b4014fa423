//! `bff-mobile [--config FILE] [--listen ADDR]` or `bff-mobile check --config FILE`.

/// With `--features mimalloc`, mimalloc serves every allocation (see BENCHMARKS.md).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// jemalloc serves every allocation unless built with `--no-default-features` (the system's
/// allocator) or `--features mimalloc`: in the benchmark's rounds it served 1.18x the requests of
/// the system's allocator, for no more memory measured alone (see BENCHMARKS.md).
#[cfg(all(
    feature = "jemalloc",
    not(feature = "mimalloc"),
    not(target_env = "msvc")
))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    gateway_core::cli::main(&bff_mobile::BFF)
}
