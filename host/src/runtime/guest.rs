//! A provider guest instantiated with its grants and limits, behind the core's `Provider`
//! port. Every call runs under the guest's wall-time deadline and memory limit; a trap or a
//! limit becomes `ProviderError::Aborted` naming guest, export and cause.

use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::component::{HasSelf, Linker, ResourceTable};
use wasmtime::{ResourceLimiter, Store, Trap, UpdateDeadline};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::bindings::{ProviderGuest, hostfactory};
use super::cache::{CacheOutcome, PrecompiledCache};
use super::engine::GuestEngine;
use super::limits::{self, GuestLimits, LimitSpec};
use super::{convert, link};
use crate::capabilities::ec2::{Ec2Api, Ec2Grant, GuestEc2};
use crate::capabilities::power::{GuestPower, PowerRunner};
use crate::capabilities::{Capability, HostWait};
use crate::capabilities::{inventory::GuestInventory, kv::GuestKv, log::GuestLog};
use crate::config::inventory::Inventory;
use crate::service::Provider;
use crate::service::model::*;
use crate::store::StateStore;

/// Memory limiter that remembers when it refused growth, so the resulting trap is reported
/// as the memory limit rather than as a generic guest crash.
struct GuestLimiter {
    limits: GuestLimits,
    refused: Option<usize>,
}

impl ResourceLimiter for GuestLimiter {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.limits.memory_bytes {
            self.refused = Some(desired);
            return Ok(false);
        }
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

/// Everything a guest's calls can reach: WASI (sandboxed), limits and its capabilities.
pub struct GuestState {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: GuestLimiter,
    log: GuestLog,
    kv: GuestKv,
    inventory: GuestInventory,
    power: GuestPower,
    ec2: GuestEc2,
    clock: CallClock,
    time: CallTime,
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

impl WasiView for GuestState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// What the host lends a guest: the store for kv, the inventory, a dir for power outcomes.
#[derive(Clone)]
pub struct GuestResources {
    /// State store (kv).
    pub store: Arc<dyn StateStore>,
    /// kv namespace (`<provider instance>/<guest>`).
    pub namespace: String,
    /// Parsed inventory, when the guest is granted it.
    pub inventory: Option<Arc<Inventory>>,
    /// How power commands are run (outcomes go to the store).
    pub power: PowerRunner,
    /// The provider instance's EC2 client, when EC2 is configured.
    pub ec2: Option<Arc<dyn Ec2Api>>,
    /// What the guest may do with EC2.
    pub ec2_grant: Ec2Grant,
    /// Provider instance name: the owner tag of everything the guest creates.
    pub owner: String,
}

/// A guest's code and identity, ready to load.
pub struct GuestCode<'a> {
    /// Guest name from config.
    pub name: &'a str,
    /// Component bytes.
    pub wasm: &'a [u8],
    /// Granted capabilities.
    pub grants: &'a [Capability],
    /// Limits.
    pub limits: GuestLimits,
}

/// A loaded provider guest.
pub struct WasmProvider {
    name: String,
    limits: GuestLimits,
    store: Store<GuestState>,
    bindings: ProviderGuest,
    aborted: Option<String>,
}

fn abort(kind: AbortKind, guest: &str, operation: &str, message: String) -> ProviderError {
    ProviderError::Aborted {
        kind,
        provider: guest.to_string(),
        operation: operation.to_string(),
        message,
    }
}

/// Whether guests may print to stderr (`HFWASM_GUEST_STDIO=1`), for debugging only.
fn guest_stdio() -> bool {
    std::env::var("HFWASM_GUEST_STDIO").is_ok_and(|v| v == "1")
}

impl WasmProvider {
    /// Compiles (or loads from `cache`), checks imports against grants, links only the
    /// granted capabilities and instantiates the guest.
    pub fn load(
        engine: &GuestEngine,
        cache: &PrecompiledCache,
        code: GuestCode<'_>,
        res: GuestResources,
    ) -> Result<(Self, CacheOutcome), ProviderError> {
        let name = code.name;
        let load_err = |m: String| abort(AbortKind::Load, name, "load", format!("guest '{name}': {m}"));
        let t0 = Instant::now();
        let (component, outcome) = cache
            .load(engine, code.wasm)
            .map_err(|e| load_err(format!("not a loadable component: {e:#}")))?;
        let imports = link::imports(engine.engine(), &component);
        link::check_imports(name, &imports, code.grants).map_err(|e| abort(AbortKind::Load, name, "load", e.message))?;
        link::check_exports(name, &link::exports(engine.engine(), &component))
            .map_err(|e| abort(AbortKind::Load, name, "load", e.message))?;

        let mut linker: Linker<GuestState> = Linker::new(engine.engine());
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(|e| load_err(format!("cannot link WASI: {e:#}")))?;
        let add = |r: wasmtime::Result<()>, cap: &str| r.map_err(|e| load_err(format!("cannot link capability {cap}: {e:#}")));
        for cap in code.grants {
            match cap {
                Capability::Log => add(
                    hostfactory::capabilities::log::add_to_linker::<_, HasSelf<GuestLog>>(&mut linker, |s| &mut s.log),
                    "log",
                )?,
                Capability::Kv => add(
                    hostfactory::capabilities::kv::add_to_linker::<_, HasSelf<GuestKv>>(&mut linker, |s| &mut s.kv),
                    "kv",
                )?,
                Capability::Inventory => add(
                    hostfactory::capabilities::inventory::add_to_linker::<_, HasSelf<GuestInventory>>(&mut linker, |s| &mut s.inventory),
                    "inventory",
                )?,
                Capability::Power => add(
                    hostfactory::capabilities::power::add_to_linker::<_, HasSelf<GuestPower>>(&mut linker, |s| &mut s.power),
                    "power",
                )?,
                Capability::Ec2 => add(
                    hostfactory::capabilities::ec2::add_to_linker::<_, HasSelf<GuestEc2>>(&mut linker, |s| &mut s.ec2),
                    "ec2",
                )?,
            }
        }

        let time = CallTime::default();
        let mut wasi = WasiCtxBuilder::new();
        wasi.wall_clock(time.clone());
        wasi.allow_tcp(false).allow_udp(false).allow_ip_name_lookup(false);
        if guest_stdio() {
            wasi.stdout(std::io::stderr()).stderr(std::io::stderr());
        }
        let wait = HostWait::default();
        let ec2 = if code.grants.contains(&Capability::Ec2) { res.ec2 } else { None };
        // Tagged on everything the guest launches; read once per load, only for cloud guests.
        let store_id = match &ec2 {
            Some(_) => crate::store::store_id(res.store.as_ref())
                .map_err(|e| abort(AbortKind::Load, name, "load", format!("cannot read the store's id: {e}")))?,
            None => String::new(),
        };
        let state = GuestState {
            wasi: wasi.build(),
            table: ResourceTable::new(),
            limiter: GuestLimiter {
                limits: code.limits,
                refused: None,
            },
            log: GuestLog { guest: name.to_string() },
            kv: GuestKv::new(res.store.clone(), res.namespace, wait.clone()),
            inventory: GuestInventory::new(if code.grants.contains(&Capability::Inventory) {
                res.inventory.clone()
            } else {
                None
            }),
            power: GuestPower::new(
                if code.grants.contains(&Capability::Power) {
                    res.inventory
                } else {
                    None
                },
                res.store.clone(),
                crate::capabilities::power::namespace(&res.owner),
                res.power,
            ),
            ec2: GuestEc2::new(ec2, res.ec2_grant, res.owner, store_id, wait.clone()),
            clock: CallClock {
                started: Instant::now(),
                waited_before: Duration::ZERO,
                wait,
                limits: code.limits,
                overran: None,
            },
            time,
        };
        let mut store = Store::new(engine.engine(), state);
        store.limiter(|s| &mut s.limiter);
        store.set_epoch_deadline(GuestEngine::ticks(code.limits.timeout));
        store.epoch_deadline_callback(|mut ctx| Ok(ctx.data_mut().clock.on_deadline()));
        if engine.meters_fuel() {
            store
                .set_fuel(code.limits.fuel.unwrap_or(u64::MAX))
                .map_err(|e| abort(AbortKind::Load, name, "load", format!("cannot set fuel: {e:#}")))?;
        }
        let bindings = match ProviderGuest::instantiate(&mut store, &component, &linker) {
            Ok(b) => b,
            Err(e) => {
                let refused = store.data_mut().limiter.refused.take();
                let overran = store.data_mut().clock.overran.take();
                return Err(classify(name, &code.limits, refused, overran, "instantiate", e));
            }
        };
        tracing::debug!(guest = name, cache = ?outcome, elapsed_ms = t0.elapsed().as_millis() as u64, "guest loaded");
        Ok((
            Self {
                name: name.to_string(),
                limits: code.limits,
                store,
                bindings,
                aborted: None,
            },
            outcome,
        ))
    }

    fn call<R: convert::Weigh, W>(
        &mut self,
        export: &str,
        f: impl FnOnce(&ProviderGuest, &mut Store<GuestState>) -> wasmtime::Result<Result<W, hostfactory::provider::types::ProviderError>>,
        map: impl FnOnce(W) -> Result<R, ProviderError>,
    ) -> Result<R, ProviderError> {
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
        self.store.data_mut().clock.restart();
        if let Some(fuel) = self.limits.fuel {
            // Fuel is per call; an engine without metering rejects it (checked at load).
            let _ = self.store.set_fuel(fuel);
        }
        self.store.set_epoch_deadline(GuestEngine::ticks(self.limits.timeout));
        let t0 = Instant::now();
        let out = f(&self.bindings, &mut self.store);
        let elapsed_us = t0.elapsed().as_micros() as u64;
        match out {
            Ok(Ok(v)) => {
                tracing::debug!(guest = %self.name, export, elapsed_us, "guest call");
                let answer = map(v)?;
                let weight = answer.weight();
                if weight > self.limits.answer_bytes {
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
                    return Err(err);
                }
                Ok(answer)
            }
            Ok(Err(e)) => {
                let e = convert::error(e);
                tracing::info!(guest = %self.name, export, elapsed_us, error = %e, "guest returned an error");
                Err(e)
            }
            Err(e) => {
                let refused = self.store.data_mut().limiter.refused.take();
                let overran = self.store.data_mut().clock.overran.take();
                let err = classify(&self.name, &self.limits, refused, overran, export, e);
                self.aborted = Some(err.to_string());
                Err(err)
            }
        }
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

impl WasmProvider {
    /// The WIT call context for `ctx`; also sets the guest's wall clock to the call's time.
    fn context(&mut self, ctx: &CallContext) -> hostfactory::provider::types::CallContext {
        self.store.data().time.0.store(ctx.now, std::sync::atomic::Ordering::Relaxed);
        convert::call_context(ctx)
    }
}

impl Provider for WasmProvider {
    fn templates(&mut self, ctx: &CallContext) -> Result<Vec<Template>, ProviderError> {
        let c = self.context(ctx);
        self.call(
            "templates",
            |b, s| b.hostfactory_provider_provider().call_templates(s, &c),
            |ts| ts.into_iter().map(convert::template).collect(),
        )
    }

    fn request_machines(&mut self, ctx: &CallContext, req: &ProvisionRequest) -> Result<ProvisionProgress, ProviderError> {
        let (c, r) = (self.context(ctx), convert::provision_request(req));
        self.call(
            "request-machines",
            |b, s| b.hostfactory_provider_provider().call_request_machines(s, &c, &r),
            |p| Ok(convert::progress(p)),
        )
    }

    fn requests_status(
        &mut self,
        ctx: &CallContext,
        queries: &[StatusQuery],
    ) -> Result<Vec<Result<ProvisionProgress, ProviderError>>, ProviderError> {
        let c = self.context(ctx);
        let q: Vec<_> = queries.iter().map(convert::status_query).collect();
        self.call(
            "requests-status",
            |b, s| b.hostfactory_provider_provider().call_requests_status(s, &c, &q),
            |answers| {
                Ok(answers
                    .into_iter()
                    .map(|a| a.map(convert::progress).map_err(convert::error))
                    .collect())
            },
        )
    }

    fn release_machines(&mut self, ctx: &CallContext, return_id: &str, machines: &[MachineRef]) -> Result<Vec<Machine>, ProviderError> {
        let c = self.context(ctx);
        let m: Vec<_> = machines.iter().map(convert::machine_ref).collect();
        self.call(
            "release-machines",
            |b, s| b.hostfactory_provider_provider().call_release_machines(s, &c, return_id, &m),
            |ms| Ok(ms.into_iter().map(convert::machine_from_wit).collect()),
        )
    }

    fn release_status(&mut self, ctx: &CallContext, return_id: &str, known: &[Machine]) -> Result<Vec<Machine>, ProviderError> {
        let c = self.context(ctx);
        let k: Vec<_> = known.iter().map(convert::machine_to_wit).collect();
        self.call(
            "release-status",
            |b, s| b.hostfactory_provider_provider().call_release_status(s, &c, return_id, &k),
            |ms| Ok(ms.into_iter().map(convert::machine_from_wit).collect()),
        )
    }

    fn owned_machines(&mut self, ctx: &CallContext) -> Result<Vec<OwnedMachine>, ProviderError> {
        let c = self.context(ctx);
        self.call(
            "owned-machines",
            |b, s| b.hostfactory_provider_provider().call_owned_machines(s, &c),
            |ms| {
                Ok(ms
                    .into_iter()
                    .map(|o| OwnedMachine {
                        request_id: o.request_id,
                        store_id: o.store_id,
                        machine: convert::machine_from_wit(o.machine),
                    })
                    .collect())
            },
        )
    }

    fn reclaim_candidates(&mut self, ctx: &CallContext, machines: &[MachineRef]) -> Result<Vec<Reclaim>, ProviderError> {
        let c = self.context(ctx);
        let m: Vec<_> = machines.iter().map(convert::machine_ref).collect();
        self.call(
            "reclaim-candidates",
            |b, s| b.hostfactory_provider_provider().call_reclaim_candidates(s, &c, &m),
            |rs| Ok(rs.into_iter().map(convert::reclaim).collect()),
        )
    }
}
