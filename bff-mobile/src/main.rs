//! `bff-mobile [--config FILE] [--listen ADDR]` or `bff-mobile check --config FILE`.

/// With `--features mimalloc`, mimalloc serves every allocation (see BENCHMARKS.md).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// With `--features jemalloc`, jemalloc serves every allocation (see BENCHMARKS.md).
#[cfg(all(feature = "jemalloc", not(feature = "mimalloc")))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    gateway_core::cli::main(&bff_mobile::BFF)
}
