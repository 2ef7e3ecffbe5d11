//! `runner-updater-demo`: the product's `demo` without the AWS SDK, for a newcomer's first
//! command (`cargo demo`): it builds the driver and the simulated AWS only, so it prints its
//! first transition within minutes of a fresh clone.
//!
//! Same stories and options as `runner-updater demo`: `--seed N` (default 42) and
//! `--state-dir DIR` (keep the records, then try `runner-updater status` on them).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use runner_updater_adapters::store::FileStore;
use runner_updater_ports::StateStore;
use runner_updater_runtime::telemetry::{init_with, LogFormat};

const USAGE: &str = "usage: runner-updater-demo [--seed N] [--state-dir DIR]";

/// The demo's options.
#[derive(Debug, PartialEq, Eq)]
struct Options {
    seed: u64,
    state_dir: Option<PathBuf>,
}

/// Parses `--seed N` and `--state-dir DIR` (also as `--seed=N`); `Ok(None)` for `--help`.
fn parse(args: impl IntoIterator<Item = String>) -> Result<Option<Options>, String> {
    let mut options = Options {
        seed: 42,
        state_dir: None,
    };
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((name, value)) => (name.to_owned(), Some(value.to_owned())),
            None => (arg.clone(), None),
        };
        let mut value = |name: &str| {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| format!("{name} needs a value\n{USAGE}"))
        };
        match name.as_str() {
            "-h" | "--help" => return Ok(None),
            "--seed" => {
                let text = value("--seed")?;
                options.seed = text
                    .parse()
                    .map_err(|_| format!("--seed {text:?}: not a whole number\n{USAGE}"))?;
            }
            "--state-dir" => options.state_dir = Some(PathBuf::from(value("--state-dir")?)),
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    Ok(Some(options))
}

#[tokio::main]
async fn main() -> ExitCode {
    let options = match parse(std::env::args().skip(1)) {
        Ok(Some(options)) => options,
        Ok(None) => {
            println!("The whole story of runner-updater on the embedded simulated AWS; no account needed.\n{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("runner-updater-demo: {message}");
            return ExitCode::from(2);
        }
    };
    let telemetry = init_with(LogFormat::Text, "warn", None);
    let store: Option<Arc<dyn StateStore>> = options
        .state_dir
        .map(|dir| Arc::new(FileStore::new(dir)) as Arc<dyn StateStore>);
    let mut stdout = std::io::stdout().lock();
    let result = runner_updater_interface::demo::run(options.seed, store, &mut stdout).await;
    telemetry.shutdown();
    match result {
        Ok(_) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("runner-updater-demo: {error}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(args: &[&str], expect: Result<Option<Options>, &str>) {
        let got = parse(args.iter().map(|a| (*a).to_owned()));
        match expect {
            Ok(options) => assert_eq!(got, Ok(options), "{args:?}"),
            Err(start) => {
                let message = got.expect_err("an error");
                assert!(message.starts_with(start), "{args:?}: {message}");
            }
        }
    }

    #[test]
    fn the_demo_binary_takes_the_demo_commands_options_and_names_what_it_refuses() {
        check(
            &[],
            Ok(Some(Options {
                seed: 42,
                state_dir: None,
            })),
        );
        check(
            &["--seed", "7", "--state-dir", "/tmp/x"],
            Ok(Some(Options {
                seed: 7,
                state_dir: Some(PathBuf::from("/tmp/x")),
            })),
        );
        check(
            &["--seed=9"],
            Ok(Some(Options {
                seed: 9,
                state_dir: None,
            })),
        );
        check(&["--help"], Ok(None));
        check(&["--seed"], Err("--seed needs a value"));
        check(&["--seed", "x"], Err("--seed \"x\": not a whole number"));
        check(&["--verbose"], Err("unknown argument \"--verbose\""));
    }
}
