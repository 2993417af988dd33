//! Crash repair: requests whose call died before HostFactory read the answer (so it never
//! learnt their id, and will never ask about them or return their machines) are found by
//! age and settled, so nothing the provider made for them leaks. Such a request is either
//! still `accepted` (the call died before or during the provider's work) or a provision
//! request HostFactory never asked about (the call died after its final write, before
//! printing the id): HostFactory polls every id it knows within seconds. Returns
//! HostFactory never polled (it never learnt their id, or the host started them itself) are
//! followed up here once `abandon_after_secs` old, until the provider has released every
//! machine.

use super::returns::HostReturn;
use super::{Service, ServiceError, merge_by_machine_id, provision_request};
use crate::domain::lifecycle;
use crate::domain::lifecycle::RequestStatus;
use crate::domain::model::*;
use crate::store::{Phase, RequestKind};

impl Service<'_> {
    /// Repairs what crashed processes left behind: a provision request HostFactory never
    /// learnt is abandoned and everything the provider made for it is released; a return
    /// recorded but never submitted is carried out, and one HostFactory never polled is followed up.
    /// Cheap when there is nothing to do (one indexed query). Returns how many it repaired.
    pub fn sweep(&mut self) -> Result<usize, ServiceError> {
        let before = self.ctx.now.saturating_sub(self.times.abandon_after_secs);
        let stale = self.store.stale_requests(before)?;
        let ctx = self.ctx.clone();
        let mut loaded = Vec::with_capacity(stale.len());
        let mut held = Vec::with_capacity(stale.len());
        for rec in stale.iter().cloned() {
            // A request a live call still works on is not abandoned, however old.
            let Some(claim) = super::claims::take(self.store, &ctx.provider_instance, &rec.id, ctx.now, self.times.claim_secs)? else {
                tracing::info!(request_id = %rec.id, "old but a live call holds it; the sweep leaves it");
                continue;
            };
            held.push(claim);
            let known = self.store.machines(&rec.id)?;
            loaded.push((rec, known));
        }
        let queries: Vec<StatusQuery> = loaded
            .iter()
            .filter(|(rec, _)| rec.kind == RequestKind::Provision)
            .map(|(rec, known)| StatusQuery {
                request: provision_request(rec),
                known: known.clone(),
            })
            .collect();
        let mut answers = self.ask_status(&queries);
        let loaded_count = loaded.len();
        for (mut rec, known) in loaded {
            match rec.kind {
                RequestKind::Provision => {
                    let found = answers
                        .remove(&rec.id)
                        .unwrap_or_else(|| Err(ProviderError::Internal(format!("no status answer for {}", rec.id))))?;
                    let live: Vec<Machine> = found
                        .machines
                        .iter()
                        .filter(|m| !matches!(m.state, MachineState::Terminated))
                        .cloned()
                        .collect();
                    let released = if live.is_empty() {
                        Vec::new()
                    } else {
                        self.host_return(HostReturn::Abandoned, &rec.id, &live)?
                    };
                    tracing::warn!(request_id = %rec.id, machines = live.len(), "abandoned request: its process died before answering HostFactory; released what it had made");
                    let machines = merge_by_machine_id(&found.machines, released);
                    rec.phase = Phase::Submitted;
                    rec.claimed = true;
                    rec.status = RequestStatus::CompleteWithError;
                    rec.outstanding = 0;
                    rec.message = Some(format!(
                        "abandoned: the call that made it died before HostFactory learnt its id; {} machine(s) released",
                        live.len()
                    ));
                    rec.updated_at = ctx.now;
                    self.store.update_request(&rec, &machines)?;
                }
                RequestKind::Return => {
                    let merged = match self.return_progress(&rec, &known) {
                        Ok(m) => m,
                        Err(e) => {
                            // One return's failure does not stop the others; the next sweep retries.
                            tracing::warn!(request_id = %rec.id, error = %e, "following up a return failed; will retry");
                            continue;
                        }
                    };
                    if rec.phase == Phase::Accepted {
                        tracing::warn!(request_id = %rec.id, machines = merged.len(), "return recorded but never submitted (crash); carried out now");
                    } else {
                        tracing::info!(request_id = %rec.id, machines = merged.len(), "return HostFactory never polled; followed up");
                    }
                    rec.phase = Phase::Submitted;
                    rec.status = lifecycle::return_status(&merged);
                    rec.updated_at = ctx.now;
                    self.store.update_request(&rec, &merged)?;
                    self.settle_holders(&rec.id, &merged);
                }
            }
        }
        let swept = loaded_count;
        for c in held {
            c.release();
        }
        let orphans = match self.scan_orphans() {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "orphan scan failed; will retry at the next interval");
                0
            }
        };
        self.prune();
        Ok(swept + orphans)
    }

    /// Releases live machines the provider made that no record accounts for: made for a
    /// request the store does not know, or not among the machines of their finished
    /// request, and older than `abandon_after_secs` (a call may still be recording them).
    /// Runs at most every `orphan_scan_secs`, and never judges a machine launched before
    /// this store first swept: after a store reset, the cluster's hosts are not orphans.
    fn scan_orphans(&mut self) -> Result<usize, ServiceError> {
        let interval = self.times.orphan_scan_secs;
        if interval == 0 {
            return Ok(0);
        }
        let now = self.ctx.now;
        let ns = crate::store::namespaces::sweep(&self.ctx.provider_instance);
        let read = |key: &str| -> Result<Option<u64>, ServiceError> { Ok(self.store.kv_get(&ns, key)?.and_then(|v| v.parse().ok())) };
        // Between scans, one read per call.
        if now.saturating_sub(read("orphan-scan-at")?.unwrap_or(0)) < interval {
            return Ok(0);
        }
        self.store.kv_set(&ns, "orphan-scan-at", &now.to_string())?;
        self.store.kv_insert_if_absent(&ns, "since", &now.to_string())?;
        let since = read("since")?.unwrap_or(now);
        let settled_before = now.saturating_sub(self.times.abandon_after_secs);
        if settled_before <= since {
            // No machine can be both newer than the store's history and settled yet.
            return Ok(0);
        }
        let ctx = self.ctx.clone();
        let ours = crate::store::store_id(self.store)?;
        let owned = self.provider()?.owned_machines(&ctx)?;
        let mut accounted: std::collections::HashMap<String, Option<Vec<Machine>>> = std::collections::HashMap::new();
        let mut orphans: Vec<OwnedMachine> = Vec::new();
        for o in owned {
            let m = &o.machine;
            // Only machines this store's installations made (untagged ones predate the tag).
            if o.store_id.as_deref() != Some(ours.as_str()) {
                continue;
            }
            if m.launch_time <= since || m.launch_time > settled_before || m.state == MachineState::Terminated {
                continue;
            }
            if !accounted.contains_key(&o.request_id) {
                // None = the request is open: its own lifecycle accounts for its machines.
                let recorded = match self.store.request(&o.request_id)? {
                    Some(rec) if !rec.status.is_final() => None,
                    Some(_) => Some(self.store.machines(&o.request_id)?),
                    None => Some(Vec::new()),
                };
                accounted.insert(o.request_id.clone(), recorded);
            }
            if let Some(Some(recorded)) = accounted.get(&o.request_id)
                && !recorded.iter().any(|r| r.machine_id == m.machine_id)
            {
                orphans.push(o);
            }
        }
        if orphans.is_empty() {
            return Ok(0);
        }
        for o in &orphans {
            tracing::warn!(
                request_id = %o.request_id,
                machine_id = %o.machine.machine_id,
                name = %o.machine.name,
                launched = o.machine.launch_time,
                "orphan: a live machine no record accounts for; releasing it"
            );
        }
        let machines: Vec<Machine> = orphans.iter().map(|o| o.machine.clone()).collect();
        let instance = ctx.provider_instance.clone();
        self.host_return(HostReturn::Orphans, &instance, &machines)?;
        Ok(orphans.len())
    }

    /// Deletes finished requests older than the retention, a bounded batch at most every
    /// `limits::PRUNE_EVERY`, so a store that grew for a year is trimmed over a few cycles
    /// without a slow call, and a store whose pruning reads every request (DynamoDB) does not
    /// do so on every 30-second poll.
    fn prune(&self) {
        const BATCH: usize = 500;
        let ns = crate::store::namespaces::sweep(&self.ctx.provider_instance);
        let last = self
            .store
            .kv_get(&ns, "prune-at")
            .ok()
            .flatten()
            .and_then(|v| v.parse::<u64>().ok());
        if last.is_some_and(|at| self.ctx.now.saturating_sub(at) < crate::limits::PRUNE_EVERY.as_secs()) {
            return;
        }
        if let Err(e) = self.store.kv_set(&ns, "prune-at", &self.ctx.now.to_string()) {
            tracing::warn!(error = %e, "cannot record the pruning time; will retry next call");
            return;
        }
        let before = self.ctx.now.saturating_sub(self.times.retention_secs);
        match self.store.prune_finished(before, BATCH) {
            Ok(0) => {}
            Ok(n) => tracing::info!(pruned = n, retention_secs = self.times.retention_secs, "pruned finished requests"),
            Err(e) => tracing::warn!(error = %e, "pruning finished requests failed; will retry next call"),
        }
    }
}
