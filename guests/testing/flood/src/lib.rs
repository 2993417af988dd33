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
    Ok(vec![hfwasm_guest_sdk::Template {
        id: "flood".into(),
        max_number: 1,
        available_number: Some(1),
        attributes: vec![
            hfwasm_guest_sdk::text("type", "X86_64"),
            hfwasm_guest_sdk::numeric("ncpus", 1),
            hfwasm_guest_sdk::numeric("nram", 1024),
        ],
        extra_json: None,
    }])
});
