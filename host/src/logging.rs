//! Logging setup: `tracing` to the configured file (`logging.file_path`), else
//! `<logdir>/hfwasm-<instance>.log`, rotated by size at start, else stderr; never to stdout,
//! which belongs to HostFactory's one JSON answer.

use std::fs::OpenOptions;
use std::path::Path;
use std::sync::Mutex;

use tracing_subscriber::EnvFilter;

/// Libraries whose own INFO lines (the AWS SDK's credential-chain chatter, wasmtime's
/// compiler) say nothing a site acts on: warnings and errors only, unless `HFWASM_LOG` asks.
const QUIET: &str =
    "wasmtime=warn,cranelift=warn,aws_config=warn,aws_smithy_runtime=warn,aws_smithy_http_client=warn,hyper=warn,rustls=warn";

/// Rotate the log file once it is larger than this (`logging.max_size`).
pub const DEFAULT_MAX_BYTES: u64 = 10 << 20;
/// Rotated files kept, `.1` .. `.N` (`logging.backup_count`).
pub const DEFAULT_KEEP: u32 = 5;
/// Most rotated files config may ask to keep (each rotation renames them all).
pub const MAX_KEEP: u32 = 100;
/// Largest `logging.max_size` (a bigger file is rotated at this size anyway).
pub const MAX_LOG_BYTES: u64 = 10 << 30;

/// Starts logging at `level` (overridden by `HFWASM_LOG`, an env-filter directive). Logs go
/// to a file in `log_dir` if given and writable, else to stderr.
pub fn init(level: &str, log_dir: Option<&Path>, instance: &str) {
    let file = log_dir.map(|dir| dir.join(format!("hfwasm-{instance}.log")));
    init_file(level, file.as_deref(), DEFAULT_MAX_BYTES, DEFAULT_KEEP);
}

/// Starts logging at `level` to `file` (its directory created), rotated once larger than
/// `max_bytes` keeping `keep` old files; to stderr when there is no file or it cannot be
/// opened.
pub fn init_file(level: &str, file: Option<&Path>, max_bytes: u64, keep: u32) {
    let filter = EnvFilter::try_from_env("HFWASM_LOG").unwrap_or_else(|_| EnvFilter::new(format!("{level},{QUIET}")));
    let file = file.and_then(|path| {
        std::fs::create_dir_all(path.parent()?).ok()?;
        rotate(path, max_bytes, keep);
        let f = open_log(path).ok()?;
        let written = f.metadata().map(|m| m.len()).unwrap_or(0);
        Some(RotatingFile {
            path: path.to_path_buf(),
            file: f,
            written,
            max_bytes,
            keep,
        })
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

/// Opens the log file for appending: 0600, and never through a symbolic link (another
/// local user could point it at a file of hfwasm's user).
fn open_log(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

/// The log file, rotated by size while the process runs too: one process that logs a lot
/// (a guest flooding its log) must not grow one file without bound until the next start.
struct RotatingFile {
    path: std::path::PathBuf,
    file: std::fs::File,
    written: u64,
    max_bytes: u64,
    keep: u32,
}

impl std::io::Write for RotatingFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.written > 0 && self.written + buf.len() as u64 > self.max_bytes {
            rotate(&self.path, 0, self.keep);
            if let Ok(f) = open_log(&self.path) {
                self.file = f;
                self.written = 0;
            }
        }
        let n = self.file.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

/// `app.log` -> `app.log.1`, `.1` -> `.2`, ... keeping `keep` (0 = truncate instead).
fn rotate(path: &Path, max_bytes: u64, keep: u32) {
    let Ok(meta) = std::fs::metadata(path) else { return };
    if meta.len() < max_bytes {
        return;
    }
    let numbered = |i: u32| {
        let mut p = path.as_os_str().to_owned();
        p.push(format!(".{i}"));
        std::path::PathBuf::from(p)
    };
    if keep == 0 {
        let _ = std::fs::remove_file(path);
        return;
    }
    let _ = std::fs::remove_file(numbered(keep));
    for i in (1..keep).rev() {
        let _ = std::fs::rename(numbered(i), numbered(i + 1));
    }
    let _ = std::fs::rename(path, numbered(1));
}

/// Runs `f` and returns, besides its result, the warnings and errors guests logged while it
/// ran (each as `guest NAME: message`), instead of printing them: `config check` lists what
/// a guest found wrong with its settings (a template it left out) as problems.
pub fn capture_guest_warnings<T>(f: impl FnOnce() -> T) -> (T, Vec<String>) {
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::layer::SubscriberExt;

    /// Keeps the `guest` field and message of guest records at warn level or worse.
    struct Capture(Arc<Mutex<Vec<String>>>);
    #[derive(Default)]
    struct Fields {
        guest: String,
        message: String,
    }
    impl tracing::field::Visit for Fields {
        fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
            match field.name() {
                "guest" => self.guest = value.to_string(),
                "message" => self.message = value.to_string(),
                _ => {}
            }
        }
        fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
            match field.name() {
                "guest" => self.guest = format!("{value:?}").trim_matches('"').to_string(),
                "message" => self.message = format!("{value:?}"),
                _ => {}
            }
        }
    }
    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Capture {
        fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
            let m = event.metadata();
            if m.target() != "guest" || *m.level() > tracing::Level::WARN {
                return;
            }
            let mut fields = Fields::default();
            event.record(&mut fields);
            if let Ok(mut v) = self.0.lock() {
                v.push(format!("guest {}: {}", fields.guest, fields.message));
            }
        }
    }
    let seen = Arc::new(Mutex::new(Vec::new()));
    let subscriber = tracing_subscriber::registry().with(Capture(seen.clone()));
    let out = tracing::subscriber::with_default(subscriber, f);
    let found = seen.lock().map(|v| v.clone()).unwrap_or_default();
    (out, found)
}
