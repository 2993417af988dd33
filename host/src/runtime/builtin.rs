//! Guests built into the binary (compiled from `guests/` by `host/build.rs`), so hfwasm
//! works on its embedded defaults with no `.wasm` files installed.

/// The on-prem pool provider guest (`builtin:onprem`).
pub const ONPREM: &[u8] = include_bytes!(concat!(env!("HFWASM_GUEST_DIR"), "/hfwasm_guest_onprem.wasm"));

/// The AWS provider guest (`builtin:aws`).
pub const AWS: &[u8] = include_bytes!(concat!(env!("HFWASM_GUEST_DIR"), "/hfwasm_guest_aws.wasm"));

/// The default template policy guest (`builtin:default-policy`).
pub const DEFAULT_POLICY: &[u8] = include_bytes!(concat!(env!("HFWASM_GUEST_DIR"), "/hfwasm_guest_default_policy.wasm"));

/// Bytes of the built-in guest `name` (`builtin:onprem`).
pub fn bytes(name: &str) -> Option<&'static [u8]> {
    match name {
        crate::config::BUILTIN_ONPREM => Some(ONPREM),
        crate::config::BUILTIN_AWS => Some(AWS),
        crate::config::BUILTIN_DEFAULT_POLICY => Some(DEFAULT_POLICY),
        _ => None,
    }
}
