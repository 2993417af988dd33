//! Policies that are Wasm guests: the template hook (`template-selector` world) and the
//! placement hook (`provider-selector` world; a guest of the `policy` world has both). Each
//! is loaded from the precompiled cache into the same sandbox as provider guests (limits,
//! deadlines, fuel, seeded random), linked with sandboxed WASI only, and called through its
//! port.

use std::time::Instant;

use wasmtime::Store;
use wasmtime::component::{Component, Linker};

use super::placement::{Candidate, Circuit, Placement, PlacementPolicy};
use super::{PolicyError, TemplatePolicy};
use crate::domain::model::{CallContext, Template};
use crate::engine::bindings::placement::ProviderSelector;
use crate::engine::bindings::placement::exports::hostfactory::policy::placement as pwit;
use crate::engine::bindings::policy::TemplateSelector;
use crate::engine::bindings::policy::exports::hostfactory::policy::template_policy as wit;
use crate::engine::sandbox::HostWait;
use crate::engine::sandbox::{self, CallRunner, Sandbox};
use crate::runtime::link::{self, GuestRole};
use crate::runtime::{CacheOutcome, GuestCode, GuestEngine, PrecompiledCache};

/// A loaded policy guest whose world's bindings are `B`.
pub struct WasmPolicy<B> {
    runner: CallRunner,
    store: Store<Sandbox>,
    bindings: B,
    settings_json: String,
}

/// A loaded template policy guest.
pub type WasmTemplatePolicy = WasmPolicy<TemplateSelector>;
/// A loaded placement policy guest.
pub type WasmPlacementPolicy = WasmPolicy<ProviderSelector>;

/// The world a policy guest is loaded as.
pub trait PolicyWorld: Sized {
    /// The role its export shows.
    const ROLE: GuestRole;
    /// Instantiates `component` as this world.
    fn instantiate(store: &mut Store<Sandbox>, component: &Component, linker: &Linker<Sandbox>) -> wasmtime::Result<Self>;
}

impl PolicyWorld for TemplateSelector {
    const ROLE: GuestRole = GuestRole::TemplatePolicy;
    fn instantiate(store: &mut Store<Sandbox>, component: &Component, linker: &Linker<Sandbox>) -> wasmtime::Result<Self> {
        TemplateSelector::instantiate(store, component, linker)
    }
}

impl PolicyWorld for ProviderSelector {
    const ROLE: GuestRole = GuestRole::Placement;
    fn instantiate(store: &mut Store<Sandbox>, component: &Component, linker: &Linker<Sandbox>) -> wasmtime::Result<Self> {
        ProviderSelector::instantiate(store, component, linker)
    }
}

impl<B: PolicyWorld> WasmPolicy<B> {
    /// Compiles (or loads from `cache`) policy guest `code`, checks its exports and imports
    /// (a policy is granted nothing, so any capability import is refused by name), and
    /// instantiates it in a fresh sandbox; `settings` is its own JSON object from config.
    pub fn load(
        engine: &GuestEngine,
        cache: &PrecompiledCache,
        code: GuestCode<'_>,
        settings: &serde_json::Value,
    ) -> Result<(Self, CacheOutcome), PolicyError> {
        let (name, wasm, limits) = (code.name, code.wasm, code.limits);
        let err = |message: String| PolicyError {
            policy: name.to_string(),
            message,
        };
        let t0 = Instant::now();
        let (component, outcome) = cache
            .load(engine, wasm)
            .map_err(|e| err(format!("not a loadable component: {e:#}")))?;
        // What it is first (a provider named as the policy gets that answer), then what it imports.
        link::check_exports(name, &link::exports(engine.engine(), &component), B::ROLE).map_err(|e| err(e.message))?;
        link::check_imports(name, &link::imports(engine.engine(), &component), &[]).map_err(|e| err(e.message))?;
        let mut linker: Linker<Sandbox> = Linker::new(engine.engine());
        sandbox::add_wasi(&mut linker).map_err(|e| err(format!("cannot link WASI: {e:#}")))?;
        let mut store =
            sandbox::new_store(engine, name, &limits, Sandbox::new(limits, HostWait::default())).map_err(|e| err(e.to_string()))?;
        let bindings = match B::instantiate(&mut store, &component, &linker) {
            Ok(b) => b,
            Err(e) => return Err(err(sandbox::instantiate_error(&mut store, name, &limits, e).to_string())),
        };
        tracing::debug!(policy = name, role = B::ROLE.describe(), cache = ?outcome, elapsed_ms = t0.elapsed().as_millis() as u64, "policy guest loaded");
        Ok((
            Self {
                runner: CallRunner::new(name, limits).with_coredumps(code.coredump_dir),
                store,
                bindings,
                settings_json: settings.to_string(),
            },
            outcome,
        ))
    }
}

impl PlacementPolicy for WasmPlacementPolicy {
    fn name(&self) -> &str {
        &self.runner.name
    }

    fn choose_providers(&mut self, ctx: &CallContext, request: &Placement, candidates: &[Candidate]) -> Result<Vec<String>, PolicyError> {
        let name = self.runner.name.clone();
        let err = |message: String| PolicyError {
            policy: name.clone(),
            message,
        };
        let c = pwit::PlacementContext {
            provider_instance: ctx.provider_instance.clone(),
            settings_json: self.settings_json.clone(),
            now: ctx.now,
        };
        let r = pwit::PlacementRequest {
            request_id: request.request_id.clone(),
            template_id: request.template_id.clone(),
            count: request.count,
            draw: request.draw,
        };
        let cs: Vec<pwit::Candidate> = candidates
            .iter()
            .map(|c| pwit::Candidate {
                name: c.name.clone(),
                kind: c.kind.clone(),
                priority: c.priority,
                weight: c.weight,
                cost_threshold: c.cost_threshold,
                circuit: match c.circuit {
                    Circuit::Closed => pwit::Circuit::Closed,
                    Circuit::HalfOpen => pwit::Circuit::HalfOpen,
                    Circuit::Open => pwit::Circuit::Open,
                },
                attributes: c.template.attributes.iter().map(|a| (a.name.clone(), a.value.clone())).collect(),
                max_number: c.template.max_number,
            })
            .collect();
        let bindings = &self.bindings;
        let answer = self
            .runner
            .run(&mut self.store, "choose-providers", ctx.now, |s| {
                bindings.hostfactory_policy_placement().call_choose_providers(s, &c, &r, &cs)
            })
            .map_err(|e| err(e.to_string()))?
            .map_err(|m| err(format!("answered an error: {m}")))?;
        self.runner.check_size("choose-providers", answer).map_err(|e| err(e.to_string()))
    }
}

use crate::engine::convert::policy_template::from_wit;
pub use crate::engine::convert::policy_template::to_wit;

impl TemplatePolicy for WasmTemplatePolicy {
    fn name(&self) -> &str {
        &self.runner.name
    }

    fn offer_templates(&mut self, ctx: &CallContext, templates: &[Template]) -> Result<Vec<Template>, PolicyError> {
        let name = self.runner.name.clone();
        let err = |message: String| PolicyError {
            policy: name.clone(),
            message,
        };
        let c = wit::PolicyContext {
            provider_instance: ctx.provider_instance.clone(),
            settings_json: self.settings_json.clone(),
            now: ctx.now,
        };
        let ts: Vec<wit::Template> = templates.iter().map(to_wit).collect();
        let bindings = &self.bindings;
        let answer = self
            .runner
            .run(&mut self.store, "offer-templates", ctx.now, |s| {
                bindings.hostfactory_policy_template_policy().call_offer_templates(s, &c, &ts)
            })
            .map_err(|e| err(e.to_string()))?
            .map_err(|m| err(format!("answered an error: {m}")))?;
        let offer = answer.into_iter().map(from_wit).collect::<Result<Vec<_>, _>>().map_err(err)?;
        self.runner.check_size("offer-templates", offer).map_err(|e| err(e.to_string()))
    }
}
