//! `hfwasm requests`: every request the instance's store holds, provision and return (the
//! host's own returns included), with status and machine count.

use std::process::ExitCode;

use clap::Args;

use super::{DirArgs, admin_with, print_list};
use hfwasm::plugin::Plugin;

/// How to print the requests.
#[derive(Args)]
pub struct RequestsArgs {
    /// Only requests still running (HostFactory has not been told they are done).
    #[arg(long)]
    pub open: bool,
    /// Print one JSON array instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Lists the requests.
pub fn run(d: &DirArgs, args: &RequestsArgs) -> ExitCode {
    admin_with(
        d,
        Plugin::open_config,
        |p| p.requests(),
        |lines| {
            let lines: Vec<_> = lines.into_iter().filter(|r| !args.open || r.status == "running").collect();
            print_list(
                args.json,
                &lines,
                &["REQUEST", "KIND", "TEMPLATE", "COUNT", "STATUS", "MACHINES", "MESSAGE"],
                |r| {
                    vec![
                        r.id.clone(),
                        r.kind.clone(),
                        r.template.clone().unwrap_or_else(|| "-".into()),
                        r.count.to_string(),
                        r.status.clone(),
                        r.machines.to_string(),
                        r.message.clone().unwrap_or_default(),
                    ]
                },
            );
        },
    )
}
