//! `hfwasm guest`: precompile the configured guests, start a new guest project, build one,
//! and check what a component needs of this host.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Subcommand;

use super::{DirArgs, admin, print_failure};

/// Guest commands.
#[derive(Subcommand)]
pub enum GuestCommand {
    /// Compile the configured provider guest (and policy guest, if any) into the
    /// precompiled cache (run at install time so the first HostFactory call does not pay
    /// for compilation).
    ///
    /// Example: hfwasm guest precompile --confdir conf --workdir work
    Precompile,
    /// Write a new guest project to start from. `--lang rust`: a Cargo project with this
    /// host's WIT and a working "null cloud" provider (hosts exist at once) to replace with
    /// real logic. `--lang python` / `--lang js`: a template policy (cheapest CPU first,
    /// too-expensive templates hidden) built with componentize-py / componentize-js, to
    /// install under `policy` in hfwasm.json.
    ///
    /// Example: hfwasm guest new my-provider && hfwasm guest build my-provider
    ///
    /// Example: hfwasm guest new cheap-first --lang python && hfwasm guest build cheap-first
    New {
        /// Guest name (lowercase letters, digits, `-`, `_`); also the directory by default.
        name: String,
        /// Directory to create (default: ./NAME).
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
        /// Language of the guest: `rust` (a provider), `python` or `js` (a template policy).
        #[arg(long, default_value = "rust", value_parser = ["rust", "python", "js"])]
        lang: String,
    },
    /// Build a guest project (Rust, Python or JavaScript, told by its Cargo.toml, app.py or
    /// package.json) into a component and check it against this host. Python needs
    /// componentize-py (`pip install componentize-py==0.25.1`, or HFWASM_COMPONENTIZE_PY);
    /// JavaScript needs Node.js and npm (componentize-js is installed into the project).
    ///
    /// Example: hfwasm guest build my-provider
    ///
    /// Example: hfwasm guest build examples/python-selector --out /opt/hf/policy.wasm
    Build {
        /// The guest project (default: the current directory).
        #[arg(default_value = ".", value_name = "DIR")]
        dir: PathBuf,
        /// Where to write the component (default: the build's own place; for Python and
        /// JavaScript DIR/<dir name>.wasm).
        #[arg(long, value_name = "FILE.wasm")]
        out: Option<PathBuf>,
    },
    /// Report what a guest component imports and exports, the grants config must give it,
    /// and whether this host can run it (exit 1 if not). Needs no config.
    ///
    /// Example: hfwasm guest check my_policy.wasm
    Check {
        /// The guest's `.wasm` component.
        #[arg(value_name = "FILE.wasm")]
        file: PathBuf,
        /// Print the report as one JSON document.
        #[arg(long)]
        json: bool,
    },
}

/// Runs a guest command.
pub fn run(d: &DirArgs, cmd: &GuestCommand) -> ExitCode {
    match cmd {
        GuestCommand::Check { file, json } => check(file, *json),
        GuestCommand::New { name, dir, lang } => {
            let dir = dir.clone().unwrap_or_else(|| PathBuf::from(name));
            match hfwasm::scaffold::new_guest(&dir, name, lang) {
                Ok(files) => {
                    println!("wrote guest '{name}' in {} ({} files)", dir.display(), files.len());
                    println!("next: hfwasm guest build {}", dir.display());
                    ExitCode::SUCCESS
                }
                Err(e) => print_failure(e),
            }
        }
        GuestCommand::Build { dir, out } => match hfwasm::scaffold::build_guest(dir, out.as_deref()) {
            Ok(wasm) => {
                println!("built {}", wasm.display());
                check(&wasm, false)
            }
            Err(e) => print_failure(e),
        },
        GuestCommand::Precompile => admin(
            d,
            |p| p.precompile(),
            |done| {
                for (name, path, outcome, took) in done {
                    let what = if outcome == hfwasm::runtime::CacheOutcome::Hit {
                        "already cached"
                    } else {
                        "compiled"
                    };
                    println!("guest '{name}': {what} in {:.2} s -> {}", took.as_secs_f64(), path.display());
                }
            },
        ),
    }
}

/// `guest check FILE`: the report on stdout, exit 1 when this host cannot run it.
fn check(file: &Path, json: bool) -> ExitCode {
    hfwasm::logging::init("warn", None, "guest-check");
    let report = std::fs::read(file)
        .map_err(|e| format!("cannot read {}: {e}", file.display()))
        .and_then(|wasm| {
            let engine = hfwasm::runtime::GuestEngine::new().map_err(|e| format!("cannot start the wasm engine: {e:#}"))?;
            // With HFWASM_CACHE_DIR set, the check also warms the precompiled cache.
            let cache = std::env::var_os("HFWASM_CACHE_DIR").map(|d| hfwasm::runtime::PrecompiledCache::new(d.into()));
            hfwasm::runtime::inspect::inspect(&engine, &wasm, cache.as_ref())
        });
    match report {
        Ok(r) => {
            if json {
                println!("{}", serde_json::to_string_pretty(&r).unwrap_or_default());
            } else {
                for l in r.lines(&file.display().to_string()) {
                    println!("{l}");
                }
            }
            if r.runnable() { ExitCode::SUCCESS } else { ExitCode::from(1) }
        }
        Err(e) => print_failure(format!("{}: {e}", file.display())),
    }
}
