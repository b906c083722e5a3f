//! The `chronicle` binary: parses the command line, starts logging, runs it.
#![forbid(unsafe_code)]

use clap::Parser;

/// Small, short-lived allocations on both runtime threads are most of what
/// a request allocates; glibc's malloc spent a third of the server's CPU on
/// them (`docs/performance.md`, change 17).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = chronicle::cli::Cli::parse();
    match chronicle::cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
