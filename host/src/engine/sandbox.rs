//! The sandbox every guest runs in, whatever world it implements: WASI with no environment,
//! files or network, the call's time as its wall clock, an optionally seeded random source,
//! the memory limiter, the two deadlines, fuel, the answer-size check and the mapping of a
//! trap or limit to an error that names guest, export and cause.

use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, Store, Trap, UpdateDeadline};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::GuestEngine;
use super::convert;
use crate::domain::model::{AbortKind, ProviderError};
use crate::limits::{self, GuestLimits, LimitSpec};

/// Time a guest has spent waiting in capability calls (cloud round trips, store
/// statements), shared by its capabilities and read by its deadline: a guest's
/// `timeout_ms` bounds its own running time, not the cloud's.
#[derive(Debug, Clone, Default)]
pub struct HostWait(std::sync::Arc<std::sync::atomic::AtomicU64>);

impl HostWait {
    /// Runs `f`, adding its duration to the wait.
    pub fn measure<T>(&self, f: impl FnOnce() -> T) -> T {
        let t0 = std::time::Instant::now();
        let out = f();
        let us = u64::try_from(t0.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.0.fetch_add(us, std::sync::atomic::Ordering::Relaxed);
        out
    }

    /// Adds `d`, a wait measured elsewhere (an HTTP exchange driven by the async runtime
    /// while the guest blocks on it).
    pub fn add(&self, d: std::time::Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.0.fetch_add(us, std::sync::atomic::Ordering::Relaxed);
    }

    /// Total time waited so far.
    pub fn total(&self) -> std::time::Duration {
        std::time::Duration::from_micros(self.0.load(std::sync::atomic::Ordering::Relaxed))
    }
}

/// Memory limiter that remembers when it refused growth, so the resulting trap is reported
/// as the memory limit rather than as a generic guest crash.
struct GuestLimiter {
    limits: GuestLimits,
    refused: Option<usize>,
    /// The largest linear memory granted so far (bytes): it never shrinks, so it is what
    /// the guest holds of the process's memory; logged with each call.
    granted: usize,
}

impl ResourceLimiter for GuestLimiter {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.limits.memory_bytes {
            self.refused = Some(desired);
            return Ok(false);
        }
        self.granted = self.granted.max(desired);
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= 1_000_000)
    }

    fn instances(&self) -> usize {
        self.limits.max_instances
    }

    fn memories(&self) -> usize {
        self.limits.max_instances
    }

    fn tables(&self) -> usize {
        self.limits.max_instances
    }
}

/// The wall clock a guest reads: the call's `now` (HostFactory's time as the host sees it,
/// replayable), not the machine's clock, which would let a guest fingerprint the host and
/// make recorded calls irreproducible.
#[derive(Clone, Default)]
struct CallTime(Arc<std::sync::atomic::AtomicU64>);

impl wasmtime_wasi::HostWallClock for CallTime {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }

    fn now(&self) -> Duration {
        Duration::from_secs(self.0.load(std::sync::atomic::Ordering::Relaxed))
    }
}

/// A deterministic random source (SplitMix64) for guests with `limits.random_seed`: the same
/// seed gives the same bytes on every run, so a guest that draws random numbers (a weighted
/// choice, a shuffle) decides the same way when a call is replayed.
struct SeededRandom(u64);

impl rand_core::TryRng for SeededRandom {
    type Error = std::convert::Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        Ok((self.try_next_u64()? >> 32) as u32)
    }

    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Ok(z ^ (z >> 31))
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
        for chunk in dst.chunks_mut(8) {
            let v = self.try_next_u64()?.to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
        Ok(())
    }
}

/// The two clocks of one guest call: the guest's own running time (time waiting in
/// capability calls excluded), bounded by `timeout_ms`, and wall time, bounded by
/// `call_timeout_ms`. Read by the epoch-deadline callback.
struct CallClock {
    started: Instant,
    waited_before: Duration,
    wait: HostWait,
    limits: GuestLimits,
    /// Which limit stopped the call, for the error.
    overran: Option<&'static LimitSpec>,
}

impl CallClock {
    fn restart(&mut self) {
        self.started = Instant::now();
        self.waited_before = self.wait.total();
        self.overran = None;
    }

    /// At an epoch deadline: stop the guest, or give it the time it has left.
    fn on_deadline(&mut self) -> UpdateDeadline {
        let wall = self.started.elapsed();
        let ran = wall.saturating_sub(self.wait.total().saturating_sub(self.waited_before));
        if ran >= self.limits.timeout {
            self.overran = Some(&limits::TIMEOUT);
            return UpdateDeadline::Interrupt;
        }
        if wall >= self.limits.call_timeout {
            self.overran = Some(&limits::CALL_TIMEOUT);
            return UpdateDeadline::Interrupt;
        }
        let left = (self.limits.timeout - ran).min(self.limits.call_timeout - wall);
        UpdateDeadline::Continue(GuestEngine::ticks(left))
    }
}

/// The sandbox part of a guest's store state: sandboxed WASI, its resource table, the
/// limiter and the clocks. Provider guests add their capabilities beside it.
pub struct Sandbox {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: GuestLimiter,
    clock: CallClock,
    time: CallTime,
}

/// Whether guests may print to stderr (`HFWASM_GUEST_STDIO=1`), for debugging only.
fn guest_stdio() -> bool {
    std::env::var("HFWASM_GUEST_STDIO").is_ok_and(|v| v == "1")
}

impl Sandbox {
    /// A sandbox under `limits`; `wait` tells it how long the guest spent waiting in host
    /// calls (excluded from its running time).
    pub fn new(limits: GuestLimits, wait: HostWait) -> Self {
        let time = CallTime::default();
        let mut wasi = WasiCtxBuilder::new();
        wasi.wall_clock(time.clone());
        wasi.allow_tcp(false).allow_udp(false).allow_ip_name_lookup(false);
        if let Some(seed) = limits.random_seed {
            wasi.secure_random(SeededRandom(seed));
            wasi.insecure_random(SeededRandom(seed ^ 0x5eed));
            wasi.insecure_random_seed(u128::from(seed));
        }
        if guest_stdio() {
            wasi.stdout(std::io::stderr()).stderr(std::io::stderr());
        }
        Self {
            wasi: wasi.build(),
            table: ResourceTable::new(),
            limiter: GuestLimiter {
                limits,
                refused: None,
                granted: 0,
            },
            clock: CallClock {
                started: Instant::now(),
                waited_before: Duration::ZERO,
                wait,
                limits,
                overran: None,
            },
            time,
        }
    }

    /// Sets the guest's wall clock to the call's time.
    pub fn set_now(&self, now: u64) {
        self.time.0.store(now, std::sync::atomic::Ordering::Relaxed);
    }

    /// The guest's resource table, shared by WASI and the standard capabilities (wasi:http).
    pub fn table(&mut self) -> &mut ResourceTable {
        &mut self.table
    }

    /// The WASI view of this sandbox.
    pub fn wasi_view(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiView for Sandbox {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        self.wasi_view()
    }
}

/// Store state that carries a [`Sandbox`].
pub trait Sandboxed: Send + 'static {
    /// The sandbox.
    fn sandbox(&mut self) -> &mut Sandbox;
}

impl Sandboxed for Sandbox {
    fn sandbox(&mut self) -> &mut Sandbox {
        self
    }
}

/// Links sandboxed WASI (the only import a policy guest gets).
pub fn add_wasi<T: Sandboxed + WasiView>(linker: &mut wasmtime::component::Linker<T>) -> wasmtime::Result<()> {
    wasmtime_wasi::p2::add_to_linker_sync(linker)
}

/// An error naming the guest, the operation and the cause.
pub fn abort(kind: AbortKind, guest: &str, operation: &str, message: String) -> ProviderError {
    ProviderError::Aborted {
        kind,
        provider: guest.to_string(),
        operation: operation.to_string(),
        message,
    }
}

/// A store for `state` with the memory limiter, the epoch deadline and fuel set.
pub fn new_store<T: Sandboxed>(engine: &GuestEngine, name: &str, limits: &GuestLimits, state: T) -> Result<Store<T>, ProviderError> {
    new_store_with(engine, name, limits, state, Layers::ALL)
}

/// Which store-level layers [`new_store_with`] sets up. Guests always get [`Layers::ALL`];
/// the others exist to measure each layer's cost (`hfwasm-bench sandbox`).
#[derive(Debug, Clone, Copy)]
pub struct Layers {
    /// The memory limiter (`memory_mib`, `max_instances`).
    pub memory_limiter: bool,
    /// The epoch deadline and its callback (`timeout_ms`, `call_timeout_ms`); needs an
    /// engine with epoch interruption.
    pub deadlines: bool,
}

impl Layers {
    /// Every layer: how guests run.
    pub const ALL: Layers = Layers {
        memory_limiter: true,
        deadlines: true,
    };
}

/// As [`new_store`], with only the chosen layers.
pub fn new_store_with<T: Sandboxed>(
    engine: &GuestEngine,
    name: &str,
    limits: &GuestLimits,
    state: T,
    layers: Layers,
) -> Result<Store<T>, ProviderError> {
    let mut store = Store::new(engine.engine(), state);
    if layers.memory_limiter {
        store.limiter(|s| &mut s.sandbox().limiter);
    }
    if layers.deadlines {
        // The first check comes at the nearer of the two limits: with call_timeout_ms below
        // timeout_ms, a guest flooding host calls was stopped only at timeout_ms.
        store.set_epoch_deadline(GuestEngine::ticks(limits.timeout.min(limits.call_timeout)));
        store.epoch_deadline_callback(|mut ctx| Ok(ctx.data_mut().sandbox().clock.on_deadline()));
    }
    if engine.meters_fuel() {
        store
            .set_fuel(limits.fuel.unwrap_or(u64::MAX))
            .map_err(|e| abort(AbortKind::Load, name, "load", format!("cannot set fuel: {e:#}")))?;
    }
    Ok(store)
}

/// Turns a failed instantiation into an error naming the limit or trap that caused it.
pub fn instantiate_error<T: Sandboxed>(store: &mut Store<T>, name: &str, limits: &GuestLimits, e: wasmtime::Error) -> ProviderError {
    let sb = store.data_mut().sandbox();
    let (refused, overran) = (sb.limiter.refused.take(), sb.clock.overran.take());
    classify(name, limits, refused, overran, "instantiate", e)
}

/// Runs the calls of one loaded guest: each under fresh deadlines and fuel, and once a call
/// aborts (the instance is then unsound) every later call of the process is refused.
pub struct CallRunner {
    /// Guest name from config.
    pub name: String,
    /// Its limits.
    pub limits: GuestLimits,
    aborted: Option<String>,
    coredump_dir: Option<std::path::PathBuf>,
}

impl CallRunner {
    /// A runner for guest `name` under `limits`.
    pub fn new(name: &str, limits: GuestLimits) -> Self {
        Self {
            name: name.to_string(),
            limits,
            aborted: None,
            coredump_dir: None,
        }
    }

    /// Writes a core dump of every trap into `dir` (the engine must capture them).
    pub fn with_coredumps(mut self, dir: Option<&std::path::Path>) -> Self {
        self.coredump_dir = dir.map(std::path::Path::to_path_buf);
        self
    }

    /// Writes the core dump `e` carries, if any and if asked to; returns its path.
    fn write_coredump<T: Sandboxed>(
        &self,
        store: &mut Store<T>,
        export: &str,
        now: u64,
        e: &wasmtime::Error,
    ) -> Option<std::path::PathBuf> {
        let dir = self.coredump_dir.as_ref()?;
        let dump = e.downcast_ref::<wasmtime::WasmCoreDump>()?;
        let bytes = dump.serialize(&mut *store, &self.name);
        let path = dir.join(format!("{}-{export}-{now}-{}.coredump", self.name, std::process::id()));
        match std::fs::create_dir_all(dir).and_then(|()| std::fs::write(&path, bytes)) {
            Ok(()) => Some(path),
            Err(err) => {
                tracing::warn!(guest = %self.name, file = %path.display(), error = %err, "cannot write the guest's core dump");
                None
            }
        }
    }

    /// Calls `export` through `f` with the guest's wall clock at `now`; a trap or limit
    /// becomes `Aborted`. The answer's own error type is left to the caller.
    pub fn run<T: Sandboxed, V>(
        &mut self,
        store: &mut Store<T>,
        export: &str,
        now: u64,
        f: impl FnOnce(&mut Store<T>) -> wasmtime::Result<V>,
    ) -> Result<V, ProviderError> {
        if let Some(prev) = &self.aborted {
            return Err(abort(
                AbortKind::Trap,
                &self.name,
                export,
                format!(
                    "guest '{}' cannot run '{export}': it was aborted earlier in this call ({prev})",
                    self.name
                ),
            ));
        }
        let sb = store.data_mut().sandbox();
        sb.set_now(now);
        sb.clock.restart();
        if let Some(fuel) = self.limits.fuel {
            // Fuel is per call; an engine without metering rejects it (checked at load).
            let _ = store.set_fuel(fuel);
        }
        store.set_epoch_deadline(GuestEngine::ticks(self.limits.timeout.min(self.limits.call_timeout)));
        let t0 = Instant::now();
        let out = f(store);
        let elapsed_us = t0.elapsed().as_micros() as u64;
        match out {
            Ok(v) => {
                let memory_kib = store.data_mut().sandbox().limiter.granted >> 10;
                tracing::debug!(guest = %self.name, export, elapsed_us, memory_kib, "guest call");
                Ok(v)
            }
            Err(e) => {
                let dump = self.write_coredump(store, export, now, &e);
                let sb = store.data_mut().sandbox();
                let (refused, overran) = (sb.limiter.refused.take(), sb.clock.overran.take());
                let mut err = classify(&self.name, &self.limits, refused, overran, export, e);
                if let ProviderError::Aborted { kind, .. } = &err {
                    let kind = match kind {
                        AbortKind::Trap => "trap",
                        AbortKind::Timeout => "timeout",
                        AbortKind::Memory => "memory",
                        AbortKind::Load => "load",
                    };
                    crate::metrics::guest_failure(&self.name, kind);
                }
                if let (Some(path), ProviderError::Aborted { message, .. }) = (dump, &mut err) {
                    message.push_str(&format!(
                        " (core dump: {}; open it with wasmgdb or `wasm-tools print`)",
                        path.display()
                    ));
                }
                self.aborted = Some(err.to_string());
                Err(err)
            }
        }
    }

    /// Refuses an answer heavier than `limits.answer_kib`.
    pub fn check_size<R: convert::Weigh>(&self, export: &str, answer: R) -> Result<R, ProviderError> {
        let weight = answer.weight();
        if weight <= self.limits.answer_bytes {
            return Ok(answer);
        }
        let err = abort(
            AbortKind::Memory,
            &self.name,
            export,
            format!(
                "guest '{}' export '{export}' answered {} KiB, more than its limit of {} KiB (guests.{}.limits.answer_kib)",
                self.name,
                weight.div_ceil(1 << 10),
                self.limits.answer_bytes >> 10,
                self.name
            ),
        );
        tracing::error!(guest = %self.name, export, error = %err, "guest answer too large");
        Err(err)
    }
}

/// Turns a trap or limit into `Aborted`, naming guest, export and cause.
fn classify(
    guest: &str,
    limits: &GuestLimits,
    refused: Option<usize>,
    overran: Option<&LimitSpec>,
    export: &str,
    e: wasmtime::Error,
) -> ProviderError {
    let err = if let Some(bytes) = refused {
        abort(
            AbortKind::Memory,
            guest,
            export,
            format!(
                "guest '{guest}' export '{export}' hit its memory limit of {} MiB (it asked for {} MiB); raise guests.{guest}.limits.memory_mib if the guest really needs it",
                limits.memory_bytes >> 20,
                bytes.div_ceil(1 << 20)
            ),
        )
    } else {
        match e.downcast_ref::<Trap>() {
            Some(Trap::Interrupt) => {
                let (spec, limit, what) = match overran {
                    Some(spec) if spec.key == limits::CALL_TIMEOUT.key => (spec, limits.call_timeout, "wall time, host calls included"),
                    _ => (&limits::TIMEOUT, limits.timeout, "its own running time"),
                };
                abort(
                    AbortKind::Timeout,
                    guest,
                    export,
                    format!(
                        "guest '{guest}' export '{export}' ran past its deadline of {} ms ({what}; guests.{guest}.limits.{}) and was stopped",
                        limit.as_millis(),
                        spec.key
                    ),
                )
            }
            Some(Trap::OutOfFuel) => abort(
                AbortKind::Timeout,
                guest,
                export,
                format!(
                    "guest '{guest}' export '{export}' ran out of its fuel of {} (guests.{guest}.limits.fuel) and was stopped",
                    limits.fuel.unwrap_or(0)
                ),
            ),
            Some(Trap::StackOverflow) => abort(
                AbortKind::Trap,
                guest,
                export,
                format!("guest '{guest}' export '{export}' overflowed its stack (unbounded recursion?)"),
            ),
            Some(Trap::MemoryOutOfBounds) => abort(
                AbortKind::Trap,
                guest,
                export,
                format!(
                    "guest '{guest}' export '{export}' trapped: out of bounds memory access (often the guest's own stack in linear memory overflowing: unbounded recursion?)"
                ),
            ),
            Some(trap) => abort(
                AbortKind::Trap,
                guest,
                export,
                format!("guest '{guest}' export '{export}' trapped: {trap}"),
            ),
            None => abort(
                AbortKind::Trap,
                guest,
                export,
                format!("guest '{guest}' export '{export}' failed: {e:#}"),
            ),
        }
    };
    tracing::error!(guest, export, error = %err, "guest aborted");
    err
}
