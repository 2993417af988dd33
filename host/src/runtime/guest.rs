//! A provider guest instantiated with its grants and limits, behind the core's `Provider`
//! port. Every call runs under the guest's wall-time deadline and memory limit; a trap or a
//! limit becomes `ProviderError::Aborted` naming guest, export and cause.

use std::sync::Arc;
use std::time::Instant;

use wasmtime::Store;
use wasmtime::component::Linker;

use super::link;
use crate::capabilities::{Capability, GuestState, Lend, Lent, Settings};
use crate::domain::model::*;
use crate::domain::provider::Provider;
use crate::engine::GuestEngine;
use crate::engine::bindings::{ProviderGuest, hostfactory};
use crate::engine::cache::{CacheOutcome, PrecompiledCache};
use crate::engine::convert;
use crate::engine::sandbox::HostWait;
use crate::engine::sandbox::{self, CallRunner, Sandbox, abort};
use crate::limits::GuestLimits;
use crate::store::StateStore;

/// What the host lends a guest: the store (kv, request records), its namespace and owner,
/// and what its provider instance lends its capabilities.
#[derive(Clone)]
pub struct GuestResources {
    /// State store.
    pub store: Arc<dyn StateStore>,
    /// kv namespace (`<provider instance>/<guest>`).
    pub namespace: String,
    /// Provider instance name: the owner tag of everything the guest creates.
    pub owner: String,
    /// The inventory, the power runner, cloud clients: each capability takes what it needs.
    pub lent: Lent,
}

/// A guest's code and identity, ready to load.
pub struct GuestCode<'a> {
    /// Guest name from config.
    pub name: &'a str,
    /// Component bytes.
    pub wasm: &'a [u8],
    /// Granted capabilities.
    pub grants: &'a [Capability],
    /// Their per-guest settings (`guests.<name>.<capability>`).
    pub settings: &'a Settings,
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
        let wait = HostWait::default();
        let mut slots = Vec::with_capacity(code.grants.len());
        for cap in code.grants {
            let unit = cap.unit();
            (unit.link)(&mut linker).map_err(|e| load_err(format!("cannot link capability {}: {e:#}", unit.name)))?;
            let lend = Lend {
                guest: name,
                store: &res.store,
                namespace: &res.namespace,
                owner: &res.owner,
                wait: &wait,
                settings: code.settings.get(unit.name),
                lent: &res.lent,
            };
            slots.push((unit.build)(&lend).map_err(|e| load_err(format!("capability {}: {e}", unit.name)))?);
        }
        let state = GuestState::new(Sandbox::new(code.limits, wait), slots);
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
