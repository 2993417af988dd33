//! `hfwasm config check`: validate config, inventory, store and guest, and list the templates.

use std::process::ExitCode;

use clap::Subcommand;

use super::{DirArgs, admin, admin_result, print_error};
use hfwasm::hf::{ErrorCode, HfError};
use hfwasm::plugin::Plugin;

/// Configuration commands.
#[derive(Subcommand)]
pub enum ConfigCommand {
    /// Validate config, inventory, store and guest, and list the templates.
    ///
    /// Exit 0 when everything is usable, 1 when something is left out or broken (each
    /// problem named with its file and setting).
    ///
    /// Example: HF_PROVIDER_CONFDIR=/opt/hf/conf/providers/pool hfwasm config check
    ///
    /// Example: hfwasm config check --json | jq '.problems'
    Check {
        /// Print one JSON document (`ok`, `lines`, `notes`, `problems`, `templates`; or `ok`
        /// and `error` when the config cannot be used at all) instead of the report lines.
        #[arg(long)]
        json: bool,
    },
}

/// Runs a config command.
pub fn run(d: &DirArgs, cmd: &ConfigCommand) -> ExitCode {
    match cmd {
        ConfigCommand::Check { json: false } => admin(
            d,
            |p| {
                let report = p.check()?;
                for l in &report.lines {
                    println!("{l}");
                }
                // Everything is listed first; problems that leave something out fail the check.
                match report.problems.len() {
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
        ConfigCommand::Check { json: true } => {
            // Always one document on stdout, whatever happened.
            let doc = match admin_result(d, Plugin::open, |p| p.check()) {
                Ok(report) => {
                    let mut doc = serde_json::json!({"ok": report.problems.is_empty()});
                    if let (Some(o), Ok(serde_json::Value::Object(r))) = (doc.as_object_mut(), serde_json::to_value(&report)) {
                        o.extend(r);
                    }
                    doc
                }
                Err(e) => {
                    print_error(&e);
                    serde_json::json!({"ok": false, "error": e.to_envelope()["error"]})
                }
            };
            println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
            if doc["ok"] == true { ExitCode::SUCCESS } else { ExitCode::from(1) }
        }
    }
}
