//! `hfwasm replay`: a candidate placement policy re-run over the recorded decisions.

use std::process::ExitCode;

use clap::Args;

use super::{DirArgs, admin_with};
use hfwasm::hf::{ErrorCode, HfError};
use hfwasm::plugin::Plugin;

/// What to replay: the candidate, its settings, the time window.
#[derive(Args)]
pub struct ReplayArgs {
    /// The candidate: a Rhai script (`.rhai`, defining choose_providers), a Wasm component
    /// exporting hostfactory:policy/placement, or `builtin:default-policy`.
    #[arg(long, value_name = "FILE")]
    pub policy: String,
    /// The candidate's settings, one JSON object (default `{}`), e.g.
    /// '{"selection_policy": "WEIGHTED"}' for the built-in one.
    #[arg(long, value_name = "JSON")]
    pub settings: Option<String>,
    /// Only decisions made at or after this time (epoch seconds).
    #[arg(long, value_name = "EPOCH")]
    pub from: Option<u64>,
    /// Only decisions made at or before this time (epoch seconds).
    #[arg(long, value_name = "EPOCH")]
    pub to: Option<u64>,
    /// Print the report as one JSON document.
    #[arg(long)]
    pub json: bool,
    /// Fuel per decision for a Wasm candidate: a deterministic limit (a candidate that
    /// runs out fails that decision, named in the report).
    #[arg(long, default_value_t = 1_000_000_000)]
    pub fuel: u64,
}

/// Runs the replay and prints its report.
pub fn run(d: &DirArgs, args: &ReplayArgs) -> ExitCode {
    let ReplayArgs {
        policy,
        settings,
        from,
        to,
        json,
        fuel,
    } = args;
    admin_with(
        d,
        Plugin::open_config,
        |p| {
            let settings: serde_json::Value = match settings {
                None => serde_json::json!({}),
                Some(s) => {
                    serde_json::from_str(s).map_err(|e| HfError::new(ErrorCode::InvalidInput, format!("--settings is not JSON: {e}")))?
                }
            };
            // Progress on stderr for long runs: a line per tenth.
            let mut shown = 0;
            let report = p.replay(policy, settings, (*from, *to), *fuel, |done, total| {
                let tenth = done * 10 / total.max(1);
                if total >= 1000 && tenth > shown {
                    shown = tenth;
                    eprintln!("replay: {}% ({done}/{total} decisions)", tenth * 10);
                }
            })?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
            } else {
                print!("{}", hfwasm::policy::replay::render(&report));
            }
            if report.all_failed() {
                return Err(HfError::new(
                    ErrorCode::PolicyError,
                    format!(
                        "the candidate {} failed every recorded decision (see the report for why)",
                        report.candidate
                    ),
                ));
            }
            Ok(())
        },
        |()| {},
    )
}
