//! A provider guest instantiated with its grants and limits, behind the core's `Provider`
//! port. Every call runs under the guest's wall-time deadline and memory limit; a trap or a
//! limit becomes `ProviderError::Aborted` naming guest, export and cause.

use std::sync::Arc;
use std::time::Instant;

use wasmtime::Store;
use wasmtime::component::{HasSelf, Linker};
use wasmtime_wasi::{WasiCtxView, WasiView};

use super::link;
use crate::capabilities::Capability;
use crate::capabilities::ec2::{Ec2Api, Ec2Grant, GuestEc2};
use crate::capabilities::inventory::Inventory;
use crate::capabilities::power::{GuestPower, PowerRunner};
use crate::capabilities::{inventory::GuestInventory, kv::GuestKv, log::GuestLog};
use crate::domain::model::*;
use crate::domain::provider::Provider;
use crate::engine::GuestEngine;
use crate::engine::bindings::{ProviderGuest, hostfactory};
use crate::engine::cache::{CacheOutcome, PrecompiledCache};
use crate::engine::convert;
use crate::engine::sandbox::HostWait;
use crate::engine::sandbox::{self, CallRunner, Sandbox, Sandboxed, abort};
use crate::limits::GuestLimits;
use crate::store::StateStore;

/// Everything a guest's calls can reach: the sandbox (WASI, limits, clocks) and its capabilities.
pub struct GuestState {
    sandbox: Sandbox,
    log: GuestLog,
    kv: GuestKv,
    inventory: GuestInventory,
    power: GuestPower,
    ec2: GuestEc2,
}

impl Sandboxed for GuestState {
    fn sandbox(&mut self) -> &mut Sandbox {
        &mut self.sandbox
    }
}

impl WasiView for GuestState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        self.sandbox.wasi_view()
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
    /// Where core dumps of its traps go, when wanted (`guests.<name>.coredump_dir`).
    pub coredump_dir: Option<&'a std::path::Path>,
}

/// A loaded provider guest.
pub struct WasmProvider {
    runner: CallRunner,
    store: Store<GuestState>,
    bindings: ProviderGuest,
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
        link::check_exports(name, &link::exports(engine.engine(), &component), link::GuestRole::Provider)
            .map_err(|e| abort(AbortKind::Load, name, "load", e.message))?;
        link::check_imports(name, &imports, code.grants).map_err(|e| abort(AbortKind::Load, name, "load", e.message))?;

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

        let wait = HostWait::default();
        let ec2 = if code.grants.contains(&Capability::Ec2) { res.ec2 } else { None };
        // Tagged on everything the guest launches; read once per load, only for cloud guests.
        let store_id = match &ec2 {
            Some(_) => crate::store::store_id(res.store.as_ref())
                .map_err(|e| abort(AbortKind::Load, name, "load", format!("cannot read the store's id: {e}")))?,
            None => String::new(),
        };
        let state = GuestState {
            sandbox: Sandbox::new(code.limits, wait.clone()),
            log: GuestLog::new(name),
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
            ec2: GuestEc2::new(ec2, res.ec2_grant, res.owner, store_id, wait).with_requests(res.store.clone()),
        };
        let mut store = sandbox::new_store(engine, name, &code.limits, state)?;
        let bindings = match ProviderGuest::instantiate(&mut store, &component, &linker) {
            Ok(b) => b,
            Err(e) => return Err(sandbox::instantiate_error(&mut store, name, &code.limits, e)),
        };
        tracing::debug!(guest = name, cache = ?outcome, elapsed_ms = t0.elapsed().as_millis() as u64, "guest loaded");
        Ok((
            Self {
                runner: CallRunner::new(name, code.limits).with_coredumps(code.coredump_dir),
                store,
                bindings,
            },
            outcome,
        ))
    }

    fn call<R: convert::Weigh, W>(
        &mut self,
        export: &str,
        now: u64,
        f: impl FnOnce(&ProviderGuest, &mut Store<GuestState>) -> wasmtime::Result<Result<W, hostfactory::provider::types::ProviderError>>,
        map: impl FnOnce(W) -> Result<R, ProviderError>,
    ) -> Result<R, ProviderError> {
        let bindings = &self.bindings;
        match self.runner.run(&mut self.store, export, now, |s| f(bindings, s))? {
            Ok(v) => self.runner.check_size(export, map(v)?),
            Err(e) => {
                let e = convert::error(e);
                tracing::info!(guest = %self.runner.name, export, error = %e, "guest returned an error");
                Err(e)
            }
        }
    }
}

impl WasmProvider {
    /// The WIT call context for `ctx`.
    fn context(&mut self, ctx: &CallContext) -> hostfactory::provider::types::CallContext {
        convert::call_context(ctx)
    }
}

impl Provider for WasmProvider {
    fn templates(&mut self, ctx: &CallContext) -> Result<Vec<Template>, ProviderError> {
        let c = self.context(ctx);
        self.call(
            "templates",
            ctx.now,
            |b, s| b.hostfactory_provider_provider().call_templates(s, &c),
            |ts| ts.into_iter().map(convert::template).collect(),
        )
    }

    fn request_machines(&mut self, ctx: &CallContext, req: &ProvisionRequest) -> Result<ProvisionProgress, ProviderError> {
        let (c, r) = (self.context(ctx), convert::provision_request(req));
        self.call(
            "request-machines",
            ctx.now,
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
            ctx.now,
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
            ctx.now,
            |b, s| b.hostfactory_provider_provider().call_release_machines(s, &c, return_id, &m),
            |ms| Ok(ms.into_iter().map(convert::machine_from_wit).collect()),
        )
    }

    fn release_status(&mut self, ctx: &CallContext, return_id: &str, known: &[Machine]) -> Result<Vec<Machine>, ProviderError> {
        let c = self.context(ctx);
        let k: Vec<_> = known.iter().map(convert::machine_to_wit).collect();
        self.call(
            "release-status",
            ctx.now,
            |b, s| b.hostfactory_provider_provider().call_release_status(s, &c, return_id, &k),
            |ms| Ok(ms.into_iter().map(convert::machine_from_wit).collect()),
        )
    }

    fn owned_machines(&mut self, ctx: &CallContext) -> Result<Vec<OwnedMachine>, ProviderError> {
        let c = self.context(ctx);
        self.call(
            "owned-machines",
            ctx.now,
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
            ctx.now,
            |b, s| b.hostfactory_provider_provider().call_reclaim_candidates(s, &c, &m),
            |rs| Ok(rs.into_iter().map(convert::reclaim).collect()),
        )
    }
}
