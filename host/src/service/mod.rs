//! The five HostFactory use cases and the request lifecycle, as plain orchestration over
//! two ports: a [`Provider`] (a Wasm guest in production, a double in tests; this module
//! cannot tell) and a [`StateStore`]. Requests are recorded before the provider acts, and
//! HostFactory's statuses are derived here (see [`lifecycle`]).

pub mod breaker;
pub mod claims;
pub mod contract;
pub mod lease;
mod returns;
pub mod routing;
mod sweep;

use crate::domain::lifecycle::{self, MachineResult, RequestStatus};
use crate::domain::model::*;
use crate::domain::provider::{LazyProvider, one_answer_each};
pub use crate::domain::provider::{Provider, ProviderLoader};

use crate::policy::{OnError, PolicyLoader, TemplatePolicy};
use crate::store::{Phase, RequestKind, RequestRecord, StateStore, StoreError};

/// Why a use case failed.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The provider failed or refused.
    #[error(transparent)]
    Provider(#[from] ProviderError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The template id is not on offer.
    #[error("template '{id}' not found; available: {}", available.join(", "))]
    TemplateNotFound {
        /// Requested id.
        id: String,
        /// Ids on offer.
        available: Vec<String>,
    },
    /// More hosts than the template allows or has free.
    #[error("{message}")]
    TooMany {
        /// Names template, count and limit.
        message: String,
    },
    /// The provider answered something the contract forbids.
    #[error("provider answer rejected: {0}")]
    BadAnswer(String),
    /// The caller referred to something unknown.
    #[error("{0}")]
    Unknown(String),
    /// The site's policy failed and config says to fail closed.
    #[error(transparent)]
    Policy(#[from] PolicyError),
}

/// A machine with what HostFactory is told about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineReport {
    /// The machine.
    pub machine: Machine,
    /// Derived result.
    pub result: MachineResult,
    /// Message (never empty on `fail`).
    pub message: String,
    /// LSF `rc_account` echo.
    pub rc_account: Option<String>,
}

/// One request's status for getRequestStatus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestReport {
    /// Request id.
    pub request_id: String,
    /// Derived status.
    pub status: RequestStatus,
    /// Message.
    pub message: String,
    /// Machines.
    pub machines: Vec<MachineReport>,
}

/// The lifecycle's clocks the host enforces (timeouts and intervals; not a policy:
/// policies are the site's template and placement decisions in `policy`).
#[derive(Debug, Clone, Copy)]
pub struct LifecycleTimes {
    /// Machines pending longer than this fail, and a request open longer than this closes.
    pub pending_timeout_secs: u64,
    /// A request still only recorded (its process died before answering HostFactory) after
    /// this long is abandoned: whatever the provider made for it is released.
    pub abandon_after_secs: u64,
    /// Finished requests last changed longer ago than this are pruned from the store.
    pub retention_secs: u64,
    /// How often the sweep lists the provider's machines to find orphans; 0 = never.
    pub orphan_scan_secs: u64,
    /// The longest one call can live (its deadline): how long a call's claim on a request
    /// holds if its process dies ([`claims`]).
    pub claim_secs: u64,
}

/// One HostFactory call's worth of orchestration.
pub struct Service<'a> {
    store: &'a dyn StateStore,
    provider: LazyProvider<'a>,
    ctx: CallContext,
    times: LifecycleTimes,
    template_policy: Option<(PolicyLoader<'a>, OnError)>,
    shadow_policy: Option<PolicyLoader<'a>>,
    breaker: Option<(String, breaker::BreakerPolicy)>,
    /// Record template offers for replay: how many to keep.
    recording: Option<usize>,
}

/// A request as stored, with its machines.
type Stored = (RequestRecord, Vec<Machine>);

/// A status call's deferred writes: the provision requests' new states, stored together
/// (`flushed` of them already, when a return in the same call had to go first).
#[derive(Default)]
struct Writes {
    items: Vec<(RequestRecord, Vec<Machine>)>,
    flushed: usize,
}

impl Writes {
    /// Stores what is not stored yet, in one transaction.
    fn flush(&mut self, store: &dyn StateStore) -> Result<(), ServiceError> {
        store.update_requests(&self.items[self.flushed..])?;
        self.flushed = self.items.len();
        Ok(())
    }
}

/// One request's place in a status answer: its report, or the write its report is made
/// from once everything is stored.
enum Reported {
    Now(RequestReport),
    Written(usize),
}

fn new_id(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4())
}

impl<'a> Service<'a> {
    /// A service over `store`, loading the provider with `loader` when first needed.
    pub fn new(store: &'a dyn StateStore, loader: ProviderLoader<'a>, ctx: CallContext, times: LifecycleTimes) -> Self {
        Self {
            store,
            provider: LazyProvider::new(&ctx.provider_instance, loader),
            ctx,
            times,
            template_policy: None,
            shadow_policy: None,
            breaker: None,
            recording: None,
        }
    }

    /// Records the template policy's offers (when they change) for `hfwasm replay`,
    /// keeping the last `keep`.
    pub fn with_recording(mut self, keep: usize) -> Self {
        self.recording = Some(keep);
        self
    }

    /// Runs `loader`'s policy beside the live one on every getAvailableTemplates: what it
    /// would have offered is logged and stored, never acted on.
    pub fn with_shadow_policy(mut self, loader: PolicyLoader<'a>) -> Self {
        self.shadow_policy = Some(loader);
        self
    }

    /// Guards requestMachines with provider `name`'s circuit breaker (state in the store).
    pub fn with_breaker(mut self, name: &str, policy: breaker::BreakerPolicy) -> Self {
        self.breaker = Some((name.to_string(), policy));
        self
    }

    /// Lets `loader`'s policy decide what getAvailableTemplates offers; `on_error` says what
    /// its failure does to the call.
    pub fn with_template_policy(mut self, loader: PolicyLoader<'a>, on_error: OnError) -> Self {
        self.template_policy = Some((loader, on_error));
        self
    }

    fn provider(&mut self) -> Result<&mut (dyn Provider + 'a), ProviderError> {
        self.provider.get()
    }

    /// getAvailableTemplates: the provider's templates, checked against the contract, then
    /// ordered, chosen and mapped by the site's template policy when there is one.
    pub fn get_available_templates(&mut self) -> Result<Vec<Template>, ServiceError> {
        let templates = self.provider_templates()?;
        let keep = self.recording.filter(|_| self.template_policy.is_some());
        let provided = (self.shadow_policy.is_some() || keep.is_some()).then(|| templates.clone());
        let mut policy_name = String::new();
        let live = match self.template_policy.take() {
            None => templates,
            Some((loader, on_error)) => {
                let mut loaded = loader();
                let policy = match &mut loaded {
                    Ok(p) => {
                        policy_name = p.name().to_string();
                        Ok(p.as_mut() as &mut dyn TemplatePolicy)
                    }
                    Err(e) => {
                        policy_name = e.policy.clone();
                        Err(e.clone())
                    }
                };
                crate::policy::offer(policy, on_error, &self.ctx, templates)?
            }
        };
        if let (Some(keep), Some(provided)) = (keep, &provided) {
            let d = crate::policy::OfferDecision {
                at: self.ctx.now,
                policy: policy_name,
                templates: provided.clone(),
                live: live.clone(),
            };
            crate::policy::record_offer(self.store, &self.ctx.provider_instance, keep, &d);
        }
        if let (Some(loader), Some(provided)) = (self.shadow_policy.take(), provided) {
            crate::policy::shadow(loader(), self.store, &self.ctx, &provided, &live);
        }
        Ok(live)
    }

    /// The provider's templates, checked against the contract.
    fn provider_templates(&mut self) -> Result<Vec<Template>, ServiceError> {
        let ctx = self.ctx.clone();
        let templates = self.provider()?.templates(&ctx)?;
        contract::templates(&templates).map_err(ServiceError::BadAnswer)?;
        Ok(templates)
    }

    /// The reconciler's probes of circuits due a trial (`hfwasm serve`; see
    /// `Breaker::probe`): the provider's, or each of several providers'. Returns (provider,
    /// outcome) of each probed; a circuit closed or not yet due is not probed.
    pub fn probe_circuits(&mut self) -> Result<crate::domain::provider::Probed, ServiceError> {
        let ctx = self.ctx.clone();
        let Some((name, policy)) = self.breaker.clone() else {
            return Ok(self.provider()?.probe_circuits(&ctx)?);
        };
        let b = breaker::Breaker::new(self.store, &ctx.provider_instance, &name, policy);
        let probed = b.probe(ctx.now, || self.provider.get().and_then(|p| p.owned_machines(&ctx)))?;
        Ok(probed
            .map(|o| {
                vec![(
                    name,
                    match o {
                        breaker::ProbeOutcome::Closed => Ok(()),
                        breaker::ProbeOutcome::Reopened(e) => Err(e),
                    },
                )]
            })
            .unwrap_or_default())
    }

    /// requestMachines: validate, record (write-ahead), let the provider act, store its
    /// answer. Returns the request id and a message. With a circuit breaker, an open
    /// circuit refuses the request before the provider is touched, and the outcome (a
    /// provider that answered, or one that was unreachable or crashed) is recorded.
    pub fn request_machines(
        &mut self,
        template_id: &str,
        count: u32,
        rc_account: Option<String>,
    ) -> Result<(String, String), ServiceError> {
        let Some((name, policy)) = self.breaker.clone() else {
            return self.request_machines_unguarded(template_id, count, rc_account);
        };
        let now = self.ctx.now;
        let b = breaker::Breaker::new(self.store, &self.ctx.provider_instance, &name, policy);
        let trial = match b.admit(now)? {
            breaker::Admission::Closed => false,
            breaker::Admission::Trial => {
                tracing::info!(provider = %name, "circuit half open: this request is the trial");
                true
            }
            breaker::Admission::Open {
                failures,
                opened_at,
                retry_at,
            } => {
                return Err(ServiceError::Provider(ProviderError::Unavailable(format!(
                    "circuit open for provider '{name}': {failures} consecutive failures, open since {opened_at} (epoch s); requests are refused without calling it until {retry_at} ({} s from now), then one trial request goes through (provider.circuit_breaker)",
                    retry_at.saturating_sub(now)
                ))));
            }
        };
        let result = self.request_machines_unguarded(template_id, count, rc_account);
        match &result {
            Ok(_) => b.record_success()?,
            Err(ServiceError::Provider(e)) if breaker::counts_as_failure(e) => {
                b.record_failure(now, trial, &e.to_string())?;
            }
            // The provider answered (capacity, a bad template, too many hosts): it is up.
            Err(ServiceError::Provider(_) | ServiceError::TemplateNotFound { .. } | ServiceError::TooMany { .. }) => b.record_success()?,
            // Nothing learnt about the provider: let the next request be the trial.
            Err(_) if trial => b.release_trial()?,
            Err(_) => {}
        }
        result
    }

    fn request_machines_unguarded(
        &mut self,
        template_id: &str,
        count: u32,
        rc_account: Option<String>,
    ) -> Result<(String, String), ServiceError> {
        let templates = self.provider_templates()?;
        let template = templates
            .iter()
            .find(|t| t.id == template_id)
            .ok_or_else(|| ServiceError::TemplateNotFound {
                id: template_id.to_string(),
                available: templates.iter().map(|t| t.id.clone()).collect(),
            })?;
        if template.max_number >= 0 && i64::from(count) > i64::from(template.max_number) {
            return Err(ServiceError::TooMany {
                message: format!(
                    "machineCount {count} is more than template '{template_id}' allows (maxNumber {})",
                    template.max_number
                ),
            });
        }
        if let Some(free) = template.available_number
            && count > free
        {
            return Err(ServiceError::TooMany {
                message: format!("machineCount {count} is more than template '{template_id}' has free now (availableNumber {free})"),
            });
        }
        let now = self.ctx.now;
        let mut rec = RequestRecord {
            id: new_id("req"),
            kind: RequestKind::Provision,
            template_id: Some(template_id.to_string()),
            count,
            rc_account: rc_account.clone(),
            phase: Phase::Accepted,
            status: RequestStatus::Running,
            outstanding: count,
            message: None,
            created_at: now,
            updated_at: now,
            claimed: false,
        };
        crate::faults::point("request-machines:before-write-ahead");
        self.store.insert_request(&rec, &[])?;
        crate::faults::point("request-machines:after-write-ahead");
        // A new id: nobody else can hold it; the claim keeps the sweep off while we work.
        let claim = claims::take(self.store, &self.ctx.provider_instance, &rec.id, now, self.times.claim_secs)?;
        let req = ProvisionRequest {
            request_id: rec.id.clone(),
            template_id: template_id.to_string(),
            count,
            rc_account,
        };
        let ctx = self.ctx.clone();
        let outcome = self
            .provider()
            .and_then(|p| p.request_machines(&ctx, &req))
            .and_then(|p| contract::progress(count, &p).map(|()| p).map_err(ProviderError::Contract));
        crate::faults::point("request-machines:after-provider");
        match outcome {
            Ok(progress) => {
                rec.phase = Phase::Submitted;
                rec.outstanding = progress.outstanding;
                rec.status = lifecycle::provision_status(count, &progress.machines, progress.outstanding, progress.units);
                rec.message = progress.message.clone();
                self.store.update_request(&rec, &progress.machines)?;
                crate::faults::point("request-machines:after-final-write");
                let got = progress.machines.len();
                let message = progress
                    .message
                    .unwrap_or_else(|| format!("Request accepted: {got} of {count} hosts of template '{template_id}' started."));
                tracing::info!(request_id = %rec.id, template_id, count, started = got, "request recorded");
                if let Some(c) = claim {
                    c.release();
                }
                Ok((rec.id, message))
            }
            Err(e) => {
                // HostFactory gets the error. The record stays `accepted`: the provider may
                // have made something before failing, and the sweep releases whatever it
                // finds for this request once `abandon_after_secs` have passed.
                rec.outstanding = 0;
                rec.status = RequestStatus::CompleteWithError;
                rec.message = Some(e.to_string());
                self.store.update_request(&rec, &[])?;
                if let Some(c) = claim {
                    c.release();
                }
                Err(e.into())
            }
        }
    }

    /// requestReturnMachines by request id (alias): every machine of that provision request.
    pub fn machines_of_request(&self, request_id: &str) -> Result<Vec<MachineRef>, ServiceError> {
        match self.store.request(request_id)? {
            Some(r) if r.kind == RequestKind::Provision => Ok(refs_of(&self.store.machines(request_id)?)),
            Some(_) => Err(ServiceError::Unknown(format!(
                "'{request_id}' is a return request; give the provision request whose hosts to return"
            ))),
            None => Err(ServiceError::Unknown(format!("unknown request id '{request_id}'"))),
        }
    }

    /// getRequestStatus for each id, provision and return mixed. The provider is asked about
    /// every open provision request of the call in one batch (see [`Provider::requests_status`]).
    pub fn get_request_status(&mut self, ids: &[String]) -> Result<Vec<RequestReport>, ServiceError> {
        let mut seen = std::collections::HashSet::with_capacity(ids.len());
        let unique: Vec<String> = ids.iter().filter(|id| seen.insert(id.as_str())).cloned().collect();
        // Every request and its machines in one read (two round trips on PostgreSQL).
        let mut found = self.store.requests_with_machines(&unique)?;
        let mut loaded: Vec<(String, Option<Stored>)> = unique
            .into_iter()
            .map(|id| {
                let entry = found.remove(&id);
                (id, entry)
            })
            .collect();
        // The stored machines go to the provider in the queries and come back after: one
        // copy of them alive, not two (10,000 machines are megabytes).
        let mut asked: Vec<usize> = Vec::new();
        let mut queries: Vec<StatusQuery> = Vec::new();
        for (i, (_, entry)) in loaded.iter_mut().enumerate() {
            if let Some((rec, known)) = entry
                && needs_status_query(rec, known)
            {
                queries.push(StatusQuery {
                    request: provision_request(rec),
                    known: std::mem::take(known),
                });
                asked.push(i);
            }
        }
        let mut answers = self.ask_status(&queries);
        for (i, q) in asked.into_iter().zip(queries) {
            if let Some((_, known)) = &mut loaded[i].1 {
                *known = q.known;
            }
        }
        let mut slots: Vec<Reported> = Vec::with_capacity(loaded.len());
        let mut writes = Writes::default();
        for (id, entry) in loaded {
            let slot = match entry {
                None => Reported::Now(unknown_report(&id, &self.ctx.provider_instance)),
                Some((rec, known)) => {
                    let answer = answers.remove(&id);
                    self.status_of(rec, known, answer, &mut writes)?
                }
            };
            slots.push(slot);
        }
        // The provision requests' new states, in one transaction, before HostFactory hears
        // any of them (a kill before this loses only answers not given yet).
        writes.flush(self.store)?;
        // Their reports are made from what was written, after: one copy of 10,000 machines
        // alive while they are written, not two.
        let reports: Vec<RequestReport> = slots
            .into_iter()
            .map(|s| match s {
                Reported::Now(r) => r,
                Reported::Written(i) => {
                    let (rec, machines) = &mut writes.items[i];
                    report(rec, std::mem::take(machines))
                }
            })
            .collect();
        // HostFactory may repeat an id; every occurrence gets the same answer (by index, so
        // the call stays linear in the number of ids). Without repeats, the reports are the
        // answer as they are (no copy of 10,000 machines).
        if reports.len() == ids.len() {
            return Ok(reports);
        }
        let at: std::collections::HashMap<&str, usize> = reports.iter().enumerate().map(|(i, r)| (r.request_id.as_str(), i)).collect();
        Ok(ids
            .iter()
            .filter_map(|id| at.get(id.as_str()).map(|&i| reports[i].clone()))
            .collect())
    }

    /// One batched status call for `queries`, answers keyed by request id. A failure of the
    /// whole batch, or an answer of the wrong length, becomes every request's error.
    fn ask_status(&mut self, queries: &[StatusQuery]) -> std::collections::HashMap<String, Result<ProvisionProgress, ProviderError>> {
        if queries.is_empty() {
            return std::collections::HashMap::new();
        }
        let ctx = self.ctx.clone();
        let batch = self.provider().and_then(|p| p.requests_status(&ctx, queries));
        let answers = one_answer_each("the provider", queries.len(), batch);
        // An answer that breaks the contract fails its own request, not the others.
        queries
            .iter()
            .zip(answers)
            .map(|(q, a)| {
                let a = a.and_then(|p| contract::progress(q.request.count, &p).map(|()| p).map_err(ProviderError::Contract));
                (q.request.request_id.clone(), a)
            })
            .collect()
    }

    /// One request's report. `answer` is the provider's batched answer for an open
    /// provision request; without one, a never-submitted request is resumed here. The
    /// request's new state goes to `writes` (the caller stores them together) unless this
    /// call resumed it or it is a return, which are stored at once.
    fn status_of(
        &mut self,
        mut rec: RequestRecord,
        known: Vec<Machine>,
        answer: Option<Result<ProvisionProgress, ProviderError>>,
        writes: &mut Writes,
    ) -> Result<Reported, ServiceError> {
        let first_poll = !rec.claimed;
        rec.claimed = true;
        if rec.status.is_final() {
            if first_poll {
                // HostFactory knows this id after all: the sweep must leave it alone.
                writes.items.push((rec.clone(), Vec::new()));
            }
            return Ok(Reported::Now(report(&rec, known)));
        }
        let ctx = self.ctx.clone();
        let now = ctx.now;
        let age = now.saturating_sub(rec.created_at);
        let timed_out = age > self.times.pending_timeout_secs;
        let mut resume_claim = None;
        let (machines, outstanding, message, units) = match rec.kind {
            RequestKind::Provision => {
                let answer = match answer {
                    Some(a) => a,
                    None => {
                        // Recorded, not yet submitted: its call may still be running (it
                        // holds the claim), or it died (the claim is free or expired).
                        match claims::take(self.store, &ctx.provider_instance, &rec.id, now, self.times.claim_secs)? {
                            None => return Ok(Reported::Now(report(&rec, known))),
                            Some(c) => resume_claim = Some(c),
                        }
                        tracing::warn!(request_id = %rec.id, "request was recorded but never submitted (crash?); resuming");
                        let req = provision_request(&rec);
                        self.provider().and_then(|p| p.request_machines(&ctx, &req))
                    }
                };
                match answer {
                    Ok(p) => {
                        let mut machines = merge_by_machine_id(&known, p.machines);
                        let expired = self.fail_expired(&mut machines, now);
                        if !expired.is_empty()
                            && let Err(e) = self.host_return(returns::HostReturn::Timeout, &rec.id, &expired)
                        {
                            tracing::warn!(request_id = %rec.id, error = %e, "could not release machines that timed out");
                        }
                        let outstanding = if timed_out { 0 } else { p.outstanding };
                        (machines, outstanding, p.message.or(rec.message.clone()), p.units)
                    }
                    Err(e) => {
                        let (m, o, msg) = self.on_status_error(&rec, known, e, timed_out);
                        (m, o, msg, None)
                    }
                }
            }
            RequestKind::Return => {
                let answer = self.return_progress(&rec, &known);
                match answer {
                    Ok(ms) => (ms, 0, rec.message.clone(), None),
                    Err(ServiceError::Provider(e)) => {
                        let (m, o, msg) = self.on_status_error(&rec, known, e, timed_out);
                        (m, o, msg, None)
                    }
                    Err(e) => return Err(e),
                }
            }
        };
        rec.phase = Phase::Submitted;
        rec.outstanding = outstanding;
        rec.message = message;
        rec.status = match rec.kind {
            RequestKind::Provision => lifecycle::provision_status(rec.count, &machines, outstanding, units),
            RequestKind::Return => lifecycle::return_status(&machines),
        };
        if timed_out && !rec.status.is_final() && rec.kind == RequestKind::Return {
            // A return that never finishes: report what is known, flag the rest.
            tracing::warn!(request_id = %rec.id, age, "return request still running past the pending timeout");
        }
        rec.updated_at = now;
        if rec.kind == RequestKind::Provision && resume_claim.is_none() {
            writes.items.push((rec, machines));
            return Ok(Reported::Written(writes.items.len() - 1));
        }
        // What was deferred goes first: a return settles its hosts' provision requests,
        // which a deferred write written after it would undo.
        writes.flush(self.store)?;
        self.store.update_request(&rec, &machines)?;
        if rec.kind == RequestKind::Return {
            self.settle_holders(&rec.id, &machines);
        }
        if let Some(c) = resume_claim {
            c.release();
        }
        Ok(Reported::Now(report(&rec, machines)))
    }

    /// Machines pending for longer than the timeout become `failed` with a message.
    fn fail_expired(&self, machines: &mut [Machine], now: u64) -> Vec<Machine> {
        let limit = self.times.pending_timeout_secs;
        let mut expired = Vec::new();
        for m in machines.iter_mut() {
            if m.state == MachineState::Pending && now.saturating_sub(m.launch_time) > limit {
                m.state = MachineState::Failed;
                m.message = Some(format!("still pending after {limit} s (provider.pending_timeout_secs); released"));
                expired.push(m.clone());
            }
        }
        expired
    }

    /// A provider failure during a status call: transient ones keep the request running
    /// (HostFactory polls again) until the pending timeout, then it closes with the error.
    fn on_status_error(
        &self,
        rec: &RequestRecord,
        known: Vec<Machine>,
        e: ProviderError,
        timed_out: bool,
    ) -> (Vec<Machine>, u32, Option<String>) {
        tracing::warn!(request_id = %rec.id, error = %e, "provider failed during status");
        let transient = matches!(e, ProviderError::Unavailable(_) | ProviderError::Aborted { .. });
        if transient && !timed_out {
            // Keep it running: force at least one executing marker via `outstanding`.
            return (known, rec.outstanding.max(1), Some(format!("provider error, will retry: {e}")));
        }
        let machines = known
            .into_iter()
            .map(|mut m| {
                if matches!(m.state, MachineState::Pending | MachineState::Stopping) {
                    m.state = MachineState::Failed;
                    m.message = Some(format!("provider error: {e}"));
                }
                m
            })
            .collect();
        (machines, 0, Some(e.to_string()))
    }

    /// getReturnRequests: hosts HostFactory lists that the provider wants back; only names
    /// HostFactory listed are reported. Also runs the [`Service::sweep`], since HostFactory
    /// calls this every cycle.
    pub fn get_return_requests(&mut self, machines: &[MachineRef]) -> Result<Vec<Reclaim>, ServiceError> {
        if let Err(e) = self.sweep() {
            tracing::warn!(error = %e, "sweep of abandoned requests failed; will retry next call");
        }
        if machines.is_empty() {
            return Ok(Vec::new());
        }
        let ctx = self.ctx.clone();
        let reclaims = self.provider()?.reclaim_candidates(&ctx, machines)?;
        let mut out: Vec<Reclaim> = Vec::new();
        for r in reclaims {
            if machines.iter().any(|m| m.name == r.name) && !out.iter().any(|o| o.name == r.name) {
                out.push(r);
            } else {
                tracing::warn!(name = %r.name, "provider reclaimed a host HostFactory did not list; ignored");
            }
        }
        Ok(out)
    }
}

/// Whether `rec` is an open provision request the provider is asked about in the batch
/// (one recorded but never submitted, with nothing made yet, is resumed instead).
fn needs_status_query(rec: &RequestRecord, known: &[Machine]) -> bool {
    rec.kind == RequestKind::Provision && !rec.status.is_final() && !(rec.phase == Phase::Accepted && known.is_empty())
}

/// The answer for an id this provider instance never issued: final, so HostFactory stops asking.
fn unknown_report(id: &str, provider_instance: &str) -> RequestReport {
    RequestReport {
        request_id: id.to_string(),
        status: RequestStatus::CompleteWithError,
        message: format!("unknown request id '{id}': this provider instance ({provider_instance}) never issued it"),
        machines: Vec::new(),
    }
}

/// The provision request a stored record stands for, as the provider sees it.
fn provision_request(rec: &RequestRecord) -> ProvisionRequest {
    ProvisionRequest {
        request_id: rec.id.clone(),
        template_id: rec.template_id.clone().unwrap_or_default(),
        count: rec.count,
        rc_account: rec.rc_account.clone(),
    }
}

/// HostFactory-style references to `machines` (name and provider id).
fn refs_of(machines: &[Machine]) -> Vec<MachineRef> {
    machines
        .iter()
        .map(|m| MachineRef {
            name: m.name.clone(),
            machine_id: Some(m.machine_id.clone()),
        })
        .collect()
}

/// Known machines updated by the provider's answer (matched by machine id); machines the
/// answer left out keep their last state, new ones are appended.
fn merge_by_machine_id(known: &[Machine], answer: Vec<Machine>) -> Vec<Machine> {
    let mut out: Vec<Machine> = known.to_vec();
    for m in answer {
        match out.iter_mut().find(|k| k.machine_id == m.machine_id) {
            Some(k) => *k = m,
            None => out.push(m),
        }
    }
    out
}

/// Return rows updated by the provider's answer, matched by host name; names the caller
/// did not ask to return are dropped.
fn merge_by_name(known: &[Machine], answer: Vec<Machine>) -> Vec<Machine> {
    let mut out: Vec<Machine> = known.to_vec();
    for m in answer {
        if let Some(k) = out.iter_mut().find(|k| k.name == m.name) {
            let id = k.machine_id.clone();
            *k = m;
            if k.machine_id.is_empty() {
                k.machine_id = id;
            }
        }
    }
    out
}

fn report(rec: &RequestRecord, machines: Vec<Machine>) -> RequestReport {
    let results: Vec<MachineReport> = machines
        .into_iter()
        .map(|m| {
            let result = match rec.kind {
                RequestKind::Provision => lifecycle::provision_result(m.state),
                RequestKind::Return => lifecycle::return_result(m.state),
            };
            let message = lifecycle::machine_message(&m, result);
            MachineReport {
                machine: m,
                result,
                message,
                rc_account: rec.rc_account.clone(),
            }
        })
        .collect();
    let mut message = rec.message.clone().unwrap_or_default();
    if message.is_empty() && rec.status == RequestStatus::CompleteWithError {
        let good = results.iter().filter(|r| r.result == MachineResult::Succeed).count();
        message = format!("{good} of {} host(s) succeeded", rec.count);
    }
    RequestReport {
        request_id: rec.id.clone(),
        status: rec.status,
        message,
        machines: results,
    }
}

#[cfg(test)]
mod tests;
