//! `bff-web [--config FILE] [--listen ADDR]` or `bff-web check --config FILE`.

/// jemalloc serves every allocation unless built with `--no-default-features` (the system's
/// allocator), as in the mobile BFF, where it was measured (see BENCHMARKS.md).
#[cfg(all(feature = "jemalloc", not(target_env = "msvc")))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    gateway_core::cli::main(&bff_web::BFF)
}
