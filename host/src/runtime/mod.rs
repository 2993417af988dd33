//! The wasmtime side: one engine per process, the precompiled cache, limits, import checks
//! and the adapter that puts a provider guest behind the core's `Provider` port.

pub mod bindings;
pub mod builtin;
pub mod cache;
pub mod convert;
pub mod engine;
pub mod guest;
pub mod inspect;
pub mod limits;
pub mod link;
pub mod sandbox;

pub use cache::{CacheOutcome, PrecompiledCache};
pub use engine::GuestEngine;
pub use guest::{GuestCode, GuestResources, WasmProvider};
