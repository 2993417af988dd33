//! Recording of HostFactory calls (`recording` in config): each call's input and the answer
//! HostFactory got (or its error envelope), kept in the store beside the policy decisions
//! the call made (`policy::placement::Decision`, `policy::OfferDecision`), so a site can see
//! what was asked and answered around a decision it replays. A ring of `keep` slots: no
//! scan, no growth, one write per call.

use serde_json::{Value, json};

use crate::hf::Call;
use crate::store::StateStore;

/// Key of the ring's next slot number.
const NEXT: &str = "call-next";
/// Key prefix of the ring's slots.
pub const CALL_PREFIX: &str = "call/";

/// Records one call in slot `n % keep` of instance `instance`'s ring. Two processes that
/// draw the same slot at once keep one of the two records. A failure is logged, never fails
/// the call.
pub fn record_call(store: &dyn StateStore, instance: &str, keep: usize, at: u64, call: Call, input: &Value, output: &Value) {
    let ns = crate::policy::placement::record_namespace(instance);
    let stored = (|| -> Result<(), crate::store::StoreError> {
        let n: u64 = store.kv_get(&ns, NEXT)?.and_then(|v| v.parse().ok()).unwrap_or(0);
        store.kv_set(&ns, NEXT, &(n + 1).to_string())?;
        let slot = n % (keep.max(1) as u64);
        let record = json!({"seq": n, "at": at, "call": call.name(), "input": input, "output": output});
        store.kv_set(&ns, &format!("{CALL_PREFIX}{slot:010}"), &record.to_string())
    })();
    if let Err(e) = stored {
        tracing::warn!(error = %e, "cannot record the call");
    }
}
