//! On-prem pool provider guest, hfwasm's embedded default.
//!
//! The site's static hosts come from the inventory capability (the host parses the admin's
//! inventory file). Templates are the groups of hosts: by the `template` an admin assigned,
//! else by identical shape. A host is leased to exactly one request through the kv
//! capability's atomic `insert-if-absent` on `lease/<host>`, so parallel requestMachines
//! calls in separate processes never hand one host out twice. Admin-configured power
//! commands are started through the power capability (the host runs them) and polled on
//! status calls: a host stays `pending` until its power-on command succeeded.

mod pool;

use hfwasm_guest_sdk::*;
use pool::{Pool, lease_key};

struct OnPrem;

impl Guest for OnPrem {
    fn templates(_ctx: CallContext) -> Result<Vec<Template>, ProviderError> {
        let pool = Pool::load()?;
        let leased = pool::leased_hosts()?;
        pool.templates(&leased)
    }

    fn request_machines(ctx: CallContext, req: ProvisionRequest) -> Result<ProvisionProgress, ProviderError> {
        let pool = Pool::load()?;
        let group = pool.group(&req.template_id)?;
        // Idempotent by request id: hosts this request already holds (a retry after a crash)
        // count towards the request, and only the remainder is leased. One scan, not one
        // lookup per host.
        let leased = pool::leased_hosts()?;
        let mut held: Vec<&inventory::InventoryHost> = group
            .hosts
            .iter()
            .copied()
            .filter(|h| leased.get(&h.name).map(String::as_str) == Some(req.request_id.as_str()))
            .collect();
        for host in group.hosts.iter().copied() {
            if held.len() >= req.count as usize {
                break;
            }
            if held.iter().any(|h| h.name == host.name) {
                continue;
            }
            if !leased.contains_key(&host.name) && kv::insert_if_absent(&lease_key(&host.name), &req.request_id)? {
                held.push(host);
            }
        }
        if held.is_empty() {
            return Err(ProviderError::Capacity(format!(
                "template '{}': all {} hosts are leased; none free for {} requested",
                req.template_id,
                group.hosts.len(),
                req.count
            )));
        }
        let mut machines = Vec::with_capacity(held.len());
        for host in held {
            machines.push(pool::start_host(host, &req.request_id, ctx.now));
        }
        let message = (machines.len() < req.count as usize).then(|| {
            format!(
                "leased {} of {} hosts requested: template '{}' has no more free hosts",
                machines.len(),
                req.count,
                req.template_id
            )
        });
        Ok(ProvisionProgress {
            machines,
            outstanding: 0,
            message,
            units: None,
        })
    }

    fn requests_status(
        ctx: CallContext,
        queries: Vec<StatusQuery>,
    ) -> Result<Vec<Result<ProvisionProgress, ProviderError>>, ProviderError> {
        let pool = Pool::load()?;
        // Read at most once per batch, and only when some request has no recorded machines.
        let mut leases: Option<std::collections::BTreeMap<String, String>> = None;
        let mut out = Vec::with_capacity(queries.len());
        for StatusQuery { request: req, known } in queries {
            let mut known = known;
            if known.is_empty() {
                // The host recorded the request but not our answer (a crash in between):
                // report the leases this request holds. Discovery only: the host resumes a
                // request with request-machines, and its crash sweep must never lease anything.
                if leases.is_none() {
                    leases = Some(pool::leased_hosts()?);
                }
                for (host, holder) in leases.iter().flatten() {
                    if *holder == req.request_id
                        && let Some(h) = pool.host(host)
                    {
                        known.push(pool::held_machine(h, &req.request_id, ctx.now));
                    }
                }
            }
            let machines = known
                .into_iter()
                .map(|m| pool::advance_pending(&pool, m, &req.request_id))
                .collect();
            out.push(Ok(ProvisionProgress {
                machines,
                outstanding: 0,
                message: None,
                units: None,
            }));
        }
        Ok(out)
    }

    fn release_machines(ctx: CallContext, return_id: String, machines: Vec<MachineRef>) -> Result<Vec<Machine>, ProviderError> {
        let pool = Pool::load()?;
        let mut out = Vec::with_capacity(machines.len());
        for m in machines {
            out.push(pool::release_host(&pool, &m, &return_id, ctx.now)?);
        }
        Ok(out)
    }

    fn release_status(_ctx: CallContext, return_id: String, known: Vec<Machine>) -> Result<Vec<Machine>, ProviderError> {
        let pool = Pool::load()?;
        known.into_iter().map(|m| pool::advance_release(&pool, m, &return_id)).collect()
    }

    fn owned_machines(_ctx: CallContext) -> Result<Vec<OwnedMachine>, ProviderError> {
        // Leases live in the host's store beside the requests, and a lease taken for a
        // request whose answer was lost is found by the host's sweep through requests-status.
        Ok(Vec::new())
    }

    fn reclaim_candidates(_ctx: CallContext, machines: Vec<MachineRef>) -> Result<Vec<Reclaim>, ProviderError> {
        let pool = Pool::load()?;
        let mut out = Vec::new();
        for m in machines {
            if pool.host(&m.name).is_none() {
                // The admin removed the host from the inventory: HostFactory must give it back.
                out.push(Reclaim {
                    name: m.name,
                    machine_id: m.machine_id,
                    grace_period: 0,
                });
            }
        }
        Ok(out)
    }
}

export!(OnPrem);
