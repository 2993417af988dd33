//! `hfwasm demo`: the full HostFactory cycle through the real scripts in a temporary tree.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

/// Where to lay the demo tree out.
#[derive(Args)]
pub struct DemoArgs {
    /// Lay the tree out here instead of a temp dir (kept afterwards).
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

/// Runs the demo, printing every input and answer as HostFactory sees them.
pub fn run(args: &DemoArgs) -> ExitCode {
    let dir = &args.dir;

    hfwasm::logging::init("warn", None, "demo");
    match hfwasm::demo::run(dir.clone(), Box::new(std::io::stdout())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("demo failed: {e:#}");
            ExitCode::from(1)
        }
    }
}
