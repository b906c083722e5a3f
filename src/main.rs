//! The `chronicle` binary: parses the command line, starts logging, runs it.
#![forbid(unsafe_code)]

use clap::Parser;

/// A request makes many small, short-lived allocations on both runtime
/// threads; glibc's malloc spent a third of the server's user-space CPU on
/// them (`docs/performance.md`, change 17). mimalloc v2: v3 kept freed pages
/// resident and put the peak RSS at the 100 MB target.
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
