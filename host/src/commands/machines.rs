//! `hfwasm machines`: every machine the instance's store holds, with its provider, template,
//! request, state, name and IP, across all providers of the instance.

use std::process::ExitCode;

use clap::Args;

use super::{DirArgs, admin_with, print_list};
use hfwasm::plugin::Plugin;

/// Which machines, and how to print them.
#[derive(Args)]
pub struct MachinesArgs {
    /// Also list machines that have ended (terminated, failed).
    #[arg(long)]
    pub all: bool,
    /// Only machines of this request.
    #[arg(long, value_name = "ID")]
    pub request: Option<String>,
    /// Print one JSON array instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Lists the machines.
pub fn run(d: &DirArgs, args: &MachinesArgs) -> ExitCode {
    admin_with(
        d,
        Plugin::open_config,
        |p| p.machines(args.all),
        |lines| {
            let lines: Vec<_> = lines
                .into_iter()
                .filter(|m| args.request.as_ref().is_none_or(|r| &m.request == r))
                .collect();
            print_list(
                args.json,
                &lines,
                &["PROVIDER", "TEMPLATE", "REQUEST", "STATE", "NAME", "IP", "MACHINE ID"],
                |m| {
                    vec![
                        m.provider.clone(),
                        m.template.clone(),
                        m.request.clone(),
                        m.state.clone(),
                        m.name.clone(),
                        m.ip.clone(),
                        m.machine_id.clone(),
                    ]
                },
            );
        },
    )
}
