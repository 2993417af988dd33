//! The small SDK for hfwasm guests written in Rust: the generated bindings of the
//! `hostfactory:provider/provider-guest` world, an `export!` macro, and helpers that keep
//! guest code about provider logic rather than boilerplate.
//!
//! ```ignore
//! struct MyProvider;
//! impl hfwasm_guest_sdk::Guest for MyProvider { /* six functions */ }
//! hfwasm_guest_sdk::export!(MyProvider);
//! ```

/// Generated bindings for the provider world; import paths follow the WIT packages.
pub mod bindings {
    wit_bindgen::generate!({
        world: "hostfactory:provider/provider-guest@0.2.0",
        path: ["../../wit/capabilities", "../../wit/hostfactory"],
        pub_export_macro: true,
        export_macro_name: "export",
        default_bindings_module: "hfwasm_guest_sdk::bindings",
        generate_all,
        additional_derives: [PartialEq],
    });
}

pub use bindings::export;

/// Units held per template, kept in kv: `availableNumber` without a cloud call.
pub mod held;
/// HTTP over the host's `http` capability (feature `http`).
#[cfg(feature = "http")]
pub mod http;
/// The trait a provider guest implements: one function per HostFactory use case.
pub use bindings::exports::hostfactory::provider::provider::Guest;
/// Capability imports (granted per guest by the site's config).
pub use bindings::hostfactory::capabilities::{autoscaling, ec2, inventory, kv, log, power};
/// Domain types shared with the host.
pub use bindings::hostfactory::provider::types::*;

/// Logs at info level through the host (never stdout).
pub fn info(message: &str) {
    log::emit(log::Level::Info, message);
}

/// Logs at warn level through the host.
pub fn warn(message: &str) {
    log::emit(log::Level::Warn, message);
}

/// Builds a numeric attribute (`["Numeric", "4"]` on the wire).
pub fn numeric(name: &str, value: impl ToString) -> Attribute {
    Attribute {
        name: name.to_string(),
        kind: AttributeKind::Numeric,
        value: value.to_string(),
    }
}

/// Builds a text attribute (`["String", "X86_64"]` on the wire).
pub fn text(name: &str, value: impl ToString) -> Attribute {
    Attribute {
        name: name.to_string(),
        kind: AttributeKind::Text,
        value: value.to_string(),
    }
}

/// HostFactory attributes from an IBM template's `attributes` (`["Numeric", "4"]` or a plain
/// value), with LSF's `mem` set to `mem_mib` (the machine's real memory, like `nram`) and
/// `type` = `X86_64` when the template names none. The caller adds `ncpus`/`nram`.
pub fn ibm_attributes(attributes: &[(String, serde_json::Value)], mem_mib: u64) -> Vec<Attribute> {
    use serde_json::Value;
    let mut out = Vec::with_capacity(attributes.len() + 1);
    for (name, v) in attributes {
        if name == "mem" {
            out.push(numeric("mem", mem_mib));
            continue;
        }
        let (kind, value) = match v {
            Value::Array(a) if a.len() == 2 => (
                a[0].as_str().unwrap_or("String").to_string(),
                a[1].as_str().map(str::to_string).unwrap_or_else(|| a[1].to_string()),
            ),
            Value::Number(n) => ("Numeric".into(), n.to_string()),
            Value::Bool(b) => ("Boolean".into(), if *b { "1".into() } else { "0".into() }),
            Value::String(s) => ("String".into(), s.clone()),
            other => ("String".into(), other.to_string()),
        };
        out.push(Attribute {
            name: name.clone(),
            kind: match kind.as_str() {
                "Numeric" => AttributeKind::Numeric,
                "Boolean" => AttributeKind::Boolean,
                _ => AttributeKind::Text,
            },
            value,
        });
    }
    if !out.iter().any(|a| a.name == "type") {
        out.insert(0, text("type", "X86_64"));
    }
    out
}

impl From<kv::KvError> for ProviderError {
    fn from(e: kv::KvError) -> Self {
        match e {
            kv::KvError::Denied(m) => ProviderError::Denied(format!("kv: {m}")),
            kv::KvError::Unavailable(m) => ProviderError::Unavailable(format!("kv: {m}")),
        }
    }
}

impl From<inventory::InventoryError> for ProviderError {
    fn from(e: inventory::InventoryError) -> Self {
        match e {
            inventory::InventoryError::Invalid(m) => ProviderError::Unavailable(m),
            inventory::InventoryError::Denied(m) => ProviderError::Denied(format!("inventory: {m}")),
        }
    }
}
