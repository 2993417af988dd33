//! Guests put together: a provider guest loaded with its granted capabilities behind the
//! core's `Provider` port, the load-time import and export checks, `guest check`'s report,
//! and the guests built into the binary. The wasmtime layer itself is `engine`.

pub mod guest;
pub mod inspect;
pub mod link;

#[cfg(test)]
mod aws_guest_tests;
#[cfg(test)]
mod azure_guest_tests;

pub use crate::engine::{CacheOutcome, GuestEngine, PrecompiledCache};
pub use guest::{GuestCode, GuestResources, WasmProvider};
