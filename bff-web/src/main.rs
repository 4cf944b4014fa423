//! `bff-web [--config FILE] [--listen ADDR]` or `bff-mobile check --config FILE`.

fn main() -> std::process::ExitCode {
    gateway_core::cli::main(&bff_web::BFF)
}
