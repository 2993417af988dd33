//! Several providers behind the one [`Provider`] port (the seed's `providers[]`): the
//! [`Router`] offers the union of their templates, places each request with the placement
//! policy, goes down the chosen order past providers whose circuit is open or that fail,
//! and tops a partial answer up from the next provider. Which provider made which machine
//! is kept in the store (kv namespace `hfwasm.route/<instance>`, one record per request:
//! its legs, each a provider, the units it took on and the machines it made), so status,
//! returns, reclaims and the orphan sweep of later calls, each a new process, go to the
//! right one. Records of requests the store has pruned are deleted by the orphan scan.
//!
//! The service above cannot tell a router from a single provider, and the router cannot
//! tell whether the placement came from Wasm, Rhai or a test double.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::breaker::{self, Admission, Breaker, BreakerPolicy};
use super::{Provider, ProviderLoader};
use crate::domain::model::PolicyError;
use crate::domain::model::*;
use crate::domain::provider::{LazyProvider, one_answer_each};
use crate::policy::OnError;
use crate::policy::placement::{self, Candidate, Circuit, Placement, PlacementLoader, PlacementPolicy};
use crate::store::{StateStore, StoreError};

/// One provider of the list, as config describes it.
#[derive(Debug, Clone)]
pub struct MemberInfo {
    /// `providers[].name`: in logs, messages, breaker and routing records.
    pub name: String,
    /// `providers[].type` (or the guest's name).
    pub kind: String,
    /// Lower is preferred.
    pub priority: u32,
    /// Share under WEIGHTED selection.
    pub weight: u32,
    /// Most it may cost per host-hour (COST_OPTIMIZED).
    pub cost_threshold: Option<f64>,
    /// Settings handed to its guest.
    pub settings: serde_json::Value,
}

struct Member<'a> {
    info: MemberInfo,
    provider: LazyProvider<'a>,
    /// Its templates (or why it could not give them), once asked in this call.
    templates: Option<Result<Vec<Template>, ProviderError>>,
}

/// The part of a request one provider was asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Leg {
    /// Member name.
    provider: String,
    /// Units it was asked for and took on (0 once it refused).
    count: u32,
    /// Ids of the machines it made for the request.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    machines: Vec<String>,
}

impl Route {
    /// Adds the ids of `machines` to `provider`'s leg; true when something was new.
    fn add(&mut self, provider: &str, machines: &[Machine]) -> bool {
        let Some(leg) = self.legs.iter_mut().rev().find(|l| l.provider == provider) else {
            return false;
        };
        let mut changed = false;
        for m in machines {
            if !leg.machines.contains(&m.machine_id) {
                leg.machines.push(m.machine_id.clone());
                changed = true;
            }
        }
        changed
    }

    /// The provider whose leg made machine `id`.
    fn maker(&self, id: &str) -> Option<&str> {
        self.legs
            .iter()
            .find(|l| l.machines.iter().any(|m| m == id))
            .map(|l| l.provider.as_str())
    }
}

/// A request's routing record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Route {
    legs: Vec<Leg>,
}

/// Several providers as one.
pub struct Router<'a> {
    store: std::sync::Arc<dyn StateStore>,
    instance: String,
    members: Vec<Member<'a>>,
    breaker: Option<BreakerPolicy>,
    placement: Option<(PlacementLoader<'a>, OnError)>,
    policy: Option<Result<Box<dyn PlacementPolicy + 'a>, PolicyError>>,
    on_error: OnError,
    /// A candidate placement run beside the live one, never acted on.
    shadow: Option<PlacementLoader<'a>>,
    /// Record each placement (keep, live policy name, its settings).
    recording: Option<(usize, String, serde_json::Value)>,
    /// Machine id -> member index, learnt in this call.
    owners: HashMap<String, usize>,
    /// Routes read or written in this call.
    routes: std::cell::RefCell<HashMap<String, Option<Route>>>,
    /// Host name -> the provision requests holding it, read in this call.
    holders: HashMap<String, Vec<(String, Machine)>>,
}

/// Distinct requests whose routes one attribution needs, beyond which the router reads all
/// routes in one scan rather than one record each (a round trip each on PostgreSQL).
const ROUTE_SCAN_AT: usize = 8;

const REQ: &str = "req/";

fn joined(failures: &[String]) -> String {
    failures.join("; ")
}

impl<'a> Router<'a> {
    /// A router over `members` (each loaded on first use) for provider instance `instance`.
    pub fn new(store: std::sync::Arc<dyn StateStore>, instance: &str, members: Vec<(MemberInfo, ProviderLoader<'a>)>) -> Self {
        Self {
            store,
            instance: instance.to_string(),
            members: members
                .into_iter()
                .map(|(info, loader)| Member {
                    provider: LazyProvider::new(&info.name, loader),
                    info,
                    templates: None,
                })
                .collect(),
            breaker: None,
            placement: None,
            policy: None,
            on_error: OnError::FailOpen,
            shadow: None,
            recording: None,
            owners: HashMap::new(),
            routes: Default::default(),
            holders: HashMap::new(),
        }
    }

    /// Gives every provider its own circuit breaker (state in the store, keyed by name).
    pub fn with_breakers(mut self, policy: BreakerPolicy) -> Self {
        self.breaker = Some(policy);
        self
    }

    /// Lets `loader`'s policy order the providers for each request; `on_error` says what its
    /// failure does (fail open = by priority).
    pub fn with_placement(mut self, loader: PlacementLoader<'a>, on_error: OnError) -> Self {
        self.placement = Some((loader, on_error));
        self.on_error = on_error;
        self
    }

    /// Runs `loader`'s placement beside the live one on every request: its verdict is logged
    /// and stored, never acted on.
    pub fn with_shadow(mut self, loader: PlacementLoader<'a>) -> Self {
        self.shadow = Some(loader);
        self
    }

    /// Records every placement decision in the store for `hfwasm replay` (the last `keep`);
    /// `policy` and `settings` describe the live placement policy.
    pub fn with_recording(mut self, keep: usize, policy: &str, settings: serde_json::Value) -> Self {
        self.recording = Some((keep, policy.to_string(), settings));
        self
    }

    fn namespace(&self) -> String {
        crate::store::namespaces::routes(&self.instance)
    }

    fn store_err(e: StoreError) -> ProviderError {
        ProviderError::Unavailable(format!("state store: {e}"))
    }

    fn index(&self, name: &str) -> Option<usize> {
        self.members.iter().position(|m| m.info.name == name)
    }

    /// Member indexes by priority (ties in config order).
    fn by_priority(&self) -> Vec<usize> {
        let mut v: Vec<usize> = (0..self.members.len()).collect();
        v.sort_by_key(|&i| self.members[i].info.priority);
        v
    }

    fn member_ctx(&self, i: usize, ctx: &CallContext) -> CallContext {
        CallContext {
            settings: self.members[i].info.settings.clone(),
            ..ctx.clone()
        }
    }

    /// Member `i`'s provider, loaded on first use.
    fn provider(&mut self, i: usize) -> Result<&mut (dyn Provider + 'a), ProviderError> {
        self.members[i].provider.get()
    }

    /// Runs `f` on member `i` with its own settings.
    fn on<T>(
        &mut self,
        i: usize,
        ctx: &CallContext,
        f: impl FnOnce(&mut (dyn Provider + 'a), &CallContext) -> Result<T, ProviderError>,
    ) -> Result<T, ProviderError> {
        let mctx = self.member_ctx(i, ctx);
        let name = self.members[i].info.name.clone();
        self.provider(i).and_then(|p| f(p, &mctx)).map_err(|e| name_error(&name, e))
    }

    /// Member `i`'s templates (asked once per call; a failure too is remembered for the call).
    /// A failure that says the provider is down counts against its circuit breaker, once
    /// per call, whichever call it is: HostFactory's getAvailableTemplates every 30 s opens
    /// the circuit of a dead provider too, which is then not asked (a connect timeout each
    /// poll) until its recovery timeout. When the circuit was half open, the failure is the
    /// trial's.
    fn member_templates(&mut self, i: usize, ctx: &CallContext, circuit: Circuit) -> Result<Vec<Template>, ProviderError> {
        if let Some(t) = &self.members[i].templates {
            return t.clone();
        }
        let t = self.on(i, ctx, |p, c| p.templates(c));
        if let (Err(e), Some(b)) = (&t, self.breaker(i))
            && breaker::counts_as_failure(e)
        {
            b.record_failure(ctx.now, circuit == Circuit::HalfOpen, &e.to_string())
                .map_err(Self::store_err)?;
        }
        self.members[i].templates = Some(t.clone());
        t
    }

    fn breaker(&self, i: usize) -> Option<Breaker<'_>> {
        self.breaker
            .map(|policy| Breaker::new(self.store.as_ref(), &self.instance, &self.members[i].info.name, policy))
    }

    /// Request `request_id`'s route, read once per call (a reclaim check over many hosts
    /// of one request reads it once).
    fn route(&self, request_id: &str) -> Result<Option<Route>, ProviderError> {
        if let Some(r) = self.routes.borrow().get(request_id) {
            return Ok(r.clone());
        }
        let route = match self
            .store
            .kv_get(&self.namespace(), &format!("{REQ}{request_id}"))
            .map_err(Self::store_err)?
        {
            None => None,
            Some(v) => Some(
                serde_json::from_str(&v).map_err(|e| ProviderError::Internal(format!("routing record of {request_id} is corrupt: {e}")))?,
            ),
        };
        self.routes.borrow_mut().insert(request_id.to_string(), route.clone());
        Ok(route)
    }

    fn save_route(&self, request_id: &str, route: &Route) -> Result<(), ProviderError> {
        let v = serde_json::to_string(route).map_err(|e| ProviderError::Internal(e.to_string()))?;
        self.store
            .kv_set(&self.namespace(), &format!("{REQ}{request_id}"), &v)
            .map_err(Self::store_err)?;
        self.routes.borrow_mut().insert(request_id.to_string(), Some(route.clone()));
        Ok(())
    }

    /// Records in request `request_id`'s route that member `i` made `machines`.
    fn own(&mut self, request_id: &str, i: usize, machines: &[Machine]) -> Result<(), ProviderError> {
        if machines.iter().all(|m| self.owners.get(&m.machine_id) == Some(&i)) {
            return Ok(());
        }
        let mut route = self.route(request_id)?.unwrap_or_default();
        if route.add(&self.members[i].info.name, machines) {
            self.save_route(request_id, &route)?;
        }
        for m in machines {
            self.owners.insert(m.machine_id.clone(), i);
        }
        Ok(())
    }

    /// Reads, for every host of `hosts` (machine id, name) not attributed yet in this call,
    /// the provision requests holding it and their routes, in a few store reads however
    /// many hosts: one query for the holders, and one scan of the routes when many
    /// requests are involved.
    fn prefetch<'h>(&mut self, hosts: impl Iterator<Item = (Option<&'h str>, &'h str)>) -> Result<(), ProviderError> {
        let mut names: Vec<String> = Vec::new();
        let mut seen: std::collections::HashSet<&str> = std::collections::HashSet::new();
        for (id, name) in hosts {
            let known = id.is_some_and(|id| self.owners.contains_key(id)) || self.holders.contains_key(name);
            if !known && seen.insert(name) {
                names.push(name.to_string());
            }
        }
        if names.is_empty() {
            return Ok(());
        }
        let mut found = self.store.provision_holders_of(&names).map_err(Self::store_err)?;
        let mut requests: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();
        for name in names {
            let holders = found.remove(&name).unwrap_or_default();
            for (request_id, _) in &holders {
                if !self.routes.borrow().contains_key(request_id) {
                    requests.insert(request_id.clone());
                }
            }
            self.holders.insert(name, holders);
        }
        if requests.len() > ROUTE_SCAN_AT {
            let mut all: HashMap<String, Route> = HashMap::new();
            for (key, v) in self.store.kv_scan(&self.namespace(), REQ).map_err(Self::store_err)? {
                let id = key.trim_start_matches(REQ).to_string();
                let route =
                    serde_json::from_str(&v).map_err(|e| ProviderError::Internal(format!("routing record of {id} is corrupt: {e}")))?;
                all.insert(id, route);
            }
            let mut routes = self.routes.borrow_mut();
            for id in requests {
                let route = all.remove(&id);
                routes.insert(id, route);
            }
        }
        Ok(())
    }

    /// The member that made machine `machine_id` (or the host HostFactory names `name`):
    /// learnt in this call, or found in the route of the provision request holding it.
    fn owner(&mut self, machine_id: Option<&str>, name: &str) -> Result<Option<usize>, ProviderError> {
        if let Some(&i) = machine_id.and_then(|id| self.owners.get(id)) {
            return Ok(Some(i));
        }
        let holders = match self.holders.get(name) {
            Some(h) => h.clone(),
            None => self.store.provision_holders(name).map_err(Self::store_err)?,
        };
        for (request_id, m) in holders {
            let id = machine_id.unwrap_or(&m.machine_id).to_string();
            if let Some(&i) = self.owners.get(&id) {
                return Ok(Some(i));
            }
            let maker = self.route(&request_id)?.and_then(|r| r.maker(&id).map(str::to_string));
            if let Some(i) = maker.and_then(|p| self.index(&p)) {
                self.owners.insert(id, i);
                return Ok(Some(i));
            }
        }
        Ok(None)
    }

    /// Deletes the routes of requests the store no longer has (pruned after retention), so
    /// the routing records shrink with the store.
    fn prune_routes(&self) -> Result<usize, ProviderError> {
        let ns = self.namespace();
        let mut gone = 0;
        for (key, _) in self.store.kv_scan(&ns, REQ).map_err(Self::store_err)? {
            let id = key.trim_start_matches(REQ);
            if self.store.request(id).map_err(Self::store_err)?.is_none() {
                self.store.kv_delete(&ns, &key).map_err(Self::store_err)?;
                self.routes.borrow_mut().remove(id);
                gone += 1;
            }
        }
        Ok(gone)
    }

    /// `refs` grouped by the member that made them; the ones no record attributes are
    /// returned apart.
    #[allow(clippy::type_complexity)]
    fn group_refs(&mut self, refs: &[MachineRef]) -> Result<(Vec<(usize, Vec<MachineRef>)>, Vec<MachineRef>), ProviderError> {
        let mut groups: Vec<(usize, Vec<MachineRef>)> = Vec::new();
        let mut unknown = Vec::new();
        self.prefetch(refs.iter().map(|r| (r.machine_id.as_deref(), r.name.as_str())))?;
        for r in refs {
            match self.owner(r.machine_id.as_deref(), &r.name)? {
                Some(i) => match groups.iter_mut().find(|(g, _)| *g == i) {
                    Some((_, v)) => v.push(r.clone()),
                    None => groups.push((i, vec![r.clone()])),
                },
                None => unknown.push(r.clone()),
            }
        }
        Ok((groups, unknown))
    }

    fn placement_policy(&mut self) -> Result<&mut Box<dyn PlacementPolicy + 'a>, PolicyError> {
        if self.policy.is_none() {
            let loaded = match self.placement.take() {
                Some((loader, _)) => loader(),
                None => Err(PolicyError {
                    policy: "placement".into(),
                    message: "no placement policy configured".into(),
                }),
            };
            self.policy = Some(loaded);
        }
        match self.policy.as_mut() {
            Some(Ok(p)) => Ok(p),
            Some(Err(e)) => Err(e.clone()),
            None => Err(PolicyError {
                policy: "placement".into(),
                message: "placement policy missing after load".into(),
            }),
        }
    }

    /// The providers to try for `req`, in order, and why any offering the template was
    /// left out.
    fn place(&mut self, ctx: &CallContext, req: &ProvisionRequest) -> Result<Vec<usize>, ProviderError> {
        let mut candidates: Vec<Candidate> = Vec::new();
        let mut failures: Vec<String> = Vec::new();
        for i in self.by_priority() {
            let name = self.members[i].info.name.clone();
            let circuit = match self.breaker(i) {
                Some(b) => b.circuit(ctx.now).map_err(Self::store_err)?,
                None => Circuit::Closed,
            };
            if circuit == Circuit::Open {
                tracing::info!(request_id = %req.request_id, provider = %name, "provider skipped: its circuit is open (provider.circuit_breaker)");
                failures.push(format!("provider '{name}': circuit open (provider.circuit_breaker)"));
                continue;
            }
            match self.member_templates(i, ctx, circuit) {
                Ok(ts) => {
                    if let Some(t) = ts.into_iter().find(|t| t.id == req.template_id) {
                        let info = &self.members[i].info;
                        candidates.push(Candidate {
                            name: info.name.clone(),
                            kind: info.kind.clone(),
                            priority: info.priority,
                            weight: info.weight,
                            cost_threshold: info.cost_threshold,
                            circuit,
                            template: t,
                        });
                    }
                }
                Err(e) => {
                    // Unreachable before it could even be asked: a failure of this request.
                    tracing::warn!(request_id = %req.request_id, provider = %name, error = %e, "provider failed; trying the next one");
                    failures.push(e.to_string());
                }
            }
        }
        if candidates.is_empty() {
            return Err(if failures.is_empty() {
                ProviderError::InvalidTemplate(format!("no provider offers template '{}'", req.template_id))
            } else {
                ProviderError::Unavailable(format!(
                    "no provider that answered offers template '{}' ({})",
                    req.template_id,
                    joined(&failures)
                ))
            });
        }
        let placement = Placement {
            request_id: req.request_id.clone(),
            template_id: req.template_id.clone(),
            count: req.count,
            draw: placement::draw(&req.request_id),
        };
        let on_error = self.on_error;
        let order = if self.placement.is_none() && self.policy.is_none() {
            placement::by_priority(&candidates)
        } else {
            let policy: Result<&mut dyn PlacementPolicy, PolicyError> = match self.placement_policy() {
                Ok(p) => Ok(p.as_mut()),
                Err(e) => Err(e),
            };
            placement::choose(policy, on_error, ctx, &placement, &candidates).map_err(ProviderError::Policy)?
        };
        tracing::info!(request_id = %req.request_id, template_id = %req.template_id, order = %order.join(","), "placement");
        if let Some(loader) = self.shadow.take() {
            let mut loaded = loader();
            let candidate: Result<&mut dyn PlacementPolicy, PolicyError> = match &mut loaded {
                Ok(p) => Ok(p.as_mut()),
                Err(e) => Err(e.clone()),
            };
            placement::shadow(candidate, self.store.as_ref(), ctx, &placement, &candidates, &order);
        }
        if let Some((keep, policy, settings)) = &self.recording {
            let decision = placement::Decision {
                at: ctx.now,
                policy: policy.clone(),
                settings: settings.clone(),
                request: placement,
                candidates,
                live: order.clone(),
            };
            placement::record(self.store.as_ref(), &self.instance, *keep, &decision);
        }
        Ok(order.iter().filter_map(|n| self.index(n)).collect())
    }

    /// Asks member `i` for `count` units of `req`, through its breaker.
    fn leg(&mut self, i: usize, ctx: &CallContext, req: &ProvisionRequest, count: u32) -> Result<ProvisionProgress, ProviderError> {
        let name = self.members[i].info.name.clone();
        let store = self.store.clone();
        let breaker = self
            .breaker
            .map(|policy| Breaker::new(store.as_ref(), &self.instance, &name, policy));
        let trial = match &breaker {
            None => false,
            Some(b) => match b.admit(ctx.now).map_err(Self::store_err)? {
                Admission::Closed => false,
                Admission::Trial => {
                    tracing::info!(provider = %name, "circuit half open: this request is the trial");
                    true
                }
                Admission::Open { failures, retry_at, .. } => {
                    return Err(ProviderError::Unavailable(format!(
                        "provider '{name}': circuit open after {failures} consecutive failures, skipped until {retry_at} (provider.circuit_breaker)"
                    )));
                }
            },
        };
        let sub = ProvisionRequest { count, ..req.clone() };
        let result = self.on(i, ctx, |p, c| p.request_machines(c, &sub));
        if let Some(b) = breaker {
            let recorded = match &result {
                Err(e) if breaker::counts_as_failure(e) => b.record_failure(ctx.now, trial, &e.to_string()).map(drop),
                _ => b.record_success(),
            };
            recorded.map_err(Self::store_err)?;
        }
        result
    }
}

/// Prefixes `e` with the provider's name, so a message says which of several failed.
fn name_error(name: &str, e: ProviderError) -> ProviderError {
    let tag = |m: String| format!("provider '{name}': {m}");
    match e {
        ProviderError::InvalidTemplate(m) => ProviderError::InvalidTemplate(tag(m)),
        ProviderError::InvalidInput(m) => ProviderError::InvalidInput(tag(m)),
        ProviderError::Capacity(m) => ProviderError::Capacity(tag(m)),
        ProviderError::Unavailable(m) => ProviderError::Unavailable(tag(m)),
        ProviderError::Denied(m) => ProviderError::Denied(tag(m)),
        ProviderError::Internal(m) => ProviderError::Internal(tag(m)),
        other => other,
    }
}

/// Units a progress answer stands for.
fn units(p: &ProvisionProgress) -> u32 {
    p.units.unwrap_or_else(|| u32::try_from(p.machines.len()).unwrap_or(u32::MAX))
}

/// Several legs' answers as one.
fn combine(parts: Vec<(String, ProvisionProgress)>, failures: &[String]) -> ProvisionProgress {
    let weighted = parts.iter().any(|(_, p)| p.units.is_some());
    let mut out = ProvisionProgress {
        machines: Vec::new(),
        outstanding: 0,
        message: None,
        units: None,
    };
    let mut notes: Vec<String> = Vec::new();
    let mut total_units = 0u32;
    let several = parts.len() > 1 || !failures.is_empty();
    for (name, p) in parts {
        total_units = total_units.saturating_add(units(&p));
        out.outstanding = out.outstanding.saturating_add(p.outstanding);
        if several {
            notes.push(format!("{} host(s) from {name}", p.machines.len()));
        }
        if let Some(m) = p.message {
            notes.push(if several { format!("{name}: {m}") } else { m });
        }
        out.machines.extend(p.machines);
    }
    notes.extend(failures.iter().cloned());
    if weighted {
        out.units = Some(total_units);
    }
    if !notes.is_empty() {
        out.message = Some(notes.join("; "));
    }
    out
}

impl<'a> Provider for Router<'a> {
    /// Every provider's templates, by priority; a template several offer appears once, as
    /// the first offers it, with `maxNumber` and `availableNumber` summed (-1 / unknown when
    /// any is). Providers that fail or whose circuit is open are left out (logged); all
    /// failing is an error.
    fn templates(&mut self, ctx: &CallContext) -> Result<Vec<Template>, ProviderError> {
        let mut merged: Vec<Template> = Vec::new();
        let mut failures: Vec<ProviderError> = Vec::new();
        for i in self.by_priority() {
            let circuit = match self.breaker(i) {
                Some(b) => b.circuit(ctx.now).map_err(Self::store_err)?,
                None => Circuit::Closed,
            };
            if circuit == Circuit::Open {
                tracing::info!(provider = %self.members[i].info.name, "provider's templates left out of the offer: its circuit is open");
                continue;
            }
            match self.member_templates(i, ctx, circuit) {
                Ok(ts) => {
                    for t in ts {
                        match merged.iter_mut().find(|m| m.id == t.id) {
                            None => merged.push(t),
                            Some(m) => {
                                m.max_number = if m.max_number < 0 || t.max_number < 0 {
                                    -1
                                } else {
                                    m.max_number.saturating_add(t.max_number)
                                };
                                m.available_number = match (m.available_number, t.available_number) {
                                    (Some(a), Some(b)) => Some(a.saturating_add(b)),
                                    _ => None,
                                };
                            }
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(provider = %self.members[i].info.name, error = %e, "provider's templates left out of the offer");
                    failures.push(e);
                }
            }
        }
        if merged.is_empty()
            && let Some(first) = failures.into_iter().next()
        {
            return Err(first);
        }
        Ok(merged)
    }

    /// Places the request (see [`Router::place`]) and goes down the order: each provider is
    /// asked for what is still missing, after its leg is recorded. A request recorded
    /// before (a crashed call being resumed) is re-driven on the legs it had.
    fn request_machines(&mut self, ctx: &CallContext, req: &ProvisionRequest) -> Result<ProvisionProgress, ProviderError> {
        if let Some(route) = self.route(&req.request_id)? {
            let mut parts = Vec::new();
            let mut failures = Vec::new();
            for leg in route.legs.iter().filter(|l| l.count > 0) {
                let Some(i) = self.index(&leg.provider) else {
                    failures.push(format!("provider '{}' is no longer configured", leg.provider));
                    continue;
                };
                match self.on(i, ctx, |p, c| {
                    p.request_machines(
                        c,
                        &ProvisionRequest {
                            count: leg.count,
                            ..req.clone()
                        },
                    )
                }) {
                    Ok(p) => {
                        self.own(&req.request_id, i, &p.machines)?;
                        parts.push((leg.provider.clone(), p));
                    }
                    Err(e) => failures.push(e.to_string()),
                }
            }
            if parts.is_empty() && !failures.is_empty() {
                return Err(ProviderError::Unavailable(joined(&failures)));
            }
            return Ok(combine(parts, &failures));
        }
        let order = self.place(ctx, req)?;
        let mut route = Route::default();
        let mut parts: Vec<(String, ProvisionProgress)> = Vec::new();
        let mut failures: Vec<String> = Vec::new();
        let mut capacity = false;
        let mut remaining = req.count;
        for i in order {
            if remaining == 0 {
                break;
            }
            let name = self.members[i].info.name.clone();
            // Each provider is asked for no more than its own template allows or has free;
            // the rest is topped up from the next.
            // (Read by `place` already: this is the call's remembered answer.)
            let cap = self
                .member_templates(i, ctx, Circuit::Closed)
                .ok()
                .and_then(|ts| ts.into_iter().find(|t| t.id == req.template_id))
                .map_or(u32::MAX, |t| match (t.available_number, u32::try_from(t.max_number)) {
                    (Some(free), _) => free,
                    (None, Ok(max)) => max,
                    (None, Err(_)) => u32::MAX,
                });
            let asked = remaining.min(cap);
            if asked == 0 {
                capacity = true;
                failures.push(format!("provider '{name}': template '{}' has no hosts free", req.template_id));
                continue;
            }
            // Write-ahead: a crash during the call leaves a record that says where to look.
            route.legs.push(Leg {
                provider: name.clone(),
                count: asked,
                machines: Vec::new(),
            });
            self.save_route(&req.request_id, &route)?;
            match self.leg(i, ctx, req, asked) {
                Ok(p) => {
                    route.add(&name, &p.machines);
                    for m in &p.machines {
                        self.owners.insert(m.machine_id.clone(), i);
                    }
                    let covered = units(&p).saturating_add(p.outstanding).min(asked);
                    if covered < remaining {
                        tracing::warn!(request_id = %req.request_id, provider = %name, asked, covered, missing = remaining - covered, "partial answer; topping up from the next provider");
                    }
                    if let Some(last) = route.legs.last_mut() {
                        last.count = covered;
                    }
                    remaining -= covered;
                    parts.push((name, p));
                }
                Err(e) => {
                    tracing::warn!(request_id = %req.request_id, provider = %name, error = %e, "provider failed; trying the next one");
                    capacity |= matches!(e, ProviderError::Capacity(_));
                    if let Some(last) = route.legs.last_mut() {
                        last.count = 0;
                    }
                    failures.push(e.to_string());
                }
            }
            self.save_route(&req.request_id, &route)?;
        }
        if parts.is_empty() {
            let message = if failures.is_empty() {
                format!("the placement policy chose no provider for template '{}'", req.template_id)
            } else {
                format!("every provider failed: {}", joined(&failures))
            };
            return Err(if capacity {
                ProviderError::Capacity(message)
            } else {
                ProviderError::Unavailable(message)
            });
        }
        Ok(combine(parts, &failures))
    }

    /// Each query split by provider (its legs, its machines), one batch per provider.
    fn requests_status(
        &mut self,
        ctx: &CallContext,
        queries: &[StatusQuery],
    ) -> Result<Vec<Result<ProvisionProgress, ProviderError>>, ProviderError> {
        // (query index, member) -> sub-query
        let mut batches: Vec<(usize, Vec<(usize, StatusQuery)>)> = Vec::new();
        let mut errors: Vec<Option<ProviderError>> = vec![None; queries.len()];
        for (qi, q) in queries.iter().enumerate() {
            let Some(route) = self.route(&q.request.request_id)? else {
                errors[qi] = Some(ProviderError::Internal(format!(
                    "request {} has no routing record: which provider made it is unknown",
                    q.request.request_id
                )));
                continue;
            };
            for leg in &route.legs {
                let Some(i) = self.index(&leg.provider) else {
                    continue;
                };
                let known: Vec<Machine> = q.known.iter().filter(|m| leg.machines.contains(&m.machine_id)).cloned().collect();
                if leg.count == 0 && known.is_empty() {
                    continue;
                }
                let sub = StatusQuery {
                    request: ProvisionRequest {
                        count: leg.count,
                        ..q.request.clone()
                    },
                    known,
                };
                match batches.iter_mut().find(|(m, _)| *m == i) {
                    Some((_, v)) => v.push((qi, sub)),
                    None => batches.push((i, vec![(qi, sub)])),
                }
            }
        }
        let mut parts: Vec<Vec<(String, ProvisionProgress)>> = vec![Vec::new(); queries.len()];
        let mut failures: Vec<Vec<String>> = vec![Vec::new(); queries.len()];
        let mut transient: Vec<Option<ProviderError>> = vec![None; queries.len()];
        for (i, batch) in batches {
            let name = self.members[i].info.name.clone();
            let subs: Vec<StatusQuery> = batch.iter().map(|(_, q)| q.clone()).collect();
            let asked = self.on(i, ctx, |p, c| p.requests_status(c, &subs));
            let answers = one_answer_each(&format!("provider '{name}'"), subs.len(), asked);
            for ((qi, sub), answer) in batch.into_iter().zip(answers) {
                match answer {
                    Ok(p) => {
                        self.own(&queries[qi].request.request_id, i, &p.machines)?;
                        parts[qi].push((name.clone(), p));
                    }
                    Err(e) => {
                        let e = name_error(&name, e);
                        failures[qi].push(e.to_string());
                        if matches!(e, ProviderError::Unavailable(_) | ProviderError::Aborted { .. }) {
                            transient[qi] = Some(e.clone());
                        }
                        // What that provider made is still reported, as last known.
                        parts[qi].push((
                            name.clone(),
                            ProvisionProgress {
                                machines: sub.known,
                                outstanding: 0,
                                message: None,
                                units: None,
                            },
                        ));
                    }
                }
            }
        }
        Ok((0..queries.len())
            .map(|qi| {
                if let Some(e) = errors[qi].take() {
                    return Err(e);
                }
                let answered = parts[qi].len() - failures[qi].len();
                if answered == 0
                    && let Some(e) = transient[qi].take()
                {
                    // Nobody answered: the service keeps the request running and retries.
                    return Err(e);
                }
                Ok(combine(std::mem::take(&mut parts[qi]), &failures[qi]))
            })
            .collect())
    }

    /// Each machine released by the provider that made it. Machines no routing record
    /// attributes are not sent to any provider (one of another region could be mistaken
    /// for gone); they come back `failed`, named.
    fn release_machines(&mut self, ctx: &CallContext, return_id: &str, machines: &[MachineRef]) -> Result<Vec<Machine>, ProviderError> {
        let (groups, unknown) = self.group_refs(machines)?;
        let mut out = Vec::new();
        let mut failures = Vec::new();
        for (i, refs) in groups {
            match self.on(i, ctx, |p, c| p.release_machines(c, return_id, &refs)) {
                Ok(ms) => out.extend(ms),
                Err(e) => failures.push(e),
            }
        }
        if out.is_empty()
            && let Some(e) = failures.into_iter().next()
        {
            return Err(e);
        }
        out.extend(unknown.into_iter().map(|r| unattributed(r, ctx.now)));
        Ok(out)
    }

    fn release_status(&mut self, ctx: &CallContext, return_id: &str, known: &[Machine]) -> Result<Vec<Machine>, ProviderError> {
        let mut groups: Vec<(usize, Vec<Machine>)> = Vec::new();
        let mut out = Vec::new();
        self.prefetch(known.iter().map(|m| (Some(m.machine_id.as_str()), m.name.as_str())))?;
        for m in known {
            match self.owner(Some(&m.machine_id), &m.name)? {
                Some(i) => match groups.iter_mut().find(|(g, _)| *g == i) {
                    Some((_, v)) => v.push(m.clone()),
                    None => groups.push((i, vec![m.clone()])),
                },
                None => out.push(m.clone()),
            }
        }
        let mut failures = Vec::new();
        for (i, ms) in groups {
            match self.on(i, ctx, |p, c| p.release_status(c, return_id, &ms)) {
                Ok(answer) => out.extend(answer),
                Err(e) => {
                    out.extend(ms);
                    failures.push(e);
                }
            }
        }
        if out.is_empty()
            && let Some(e) = failures.into_iter().next()
        {
            return Err(e);
        }
        Ok(out)
    }

    /// Every provider's machines; the ones of a provider that fails are left out (the
    /// sweep then finds fewer orphans, never more).
    fn owned_machines(&mut self, ctx: &CallContext) -> Result<Vec<OwnedMachine>, ProviderError> {
        // The orphan scan runs every `orphan_scan_secs`: the time to shed old routes too.
        match self.prune_routes() {
            Ok(0) => {}
            Ok(n) => tracing::info!(routes = n, "routing records of pruned requests deleted"),
            Err(e) => tracing::warn!(error = %e, "cannot prune routing records"),
        }
        let mut out = Vec::new();
        for i in self.by_priority() {
            match self.on(i, ctx, |p, c| p.owned_machines(c)) {
                Ok(list) => {
                    for o in &list {
                        self.owners.insert(o.machine.machine_id.clone(), i);
                    }
                    out.extend(list);
                }
                Err(e) => {
                    tracing::warn!(provider = %self.members[i].info.name, error = %e, "cannot list this provider's machines for the orphan scan")
                }
            }
        }
        Ok(out)
    }

    /// Each host asked about at the provider that made it; hosts no record attributes are
    /// never reclaimed (a host of another region could be mistaken for gone).
    fn reclaim_candidates(&mut self, ctx: &CallContext, machines: &[MachineRef]) -> Result<Vec<Reclaim>, ProviderError> {
        let (groups, unknown) = self.group_refs(machines)?;
        if !unknown.is_empty() {
            tracing::warn!(hosts = unknown.len(), first = %unknown[0].name, "hosts no provider is recorded for are not checked for reclaim");
        }
        let mut out = Vec::new();
        for (i, refs) in groups {
            match self.on(i, ctx, |p, c| p.reclaim_candidates(c, &refs)) {
                Ok(r) => out.extend(r),
                Err(e) => tracing::warn!(error = %e, "reclaim check failed for this provider; its hosts are asked again next call"),
            }
        }
        Ok(out)
    }
}

/// A machine to return that no provider is recorded for.
fn unattributed(r: MachineRef, now: u64) -> Machine {
    Machine {
        machine_id: r.machine_id.clone().unwrap_or_else(|| r.name.clone()),
        message: Some(format!(
            "no provider is recorded as having made host '{}', so none was asked to release it",
            r.name
        )),
        name: r.name,
        private_ip: String::new(),
        public_ip: None,
        launch_time: now,
        state: MachineState::Failed,
    }
}

#[cfg(test)]
mod tests {
    //! The router against two scripted member providers and a real SQLite store: what it
    //! asks each member for, and that every later call on a machine reaches the member that
    //! made it, in this call and in the next process (routes are in the store).

    use std::cell::RefCell;
    use std::rc::Rc;
    use std::sync::Arc;

    use super::*;
    use crate::store::SqliteStore;

    /// What one scripted member did: counts asked for, host names released, machine ids
    /// asked about.
    #[derive(Default)]
    struct Log {
        asked: Vec<u32>,
        released: Vec<String>,
        status_of: Vec<String>,
    }

    /// A member offering template `t` with `free` hosts; its machines are `<name>-<n>`.
    struct Member {
        name: &'static str,
        free: u32,
        log: Rc<RefCell<Log>>,
    }

    fn machine(id: &str, state: MachineState) -> Machine {
        Machine {
            machine_id: id.into(),
            name: format!("{id}.example"),
            private_ip: "10.0.0.1".into(),
            public_ip: None,
            launch_time: 1,
            state,
            message: None,
        }
    }

    impl Provider for Member {
        fn templates(&mut self, _: &CallContext) -> Result<Vec<Template>, ProviderError> {
            Ok(vec![Template {
                id: "t".into(),
                max_number: 10,
                available_number: Some(self.free),
                attributes: vec![
                    Attribute {
                        name: "type".into(),
                        kind: AttributeKind::Text,
                        value: "X86_64".into(),
                    },
                    Attribute {
                        name: "ncpus".into(),
                        kind: AttributeKind::Numeric,
                        value: "2".into(),
                    },
                    Attribute {
                        name: "nram".into(),
                        kind: AttributeKind::Numeric,
                        value: "1024".into(),
                    },
                ],
                extra: serde_json::Map::new(),
            }])
        }
        fn request_machines(&mut self, _: &CallContext, req: &ProvisionRequest) -> Result<ProvisionProgress, ProviderError> {
            self.log.borrow_mut().asked.push(req.count);
            let n = req.count.min(self.free);
            Ok(ProvisionProgress {
                machines: (0..n)
                    .map(|i| machine(&format!("{}-{i}", self.name), MachineState::Running))
                    .collect(),
                outstanding: 0,
                message: None,
                units: None,
            })
        }
        fn requests_status(
            &mut self,
            _: &CallContext,
            queries: &[StatusQuery],
        ) -> Result<Vec<Result<ProvisionProgress, ProviderError>>, ProviderError> {
            let mut log = self.log.borrow_mut();
            Ok(queries
                .iter()
                .map(|q| {
                    log.status_of.extend(q.known.iter().map(|m| m.machine_id.clone()));
                    Ok(ProvisionProgress {
                        machines: q.known.clone(),
                        outstanding: 0,
                        message: None,
                        units: None,
                    })
                })
                .collect())
        }
        fn release_machines(&mut self, _: &CallContext, _: &str, machines: &[MachineRef]) -> Result<Vec<Machine>, ProviderError> {
            let mut log = self.log.borrow_mut();
            Ok(machines
                .iter()
                .map(|r| {
                    log.released.push(r.name.clone());
                    let id = r
                        .machine_id
                        .clone()
                        .unwrap_or_else(|| r.name.trim_end_matches(".example").to_string());
                    machine(&id, MachineState::Terminated)
                })
                .collect())
        }
        fn release_status(&mut self, _: &CallContext, _: &str, known: &[Machine]) -> Result<Vec<Machine>, ProviderError> {
            Ok(known.to_vec())
        }
        fn owned_machines(&mut self, _: &CallContext) -> Result<Vec<OwnedMachine>, ProviderError> {
            Ok(Vec::new())
        }
        fn reclaim_candidates(&mut self, _: &CallContext, _: &[MachineRef]) -> Result<Vec<Reclaim>, ProviderError> {
            Ok(Vec::new())
        }
    }

    fn info(name: &str, priority: u32) -> MemberInfo {
        MemberInfo {
            name: name.into(),
            kind: "scripted".into(),
            priority,
            weight: 1,
            cost_threshold: None,
            settings: serde_json::json!({}),
        }
    }

    /// A router over members `a` (priority 1, 2 hosts free) and `b` (priority 2, 5 free).
    fn router<'a>(store: &Arc<dyn StateStore>, a: &Rc<RefCell<Log>>, b: &Rc<RefCell<Log>>) -> Router<'a> {
        let member = |name: &'static str, free: u32, log: &Rc<RefCell<Log>>| -> ProviderLoader<'a> {
            let log = log.clone();
            Box::new(move || Ok(Box::new(Member { name, free, log }) as Box<dyn Provider>))
        };
        Router::new(
            store.clone(),
            "inst",
            vec![(info("a", 1), member("a", 2, a)), (info("b", 2), member("b", 5, b))],
        )
    }

    #[test]
    fn a_request_is_topped_up_across_members_and_each_machine_goes_back_to_its_maker() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store: Arc<dyn StateStore> = Arc::new(SqliteStore::open(&dir.path().join("s.db")).expect("store"));
        let (a, b) = (Rc::new(RefCell::new(Log::default())), Rc::new(RefCell::new(Log::default())));
        let ctx = CallContext {
            provider_instance: "inst".into(),
            settings: serde_json::json!({}),
            now: 100,
        };
        // One offer, capacities summed.
        let offer = router(&store, &a, &b).templates(&ctx).expect("templates");
        assert_eq!((offer.len(), offer[0].available_number), (1, Some(7)));
        // Three hosts: the preferred member gives what it has, the next tops up.
        let req = ProvisionRequest {
            request_id: "req-1".into(),
            template_id: "t".into(),
            count: 3,
            rc_account: None,
        };
        let made = router(&store, &a, &b).request_machines(&ctx, &req).expect("request");
        let mut ids: Vec<String> = made.machines.iter().map(|m| m.machine_id.clone()).collect();
        ids.sort();
        assert_eq!(ids, ["a-0", "a-1", "b-0"]);
        assert_eq!((a.borrow().asked.clone(), b.borrow().asked.clone()), (vec![2], vec![1]));
        // A later process (a new router) asks each member about its own machines only...
        let query = StatusQuery {
            request: req.clone(),
            known: made.machines.clone(),
        };
        let status = router(&store, &a, &b).requests_status(&ctx, &[query]).expect("status");
        assert_eq!(status.len(), 1);
        assert_eq!(a.borrow().status_of, ["a-0", "a-1"]);
        assert_eq!(b.borrow().status_of, ["b-0"]);
        // ...and returns each machine through its maker, even named only by host name.
        let refs: Vec<MachineRef> = made
            .machines
            .iter()
            .map(|m| MachineRef {
                name: m.name.clone(),
                machine_id: (m.machine_id != "b-0").then(|| m.machine_id.clone()),
            })
            .collect();
        store
            .insert_request(
                &crate::store::RequestRecord {
                    id: "req-1".into(),
                    kind: crate::store::RequestKind::Provision,
                    template_id: Some("t".into()),
                    count: 3,
                    rc_account: None,
                    phase: crate::store::Phase::Submitted,
                    status: crate::domain::lifecycle::RequestStatus::Complete,
                    outstanding: 0,
                    message: None,
                    created_at: 100,
                    updated_at: 100,
                    claimed: true,
                },
                &made.machines,
            )
            .expect("record the request as the service would");
        let released = router(&store, &a, &b).release_machines(&ctx, "ret-1", &refs).expect("release");
        assert_eq!(released.len(), 3);
        assert_eq!(a.borrow().released, ["a-0.example", "a-1.example"]);
        assert_eq!(b.borrow().released, ["b-0.example"]);
    }
}
