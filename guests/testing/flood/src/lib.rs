//! Adversarial guest: `templates` calls the host forever (kv reads), so nearly all of its
//! time is spent in host calls. The call's wall-time limit (`call_timeout_ms`) must stop it;
//! its own running time (`timeout_ms`) stays small. With `{"calls": N}` in its settings it
//! makes N calls and then answers, to show waiting in host calls is not running time.

use hfwasm_guest_sdk::kv;

hfwasm_testing_common::adversarial_guest!(Flood, |ctx| {
    let settings: serde_json::Value = serde_json::from_str(&ctx.settings_json).unwrap_or_default();
    let calls = settings.get("calls").and_then(serde_json::Value::as_u64);
    let mut n: u64 = 0;
    while calls.is_none_or(|c| n < c) {
        kv::scan("flood/")?;
        n += 1;
    }
    Ok(vec![hfwasm_testing_common::template("flood", None)])
});
