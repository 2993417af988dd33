//! hfwasm: an IBM Spectrum Symphony HostFactory (and LSF resource connector) provider
//! plugin whose provider logic runs as sandboxed WebAssembly components.
//!
//! Layout (DESIGN.md §3; the layer order is `layering::LAYERS`, bottom first): `domain` is
//! the shared vocabulary, `store` keeps state, `engine` is the wasmtime layer,
//! `capabilities` are what guests may import, `runtime` puts guests together, `policy` holds
//! the site's decisions, `service` is the lifecycle core, `hf` the wire contract, `config`
//! loads settings, and `plugin` wires them into one HostFactory call.

pub mod awsconn;
pub mod builtin;
pub mod capabilities;
pub mod clock;
pub mod config;
pub mod demo;
pub mod domain;
pub mod engine;
pub mod faults;
pub mod hf;
pub mod layering;
pub mod limits;
pub mod logging;
pub mod metrics;
pub mod ownership;
pub mod plugin;
pub mod policy;
pub mod recording;
pub mod runtime;
pub mod scaffold;
pub mod service;
pub mod store;
