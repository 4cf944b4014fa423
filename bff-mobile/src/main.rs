//! `bff-mobile [--config FILE] [--listen ADDR]` or `bff-mobile check --config FILE`.

/// With `--features mimalloc`, mimalloc serves every allocation (see BENCHMARKS.md).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    gateway_core::cli::main(&bff_mobile::BFF)
}
