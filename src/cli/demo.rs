//! `runner-updater demo`: the whole story on the embedded simulated AWS.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Args;

use runner_updater_adapters::store::FileStore;
use runner_updater_ports::StateStore;

/// `demo`'s options.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Seed of the simulation.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Keep the demo's records in this directory (then try `status` on it).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
}

/// Tells the demo's stories on stdout.
///
/// # Errors
/// A story that does not end as told (a bug), or stdout closed.
pub async fn demo(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let store: Option<Arc<dyn StateStore>> = args
        .state_dir
        .map(|dir| Arc::new(FileStore::new(dir)) as Arc<dyn StateStore>);
    let mut stdout = std::io::stdout().lock();
    runner_updater_interface::demo::run(args.seed, store, &mut stdout).await?;
    Ok(ExitCode::SUCCESS)
}
