//! Returns, whoever starts them. HostFactory's requestReturnMachines and the releases the
//! host starts itself (machines that timed out, requests a killed call abandoned, orphans)
//! go through one path: recorded before the provider acts, the provider's answer checked
//! and stored, and followed up until the provider says each machine is gone. A release the
//! host started is a return request like HostFactory's, only one HostFactory never polls:
//! the sweep polls it instead, so a power-off still running, or a call killed half-way
//! through, is checked again until it has really happened.

use super::{Service, ServiceError, claims, contract, merge_by_name, new_id, refs_of};
use crate::domain::lifecycle::{self, RequestStatus};
use crate::domain::model::*;
use crate::store::{Phase, RequestKind, RequestRecord};

/// Why the host itself releases machines; part of the return id it records, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum HostReturn {
    /// Machines pending past `pending_timeout_secs`.
    Timeout,
    /// What a request HostFactory never learnt (its call was killed) had made.
    Abandoned,
    /// Live machines no record accounts for.
    Orphans,
}

impl HostReturn {
    fn as_str(self) -> &'static str {
        match self {
            HostReturn::Timeout => "timeout",
            HostReturn::Abandoned => "abandoned",
            HostReturn::Orphans => "orphans",
        }
    }
}

/// A fresh return record for `count` machines at `now`.
fn return_record(id: String, count: usize, now: u64) -> RequestRecord {
    RequestRecord {
        id,
        kind: RequestKind::Return,
        template_id: None,
        count: u32::try_from(count).unwrap_or(u32::MAX),
        rc_account: None,
        phase: Phase::Accepted,
        status: RequestStatus::Running,
        outstanding: 0,
        message: None,
        created_at: now,
        updated_at: now,
        claimed: false,
    }
}

impl Service<'_> {
    /// requestReturnMachines: record the return (write-ahead), let the provider act.
    pub fn request_return_machines(&mut self, machines: Vec<MachineRef>) -> Result<(String, String), ServiceError> {
        let now = self.ctx.now;
        // Initial rows: what HostFactory named, enriched from our provision records.
        let mut initial: Vec<Machine> = Vec::new();
        let names: Vec<String> = machines.iter().map(|r| r.name.clone()).collect();
        let mut holders = self.store.provision_holders_of(&names)?;
        for r in &machines {
            if initial.iter().any(|m| m.name == r.name) {
                continue;
            }
            // HostFactory names the machine id it was given, but may send only the name:
            // then the request holding the host is the one whose machine is live (a name
            // outlives its machine). With several live (a return that freed the host has not
            // marked its machine yet; neither creation nor launch times order leases taken
            // within a second, or by a call that started earlier), the bare name is passed
            // on and the provider ends whichever lease the host is under now.
            let held = holders.remove(&r.name).and_then(|h| {
                let live: Vec<usize> = h
                    .iter()
                    .enumerate()
                    .filter(|(_, (_, m))| matches!(m.state, MachineState::Running | MachineState::Pending))
                    .map(|(i, _)| i)
                    .collect();
                match live.as_slice() {
                    [] => h.into_iter().next(),
                    [i] => h.into_iter().nth(*i),
                    _ => None,
                }
            });
            let held = held.map(|(_, m)| m);
            initial.push(Machine {
                machine_id: r
                    .machine_id
                    .clone()
                    .or_else(|| held.as_ref().map(|m| m.machine_id.clone()))
                    .unwrap_or_else(|| r.name.clone()),
                name: r.name.clone(),
                private_ip: held.as_ref().map(|m| m.private_ip.clone()).unwrap_or_default(),
                public_ip: held.as_ref().and_then(|m| m.public_ip.clone()),
                launch_time: held.as_ref().map_or(now, |m| m.launch_time),
                state: MachineState::Stopping,
                message: None,
            });
        }
        let mut rec = return_record(new_id("ret"), initial.len(), now);
        if initial.is_empty() {
            rec.phase = Phase::Submitted;
            rec.status = RequestStatus::Complete;
            rec.message = Some("No hosts to return.".into());
            self.store.insert_request(&rec, &[])?;
            return Ok((rec.id, "No hosts to return.".into()));
        }
        let (rec, merged) = self.record_and_release(rec, initial, "request-return-machines")?;
        tracing::info!(request_id = %rec.id, hosts = merged.len(), "return recorded");
        Ok((rec.id, format!("Return accepted for {} host(s).", merged.len())))
    }

    /// Releases `machines` of `subject` (a request id, or the provider instance for orphans) under
    /// a return the host records itself, so the sweep follows it up until every machine is
    /// gone. Returns the machines as the provider answered (stopping or terminated).
    pub(super) fn host_return(&mut self, why: HostReturn, subject: &str, machines: &[Machine]) -> Result<Vec<Machine>, ServiceError> {
        let now = self.ctx.now;
        let short = uuid::Uuid::new_v4().simple().to_string();
        let id = format!("{subject}-{}-{}", why.as_str(), &short[..8]);
        let initial: Vec<Machine> = machines
            .iter()
            .map(|m| Machine {
                state: MachineState::Stopping,
                message: None,
                ..m.clone()
            })
            .collect();
        let rec = return_record(id, initial.len(), now);
        let (rec, merged) = self.record_and_release(rec, initial, "host-return")?;
        tracing::info!(request_id = %rec.id, hosts = merged.len(), reason = why.as_str(), status = rec.status.as_str(), "release started by the host");
        Ok(merged)
    }

    /// The one release path: write-ahead record, claim, provider, contract check, final
    /// write. `faults` names the crash points (`<faults>:after-write-ahead`, ...).
    fn record_and_release(
        &mut self,
        mut rec: RequestRecord,
        initial: Vec<Machine>,
        faults: &str,
    ) -> Result<(RequestRecord, Vec<Machine>), ServiceError> {
        let now = self.ctx.now;
        crate::faults::point(&format!("{faults}:before-write-ahead"));
        self.store.insert_request(&rec, &initial)?;
        crate::faults::point(&format!("{faults}:after-write-ahead"));
        let claim = claims::take(self.store, &self.ctx.provider_instance, &rec.id, now, self.times.claim_secs)?;
        let refs = refs_of(&initial);
        let ctx = self.ctx.clone();
        let answer = self
            .provider()
            .and_then(|p| p.release_machines(&ctx, &rec.id, &refs))
            .and_then(|a| {
                contract::released(&initial, &a).map_err(ProviderError::Contract)?;
                Ok(a)
            });
        crate::faults::point(&format!("{faults}:after-provider"));
        let answer = match answer {
            Ok(a) => a,
            Err(e) => {
                // Still `accepted`: the next status call or the sweep carries it out.
                rec.message = Some(e.to_string());
                rec.updated_at = now;
                self.store.update_request(&rec, &initial)?;
                if let Some(c) = claim {
                    c.release();
                }
                return Err(e.into());
            }
        };
        let merged = merge_by_name(&initial, answer);
        rec.phase = Phase::Submitted;
        rec.status = lifecycle::return_status(&merged);
        self.store.update_request(&rec, &merged)?;
        self.settle_holders(&rec.id, &merged);
        if let Some(c) = claim {
            c.release();
        }
        crate::faults::point(&format!("{faults}:after-final-write"));
        Ok((rec, merged))
    }

    /// Asks the provider how return `rec` is going (starting it if it was only recorded),
    /// checks the answer and merges it into `known`. A release the host started itself
    /// and never recorded as started (its call was killed) leaves out the machines whose
    /// request has since reported them live to HostFactory: the cause (a pending timeout)
    /// did not take effect, and HostFactory holds them now.
    pub(super) fn return_progress(&mut self, rec: &RequestRecord, known: &[Machine]) -> Result<Vec<Machine>, ServiceError> {
        let ctx = self.ctx.clone();
        let (kept, release): (Vec<Machine>, Vec<Machine>) = if rec.phase == Phase::Accepted && is_host_made(&rec.id) {
            let mut kept = Vec::new();
            let mut release = Vec::new();
            for m in known {
                match self.live_holder(m)? {
                    Some(holder) => kept.push(Machine {
                        state: MachineState::Failed,
                        message: Some(format!("not released: request {holder} reported it live to HostFactory since")),
                        ..m.clone()
                    }),
                    None => release.push(m.clone()),
                }
            }
            (kept, release)
        } else {
            (Vec::new(), known.to_vec())
        };
        let answer = if release.is_empty() {
            Vec::new()
        } else {
            self.provider().and_then(|p| {
                if rec.phase == Phase::Accepted {
                    p.release_machines(&ctx, &rec.id, &refs_of(&release))
                } else {
                    p.release_status(&ctx, &rec.id, &release)
                }
            })?
        };
        contract::released(&release, &answer).map_err(ProviderError::Contract)?;
        let mut merged = merge_by_name(&release, answer);
        merged.extend(kept);
        Ok(merged)
    }

    /// Marks the machines return `return_id` released (`terminated`) so in the provision
    /// requests that held them: the store then says which lease of a host is live, since a
    /// host's name is leased again, often within the same second. Best effort: a failure is
    /// logged, and the rows say `running` as before.
    pub(super) fn settle_holders(&self, return_id: &str, machines: &[Machine]) {
        let done: Vec<&Machine> = machines.iter().filter(|m| m.state == MachineState::Terminated).collect();
        if done.is_empty() {
            return;
        }
        let result = (|| -> Result<(), crate::store::StoreError> {
            let names: Vec<String> = done.iter().map(|m| m.name.clone()).collect();
            let holders = self.store.provision_holders_of(&names)?;
            let mut by_request: std::collections::BTreeMap<&str, Vec<&str>> = std::collections::BTreeMap::new();
            for m in &done {
                for (request_id, held) in holders.get(&m.name).into_iter().flatten() {
                    if held.machine_id == m.machine_id && !matches!(held.state, MachineState::Terminated | MachineState::Failed) {
                        by_request.entry(request_id.as_str()).or_default().push(m.machine_id.as_str());
                    }
                }
            }
            for (request_id, ids) in by_request {
                let Some(rec) = self.store.request(request_id)? else {
                    continue;
                };
                let mut rows = self.store.machines(request_id)?;
                for r in rows.iter_mut().filter(|r| ids.contains(&r.machine_id.as_str())) {
                    r.state = MachineState::Terminated;
                    r.message = Some(format!("returned ({return_id})"));
                }
                self.store.update_request(&rec, &rows)?;
            }
            Ok(())
        })();
        if let Err(e) = result {
            tracing::warn!(request_id = return_id, error = %e, "could not mark returned machines in their requests");
        }
    }

    /// The provision request HostFactory knows that holds machine `m` live (running or
    /// pending, by its exact machine id), if any.
    fn live_holder(&self, m: &Machine) -> Result<Option<String>, ServiceError> {
        let holders = self.store.provision_holders(&m.name)?;
        for (request_id, held) in holders {
            if held.machine_id == m.machine_id
                && matches!(held.state, MachineState::Running | MachineState::Pending)
                && self.store.request(&request_id)?.is_some_and(|r| r.claimed)
            {
                return Ok(Some(request_id));
            }
        }
        Ok(None)
    }
}

/// Whether return `id` is one the host started itself ([`Service::host_return`]), not
/// HostFactory's (`ret-<uuid>`).
fn is_host_made(id: &str) -> bool {
    !id.starts_with("ret-")
}
