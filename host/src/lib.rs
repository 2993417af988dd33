//! hfwasm: an IBM Spectrum Symphony HostFactory (and LSF resource connector) provider
//! plugin whose provider logic runs as sandboxed WebAssembly components.
//!
//! Layout (see DESIGN.md §3): `hf` is the wire contract, `config` loads settings, `service`
//! is the lifecycle core, `policy` holds the site's decisions (the template offer),
//! `runtime` runs guests, `capabilities` are what guests may import, `store` keeps state,
//! and `plugin` wires them into one HostFactory call.

pub mod capabilities;
pub mod clock;
pub mod config;
pub mod demo;
pub mod faults;
pub mod hf;
pub mod logging;
pub mod ownership;
pub mod plugin;
pub mod policy;
pub mod recording;
pub mod runtime;
pub mod scaffold;
pub mod service;
pub mod store;
