//! AWS provider guest: IBM's `awsprov_templates.json` over the host's EC2 capability.
//!
//! - Single-type templates launch with RunInstances (request id as client token); weighted
//!   `vmTypes`, spot and heterogeneous templates with EC2 Fleet `instant`, `machineCount`
//!   counted in units. Heterogeneous requests top up with on-demand whatever spot could
//!   not supply.
//! - Every call first looks for instances already tagged with the request (the host tags
//!   everything it launches), so a retry after a crash adopts instead of launching twice.
//! - Machines are named by private DNS name (the host name they join the cluster with).
//! - `ncpus`/`nram` come from DescribeInstanceTypes, cached in kv. For weighted templates
//!   they are per unit: the smallest of cores/weight and MiB/weight over the types, so a
//!   unit never promises more than any instance gives.

mod group;
mod keys;
mod launch;
mod template;

use std::collections::BTreeMap;

use hfwasm_guest_sdk::autoscaling;
use hfwasm_guest_sdk::ec2::{self, Ec2Error, InstanceFilter};
use hfwasm_guest_sdk::held::Held;
use hfwasm_guest_sdk::*;
use serde_json::Value;
use template::{AwsTemplate, PriceType};

struct Aws;

fn settings(ctx: &CallContext) -> Result<Value, ProviderError> {
    serde_json::from_str(&ctx.settings_json).map_err(|e| ProviderError::InvalidInput(format!("guest settings are not JSON: {e}")))
}

fn ec2_err(action: &str, e: Ec2Error) -> ProviderError {
    match e {
        Ec2Error::Denied(m) => ProviderError::Denied(format!("{action}: {m}")),
        Ec2Error::Aws(f) if f.code.contains("InsufficientInstanceCapacity") || f.code.contains("InstanceLimitExceeded") => {
            ProviderError::Capacity(format!("{action}: {}: {}", f.code, f.message))
        }
        Ec2Error::Aws(f) if f.code.contains("NotFound") || f.code.contains("Invalid") || f.code.contains("Malformed") => {
            ProviderError::InvalidTemplate(format!("{action}: {}: {}", f.code, f.message))
        }
        Ec2Error::Aws(f) => ProviderError::Unavailable(format!("{action}: {}: {}", f.code, f.message)),
        Ec2Error::Unavailable(m) => ProviderError::Unavailable(format!("{action}: {m}")),
    }
}

fn find<'a>(templates: &'a [AwsTemplate], id: &str) -> Result<&'a AwsTemplate, ProviderError> {
    templates.iter().find(|t| t.id == id).ok_or_else(|| {
        ProviderError::InvalidTemplate(format!(
            "template '{id}' not found; defined: {}",
            templates.iter().map(|t| t.id.as_str()).collect::<Vec<_>>().join(", ")
        ))
    })
}

/// (cores, MiB) of each type, from kv or one DescribeInstanceTypes call for the rest.
fn type_info(names: &[String]) -> Result<BTreeMap<String, (u32, u64)>, ProviderError> {
    let mut known = BTreeMap::new();
    let mut missing = Vec::new();
    for n in names {
        match kv::get(&format!("itype/{n}"))?.and_then(|v| v.split_once(',').and_then(|(c, m)| Some((c.parse().ok()?, m.parse().ok()?)))) {
            Some(info) => {
                known.insert(n.clone(), info);
            }
            None => missing.push(n.clone()),
        }
    }
    if !missing.is_empty() {
        for t in ec2::describe_instance_types(&missing).map_err(|e| ec2_err("DescribeInstanceTypes", e))? {
            kv::set(&format!("itype/{}", t.name), &format!("{},{}", t.cores, t.memory_mib))?;
            known.insert(t.name.clone(), (t.cores, t.memory_mib));
        }
        if let Some(unknown) = missing.iter().find(|n| !known.contains_key(*n)) {
            return Err(ProviderError::InvalidTemplate(format!(
                "instance type {unknown} is unknown to EC2 (DescribeInstanceTypes)"
            )));
        }
    }
    Ok(known)
}

fn template_out(t: &AwsTemplate, info: &BTreeMap<String, (u32, u64)>) -> Template {
    let (mut cpus, mut mem) = (u32::MAX, u64::MAX);
    for ty in t.all_types() {
        let (c, m) = info.get(&ty).copied().unwrap_or((1, 1024));
        let w = t.weight(&ty).max(1);
        cpus = cpus.min((c / w).max(1));
        mem = mem.min((m / u64::from(w)).max(1));
    }
    let mut attrs = vec![numeric("ncpus", cpus), numeric("nram", mem)];
    attrs.extend(ibm_attributes(&t.attributes, mem));
    let mut extra = serde_json::json!({
        "priceType": match t.price_type { PriceType::OnDemand => "ondemand", PriceType::Spot => "spot", PriceType::Heterogeneous => "heterogeneous" },
        "vmTypes": t.all_types(),
    });
    if let Some(obj) = extra.as_object_mut() {
        for (k, v) in &t.extra {
            obj.insert(k.clone(), v.clone());
        }
    }
    Template {
        id: t.id.clone(),
        max_number: t.max_number,
        available_number: None,
        attributes: attrs,
        extra_json: Some(extra.to_string()),
    }
}

/// A machine from an instance: named by private DNS name once EC2 has assigned it.
fn machine(i: &ec2::Instance) -> Machine {
    let (state, message) = match i.state.as_str() {
        "pending" => (MachineState::Pending, None),
        "running" if i.private_ip.is_some() => (MachineState::Running, None),
        "running" => (MachineState::Pending, None),
        "stopping" | "shutting-down" => (MachineState::Stopping, Some(format!("instance {} is {}", i.instance_id, i.state))),
        "stopped" => (MachineState::Stopped, Some(format!("instance {} was stopped", i.instance_id))),
        _ => (
            MachineState::Terminated,
            Some(format!(
                "instance {} is {}{}",
                i.instance_id,
                i.state,
                i.state_reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default()
            )),
        ),
    };
    Machine {
        machine_id: i.instance_id.clone(),
        name: i.private_dns_name.clone().unwrap_or_else(|| i.instance_id.clone()),
        private_ip: i.private_ip.clone().unwrap_or_default(),
        public_ip: i.public_ip.clone(),
        launch_time: i.launch_time,
        state,
        message,
    }
}

fn describe(filter: InstanceFilter) -> Result<Vec<ec2::Instance>, ProviderError> {
    ec2::describe_instances(&filter).map_err(|e| ec2_err("DescribeInstances", e))
}

/// The tag the host puts on every instance launched for a request (value: the request id).
const TAG_REQUEST: &str = "hfwasm:request";

/// The tag the host puts on everything it launches: the id of the launching installation's store.
const TAG_STORE: &str = "hfwasm:store";

/// The tag the host puts on every instance launched for a template (value: the template id).
const TAG_TEMPLATE: &str = "hfwasm:template";

/// Whether an instance still counts towards its request (not on its way out).
fn is_live(i: &ec2::Instance) -> bool {
    !matches!(i.state.as_str(), "terminated" | "shutting-down")
}

fn units(t: &AwsTemplate, instances: &[ec2::Instance]) -> u32 {
    instances.iter().filter(|i| is_live(i)).map(|i| t.weight(&i.instance_type)).sum()
}

/// `instances` by id: lookups for thousands of HostFactory's hosts stay linear overall.
fn by_id(instances: &[ec2::Instance]) -> BTreeMap<&str, &ec2::Instance> {
    instances.iter().map(|i| (i.instance_id.as_str(), i)).collect()
}

/// The template an instance was launched for (its tag).
fn template_of(i: &ec2::Instance) -> Option<&str> {
    i.tags.iter().find(|t| t.key == TAG_TEMPLATE).map(|t| t.value.as_str())
}

/// Records in the ledger what `instances` hold: a live one its weight in its template (the
/// tag's, else `template`), one on its way out nothing. A template since removed weighs 1.
fn record(held: &mut Held, templates: &[AwsTemplate], template: Option<&str>, instances: &[ec2::Instance]) -> Result<(), ProviderError> {
    for i in instances {
        match template_of(i).or(template) {
            Some(tid) if is_live(i) => {
                let weight = templates.iter().find(|t| t.id == tid).map_or(1, |t| t.weight(&i.instance_type));
                held.live(&i.instance_id, tid, weight)?;
            }
            _ => held.ended(&i.instance_id)?,
        }
    }
    Ok(())
}

/// The ledger rebuilt from a describe of every instance this provider instance owns.
fn rebuild(held: &mut Held, templates: &[AwsTemplate]) -> Result<Vec<ec2::Instance>, ProviderError> {
    let owned = describe(InstanceFilter::Owned)?;
    let live = owned.iter().filter(|i| is_live(i)).filter_map(|i| {
        let tid = template_of(i)?;
        let weight = templates.iter().find(|t| t.id == tid).map_or(1, |t| t.weight(&i.instance_type));
        Some((i.instance_id.clone(), tid.to_string(), weight))
    });
    held.rebuild(live.collect::<Vec<_>>())?;
    Ok(owned)
}

/// The Spot Fleet recorded for a request: (fleet id, epoch second it stops launching).
fn fleet_of(request_id: &str) -> Result<Option<(String, u64)>, ProviderError> {
    Ok(kv::get(&launch::fleet_key(request_id))?.and_then(|v| {
        let (f, until) = v.split_once(',')?;
        Some((f.to_string(), until.parse().ok()?))
    }))
}

/// Units still to come from a request's Spot Fleet, and a note for HostFactory. A fleet
/// that is full or expired is cancelled (its instances keep running) and forgotten.
fn follow_fleet(req: &ProvisionRequest, fleet: &str, until: u64, got: u32, now: u64) -> Result<(u32, Option<String>), ProviderError> {
    if got < req.count && now < until {
        return Ok((
            req.count - got,
            Some(format!("spot fleet {fleet}: {got} of {} units so far", req.count)),
        ));
    }
    if let Err(e) = ec2::cancel_spot_fleet_requests(&[fleet.to_string()]) {
        warn(&format!(
            "cannot cancel spot fleet {fleet} of {}: {}",
            req.request_id,
            ec2_err("CancelSpotFleetRequests", e)
        ));
    }
    kv::delete(&launch::fleet_key(&req.request_id))?;
    Ok((
        0,
        (got < req.count).then(|| format!("spot fleet {fleet} expired with {got} of {} units", req.count)),
    ))
}

/// Units instance `i` of template `tid` holds: its weight while live (1 for a template
/// since removed), nothing once on its way out.
fn live_units(templates: &[AwsTemplate], tid: &str, i: &ec2::Instance) -> u32 {
    if !is_live(i) {
        return 0;
    }
    templates.iter().find(|t| t.id == tid).map_or(1, |t| t.weight(&i.instance_type))
}

/// What a reclaim check made of one of HostFactory's hosts it found in EC2.
#[derive(Clone)]
enum Seen {
    /// Ended, ending, stopped, or about to be replaced by its group: reclaimed at once.
    Gone,
    /// A live spot instance, with its spot request: reclaimed if AWS marked it.
    Spot(String),
    /// Live and staying.
    Fine,
}

/// Instance ids per DescribeInstances the host makes (its batch), and so per page this
/// guest asks for at once.
const DESCRIBE_BATCH: usize = 1000;

/// `slots` (instance id, what it is for; sorted by id) a page of DESCRIBE_BATCH at a time,
/// each page with its described instances: a page is worked through and dropped before
/// the next is asked for, so neither the host nor this guest (whose memory never shrinks)
/// holds thousands of described instances at once.
fn described_pages<'a, 's, T>(slots: &'s [(&'a str, T)]) -> impl Iterator<Item = Result<Page<'s, 'a, T>, ProviderError>> {
    slots.chunks(DESCRIBE_BATCH).map(|page| {
        Ok((
            page,
            describe(InstanceFilter::Ids(page.iter().map(|(id, _)| id.to_string()).collect()))?,
        ))
    })
}

/// A page of slots with its described instances.
type Page<'s, 'a, T> = (&'s [(&'a str, T)], Vec<ec2::Instance>);

/// What the slots of `page` naming instance `id` are for (normally one).
fn slots_of<'s, T>(page: &'s [(&str, T)], id: &str) -> impl Iterator<Item = &'s T> {
    let from = page.partition_point(|(x, _)| *x < id);
    page[from..].iter().take_while(move |(x, _)| *x == id).map(|(_, t)| t)
}

/// Instance ids for HostFactory's machine references (by id, else by private DNS name).
fn resolve(refs: &[MachineRef]) -> Result<Vec<(MachineRef, Option<String>)>, ProviderError> {
    let needs_lookup = refs.iter().any(|r| !r.machine_id.as_deref().is_some_and(|m| m.starts_with("i-")));
    let owned = if needs_lookup {
        describe(InstanceFilter::Owned)?
    } else {
        Vec::new()
    };
    let by_name: BTreeMap<&str, &str> = owned
        .iter()
        .filter_map(|i| Some((i.private_dns_name.as_deref()?, i.instance_id.as_str())))
        .collect();
    Ok(refs
        .iter()
        .map(|r| {
            let id = match r.machine_id.as_deref() {
                Some(m) if m.starts_with("i-") => Some(m.to_string()),
                _ => by_name.get(r.name.as_str()).map(|id| id.to_string()),
            };
            (r.clone(), id)
        })
        .collect())
}

fn gone(r: &MachineRef, now: u64, why: &str) -> Machine {
    Machine {
        machine_id: r.machine_id.clone().unwrap_or_else(|| r.name.clone()),
        name: r.name.clone(),
        private_ip: String::new(),
        public_ip: None,
        launch_time: now,
        state: MachineState::Terminated,
        message: Some(why.to_string()),
    }
}

impl Guest for Aws {
    fn templates(ctx: CallContext) -> Result<Vec<Template>, ProviderError> {
        let templates = template::parse_all(&settings(&ctx)?)?;
        let mut names: Vec<String> = templates.iter().flat_map(|t| t.all_types()).collect();
        names.sort();
        names.dedup();
        let info = type_info(&names)?;
        // availableNumber: maxNumber minus the units this provider instance's live instances
        // of the template hold, from the kv ledger (no cloud call; built once by a describe).
        let mut held = Held::load()?;
        if !held.is_built() {
            rebuild(&mut held, &templates)?;
        }
        Ok(templates
            .iter()
            .map(|t| {
                let mut out = template_out(t, &info);
                if let Ok(max) = u32::try_from(t.max_number) {
                    out.available_number = Some(max.saturating_sub(held.units_of(&t.id)));
                }
                out
            })
            .collect())
    }

    fn request_machines(ctx: CallContext, req: ProvisionRequest) -> Result<ProvisionProgress, ProviderError> {
        let templates = template::parse_all(&settings(&ctx)?)?;
        let t = find(&templates, &req.template_id)?;
        // Adopt what an earlier attempt of this request launched (crash between the cloud
        // call and the host's record), then launch only the remainder.
        let existing = describe(InstanceFilter::Request(req.request_id.clone()))?;
        let have = units(t, &existing);
        let mut errors = Vec::new();
        let mut ids: Vec<String> = Vec::new();
        let mut instances = existing;
        let mut fleet = if t.uses_spot_fleet() { fleet_of(&req.request_id)? } else { None };
        let mut asg = None;
        if let Some((f, _)) = &fleet {
            // A retry of a request whose Spot Fleet exists: follow it, never request another.
            ids = ec2::describe_spot_fleet_instances(f).map_err(|e| ec2_err("DescribeSpotFleetInstances", e))?;
        } else if let Some(g) = t.uses_asg().then(|| group::describe(&req.request_id)).transpose()?.flatten() {
            // A retry of a request whose group exists: follow it.
            ids = g.instances.iter().map(|i| i.instance_id.clone()).collect();
            asg = Some(g);
        } else if have < req.count {
            let want = req.count - have;
            match launch::launch(t, &req, want, ctx.now, &ctx.provider_instance) {
                Ok(launched) => {
                    // RunInstances describes what it launched: no second round trip.
                    instances.extend(launched.instances);
                    ids = launched.ids;
                    errors = launched.errors;
                    fleet = launched.fleet.map(|f| (f, ctx.now + u64::from(t.fleet_expiry_mins) * 60));
                    asg = launched.group;
                }
                Err(e) if instances.is_empty() => return Err(e),
                Err(e) => errors.push(e.to_string()),
            }
        }
        let missing: Vec<String> = ids
            .into_iter()
            .filter(|id| !instances.iter().any(|i| &i.instance_id == id))
            .collect();
        if !missing.is_empty() {
            instances.extend(describe(InstanceFilter::Ids(missing))?);
        }
        // Heterogeneous: spot that could not be had is bought on-demand right away.
        let mut got = units(t, &instances);
        if got < req.count && t.price_type == PriceType::Heterogeneous && !errors.is_empty() && fleet.is_none() {
            let od_types = if t.vm_types_on_demand.is_empty() {
                &t.vm_types
            } else {
                &t.vm_types_on_demand
            };
            // Same request id: the top-up instances belong to (and are tagged with) this request.
            match launch::fleet(t, &req, od_types, req.count - got, req.count - got, &ctx.provider_instance) {
                Ok(r) => {
                    if !r.instance_ids.is_empty() {
                        instances.extend(describe(InstanceFilter::Ids(r.instance_ids))?);
                    }
                    errors.extend(r.errors.into_iter().map(|f| format!("{}: {}", f.code, f.message)));
                }
                Err(e) => errors.push(e.to_string()),
            }
            got = units(t, &instances);
        }
        record(&mut Held::unread(), &templates, Some(&t.id), &instances)?;
        let filling = if t.uses_asg() {
            group::filling_until(&req.request_id)?
        } else {
            None
        };
        if asg.is_some() || filling.is_some() {
            // A group fills over time: the request stays open until its instances are in service.
            let until = filling.unwrap_or(ctx.now);
            let (outstanding, message) = group::follow(&req, asg.as_ref(), until, got, ctx.now)?;
            let mut machines: Vec<Machine> = instances.iter().map(machine).collect();
            group::hold_back(&mut machines, &group::not_in_service(asg.as_ref()));
            return Ok(ProvisionProgress {
                machines,
                outstanding,
                message,
                units: Some(got),
            });
        }
        if let Some((f, until)) = &fleet {
            // A Spot Fleet fills over time: the request stays open until it is full or expires.
            let (outstanding, message) = follow_fleet(&req, f, *until, got, ctx.now)?;
            return Ok(ProvisionProgress {
                machines: instances.iter().map(machine).collect(),
                outstanding,
                message,
                units: Some(got),
            });
        }
        if got == 0 {
            return Err(ProviderError::Capacity(format!(
                "template '{}': no capacity: {}",
                t.id,
                errors.join("; ")
            )));
        }
        let message = (got < req.count).then(|| format!("{got} of {} units launched: {}", req.count, errors.join("; ")));
        Ok(ProvisionProgress {
            machines: instances.iter().map(machine).collect(),
            outstanding: 0,
            message,
            units: Some(got),
        })
    }

    fn requests_status(
        ctx: CallContext,
        queries: Vec<StatusQuery>,
    ) -> Result<Vec<Result<ProvisionProgress, ProviderError>>, ProviderError> {
        let templates = template::parse_all(&settings(&ctx)?)?;
        // Read before the describes: what they show is newer than what it says.
        let mut held = Held::load()?;
        // Every recorded instance of every request is described, a page of DESCRIBE_BATCH
        // ids at a time (one DescribeInstances each, as the host would batch them anyway),
        // and each page is turned into machines before the next: neither the host nor this
        // guest holds 10,000 described instances at once, and this guest's memory, which
        // never shrinks, only holds the machines.
        let mut slots: Vec<(&str, (usize, usize))> = queries
            .iter()
            .enumerate()
            .flat_map(|(q, query)| query.known.iter().enumerate().map(move |(k, m)| (m.machine_id.as_str(), (q, k))))
            .filter(|(id, _)| id.starts_with("i-"))
            .collect();
        slots.sort_unstable();
        let mut seen: Vec<Vec<Option<(Machine, u32)>>> = queries.iter().map(|q| q.known.iter().map(|_| None).collect()).collect();
        for page in described_pages(&slots) {
            let (page, described) = page?;
            for i in &described {
                for &(q, k) in slots_of(page, &i.instance_id) {
                    let tid = &queries[q].request.template_id;
                    record(&mut held, &templates, Some(tid), std::slice::from_ref(i))?;
                    seen[q][k] = Some((machine(i), live_units(&templates, tid, i)));
                }
            }
        }
        drop(slots);
        // A tag search only for requests with nothing recorded yet (an answer lost to a crash).
        let unrecorded: Vec<String> = queries
            .iter()
            .filter(|q| q.known.is_empty())
            .map(|q| q.request.request_id.clone())
            .collect();
        let mut by_request: BTreeMap<String, Vec<ec2::Instance>> = BTreeMap::new();
        if !unrecorded.is_empty() {
            for i in describe(InstanceFilter::Requests(unrecorded))? {
                if let Some(tag) = i.tags.iter().find(|t| t.key == TAG_REQUEST) {
                    by_request.entry(tag.value.clone()).or_default().push(i);
                }
            }
        }
        // Spot Fleets still filling: their new instances (one DescribeSpotFleetInstances per
        // fleet; the API takes one fleet id), described together.
        let mut fleets: BTreeMap<String, (String, u64)> = BTreeMap::new();
        // Auto Scaling groups still filling: their instances, one describe per group.
        let mut groups: BTreeMap<String, (Option<autoscaling::Group>, u64)> = BTreeMap::new();
        let mut arrivals: Vec<(String, String)> = Vec::new();
        for q in &queries {
            let rid = &q.request.request_id;
            let Some(t) = templates.iter().find(|t| t.id == q.request.template_id) else {
                continue;
            };
            let ids = if t.uses_spot_fleet()
                && let Some((f, until)) = fleet_of(rid)?
            {
                let ids = ec2::describe_spot_fleet_instances(&f).map_err(|e| ec2_err("DescribeSpotFleetInstances", e))?;
                fleets.insert(rid.clone(), (f, until));
                ids
            } else if t.uses_asg()
                && let Some(until) = group::filling_until(rid)?
            {
                let g = group::describe(rid)?;
                let ids = g.iter().flat_map(|g| g.instances.iter().map(|i| i.instance_id.clone())).collect();
                groups.insert(rid.clone(), (g, until));
                ids
            } else {
                continue;
            };
            for id in ids {
                let known = q.known.iter().any(|k| k.machine_id == id)
                    || by_request.get(rid).is_some_and(|v| v.iter().any(|i| i.instance_id == id));
                if !known {
                    arrivals.push((rid.clone(), id));
                }
            }
        }
        if !arrivals.is_empty() {
            let described = describe(InstanceFilter::Ids(arrivals.iter().map(|(_, id)| id.clone()).collect()))?;
            for (rid, id) in &arrivals {
                if let Some(i) = described.iter().find(|i| &i.instance_id == id) {
                    by_request.entry(rid.clone()).or_default().push(i.clone());
                }
            }
        }
        Ok(queries
            .into_iter()
            .zip(seen)
            .map(|(q, seen)| {
                let arrived = by_request.remove(&q.request.request_id).unwrap_or_default();
                record(&mut held, &templates, Some(&q.request.template_id), &arrived)?;
                // Weighted templates count units, not instances; a template since removed counts one each.
                let mut got: u32 = arrived.iter().map(|i| live_units(&templates, &q.request.template_id, i)).sum();
                let mut machines: Vec<Machine> = arrived.iter().map(machine).collect();
                for (k, described) in q.known.into_iter().zip(seen) {
                    match described {
                        Some((m, units)) => {
                            machines.push(m);
                            got += units;
                        }
                        None => {
                            // Gone from EC2 altogether (terminated long ago, or never really launched).
                            held.ended(&k.machine_id)?;
                            let mut m = k;
                            m.state = MachineState::Terminated;
                            m.message = Some(format!("instance {} no longer exists in EC2", m.machine_id));
                            machines.push(m);
                        }
                    }
                }
                let (outstanding, message) = match (fleets.get(&q.request.request_id), groups.get(&q.request.request_id)) {
                    (Some((f, until)), _) => follow_fleet(&q.request, f, *until, got, ctx.now)?,
                    (None, Some((g, until))) => {
                        group::hold_back(&mut machines, &group::not_in_service(g.as_ref()));
                        group::follow(&q.request, g.as_ref(), *until, got, ctx.now)?
                    }
                    (None, None) => (0, None),
                };
                Ok(ProvisionProgress {
                    machines,
                    outstanding,
                    message,
                    units: Some(got),
                })
            })
            .collect())
    }

    fn release_machines(ctx: CallContext, _return_id: String, refs: Vec<MachineRef>) -> Result<Vec<Machine>, ProviderError> {
        let resolved = resolve(&refs)?;
        let ids: Vec<String> = resolved.iter().filter_map(|(_, id)| id.clone()).collect();
        let alive: Vec<ec2::Instance> = if ids.is_empty() {
            Vec::new()
        } else {
            describe(InstanceFilter::Ids(ids))?
        };
        let to_stop: Vec<String> = alive
            .iter()
            .filter(|i| !matches!(i.state.as_str(), "terminated" | "shutting-down"))
            .map(|i| i.instance_id.clone())
            .collect();
        // Instances of Auto Scaling groups leave them first, so nothing replaces them.
        let stopping: Vec<&ec2::Instance> = alive.iter().filter(|i| to_stop.contains(&i.instance_id)).collect();
        let left = group::detach(&stopping);
        if !to_stop.is_empty() {
            ec2::terminate_instances(&to_stop).map_err(|e| ec2_err("TerminateInstances", e))?;
        }
        for rid in &left {
            group::delete_if_empty(rid)?;
        }
        // Their units are free from now on (a kill before this: release_status forgets them).
        let mut held = Held::unread();
        for (_, id) in &resolved {
            if let Some(id) = id {
                held.ended(id)?;
            }
        }
        let alive_by_id = by_id(&alive);
        Ok(resolved
            .iter()
            .map(|(r, id)| match id.as_deref().and_then(|id| alive_by_id.get(id)) {
                Some(i) => {
                    let mut m = machine(i);
                    m.name = r.name.clone();
                    m.state = if i.state == "terminated" {
                        MachineState::Terminated
                    } else {
                        MachineState::Stopping
                    };
                    m.message = None;
                    m
                }
                None => gone(r, ctx.now, "not found in EC2 (already gone)"),
            })
            .collect())
    }

    fn release_status(_ctx: CallContext, _return_id: String, known: Vec<Machine>) -> Result<Vec<Machine>, ProviderError> {
        let ids: Vec<String> = known
            .iter()
            .filter(|m| m.machine_id.starts_with("i-"))
            .map(|m| m.machine_id.clone())
            .collect();
        let found = if ids.is_empty() {
            Vec::new()
        } else {
            describe(InstanceFilter::Ids(ids))?
        };
        let mut held = Held::load()?;
        for m in &known {
            held.ended(&m.machine_id)?;
        }
        // Groups emptied by this return that could not be deleted at once.
        let mut requests: Vec<&str> = found
            .iter()
            .filter_map(|i| i.tags.iter().find(|t| t.key == TAG_REQUEST).map(|t| t.value.as_str()))
            .collect();
        requests.sort_unstable();
        requests.dedup();
        for rid in requests {
            if group::awaits_deletion(rid)? {
                group::delete_if_empty(rid)?;
            }
        }
        let found = by_id(&found);
        Ok(known
            .into_iter()
            .map(|mut m| {
                m.state = match found.get(m.machine_id.as_str()) {
                    Some(i) if i.state != "terminated" => MachineState::Stopping,
                    _ => MachineState::Terminated,
                };
                m
            })
            .collect())
    }

    fn owned_machines(ctx: CallContext) -> Result<Vec<OwnedMachine>, ProviderError> {
        // The orphan scan's full describe is also when the ledger is made exact again.
        let templates = template::parse_all(&settings(&ctx)?)?;
        let mut held = Held::load()?;
        Ok(rebuild(&mut held, &templates)?
            .iter()
            .filter(|i| is_live(i))
            .filter_map(|i| {
                let request_id = i.tags.iter().find(|t| t.key == TAG_REQUEST)?.value.clone();
                Some(OwnedMachine {
                    request_id,
                    store_id: i.tags.iter().find(|t| t.key == TAG_STORE).map(|t| t.value.clone()),
                    machine: machine(i),
                })
            })
            .collect())
    }

    fn reclaim_candidates(ctx: CallContext, refs: Vec<MachineRef>) -> Result<Vec<Reclaim>, ProviderError> {
        let mut held = Held::load()?;
        let templates = template::parse_all(&settings(&ctx)?)?;
        let resolved = resolve(&refs)?;
        drop(refs);
        // HostFactory's hosts, described on every poll a page at a time (as in a status
        // call): each page is judged, and the ledger follows what it shows, before the next.
        let mut slots: Vec<(&str, usize)> = resolved
            .iter()
            .enumerate()
            .filter_map(|(n, (_, id))| Some((id.as_deref()?, n)))
            .collect();
        slots.sort_unstable();
        let mut seen: Vec<Option<Seen>> = vec![None; resolved.len()];
        for page in described_pages(&slots) {
            let (page, described) = page?;
            record(&mut held, &templates, None, &described)?;
            // Hosts their Auto Scaling group is about to replace (unhealthy, or terminating).
            let live: Vec<&ec2::Instance> = described.iter().filter(|i| i.state == "running" || i.state == "pending").collect();
            let replaced = group::being_replaced(&live)?;
            for i in &described {
                let verdict = if replaced.contains(&i.instance_id)
                    || matches!(i.state.as_str(), "terminated" | "shutting-down" | "stopping" | "stopped")
                {
                    Seen::Gone
                } else if let Some(sir) = &i.spot_request_id {
                    Seen::Spot(sir.clone())
                } else {
                    Seen::Fine
                };
                for &n in slots_of(page, &i.instance_id) {
                    seen[n] = Some(verdict.clone());
                }
            }
        }
        for &(id, n) in &slots {
            if seen[n].is_none() {
                held.ended(id)?;
            }
        }
        drop(slots);
        let mut out = Vec::new();
        let mut spot: Vec<(&MachineRef, &str, String)> = Vec::new();
        for ((r, id), seen) in resolved.iter().zip(seen) {
            match (id, seen) {
                // Not in EC2 at all (or never resolved to an instance).
                (_, None) => out.push(Reclaim {
                    name: r.name.clone(),
                    machine_id: r.machine_id.clone(),
                    grace_period: 0,
                }),
                (Some(id), Some(Seen::Gone)) => out.push(Reclaim {
                    name: r.name.clone(),
                    machine_id: Some(id.clone()),
                    grace_period: 0,
                }),
                (Some(id), Some(Seen::Spot(sir))) => spot.push((r, id.as_str(), sir)),
                _ => {}
            }
        }
        if !spot.is_empty() {
            let sirs: Vec<String> = spot.iter().map(|(_, _, sir)| sir.clone()).collect();
            let requests = ec2::describe_spot_instance_requests(&sirs).map_err(|e| ec2_err("DescribeSpotInstanceRequests", e))?;
            let terminate = settings(&ctx)?
                .get("spot_terminate_on_reclaim")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            let mut doomed = Vec::new();
            for (r, id, sir) in spot {
                let code = requests
                    .iter()
                    .find(|s| s.id == sir)
                    .and_then(|s| s.status_code.clone())
                    .unwrap_or_default();
                if code.starts_with("marked-for-") || code.starts_with("instance-terminated") || code.starts_with("instance-stopped") {
                    // AWS gives two minutes' notice of a spot interruption.
                    out.push(Reclaim {
                        name: r.name.clone(),
                        machine_id: Some(id.to_string()),
                        grace_period: if terminate { 0 } else { 120 },
                    });
                    doomed.push(id.to_string());
                }
            }
            if terminate && !doomed.is_empty() {
                ec2::terminate_instances(&doomed).map_err(|e| ec2_err("TerminateInstances", e))?;
            }
        }
        Ok(out)
    }
}

export!(Aws);
