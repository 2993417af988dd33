//! Placing a request: the candidates that offer its template (past open circuits), the
//! placement policy's order (or priority), the shadow and the recorded decision, and asking
//! one provider for its leg; combining the legs' answers into one.

use super::*;

impl<'a> Router<'a> {
    pub(super) fn placement_policy(&mut self) -> Result<&mut Box<dyn PlacementPolicy + 'a>, PolicyError> {
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
    pub(super) fn place(&mut self, ctx: &CallContext, req: &ProvisionRequest) -> Result<Vec<usize>, ProviderError> {
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
    pub(super) fn leg(
        &mut self,
        i: usize,
        ctx: &CallContext,
        req: &ProvisionRequest,
        count: u32,
    ) -> Result<ProvisionProgress, ProviderError> {
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
pub(super) fn name_error(name: &str, e: ProviderError) -> ProviderError {
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
pub(super) fn units(p: &ProvisionProgress) -> u32 {
    p.units.unwrap_or_else(|| u32::try_from(p.machines.len()).unwrap_or(u32::MAX))
}

/// Several legs' answers as one.
pub(super) fn combine(parts: Vec<(String, ProvisionProgress)>, failures: &[String]) -> ProvisionProgress {
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
