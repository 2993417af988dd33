//! `log` capability: guest log records become host tracing events tagged with the guest.

use crate::runtime::bindings::hostfactory::capabilities::log::{Host, Level};

/// Per-guest state of the log capability.
#[derive(Debug, Clone)]
pub struct GuestLog {
    /// Guest name attached to every record.
    pub guest: String,
}

/// Longest guest log message kept; the rest is cut so a guest cannot flood the log file.
const MAX_MESSAGE: usize = 8 * 1024;

impl Host for GuestLog {
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
