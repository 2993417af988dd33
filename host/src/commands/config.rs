//! `hfwasm config check`: validate config, inventory, store and guest, and list the templates.

use std::process::ExitCode;

use clap::Subcommand;

use super::{DirArgs, admin};
use hfwasm::hf::{ErrorCode, HfError};

/// Configuration commands.
#[derive(Subcommand)]
pub enum ConfigCommand {
    /// Validate config, inventory, store and guest, and list the templates.
    ///
    /// Example: HF_PROVIDER_CONFDIR=/opt/hf/conf/providers/pool hfwasm config check
    Check,
}

/// Runs a config command.
pub fn run(d: &DirArgs, cmd: &ConfigCommand) -> ExitCode {
    match cmd {
        ConfigCommand::Check => admin(
            d,
            |p| {
                let lines = p.check()?;
                for l in &lines {
                    println!("{l}");
                }
                // Everything is listed first; problems that leave something out fail the check.
                match lines.iter().filter(|l| l.starts_with("PROBLEM:")).count() {
                    0 => Ok(()),
                    n => Err(HfError::new(
                        ErrorCode::ConfigError,
                        format!(
                            "{n} problem{} listed above (HostFactory is offered the rest)",
                            if n == 1 { "" } else { "s" }
                        ),
                    )),
                }
            },
            |()| println!("config check: ok"),
        ),
    }
}
