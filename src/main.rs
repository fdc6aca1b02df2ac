//! The `cedar` binary: parses the command line and hands over to [`cedar::cli`].

mod bench;
mod cli;
mod demo;
mod soak;

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    cli::main().await
}
