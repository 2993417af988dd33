//! Crash points for the crash-safety tests: when the (deliberately undocumented)
//! `HFWASM_FAULT` variable names a point, the process aborts there with no cleanup, as a
//! `kill -9` would leave it. Costs one environment lookup per point otherwise.

/// Aborts the process if `HFWASM_FAULT` equals `name`.
pub fn point(name: &str) {
    if std::env::var_os("HFWASM_FAULT").is_some_and(|v| v == name) {
        tracing::error!(point = name, "fault injection: aborting");
        std::process::abort();
    }
}
