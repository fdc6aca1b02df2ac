//! The `cedar` binary: parses the command line and hands over to [`cedar::cli`].

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    cedar::cli::main().await
}
