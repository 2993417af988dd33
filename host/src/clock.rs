//! The one wall clock every lifecycle decision reads, so a test can move it for the whole
//! process at once (timeouts, claims, power-command ages) instead of waiting.

use std::time::{SystemTime, UNIX_EPOCH};

/// Now, epoch seconds. Tests may shift the clock with `HFWASM_NOW_OFFSET_SECS` (like
/// `HFWASM_FAULT`, deliberately undocumented) to see timeouts without waiting for them.
pub fn now_secs() -> u64 {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let offset = std::env::var("HFWASM_NOW_OFFSET_SECS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    now.saturating_add(offset)
}
