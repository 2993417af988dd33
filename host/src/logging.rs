//! Logging setup: `tracing` to `<logdir>/hfwasm-<instance>.log` (rotated by size at start)
//! or to stderr; never to stdout, which belongs to HostFactory's one JSON answer.

use std::fs::OpenOptions;
use std::path::Path;
use std::sync::Mutex;

use tracing_subscriber::EnvFilter;

/// Rotate the log file once it is larger than this.
const MAX_LOG_BYTES: u64 = 10 << 20;
/// Rotated files kept (`.1` .. `.N`).
const KEEP_ROTATED: u32 = 5;

/// Starts logging at `level` (overridden by `HFWASM_LOG`, an env-filter directive). Logs go
/// to a file in `log_dir` if given and writable, else to stderr.
pub fn init(level: &str, log_dir: Option<&Path>, instance: &str) {
    let filter = EnvFilter::try_from_env("HFWASM_LOG").unwrap_or_else(|_| EnvFilter::new(format!("{level},wasmtime=warn,cranelift=warn")));
    let file = log_dir.and_then(|dir| {
        let path = dir.join(format!("hfwasm-{instance}.log"));
        std::fs::create_dir_all(dir).ok()?;
        rotate(&path);
        OpenOptions::new().create(true).append(true).open(&path).ok()
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_target(false);
    let result = match file {
        Some(f) => builder.with_writer(Mutex::new(f)).try_init(),
        None => builder.with_writer(std::io::stderr).try_init(),
    };
    // A second init (tests, demo) keeps the first subscriber.
    drop(result);
}

fn rotate(path: &Path) {
    let Ok(meta) = std::fs::metadata(path) else { return };
    if meta.len() < MAX_LOG_BYTES {
        return;
    }
    for i in (1..KEEP_ROTATED).rev() {
        let _ = std::fs::rename(
            path.with_extension(format!("log.{i}")),
            path.with_extension(format!("log.{}", i + 1)),
        );
    }
    let _ = std::fs::rename(path, path.with_extension("log.1"));
}
