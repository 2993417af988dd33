//! `log` capability: guest log records become host tracing events tagged with the guest.

use crate::engine::bindings::hostfactory::capabilities::log::{self as wit, Host, Level};

/// The log capability's row of [`super::TABLE`].
pub const UNIT: super::Unit = super::Unit {
    name: "log",
    wit: super::Wit::Own,
    about: "guest log records as host log lines",
    check_settings: None,
    link: |l| wit::add_to_linker::<_, wasmtime::component::HasSelf<GuestLog>>(l, |s| s.slot::<GuestLog>()),
    build: |l| Ok(Box::new(GuestLog::new(l.guest))),
};

/// Per-guest state of the log capability.
#[derive(Debug, Clone)]
pub struct GuestLog {
    /// Guest name attached to every record.
    pub guest: String,
    /// Bytes of messages this guest instance logged so far (its process's call).
    pub logged: usize,
}

impl GuestLog {
    /// The log capability of guest `guest`, nothing logged yet.
    pub fn new(guest: &str) -> Self {
        Self {
            guest: guest.to_string(),
            logged: 0,
        }
    }
}

/// Longest guest log message kept; the rest is cut so a guest cannot flood the log file.
const MAX_MESSAGE: usize = 8 * 1024;

impl Host for GuestLog {
    /// Logs one guest record, cut to [`MAX_MESSAGE`] and with control characters escaped.
    fn emit(&mut self, lvl: Level, message: String) {
        let mut message = message;
        if message.len() > MAX_MESSAGE {
            let mut cut = MAX_MESSAGE;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push_str(" [truncated]");
        }
        // One guest record is one log line: a guest cannot forge host lines with embedded
        // newlines (or other control characters, escaped as `\n`, `\u{1b}`, ...).
        if message.chars().any(char::is_control) {
            message = message
                .chars()
                .flat_map(|c| {
                    if c.is_control() {
                        c.escape_default().collect::<Vec<_>>()
                    } else {
                        vec![c]
                    }
                })
                .collect();
        }
        // A guest logs at most [`limits::GUEST_LOG_BYTES`] per call; one line says when the
        // rest was dropped.
        let limit = crate::limits::GUEST_LOG_BYTES;
        if self.logged >= limit {
            return;
        }
        self.logged += message.len();
        if self.logged >= limit {
            tracing::warn!(target: "guest", guest = self.guest.as_str(), "guest log limit reached ({limit} bytes in this call, limits::GUEST_LOG_BYTES); its further records are dropped");
            return;
        }
        let guest = self.guest.as_str();
        match lvl {
            Level::Trace => tracing::trace!(target: "guest", guest, "{message}"),
            Level::Debug => tracing::debug!(target: "guest", guest, "{message}"),
            Level::Info => tracing::info!(target: "guest", guest, "{message}"),
            Level::Warn => tracing::warn!(target: "guest", guest, "{message}"),
            Level::Error => tracing::error!(target: "guest", guest, "{message}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_guest_cannot_forge_a_host_line() {
        use std::io::Write;
        use std::sync::{Arc, Mutex};
        #[derive(Clone, Default)]
        struct Buf(Arc<Mutex<Vec<u8>>>);
        impl Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().map_err(|_| std::io::Error::other("poisoned"))?.extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let writer = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            GuestLog::new("evil").emit(Level::Warn, "ok\n2026-12-05T00:00:00Z  INFO hf_call: call done\x1b[2J".into());
        });
        let text = String::from_utf8(buf.0.lock().expect("lock").clone()).expect("utf8");
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(text.contains("ok\\n2026") && text.contains("\\u{1b}"), "{text}");
    }
}

#[cfg(test)]
mod volume_tests {
    use super::*;

    #[test]
    fn a_guest_logs_a_bounded_volume_per_call() {
        let mut log = GuestLog::new("chatty");
        for _ in 0..100_000 {
            log.emit(Level::Info, "x".repeat(1000));
        }
        assert!(log.logged < crate::limits::GUEST_LOG_BYTES + 2000, "{}", log.logged);
    }
}
