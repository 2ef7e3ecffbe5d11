//! The `runner-updater` binary: the product. Its commands are in `cli/`.

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    runner_updater::cli::main().await
}
