//! `hfwasm power-run` (internal): runs an inventory host's power command and records its
//! outcome in the store. Started detached by the power capability.

use std::process::ExitCode;

use clap::Args;

use super::{DirArgs, dirs};
use hfwasm::plugin::Plugin;

/// Which host, which action, under which claim.
#[derive(Args)]
pub struct PowerRunArgs {
    /// Inventory host name.
    #[arg(long)]
    pub host: String,
    /// `on` or `off`.
    #[arg(long)]
    pub action: String,
    /// The claim token the starting call took; the command runs only while it holds.
    #[arg(long)]
    pub claim: Option<String>,
}

/// Runs the command; failures go to the log (nobody reads this process's output).
pub fn run(d: &DirArgs, args: &PowerRunArgs) -> ExitCode {
    let PowerRunArgs { host, action, claim } = args;

    let result = dirs(d).and_then(|dirs| {
        hfwasm::logging::init("info", dirs.log_dir.as_deref(), &dirs.name);
        Plugin::open(dirs)?.power_run(host, action, claim.as_deref())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(host, action, error = %e.message, "power-run failed");
            ExitCode::from(1)
        }
    }
}
