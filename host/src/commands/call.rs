//! The five HostFactory calls: `hfwasm <call> -f <input.json>`, one JSON answer on stdout,
//! under a watchdog that answers `CALL_TIMEOUT` for a call that hangs.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use super::{DirArgs, dirs};
use hfwasm::hf::{Call, ErrorCode, HfError};
use hfwasm::plugin::Plugin;

/// The input file of a HostFactory call.
#[derive(Args)]
pub struct InputFile {
    /// The JSON input file HostFactory wrote (optional for getAvailableTemplates).
    #[arg(short = 'f', long = "file", value_name = "INPUT.json")]
    pub file: Option<PathBuf>,
}

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

/// HostFactory's answer on stdout, exit 0: the only place a HostFactory answer is written.
pub fn answer(v: &impl serde::Serialize) -> ExitCode {
    use std::io::Write;
    claim_stdout();
    // Written as it is serialised (a Value cannot fail to serialise): no second copy of a
    // 10,000-machine answer as one string.
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let written = serde_json::to_writer_pretty(&mut out, v)
        .map_err(std::io::Error::from)
        .and_then(|()| writeln!(out))
        .and_then(|()| out.flush());
    match written {
        Ok(()) => ExitCode::SUCCESS,
        // HostFactory went away (a closed pipe): nothing more can reach it.
        Err(e) => {
            tracing::error!(error = %e, "cannot write the answer to stdout");
            ExitCode::from(1)
        }
    }
}

/// HostFactory's error envelope on stdout, exit 1.
pub fn fail(e: &HfError) -> ExitCode {
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

/// Runs one HostFactory call and prints its answer (or its error envelope).
pub fn run(call: Call, d: &DirArgs, input: &InputFile) -> ExitCode {
    let mut push = None;
    let mut run = || -> Result<hfwasm::hf::output::Answer, HfError> {
        let dirs = dirs(d)?;
        // Log to the instance's log dir (default level until config is read).
        let plugin = match Plugin::open(dirs.clone()) {
            Ok(p) => {
                let p = p.exit_after_call();
                super::init_log(&p);
                p
            }
            Err(e) => {
                hfwasm::logging::init("info", dirs.log_dir.as_deref(), &dirs.name);
                return Err(e);
            }
        };
        watchdog(call, plugin.call_deadline());
        push = plugin.metrics_push();
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
    let code = match run() {
        Ok(v) => answer(&v),
        Err(e) => fail(&e),
    };
    // After the answer is out: HostFactory has it whatever the push does.
    if let Some((url, instance)) = push {
        match hfwasm::metrics::push::push(&url, &instance, call.name()) {
            Ok(()) => tracing::debug!(endpoint = %url, "metrics pushed"),
            Err(e) => tracing::warn!(endpoint = %url, "cannot push metrics (monitoring.metrics_endpoint): {e}"),
        }
    }
    code
}
