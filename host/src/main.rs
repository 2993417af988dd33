//! `hfwasm` command line: parse, dispatch, print, exit code. Nothing else lives here.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use hfwasm::hf::dirs::DirOverrides;
use hfwasm::hf::{Call, ErrorCode, HfError, ProviderDirs};
use hfwasm::plugin::Plugin;

const AFTER_HELP: &str = "\
HostFactory runs the plugin's scripts as `scripts/<call>.sh -f <input.json>`; each script
execs `hfwasm <call> -f <input.json>`. The answer is one JSON document on stdout (exit 0),
or an error envelope {\"error\": {\"code\", \"message\", \"details\"}} on stdout (exit 1).

Directories come from HF_PROVIDER_CONFDIR / HF_PROVIDER_WORKDIR / HF_PROVIDER_LOGDIR
(HostFactory), else LSF's PRO_CONF_DIR / PRO_DATA_DIR / PRO_LSF_LOGDIR, else
$HF_CONFDIR/providers/<name>/ and $HF_WORKDIR/providers/<name>/, name = HF_PROVIDER_NAME.
Without hfwasm.json in the conf dir: IBM's <name>prov_config.json and
<name>prov_templates.json (or LSF's awsprov_*.json) select the built-in AWS guest;
otherwise the built-in on-prem pool guest serves the hosts in <confdir>/inventory.txt.

Examples:
  hfwasm demo                                   full HostFactory cycle in a temp tree
  hfwasm config check --confdir conf --workdir work
  hfwasm store check                            what the state store holds; integrity
  hfwasm requestMachines -f /tmp/hf_in_abc      what requestMachines.sh runs";

/// IBM Spectrum Symphony HostFactory / LSF resource connector provider plugin whose
/// provider logic runs as sandboxed WebAssembly components.
#[derive(Parser)]
#[command(name = "hfwasm", version, after_help = AFTER_HELP)]
struct Cli {
    #[command(flatten)]
    dirs: DirArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone, Default)]
struct DirArgs {
    /// Provider config dir (overrides HF_PROVIDER_CONFDIR / PRO_CONF_DIR).
    #[arg(long, global = true, value_name = "DIR")]
    confdir: Option<PathBuf>,
    /// Provider state dir (overrides HF_PROVIDER_WORKDIR / PRO_DATA_DIR).
    #[arg(long, global = true, value_name = "DIR")]
    workdir: Option<PathBuf>,
    /// Log dir (overrides HF_PROVIDER_LOGDIR / PRO_LSF_LOGDIR); logs go to stderr without one.
    #[arg(long, global = true, value_name = "DIR")]
    logdir: Option<PathBuf>,
}

#[derive(Args)]
struct InputFile {
    /// The JSON input file HostFactory wrote (optional for getAvailableTemplates).
    #[arg(short = 'f', long = "file", value_name = "INPUT.json")]
    file: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// List the templates (host shapes) on offer.
    ///
    /// Input: `{}`. Output: {"templates": [{"templateId", "maxNumber", "availableNumber",
    /// "attributes": {"type": ["String","X86_64"], "ncpus": ["Numeric","4"], "nram": [...]}}]}.
    /// Example: hfwasm getAvailableTemplates -f /tmp/hf_in_empty
    #[command(name = "getAvailableTemplates", visible_alias = "get-available-templates")]
    GetAvailableTemplates(InputFile),
    /// Start provisioning hosts; returns a request id at once.
    ///
    /// Input: {"template": {"templateId": "pool-4cpu-16384mb", "machineCount": 3}}
    /// (LSF adds "rc_account"). Output: {"requestId": "req-…", "message": "…"}.
    /// Example: hfwasm requestMachines -f request.json
    #[command(name = "requestMachines", visible_alias = "request-machines")]
    RequestMachines(InputFile),
    /// Start releasing hosts; returns a return request id at once.
    ///
    /// Input: {"machines": [{"name": "compute-01", "machineId": "compute-01"}]}.
    /// Output: {"requestId": "ret-…", "message": "…"}.
    /// Example: hfwasm requestReturnMachines -f return.json
    #[command(name = "requestReturnMachines", visible_alias = "request-return-machines")]
    RequestReturnMachines(InputFile),
    /// Report progress of provision and return requests.
    ///
    /// Input: {"requests": [{"requestId": "req-…"}, {"requestId": "ret-…"}]}.
    /// Output: per request "status" running | complete | complete_with_error and its
    /// machines with "result" executing | succeed | fail. Unknown ids: complete_with_error.
    /// Example: hfwasm getRequestStatus -f status.json
    #[command(name = "getRequestStatus", visible_alias = "get-request-status")]
    GetRequestStatus(InputFile),
    /// Report hosts the provider wants back (removed from the inventory, reclaimed).
    ///
    /// Input: {"machines": [{"name", "machineId"}]} = every host HostFactory holds.
    /// Output: {"requests": [{"machine": "compute-03", "gracePeriod": 0}]}.
    /// Example: hfwasm getReturnRequests -f hosts.json
    #[command(name = "getReturnRequests", visible_alias = "get-return-requests")]
    GetReturnRequests(InputFile),
    /// Configuration commands.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Guest commands.
    #[command(subcommand)]
    Guest(GuestCommand),
    /// State store commands: check, export, import (e.g. to move from JSON or SQLite to
    /// PostgreSQL without losing a request).
    #[command(subcommand)]
    Store(StoreCommand),
    /// Re-run a candidate placement policy over the placement decisions recorded in this
    /// provider instance's store (config `"recording": {"enabled": true}`, several providers),
    /// with the recorded candidates, time and random draw: deterministic, no cloud touched.
    /// Prints each decision (live order, candidate order, same or DIFFERS) and totals: hosts
    /// by first-choice provider and the estimated cost per hour where prices are known (the
    /// live policy's `settings.prices`, else a template's `price` attribute).
    ///
    /// Example: hfwasm replay --policy candidate.rhai --settings '{"only": "aws-west"}' --from 1795300000
    Replay {
        /// The candidate: a Rhai script (`.rhai`, defining choose_providers), a Wasm component
        /// exporting hostfactory:policy/placement, or `builtin:default-policy`.
        #[arg(long, value_name = "FILE")]
        policy: String,
        /// The candidate's settings, one JSON object (default `{}`), e.g.
        /// '{"selection_policy": "WEIGHTED"}' for the built-in one.
        #[arg(long, value_name = "JSON")]
        settings: Option<String>,
        /// Only decisions made at or after this time (epoch seconds).
        #[arg(long, value_name = "EPOCH")]
        from: Option<u64>,
        /// Only decisions made at or before this time (epoch seconds).
        #[arg(long, value_name = "EPOCH")]
        to: Option<u64>,
        /// Print the report as one JSON document.
        #[arg(long)]
        json: bool,
        /// Fuel per decision for a Wasm candidate: a deterministic limit (a candidate that
        /// runs out fails that decision, named in the report).
        #[arg(long, default_value_t = 1_000_000_000)]
        fuel: u64,
    },
    /// Run the full HostFactory cycle through the real scripts in a temporary tree, on the
    /// embedded defaults, printing every input and answer as HostFactory sees them.
    Demo {
        /// Lay the tree out here instead of a temp dir (kept afterwards).
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// Internal: runs an inventory host's power command and records its outcome in the
    /// store. Started detached by the power capability; not for interactive use.
    #[command(name = "power-run", hide = true)]
    PowerRun {
        /// Inventory host name.
        #[arg(long)]
        host: String,
        /// `on` or `off`.
        #[arg(long)]
        action: String,
        /// The claim token the starting call took; the command runs only while it holds.
        #[arg(long)]
        claim: Option<String>,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate config, inventory, store and guest, and list the templates.
    ///
    /// Example: HF_PROVIDER_CONFDIR=/opt/hf/conf/providers/pool hfwasm config check
    Check,
}

#[derive(Subcommand)]
enum GuestCommand {
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

#[derive(Subcommand)]
enum StoreCommand {
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

fn dirs(d: &DirArgs) -> Result<ProviderDirs, HfError> {
    ProviderDirs::resolve(
        |k| std::env::var(k).ok(),
        &DirOverrides {
            conf_dir: d.confdir.clone(),
            work_dir: d.workdir.clone(),
            log_dir: d.logdir.clone(),
        },
    )
}

/// Prints one JSON document on stdout; the only place a HostFactory answer is written.
/// Set by whoever prints HostFactory's one answer: the call itself, or the watchdog that
/// answers for a call past its deadline. The other prints nothing.
static ANSWERED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Claims stdout for the one answer; a call that lost the race to the watchdog waits for
/// the watchdog to end the process.
fn claim_stdout() {
    if ANSWERED.swap(true, std::sync::atomic::Ordering::SeqCst) {
        loop {
            std::thread::park();
        }
    }
}

fn answer(v: &serde_json::Value) -> ExitCode {
    match serde_json::to_string_pretty(v) {
        Ok(s) => {
            claim_stdout();
            println!("{s}");
            ExitCode::SUCCESS
        }
        Err(e) => fail(&HfError::new(ErrorCode::Internal, format!("cannot serialise the answer: {e}"))),
    }
}

fn fail(e: &HfError) -> ExitCode {
    tracing::error!(code = e.code.as_str(), "{}", e.message);
    claim_stdout();
    println!("{}", e.to_envelope());
    ExitCode::from(1)
}

/// Answers `CALL_TIMEOUT` and ends the process if the call is still running after
/// `deadline`: a host call that hangs (a cloud endpoint that accepts and never answers, a
/// store that stops responding) must not leave HostFactory with nothing on stdout. Every
/// write the call made is committed or rolled back by its own transaction, so ending here
/// loses nothing: the next call picks the request up from its write-ahead record.
fn watchdog(call: Call, deadline: std::time::Duration) {
    let spawned = std::thread::Builder::new().name("hfwasm-watchdog".into()).spawn(move || {
        std::thread::sleep(deadline);
        if ANSWERED.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        let e = HfError::new(
            ErrorCode::CallTimeout,
            format!(
                "{} did not finish within call_timeout_ms ({} ms): a cloud, store or command it waited on did not answer; nothing was lost, and the next call takes the request up again",
                call.name(),
                deadline.as_millis()
            ),
        )
        .with("limit", "call_timeout_ms");
        tracing::error!(code = e.code.as_str(), "{}", e.message);
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{}", e.to_envelope());
        let _ = out.flush();
        std::process::exit(1);
    });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start the call watchdog");
    }
}

fn hf_call(call: Call, d: &DirArgs, input: &InputFile) -> ExitCode {
    let run = || -> Result<serde_json::Value, HfError> {
        let dirs = dirs(d)?;
        // Log to the instance's log dir (default level until config is read).
        let plugin = match Plugin::open(dirs.clone()) {
            Ok(p) => {
                let p = p.exit_after_call();
                let log = &p.config.log;
                let file = log
                    .file
                    .clone()
                    .or_else(|| dirs.log_dir.as_ref().map(|d| d.join(format!("hfwasm-{}.log", dirs.name))));
                hfwasm::logging::init_file(&p.config.log_level, file.as_deref(), log.max_bytes, log.keep);
                p
            }
            Err(e) => {
                hfwasm::logging::init("info", dirs.log_dir.as_deref(), &dirs.name);
                return Err(e);
            }
        };
        watchdog(call, plugin.call_deadline());
        let file = match (&input.file, call) {
            (Some(f), _) => f.clone(),
            // No file at all reads as `{}` (an empty path opens nothing: NotFound).
            (None, Call::GetAvailableTemplates) => PathBuf::new(),
            (None, _) => {
                return Err(HfError::new(
                    ErrorCode::InvalidInput,
                    format!("{} needs `-f <input.json>`", call.name()),
                ));
            }
        };
        plugin.run_call(call, &file)
    };
    match run() {
        Ok(v) => answer(&v),
        Err(e) => fail(&e),
    }
}

fn guest_check(file: &Path, json: bool) -> ExitCode {
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
        Err(e) => {
            eprintln!("error: {}: {e}", file.display());
            ExitCode::from(1)
        }
    }
}

fn admin<T>(d: &DirArgs, f: impl FnOnce(&Plugin) -> Result<T, HfError>, print: impl FnOnce(T)) -> ExitCode {
    admin_with(d, Plugin::open, f, print)
}

/// An admin command on the plugin `open` builds (the store commands skip the inventory).
fn admin_with<T>(
    d: &DirArgs,
    open: fn(ProviderDirs) -> Result<Plugin, HfError>,
    f: impl FnOnce(&Plugin) -> Result<T, HfError>,
    print: impl FnOnce(T),
) -> ExitCode {
    let result = dirs(d).and_then(|dirs| {
        hfwasm::logging::init("warn", None, &dirs.name);
        open(dirs)
    });
    match result.and_then(|p| f(&p)) {
        Ok(v) => {
            print(v);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {} ({})", e.message, e.code.as_str());
            if !e.details.is_empty() {
                eprintln!("details: {}", serde_json::Value::Object(e.details.clone()));
            }
            ExitCode::from(1)
        }
    }
}

/// The exact form the five scripts run, `hfwasm <call> -f <input.json>`, read without
/// building clap's command tree (a third of a millisecond of every HostFactory call). Any
/// other form (options, help, aliases) goes through clap, which reads this one the same way.
fn script_call(mut args: impl Iterator<Item = std::ffi::OsString>) -> Option<(Call, InputFile)> {
    let (name, flag, file) = (args.next()?, args.next()?, args.next()?);
    if args.next().is_some() || !(flag == "-f" || flag == "--file") || file.is_empty() || file.as_encoded_bytes().starts_with(b"-") {
        return None;
    }
    let call = Call::ALL.into_iter().find(|c| name == c.name())?;
    Some((call, InputFile { file: Some(file.into()) }))
}

fn main() -> ExitCode {
    // A reader that stops early (`hfwasm replay --json | head`) ends the process quietly, as
    // for any Unix tool, instead of a panic in println!. Rust starts programs ignoring
    // SIGPIPE; this restores the default.
    // SAFETY: called first, before any thread exists; SIG_DFL is a valid disposition.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    // Everything hfwasm creates (state store, logs, power logs, compiled guests, cached
    // credentials) is for its own user only: 0600 files, 0700 directories, whatever the
    // umask HostFactory started it with (000 made them world-writable).
    // SAFETY: umask only sets this process's file-creation mask.
    unsafe {
        libc::umask(0o077);
    }
    if let Some((call, input)) = script_call(std::env::args_os().skip(1)) {
        return hf_call(call, &DirArgs::default(), &input);
    }
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            // HostFactory reads stdout: a bad invocation of one of the five calls still
            // gets a JSON error there; everything else gets clap's usual message.
            let call = std::env::args().nth(1).and_then(|a| Call::ALL.into_iter().find(|c| c.name() == a));
            return match (call, e.kind()) {
                (Some(_), k) if k != clap::error::ErrorKind::DisplayHelp => fail(&HfError::new(
                    ErrorCode::InvalidInput,
                    format!("bad command line: {}", e.to_string().lines().next().unwrap_or("invalid arguments")),
                )),
                _ => {
                    let _ = e.print();
                    ExitCode::from(if e.use_stderr() { 2 } else { 0 })
                }
            };
        }
    };
    match &cli.command {
        Command::GetAvailableTemplates(f) => hf_call(Call::GetAvailableTemplates, &cli.dirs, f),
        Command::RequestMachines(f) => hf_call(Call::RequestMachines, &cli.dirs, f),
        Command::RequestReturnMachines(f) => hf_call(Call::RequestReturnMachines, &cli.dirs, f),
        Command::GetRequestStatus(f) => hf_call(Call::GetRequestStatus, &cli.dirs, f),
        Command::GetReturnRequests(f) => hf_call(Call::GetReturnRequests, &cli.dirs, f),
        Command::Config(ConfigCommand::Check) => admin(
            &cli.dirs,
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
        Command::Guest(GuestCommand::Check { file, json }) => guest_check(file, *json),
        Command::Guest(GuestCommand::New { name, dir, lang }) => {
            let dir = dir.clone().unwrap_or_else(|| PathBuf::from(name));
            match hfwasm::scaffold::new_guest(&dir, name, lang) {
                Ok(files) => {
                    println!("wrote guest '{name}' in {} ({} files)", dir.display(), files.len());
                    println!("next: hfwasm guest build {}", dir.display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Guest(GuestCommand::Build { dir, out }) => match hfwasm::scaffold::build_guest(dir, out.as_deref()) {
            Ok(wasm) => {
                println!("built {}", wasm.display());
                guest_check(&wasm, false)
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(1)
            }
        },
        Command::Guest(GuestCommand::Precompile) => admin(
            &cli.dirs,
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
        Command::Store(StoreCommand::Check { json }) => {
            let json = *json;
            let mut sound = true;
            let code = admin_with(
                &cli.dirs,
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
        Command::Store(StoreCommand::Export { out }) => admin_with(
            &cli.dirs,
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
        Command::Store(StoreCommand::Import { file }) => admin_with(
            &cli.dirs,
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
        Command::Replay {
            policy,
            settings,
            from,
            to,
            json,
            fuel,
        } => admin_with(
            &cli.dirs,
            Plugin::open_config,
            |p| {
                let settings: serde_json::Value = match settings {
                    None => serde_json::json!({}),
                    Some(s) => serde_json::from_str(s)
                        .map_err(|e| HfError::new(ErrorCode::InvalidInput, format!("--settings is not JSON: {e}")))?,
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
        ),
        Command::PowerRun { host, action, claim } => {
            let result = dirs(&cli.dirs).and_then(|dirs| {
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
        Command::Demo { dir } => {
            hfwasm::logging::init("warn", None, "demo");
            match hfwasm::demo::run(dir.clone(), Box::new(std::io::stdout())) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("demo failed: {e:#}");
                    ExitCode::from(1)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(args: &[&str]) -> Option<(Call, Option<PathBuf>)> {
        script_call(args.iter().map(std::ffi::OsString::from)).map(|(c, i)| (c, i.file))
    }

    #[test]
    fn the_scripts_command_line_is_read_without_clap_and_nothing_else_is() {
        for call in Call::ALL {
            assert_eq!(
                read(&[call.name(), "-f", "/tmp/hf_in_x"]),
                Some((call, Some("/tmp/hf_in_x".into())))
            );
            assert_eq!(read(&[call.name(), "--file", "in.json"]), Some((call, Some("in.json".into()))));
        }
        // Left to clap: its own parse gives these their usual meaning or its error.
        for args in [
            &["get-available-templates", "-f", "x"][..],
            &["getAvailableTemplates", "-f"],
            &["getAvailableTemplates", "-f", "x", "--confdir", "c"],
            &["getAvailableTemplates", "--confdir", "c"],
            &["getAvailableTemplates", "-f", "--help"],
            &["getAvailableTemplates", "-f", ""],
            &["requestMachines", "-x", "in.json"],
            &["replay", "-f", "x"],
        ] {
            assert_eq!(read(args), None, "{args:?}");
        }
    }
}
