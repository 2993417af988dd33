//! The wasmtime layer under every guest: the one engine of a process and its epoch ticker
//! (the wall-time clock that guest deadlines count in), the precompiled cache, the bindings
//! generated from `wit/`, the per-call sandbox and the WIT <-> domain conversions. It knows
//! nothing of capabilities, config or the store.

pub mod bindings;
pub mod cache;
pub mod convert;
pub mod sandbox;

pub use cache::{CacheOutcome, PrecompiledCache};

use std::time::Duration;

use wasmtime::{Config, Engine, OptLevel};

use crate::limits;

/// Length of one epoch tick; guest deadlines are rounded up to whole ticks.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Settings that change generated code and so must be part of the precompiled-cache key.
pub const CODEGEN_FLAGS: &str = "epoch=1;fuel=0;opt=speed;stack=512k;unwind=0";
/// The same with fuel metering compiled in.
pub const CODEGEN_FLAGS_FUEL: &str = "epoch=1;fuel=1;opt=speed;stack=512k;unwind=0";

/// The engine every guest of this process runs on.
#[derive(Clone)]
pub struct GuestEngine {
    engine: Engine,
    fuel: bool,
}

impl GuestEngine {
    /// Builds the engine (epoch interruption on, stack limit set) and starts its ticker.
    pub fn new() -> wasmtime::Result<Self> {
        Self::with_fuel(false)
    }

    /// As [`GuestEngine::new`], with fuel metering compiled in when `fuel` (for guests with
    /// `limits.fuel`: deterministic runs; the checks cost some speed, so only then).
    pub fn with_fuel(fuel: bool) -> wasmtime::Result<Self> {
        Self::with_options(fuel, false)
    }

    /// As [`GuestEngine::with_fuel`], also capturing a core dump on every trap when
    /// `coredumps` (for guests with a `coredump_dir`; generated code is the same).
    pub fn with_options(fuel: bool, coredumps: bool) -> wasmtime::Result<Self> {
        Self::build(true, fuel, coredumps)
    }

    /// An engine WITHOUT epoch interruption, so nothing can stop a guest's loop: only for
    /// measuring what the deadline layer costs (`hfwasm-bench sandbox`), never for running
    /// a site's guests.
    pub fn without_deadlines() -> wasmtime::Result<Self> {
        Self::build(false, false, false)
    }

    fn build(epoch: bool, fuel: bool, coredumps: bool) -> wasmtime::Result<Self> {
        let mut cfg = Config::new();
        cfg.coredump_on_trap(coredumps);
        cfg.epoch_interruption(epoch);
        cfg.consume_fuel(fuel);
        cfg.max_wasm_stack(usize::try_from(limits::STACK.default).unwrap_or(512) * 1024);
        cfg.cranelift_opt_level(OptLevel::Speed);
        cfg.wasm_component_model(true);
        // No system unwind tables for guest code: wasmtime's own backtraces (trap messages,
        // core dumps) do not use them, and registering them is a large part of loading a
        // precompiled guest on every call.
        cfg.native_unwind_info(false);
        let engine = Engine::new(&cfg)?;
        let weak = engine.weak();
        // The ticker ends by itself once the engine is dropped.
        std::thread::Builder::new()
            .name("hfwasm-epoch".into())
            .spawn(move || {
                while let Some(engine) = weak.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(EPOCH_TICK);
                }
            })
            .map_err(|e| wasmtime::Error::msg(format!("cannot start the epoch ticker thread: {e}")))?;
        Ok(Self { engine, fuel })
    }

    /// Whether generated code meters fuel.
    pub fn meters_fuel(&self) -> bool {
        self.fuel
    }

    /// The codegen settings of this engine, for the precompiled-cache key.
    pub fn codegen_flags(&self) -> &'static str {
        if self.fuel { CODEGEN_FLAGS_FUEL } else { CODEGEN_FLAGS }
    }

    /// The wasmtime engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Ticks a deadline of `timeout` spans.
    pub fn ticks(timeout: Duration) -> u64 {
        let tick = EPOCH_TICK.as_millis().max(1);
        u64::try_from(timeout.as_millis().div_ceil(tick)).unwrap_or(u64::MAX).max(1)
    }
}
