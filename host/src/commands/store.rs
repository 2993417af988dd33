//! `hfwasm store`: check, export and import the state store (to move between backends
//! without losing a request). These open config only, not the inventory, so they work on a
//! site whose inventory file is broken.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;

use super::{DirArgs, admin_with};
use hfwasm::hf::{ErrorCode, HfError};
use hfwasm::plugin::Plugin;

/// State store commands.
#[derive(Subcommand)]
pub enum StoreCommand {
    /// Report what the configured store holds (requests by kind and status, machines, kv
    /// entries, size, schema) and check its integrity; exit 1 if a problem is found.
    ///
    /// Example: HF_PROVIDER_CONFDIR=/opt/hf/conf/providers/aws hfwasm store check
    Check {
        /// Print the report as one JSON document.
        #[arg(long)]
        json: bool,
    },
    /// Write everything the configured store holds as one JSON document (the JSON store's
    /// single_file format).
    ///
    /// Example: hfwasm store export --out state.json
    Export {
        /// File to write (default: stdout).
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Load a document written by `store export` into the configured store, which must be
    /// empty. To move backends: export, point `storage` in hfwasm.json at the new one,
    /// import, then `store check`.
    ///
    /// Example: hfwasm store import state.json
    Import {
        /// The exported document.
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
}

/// Runs a store command.
pub fn run(d: &DirArgs, cmd: &StoreCommand) -> ExitCode {
    match cmd {
        StoreCommand::Check { json } => {
            let json = *json;
            let mut sound = true;
            let code = admin_with(
                d,
                Plugin::open_config,
                |p| Ok(hfwasm::store::check::check(p.open_store()?.as_ref())?),
                |report| {
                    sound = report.is_sound();
                    if json {
                        println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
                    } else {
                        for l in report.lines() {
                            println!("{l}");
                        }
                        println!("store check: {}", if sound { "ok" } else { "PROBLEMS FOUND" });
                    }
                },
            );
            if sound { code } else { ExitCode::from(1) }
        }
        StoreCommand::Export { out } => admin_with(
            d,
            Plugin::open_config,
            |p| {
                let doc = p.open_store()?.export()?;
                let text = serde_json::to_string_pretty(&doc).map_err(|e| HfError::new(ErrorCode::Internal, e.to_string()))?;
                match out {
                    Some(f) => std::fs::write(f, format!("{text}\n"))
                        .map_err(|e| HfError::new(ErrorCode::Internal, format!("cannot write {}: {e}", f.display())))?,
                    None => println!("{text}"),
                }
                Ok((doc.requests.len(), doc.kv.values().map(|m| m.len()).sum::<usize>()))
            },
            |(requests, kv)| {
                if let Some(f) = out {
                    eprintln!("exported {requests} request(s) and {kv} kv entr(y/ies) to {}", f.display());
                }
            },
        ),
        StoreCommand::Import { file } => admin_with(
            d,
            Plugin::open_config,
            |p| {
                let text = std::fs::read_to_string(file)
                    .map_err(|e| HfError::new(ErrorCode::InvalidInput, format!("cannot read {}: {e}", file.display())))?;
                let doc: hfwasm::store::Document = serde_json::from_str(&text).map_err(|e| {
                    HfError::new(
                        ErrorCode::InvalidInput,
                        format!("{}: not a `hfwasm store export` document: {e}", file.display()),
                    )
                })?;
                let store = p.open_store()?;
                store.import(&doc)?;
                Ok((doc.requests.len(), p.config.store.describe()))
            },
            |(n, to)| println!("imported {n} request(s) into {to}"),
        ),
    }
}
