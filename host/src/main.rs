//! `hfwasm` command line: the command tree and the dispatch to `commands/`, one file per
//! command; the five calls' fast path that skips clap. Nothing else lives here.

mod commands;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use commands::DirArgs;
use commands::call::{self, InputFile};
use hfwasm::hf::{Call, ErrorCode, HfError};

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
  hfwasm init --hf-top /opt/ibm/spectrumcomputing/hostfactory   install and register
  hfwasm config check --confdir conf --workdir work
  hfwasm store check                            what the state store holds; integrity
  hfwasm machines --all                         every machine: provider, state, name, IP
  hfwasm serve                                  the calls, health and /metrics over HTTP
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
    Config(commands::config::ConfigCommand),
    /// Guest commands.
    #[command(subcommand)]
    Guest(commands::guest::GuestCommand),
    /// State store commands: check, export, import (e.g. to move from JSON or SQLite to
    /// PostgreSQL without losing a request).
    #[command(subcommand)]
    Store(commands::store::StoreCommand),
    /// Re-run a candidate placement policy over the placement decisions recorded in this
    /// provider instance's store (config `"recording": {"enabled": true}`, several providers),
    /// with the recorded candidates, time and random draw: deterministic, no cloud touched.
    /// Prints each decision (live order, candidate order, same or DIFFERS) and totals: hosts
    /// by first-choice provider and the estimated cost per hour where prices are known (the
    /// live policy's `settings.prices`, else a template's `price` attribute).
    ///
    /// Example: hfwasm replay --policy candidate.rhai --settings '{"only": "aws-west"}' --from 1795300000
    Replay(commands::replay::ReplayArgs),
    /// List the machines the state store holds: provider, template, request, state, name,
    /// IP and machine id, across every provider of the instance. Live machines only unless
    /// --all. Reads the store alone (no guest, no cloud call).
    ///
    /// Example: hfwasm machines --confdir conf --workdir work
    ///
    /// Example: hfwasm machines --all --json
    Machines(commands::machines::MachinesArgs),
    /// List the requests the state store holds: provision and return (the host's own
    /// returns included), with status and machine count.
    ///
    /// Example: hfwasm requests --open
    Requests(commands::requests::RequestsArgs),
    /// Run the full HostFactory cycle through the real scripts in a temporary tree, on the
    /// embedded defaults, printing every input and answer as HostFactory sees them.
    Demo(commands::demo::DemoArgs),
    /// Serve the five calls, machines, requests, health and Prometheus metrics over HTTP,
    /// on the same store as the scripts (which keep working beside it).
    ///
    /// Routes: POST /v1/hostfactory/<call> (body: the JSON the script reads from -f; answer:
    /// what it prints), GET /v1/machines[?all=true], GET /v1/requests, GET /v1/templates, GET /health/live,
    /// GET /health/ready (store answers, guests at hand), GET /metrics, GET /openapi.json.
    /// Listens on 127.0.0.1:8000 unless told otherwise; any other address needs
    /// --token-file, whose token every route but /health/* then requires. Stops on SIGTERM.
    ///
    /// Example: hfwasm serve --confdir conf --workdir work --logdir log
    ///
    /// Example: hfwasm serve --listen 0.0.0.0:8000 --token-file /etc/hfwasm/token
    Serve(commands::serve::ServeArgs),
    /// Install hfwasm into a HostFactory tree: the plugin (scripts and this binary) under
    /// $HF_TOP/$HF_VERSION/providerplugins/<plugin>/, its entries in hostProviderPlugins.json,
    /// hostProviders.json and a requestor of hostRequestors.json (other entries kept, each
    /// changed file backed up first), and the instance's conf, work and log dirs with
    /// starter files (for --provider aws, IBM's config and templates from the account).
    /// Nothing that exists is overwritten; a second run changes nothing. Asks for what the
    /// flags and environment (HF_TOP, HF_VERSION, HF_CONFDIR, ...) leave open when run at a
    /// terminal, unless --yes. As root, hands what it writes to the conf dir's owner.
    ///
    /// Example: hfwasm init --hf-top /opt/ibm/spectrumcomputing/hostfactory --provider aws --region us-east-1 --yes
    Init(Box<commands::init::InitArgs>),
    /// Template commands: `generate` writes starter AWS templates from the account.
    #[command(subcommand)]
    Templates(commands::templates::TemplatesCommand),
    /// Internal: runs an inventory host's power command and records its outcome in the
    /// store. Started detached by the power capability; not for interactive use.
    #[command(name = "power-run", hide = true)]
    PowerRun(commands::power_run::PowerRunArgs),
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
        return call::run(call, &DirArgs::default(), &input);
    }
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            // HostFactory reads stdout: a bad invocation of one of the five calls still
            // gets a JSON error there; everything else gets clap's usual message.
            let call = std::env::args().nth(1).and_then(|a| Call::ALL.into_iter().find(|c| c.name() == a));
            return match (call, e.kind()) {
                (Some(_), k) if k != clap::error::ErrorKind::DisplayHelp => call::fail(&HfError::new(
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
        Command::GetAvailableTemplates(f) => call::run(Call::GetAvailableTemplates, &cli.dirs, f),
        Command::RequestMachines(f) => call::run(Call::RequestMachines, &cli.dirs, f),
        Command::RequestReturnMachines(f) => call::run(Call::RequestReturnMachines, &cli.dirs, f),
        Command::GetRequestStatus(f) => call::run(Call::GetRequestStatus, &cli.dirs, f),
        Command::GetReturnRequests(f) => call::run(Call::GetReturnRequests, &cli.dirs, f),
        Command::Config(c) => commands::config::run(&cli.dirs, c),
        Command::Guest(c) => commands::guest::run(&cli.dirs, c),
        Command::Store(c) => commands::store::run(&cli.dirs, c),
        Command::Replay(a) => commands::replay::run(&cli.dirs, a),
        Command::PowerRun(a) => commands::power_run::run(&cli.dirs, a),
        Command::Serve(a) => commands::serve::run(&cli.dirs, a),
        Command::Machines(a) => commands::machines::run(&cli.dirs, a),
        Command::Requests(a) => commands::requests::run(&cli.dirs, a),
        Command::Demo(a) => commands::demo::run(a),
        Command::Templates(c) => commands::templates::run(&cli.dirs, c),
        Command::Init(a) => commands::init::run(a),
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

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
