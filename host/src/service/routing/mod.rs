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

mod placing;
mod routes;
#[cfg(test)]
mod tests;

use placing::*;
pub use routes::machine_makers;
use routes::*;

/// One provider of the list, as config describes it.
#[derive(Debug, Clone)]
pub struct Member {
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

struct Slot<'a> {
    info: Member,
    provider: LazyProvider<'a>,
    /// Its templates (or why it could not give them), once asked in this call.
    templates: Option<Result<Vec<Template>, ProviderError>>,
}

/// Several providers as one.
pub struct Router<'a> {
    store: std::sync::Arc<dyn StateStore>,
    instance: String,
    members: Vec<Slot<'a>>,
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

fn joined(failures: &[String]) -> String {
    failures.join("; ")
}

impl<'a> Router<'a> {
    /// A router over `members` (each loaded on first use) for provider instance `instance`.
    pub fn new(store: std::sync::Arc<dyn StateStore>, instance: &str, members: Vec<(Member, ProviderLoader<'a>)>) -> Self {
        Self {
            store,
            instance: instance.to_string(),
            members: members
                .into_iter()
                .map(|(info, loader)| Slot {
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

    /// Each member whose circuit is due a trial lists its machines as the trial (see
    /// `Breaker::probe`).
    fn probe_circuits(&mut self, ctx: &CallContext) -> Result<crate::domain::provider::Probed, ProviderError> {
        let Some(policy) = self.breaker else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for i in self.by_priority() {
            let name = self.members[i].info.name.clone();
            let store = self.store.clone();
            let b = Breaker::new(store.as_ref(), &self.instance, &name, policy);
            let probed = b
                .probe(ctx.now, || self.on(i, ctx, |p, c| p.owned_machines(c)))
                .map_err(Self::store_err)?;
            if let Some(o) = probed {
                out.push((
                    name,
                    match o {
                        breaker::ProbeOutcome::Closed => Ok(()),
                        breaker::ProbeOutcome::Reopened(e) => Err(e),
                    },
                ));
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
