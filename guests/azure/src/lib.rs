//! Azure provider guest: IBM's `azureprov_templates.json` over Azure Resource Manager's REST
//! API, through the host's `http` capability (the host holds the credentials).
//!
//! - Each host is a NIC and a VM named after the request (`hf-<request>-<n>`), so a retry
//!   after a crash finds what an earlier attempt made (PUT is idempotent by name) instead of
//!   making it twice. Everything is tagged with the request, template and provider instance.
//! - As IBM's plugin does, the NIC comes first and the host name is made from its private
//!   address (`host-10-1-0-5`); that is the VM's computer name and HostFactory's host name.
//! - A request whose creation was cut short (a kill, a failed call) is finished by the next
//!   status call; a VM that fails is reported with Azure's error and deleted; quota errors
//!   stop the request with what it has (partial fulfilment).
//! - `ncpus`/`nram` come from the region's VM size catalogue, cached in kv.
//! - Spot VMs (`vmPriority: Spot`) evicted by Azure are reported by getReturnRequests.

pub mod arm;
mod keys;
mod template;

use std::collections::{BTreeMap, BTreeSet};

use arm::{Arm, COMPUTE_API, NETWORK_API};
use hfwasm_guest_sdk::held::Held;
use hfwasm_guest_sdk::*;
use serde_json::{Value, json};
use template::{AzureTemplate, Image};

struct Azure;

/// The tag on everything made for a request (value: the request id).
const TAG_REQUEST: &str = "hfwasm:request";
/// The tag on everything made for a template (value: the template id).
const TAG_TEMPLATE: &str = "hfwasm:template";
/// The tag on everything a provider instance made (value: `HF_PROVIDER_NAME`).
const TAG_PROVIDER: &str = "hfwasm:provider";
/// The tag on everything made, as the host tags EC2 instances: the store's id (kv's
/// read-only `hfwasm:store-id`), so the orphan scan judges only this installation's.
const TAG_STORE: &str = "hfwasm:store";

/// What a call works with: ARM, the region and the templates.
struct Env {
    arm: Arm,
    region: String,
    /// The templates that read well.
    templates: Vec<AzureTemplate>,
    /// The ones that did not, by id, with why.
    refused: Vec<(String, ProviderError)>,
}

fn env(ctx: &CallContext) -> Result<Env, ProviderError> {
    let s: Value =
        serde_json::from_str(&ctx.settings_json).map_err(|e| ProviderError::InvalidInput(format!("guest settings are not JSON: {e}")))?;
    let base = s["arm_endpoint"]
        .as_str()
        .unwrap_or("https://management.azure.com")
        .trim_end_matches('/')
        .to_string();
    let region = s["region"]
        .as_str()
        .filter(|r| !r.is_empty())
        .ok_or_else(|| ProviderError::InvalidInput("guest settings have no `region` (AZURE_REGION)".into()))?
        .to_string();
    let subscription = match s["subscription"].as_str().filter(|x| !x.is_empty()) {
        Some(x) => x.to_string(),
        None => match kv::get("subscription")? {
            Some(x) => x,
            None => {
                let x = Arm::default_subscription(&base)?;
                kv::set("subscription", &x)?;
                x
            }
        },
    };
    let (mut templates, mut refused) = (Vec::new(), Vec::new());
    for (id, t) in template::parse_all(&s)? {
        match t {
            Ok(t) => templates.push(t),
            Err(e) => refused.push((id, e)),
        }
    }
    Ok(Env {
        arm: Arm { base, subscription },
        region,
        templates,
        refused,
    })
}

impl Env {
    /// Template `id`, or why it cannot be used.
    fn find(&self, id: &str) -> Result<&AzureTemplate, ProviderError> {
        if let Some((_, e)) = self.refused.iter().find(|(r, _)| r == id) {
            return Err(e.clone());
        }
        self.templates.iter().find(|t| t.id == id).ok_or_else(|| {
            ProviderError::InvalidTemplate(format!(
                "template '{id}' not found; defined: {}",
                self.templates.iter().map(|t| t.id.as_str()).collect::<Vec<_>>().join(", ")
            ))
        })
    }
}

/// The ARM name of host `i` of a request (letters, digits and `-`; at most 64 characters).
fn vm_name(request_id: &str, i: u32) -> String {
    let clean: String = request_id
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' })
        .take(52)
        .collect();
    format!("hf-{clean}-{i}")
}

fn nic_name(vm: &str) -> String {
    format!("{vm}-nic")
}

fn tag<'a>(r: &'a Value, key: &str) -> Option<&'a str> {
    r["tags"][key].as_str()
}

/// The NIC's private address, once Azure has given one.
fn nic_ip(nic: &Value) -> Option<String> {
    nic["properties"]["ipConfigurations"][0]["properties"]["privateIPAddress"]
        .as_str()
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// Seconds since the epoch of ARM's `2026-01-02T03:04:05[.fff](+00:00|Z)`.
fn epoch(t: &str) -> Option<u64> {
    let num = |a: usize, b: usize| t.get(a..b)?.parse::<i64>().ok();
    let (y, m, d) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
    let (hh, mm, ss) = (num(11, 13)?, num(14, 16)?, num(17, 19)?);
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86_400 + hh * 3600 + mm * 60 + ss).ok()
}

/// The VM's power state from its instance view (`running`, `deallocated`, ...).
fn power(vm: &Value) -> Option<&str> {
    vm["properties"]["instanceView"]["statuses"]
        .as_array()?
        .iter()
        .find_map(|s| s["code"].as_str()?.strip_prefix("PowerState/"))
}

/// A machine from a VM and the private addresses of the NICs (by lower-case NIC id).
fn machine(vm: &Value, ips: &BTreeMap<String, String>, failed: Option<String>, now: u64) -> Machine {
    let p = &vm["properties"];
    let name = vm["name"].as_str().unwrap_or_default();
    let nic = p["networkProfile"]["networkInterfaces"][0]["id"]
        .as_str()
        .unwrap_or_default()
        .to_ascii_lowercase();
    let ip = ips.get(&nic).cloned().unwrap_or_default();
    let provisioning = p["provisioningState"].as_str().unwrap_or("Creating");
    let (state, message) = match (failed, provisioning, power(vm)) {
        (Some(m), _, _) => (MachineState::Failed, Some(m)),
        (None, "Failed", _) => (MachineState::Failed, Some(format!("VM {name} failed to provision"))),
        (None, "Deleting", _) => (MachineState::Stopping, Some(format!("VM {name} is being deleted"))),
        (None, "Succeeded", Some("deallocated" | "deallocating")) => (MachineState::Stopped, Some(format!("VM {name} was deallocated"))),
        (None, "Succeeded", Some("stopped" | "stopping")) => (MachineState::Stopped, Some(format!("VM {name} is stopped"))),
        (None, "Succeeded", _) if !ip.is_empty() => (MachineState::Running, None),
        _ => (MachineState::Pending, None),
    };
    Machine {
        machine_id: vm["id"].as_str().unwrap_or(name).to_string(),
        name: p["osProfile"]["computerName"].as_str().unwrap_or(name).to_string(),
        private_ip: ip,
        public_ip: None,
        launch_time: p["timeCreated"].as_str().and_then(epoch).unwrap_or(now),
        state,
        message,
    }
}

/// The private address of every NIC of a listing, by lower-case NIC id.
fn ips_of(nics: &[Value]) -> BTreeMap<String, String> {
    nics.iter()
        .filter_map(|n| Some((n["id"].as_str()?.to_ascii_lowercase(), nic_ip(n)?)))
        .collect()
}

/// Base64 (standard alphabet, padded): `customData` is base64.
fn base64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for c in bytes.chunks(3) {
        let n = (u32::from(c[0]) << 16) | (u32::from(*c.get(1).unwrap_or(&0)) << 8) | u32::from(*c.get(2).unwrap_or(&0));
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            out.push(if i <= c.len() {
                char::from(A[((n >> shift) & 63) as usize])
            } else {
                '='
            });
        }
    }
    out
}

/// A shell word in single quotes.
fn quoted(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// The first-boot script (`customData`): IBM's exports, then `customScriptUri` run with
/// bash, as IBM's custom-script extension does. None when the template asks for neither.
fn first_boot(t: &AzureTemplate, req: &ProvisionRequest, provider: &str) -> Option<String> {
    if t.script_uri.is_none() && t.user_data.is_empty() {
        return None;
    }
    let mut s = String::from("#!/bin/bash\n");
    if let Some(a) = &req.rc_account {
        s.push_str(&format!("export rc_account={}\n", quoted(a)));
    }
    s.push_str(&format!(
        "export template_id={}\nexport providerName={}\n",
        quoted(&t.id),
        quoted(provider)
    ));
    for (k, v) in &t.user_data {
        let key: String = k.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        s.push_str(&format!("export {}={}\n", key.to_ascii_uppercase(), quoted(v)));
    }
    if let Some(uri) = &t.script_uri {
        let file = uri.rsplit('/').next().filter(|f| !f.is_empty()).unwrap_or("user_data.sh");
        s.push_str(&format!(
            "cd /tmp && curl -fsSL --retry 5 -o {f} {u} && bash {f}\n",
            f = quoted(file),
            u = quoted(uri)
        ));
    }
    Some(base64(s.as_bytes()))
}

/// The tags of everything made for `req`; `store` is the store's id (kv's `hfwasm:store-id`).
fn tags(store: Option<&str>, t: &AzureTemplate, req: &ProvisionRequest, provider: &str) -> Value {
    let mut m = serde_json::Map::new();
    for (k, v) in &t.tags {
        m.insert(k.clone(), json!(v));
    }
    if let Some(a) = &req.rc_account {
        m.insert("RC_ACCOUNT".into(), json!(a));
    }
    m.insert(TAG_REQUEST.into(), json!(req.request_id));
    m.insert(TAG_TEMPLATE.into(), json!(t.id));
    m.insert(TAG_PROVIDER.into(), json!(provider));
    if let Some(s) = store {
        m.insert(TAG_STORE.into(), json!(s));
    }
    Value::Object(m)
}

fn vm_body(e: &Env, t: &AzureTemplate, req: &ProvisionRequest, provider: &str, tags: &Value, nic_id: &str, ip: &str) -> Value {
    let a = &e.arm;
    let image = match &t.image {
        Image::Custom(i) if i.starts_with("/subscriptions/") => json!({"id": i}),
        Image::Custom(i) => json!({"id": a.id(&t.resource_group, "Microsoft.Compute/images", i)}),
        Image::ResourceId(i) => json!({"id": i}),
        Image::Community(i) => json!({"communityGalleryImageId": i}),
    };
    let mut os_disk = json!({"createOption": "FromImage", "deleteOption": "Delete"});
    if let Some(d) = &t.disk_type {
        os_disk["managedDisk"] = json!({"storageAccountType": d});
    }
    let mut os = json!({
        "computerName": format!("host-{}", ip.replace('.', "-")),
        "adminUsername": t.admin_user,
        "linuxConfiguration": {
            "disablePasswordAuthentication": true,
            "ssh": {"publicKeys": [{"path": format!("/home/{}/.ssh/authorized_keys", t.admin_user), "keyData": t.ssh_key}]}
        }
    });
    if let Some(script) = first_boot(t, req, provider) {
        os["customData"] = json!(script);
    }
    let mut props = json!({
        "hardwareProfile": {"vmSize": t.vm_size},
        "storageProfile": {"imageReference": image, "osDisk": os_disk},
        "osProfile": os,
        "networkProfile": {"networkInterfaces": [{"id": nic_id, "properties": {"primary": true, "deleteOption": "Delete"}}]},
    });
    if let Some(s) = &t.spot {
        props["priority"] = json!("Spot");
        props["evictionPolicy"] = json!(s.eviction_policy);
        props["billingProfile"] = json!({"maxPrice": s.max_price});
    }
    if let Some(pg) = &t.placement_group {
        props["proximityPlacementGroup"] = json!({"id": a.id(&t.resource_group, "Microsoft.Compute/proximityPlacementGroups", pg)});
    }
    if let Some(set) = &t.availability_set {
        props["availabilitySet"] = json!({"id": a.id(&t.resource_group, "Microsoft.Compute/availabilitySets", set)});
    }
    json!({"location": e.region, "tags": tags, "properties": props})
}

fn nic_body(e: &Env, t: &AzureTemplate, tags: &Value) -> Value {
    let subnet = format!(
        "{}/subnets/{}",
        e.arm.id(&t.resource_group, "Microsoft.Network/virtualNetworks", &t.vnet),
        t.subnet
    );
    let mut props = json!({"ipConfigurations": [{"name": "ipconfig1", "properties": {"subnet": {"id": subnet}, "privateIPAllocationMethod": "Dynamic"}}]});
    if let Some(nsg) = &t.nsg {
        props["networkSecurityGroup"] = json!({"id": e.arm.id(&t.resource_group, "Microsoft.Network/networkSecurityGroups", nsg)});
    }
    json!({"location": e.region, "tags": tags, "properties": props})
}

fn creating_key(request_id: &str) -> String {
    format!("creating/{request_id}")
}

fn op_key(vm: &str) -> String {
    format!("op/{vm}")
}

fn failed_key(vm: &str) -> String {
    format!("failed/{vm}")
}

/// Makes the hosts of `req` that do not exist yet (`vms`, `nics`: what exists of it), and
/// reports the request. Finishes an interrupted creation when called again. The NICs go out
/// together, then the VMs (a cloud's slow create calls overlap instead of adding up).
fn drive(
    e: &Env,
    t: &AzureTemplate,
    req: &ProvisionRequest,
    ctx: &CallContext,
    mut vms: Vec<Value>,
    mut nics: Vec<Value>,
) -> Result<ProvisionProgress, ProviderError> {
    let provider = ctx.provider_instance.as_str();
    let named = |list: &[Value], name: &str| list.iter().position(|v| v["name"].as_str() == Some(name));
    let nic_path = |vm: &str| {
        format!(
            "{}?api-version={NETWORK_API}",
            e.arm.id(&t.resource_group, "Microsoft.Network/networkInterfaces", &nic_name(vm))
        )
    };
    let missing: Vec<String> = (0..req.count)
        .map(|i| vm_name(&req.request_id, i))
        .filter(|n| named(&vms, n).is_none())
        .collect();
    let mut message = None;
    let mut finished = true;
    // 1. A NIC (and so an address) for each host still to make.
    let without: Vec<&String> = missing
        .iter()
        .filter(|n| named(&nics, &nic_name(n)).and_then(|i| nic_ip(&nics[i])).is_none())
        .collect();
    // Read here, not on every call: only making something needs it.
    let tags = tags(kv::get("hfwasm:store-id")?.as_deref(), t, req, provider);
    let body = nic_body(e, t, &tags);
    let calls: Vec<(&str, String, Option<Value>)> = without.iter().map(|n| ("PUT", nic_path(n), Some(body.clone()))).collect();
    let mut first_error = None;
    for (n, r) in without.iter().zip(e.arm.call_all(&calls)) {
        match r.and_then(|a| {
            if (200..300).contains(&a.status) {
                Ok(a)
            } else {
                Err(arm::failure(&format!("PUT networkInterfaces/{}", nic_name(n)), a.status, &a.body))
            }
        }) {
            Ok(a) => {
                if let Some(i) = named(&nics, &nic_name(n)) {
                    nics.remove(i);
                }
                nics.push(a.body);
            }
            Err(err) => {
                finished = false;
                first_error.get_or_insert(err);
            }
        }
    }
    // 2. The VMs whose NIC has its address (one without waits for the next status call).
    let ready: Vec<(&String, String)> = missing
        .iter()
        .filter_map(|n| named(&nics, &nic_name(n)).and_then(|i| nic_ip(&nics[i])).map(|ip| (n, ip)))
        .collect();
    finished &= ready.len() == missing.len();
    let calls: Vec<(&str, String, Option<Value>)> = ready
        .iter()
        .map(|(n, ip)| {
            let nic_id = e.arm.id(&t.resource_group, "Microsoft.Network/networkInterfaces", &nic_name(n));
            let path = format!(
                "{}?api-version={COMPUTE_API}",
                e.arm.id(&t.resource_group, "Microsoft.Compute/virtualMachines", n)
            );
            ("PUT", path, Some(vm_body(e, t, req, provider, &tags, &nic_id, ip)))
        })
        .collect();
    let mut capacity = None;
    for ((n, _), r) in ready.iter().zip(e.arm.call_all(&calls)) {
        let err = match r {
            Ok(a) if (200..300).contains(&a.status) => {
                if let Some(op) = &a.operation {
                    kv::set(&op_key(n), op)?;
                }
                vms.push(a.body);
                continue;
            }
            Ok(a) => arm::failure(&format!("PUT virtualMachines/{n}"), a.status, &a.body),
            Err(err) => err,
        };
        // The NIC made for this VM would be left over.
        let _ = e.arm.call("DELETE", &nic_path(n), None);
        nics.retain(|x| x["name"].as_str() != Some(nic_name(n).as_str()));
        match err {
            ProviderError::Capacity(m) => {
                capacity.get_or_insert(m);
            }
            err => {
                finished = false;
                first_error.get_or_insert(err);
            }
        }
    }
    if vms.is_empty() {
        // Nothing exists for the request: its error is the request's.
        if let Some(err) = first_error.take().or_else(|| capacity.take().map(ProviderError::Capacity)) {
            for n in &nics {
                if let Some(id) = n["id"].as_str() {
                    let _ = e.arm.call("DELETE", &format!("{id}?api-version={NETWORK_API}"), None);
                }
            }
            kv::delete(&creating_key(&req.request_id))?;
            return Err(err);
        }
    }
    if let Some(m) = capacity {
        // Partial fulfilment: what exists stands, nothing more is tried.
        message = Some(format!("{} of {} hosts: {m}", vms.len(), req.count));
        finished = true;
    } else if let Some(err) = first_error {
        message = Some(text_of(&err).to_string());
    }
    if finished {
        kv::delete(&creating_key(&req.request_id))?;
    }
    let ips = ips_of(&nics);
    let mut machines = Vec::new();
    for v in &vms {
        machines.push(checked(e, v, &ips, ctx.now)?);
    }
    let have = u32::try_from(vms.len()).unwrap_or(u32::MAX);
    Ok(ProvisionProgress {
        machines,
        outstanding: if finished { 0 } else { req.count.saturating_sub(have) },
        message,
        units: None,
    })
}

/// A VM as a machine; a VM that failed is reported with Azure's error (from its create
/// operation) and deleted, once.
fn checked(e: &Env, vm: &Value, ips: &BTreeMap<String, String>, now: u64) -> Result<Machine, ProviderError> {
    let name = vm["name"].as_str().unwrap_or_default();
    let mut failed = kv::get(&failed_key(name))?;
    if failed.is_none() && vm["properties"]["provisioningState"].as_str() == Some("Failed") {
        let why = match kv::get(&op_key(name))? {
            Some(op) => e.arm.operation(&op)?.flatten(),
            None => None,
        };
        let why = format!("VM {name} failed: {}", why.unwrap_or_else(|| "provisioning failed".into()));
        kv::set(&failed_key(name), &why)?;
        if let Some(id) = vm["id"].as_str()
            && let Err(err) = e.arm.call("DELETE", &format!("{id}?api-version={COMPUTE_API}"), None)
        {
            // The orphan scan or a return deletes it later; the failure is reported now.
            warn(&format!("VM {name} failed and could not be deleted yet: {err:?}"));
        }
        failed = Some(why);
    } else if failed.is_none() && vm["properties"]["provisioningState"].as_str() == Some("Succeeded") {
        // Made: its create operation is of no more interest.
        kv::delete(&op_key(name))?;
    }
    Ok(machine(vm, ips, failed, now))
}

/// The VMs and NICs of each resource group, listed once per call.
#[derive(Default)]
struct Listing {
    vms: BTreeMap<String, Vec<Value>>,
    nics: BTreeMap<String, Vec<Value>>,
}

impl Listing {
    fn of(e: &Env, groups: impl IntoIterator<Item = String>, with_nics: bool) -> Result<Self, ProviderError> {
        let mut l = Listing::default();
        for rg in groups.into_iter().collect::<BTreeSet<_>>() {
            l.vms.insert(rg.clone(), e.arm.vms(&rg)?);
            if with_nics {
                l.nics.insert(rg.clone(), e.arm.nics(&rg)?);
            }
        }
        Ok(l)
    }

    fn tagged(list: Option<&Vec<Value>>, key: &str, value: &str) -> Vec<Value> {
        list.into_iter().flatten().filter(|r| tag(r, key) == Some(value)).cloned().collect()
    }
}

/// `machines` with lower-case ids, the ledger's keys (ARM's ids compare without case).
fn ledger_ids(machines: &[Machine]) -> Vec<Machine> {
    machines
        .iter()
        .map(|m| Machine {
            machine_id: m.machine_id.to_ascii_lowercase(),
            ..m.clone()
        })
        .collect()
}

/// The ledger made exactly this provider instance's live VMs (one listing per resource
/// group, with NICs when `with_nics`); returns the listing.
fn rebuild(e: &Env, ctx: &CallContext, held: &mut Held, with_nics: bool) -> Result<Listing, ProviderError> {
    let listing = Listing::of(e, e.templates.iter().map(|t| t.resource_group.clone()), with_nics)?;
    let live = listing
        .vms
        .values()
        .flatten()
        .filter(|v| tag(v, TAG_PROVIDER) == Some(ctx.provider_instance.as_str()))
        .filter(|v| !matches!(v["properties"]["provisioningState"].as_str(), Some("Deleting" | "Failed")))
        .filter_map(|v| Some((v["id"].as_str()?.to_ascii_lowercase(), tag(v, TAG_TEMPLATE)?.to_string(), 1)));
    held.rebuild(live.collect::<Vec<_>>())?;
    Ok(listing)
}

/// (cores, MiB) of each size the templates name, from kv or one catalogue listing.
fn sizes(e: &Env) -> Result<BTreeMap<String, (u32, u64)>, ProviderError> {
    let mut known = BTreeMap::new();
    let mut missing = false;
    for t in &e.templates {
        let cached = kv::get(&format!("size/{}/{}", e.region, t.vm_size))?
            .and_then(|v| v.split_once(',').and_then(|(c, m)| Some((c.parse().ok()?, m.parse().ok()?))));
        match cached {
            Some(info) => {
                known.insert(t.vm_size.clone(), info);
            }
            None => missing = true,
        }
    }
    if missing {
        for (name, cores, mib) in e.arm.vm_sizes(&e.region)? {
            if e.templates.iter().any(|t| t.vm_size == name) {
                kv::set(&format!("size/{}/{name}", e.region), &format!("{cores},{mib}"))?;
                known.insert(name, (cores, mib));
            }
        }
    }
    Ok(known)
}

fn template_out(t: &AzureTemplate, sizes: &BTreeMap<String, (u32, u64)>) -> Result<Template, ProviderError> {
    let (cores, mib) = *sizes.get(&t.vm_size).ok_or_else(|| {
        ProviderError::InvalidTemplate(format!(
            "template '{}': `vmType` {} is not a VM size offered in this region",
            t.id, t.vm_size
        ))
    })?;
    let mut attrs = vec![numeric("ncpus", cores), numeric("ncores", cores), numeric("nram", mib)];
    attrs.extend(ibm_attributes(&t.attributes, mib));
    let mut extra = json!({"vmType": t.vm_size});
    if let Some(p) = t.priority {
        extra["priority"] = json!(p);
    }
    if t.spot.is_some() {
        extra["vmPriority"] = json!("Spot");
    }
    Ok(Template {
        id: t.id.clone(),
        max_number: t.max_number,
        available_number: None,
        attributes: attrs,
        extra_json: Some(extra.to_string()),
    })
}

impl Guest for Azure {
    fn templates(ctx: CallContext) -> Result<Vec<Template>, ProviderError> {
        let e = env(&ctx)?;
        for (id, why) in &e.refused {
            warn(&format!("template '{id}' is not offered: {}", text_of(why)));
        }
        let sizes = sizes(&e)?;
        // availableNumber: maxNumber minus this provider instance's live VMs of the template,
        // from the kv ledger (no cloud call; built once from a listing).
        let mut held = Held::load()?;
        if !held.is_built() {
            rebuild(&e, &ctx, &mut held, false)?;
        }
        let mut out = Vec::with_capacity(e.templates.len());
        for t in &e.templates {
            let mut tpl = template_out(t, &sizes)?;
            if let Ok(max) = u32::try_from(t.max_number) {
                tpl.available_number = Some(max.saturating_sub(held.units_of(&t.id)));
            }
            out.push(tpl);
        }
        Ok(out)
    }

    fn request_machines(ctx: CallContext, req: ProvisionRequest) -> Result<ProvisionProgress, ProviderError> {
        let e = env(&ctx)?;
        let t = e.find(&req.template_id)?;
        // Written before anything is made: a kill from here on leaves the next status call
        // to finish the creation.
        kv::set(&creating_key(&req.request_id), &t.id)?;
        let vms = Listing::tagged(Some(&e.arm.vms(&t.resource_group)?), TAG_REQUEST, &req.request_id);
        let nics = Listing::tagged(Some(&e.arm.nics(&t.resource_group)?), TAG_REQUEST, &req.request_id);
        let p = drive(&e, t, &req, &ctx, vms, nics)?;
        Held::unread().saw(&t.id, &ledger_ids(&p.machines))?;
        Ok(p)
    }

    fn requests_status(
        ctx: CallContext,
        queries: Vec<StatusQuery>,
    ) -> Result<Vec<Result<ProvisionProgress, ProviderError>>, ProviderError> {
        let e = env(&ctx)?;
        // Read before the listings: what they show is newer than what it says.
        let mut held = Held::load()?;
        let groups = queries
            .iter()
            .filter_map(|q| e.find(&q.request.template_id).ok())
            .map(|t| t.resource_group.clone());
        // One VM and one NIC listing per resource group for every open request.
        let listing = Listing::of(&e, groups, true)?;
        let mut out = Vec::with_capacity(queries.len());
        for q in &queries {
            let req = &q.request;
            let answer = (|| {
                let t = e.find(&req.template_id)?;
                let vms = Listing::tagged(listing.vms.get(&t.resource_group), TAG_REQUEST, &req.request_id);
                let nics = Listing::tagged(listing.nics.get(&t.resource_group), TAG_REQUEST, &req.request_id);
                let mut p = if kv::get(&creating_key(&req.request_id))?.is_some() {
                    drive(&e, t, req, &ctx, vms, nics)?
                } else {
                    let ips = ips_of(&nics);
                    let mut machines = Vec::new();
                    for v in &vms {
                        machines.push(checked(&e, v, &ips, ctx.now)?);
                    }
                    ProvisionProgress {
                        machines,
                        outstanding: 0,
                        message: None,
                        units: None,
                    }
                };
                // Machines the host recorded that Azure no longer lists: gone (a failed one stays failed).
                for k in &q.known {
                    if !p.machines.iter().any(|m| m.machine_id.eq_ignore_ascii_case(&k.machine_id)) {
                        let mut m = k.clone();
                        if m.state != MachineState::Failed {
                            m.state = MachineState::Terminated;
                            m.message = Some(format!("VM {} no longer exists in Azure", k.name));
                        }
                        p.machines.push(m);
                    }
                }
                held.saw(&req.template_id, &ledger_ids(&p.machines))?;
                Ok(p)
            })();
            out.push(answer);
        }
        Ok(out)
    }

    fn release_machines(ctx: CallContext, return_id: String, machines: Vec<MachineRef>) -> Result<Vec<Machine>, ProviderError> {
        let e = env(&ctx)?;
        let _ = return_id;
        let (ours, others): (Vec<MachineRef>, Vec<MachineRef>) = machines.into_iter().partition(|m| {
            m.machine_id
                .as_deref()
                .is_some_and(|id| id.to_ascii_lowercase().starts_with("/subscriptions/"))
        });
        let mut out: Vec<Machine> = others
            .iter()
            .map(|m| {
                gone(
                    &m.name,
                    m.machine_id.as_deref().unwrap_or_default(),
                    ctx.now,
                    "not an Azure VM this provider made",
                )
            })
            .collect();
        // Every delete on its way at once.
        let calls: Vec<(&str, String, Option<Value>)> = ours
            .iter()
            .map(|m| {
                (
                    "DELETE",
                    format!("{}?api-version={COMPUTE_API}", m.machine_id.as_deref().unwrap_or_default()),
                    None,
                )
            })
            .collect();
        let mut held = Held::unread();
        for (m, r) in ours.into_iter().zip(e.arm.call_all(&calls)) {
            let id = m.machine_id.unwrap_or_default();
            let a = r?;
            held.ended(&id.to_ascii_lowercase())?;
            let state = match a.status {
                200 | 202 => MachineState::Stopping,
                204 | 404 => MachineState::Terminated,
                s => return Err(arm::failure(&format!("DELETE {id}"), s, &a.body)),
            };
            out.push(Machine {
                machine_id: id,
                name: m.name,
                private_ip: String::new(),
                public_ip: None,
                launch_time: ctx.now,
                state,
                message: None,
            });
        }
        Ok(out)
    }

    fn release_status(ctx: CallContext, return_id: String, known: Vec<Machine>) -> Result<Vec<Machine>, ProviderError> {
        let e = env(&ctx)?;
        let _ = return_id;
        let mut held = Held::load()?;
        for m in &known {
            held.ended(&m.machine_id.to_ascii_lowercase())?;
        }
        let open = |m: &Machine| m.state != MachineState::Terminated && m.machine_id.to_ascii_lowercase().starts_with("/subscriptions/");
        let vm_path = |m: &Machine| format!("{}?api-version={COMPUTE_API}", m.machine_id);
        // Where each VM is: one GET each, all on their way at once.
        let gets: Vec<(&str, String, Option<Value>)> = known.iter().filter(|m| open(m)).map(|m| ("GET", vm_path(m), None)).collect();
        let mut answers = e.arm.call_all(&gets).into_iter();
        let mut out = Vec::with_capacity(known.len());
        let (mut gone_vms, mut again) = (Vec::new(), Vec::new());
        for mut m in known {
            if !open(&m) {
                out.push(m);
                continue;
            }
            let a = answers
                .next()
                .unwrap_or_else(|| Err(ProviderError::Internal("one answer per GET".into())))?;
            match a.status {
                // The VM is gone; its NIC goes with it (deleteOption), or now (below).
                404 => gone_vms.push(out.len()),
                200 => {
                    if a.body["properties"]["provisioningState"].as_str() != Some("Deleting") {
                        // A delete lost to a kill: ask again.
                        again.push(("DELETE", vm_path(&m), None));
                    }
                    m.state = MachineState::Stopping;
                }
                s => return Err(arm::failure(&format!("GET {}", m.machine_id), s, &a.body)),
            }
            out.push(m);
        }
        // A failed re-delete is asked again by the next status call.
        let _ = e.arm.call_all(&again);
        let nic_deletes: Vec<(&str, String, Option<Value>)> = gone_vms
            .iter()
            .map(|i| {
                let nic = out[*i]
                    .machine_id
                    .replace("/Microsoft.Compute/virtualMachines/", "/Microsoft.Network/networkInterfaces/");
                ("DELETE", format!("{}?api-version={NETWORK_API}", nic_name(&nic)), None)
            })
            .collect();
        for (i, d) in gone_vms.into_iter().zip(e.arm.call_all(&nic_deletes)) {
            out[i].state = match d {
                Ok(d) if matches!(d.status, 200 | 202 | 204 | 404) => MachineState::Terminated,
                _ => MachineState::Stopping,
            };
        }
        Ok(out)
    }

    fn owned_machines(ctx: CallContext) -> Result<Vec<OwnedMachine>, ProviderError> {
        let e = env(&ctx)?;
        // The orphan scan's listing is also when the ledger is made exact again.
        let mut held = Held::load()?;
        let listing = rebuild(&e, &ctx, &mut held, true)?;
        let ips = ips_of(&listing.nics.values().flatten().cloned().collect::<Vec<_>>());
        // The orphan scan's listing is also when per-VM notes of VMs that are gone go.
        let live: BTreeSet<&str> = listing.vms.values().flatten().filter_map(|v| v["name"].as_str()).collect();
        for prefix in ["op/", "failed/"] {
            for (key, _) in kv::scan(prefix)? {
                if !live.contains(&key[prefix.len()..]) {
                    kv::delete(&key)?;
                }
            }
        }
        Ok(listing
            .vms
            .values()
            .flatten()
            .filter(|v| tag(v, TAG_PROVIDER) == Some(ctx.provider_instance.as_str()))
            .filter_map(|v| {
                Some(OwnedMachine {
                    request_id: tag(v, TAG_REQUEST)?.to_string(),
                    store_id: tag(v, TAG_STORE).map(str::to_string),
                    machine: machine(v, &ips, None, ctx.now),
                })
            })
            .collect())
    }

    fn reclaim_candidates(ctx: CallContext, machines: Vec<MachineRef>) -> Result<Vec<Reclaim>, ProviderError> {
        let e = env(&ctx)?;
        let ours: Vec<&MachineRef> = machines
            .iter()
            .filter(|m| {
                m.machine_id
                    .as_deref()
                    .is_some_and(|id| id.to_ascii_lowercase().starts_with("/subscriptions/"))
            })
            .collect();
        if ours.is_empty() {
            return Ok(Vec::new());
        }
        let mut held = Held::load()?;
        let listing = Listing::of(&e, e.templates.iter().map(|t| t.resource_group.clone()), false)?;
        let by_id: BTreeMap<String, &Value> = listing
            .vms
            .values()
            .flatten()
            .filter_map(|v| Some((v["id"].as_str()?.to_ascii_lowercase(), v)))
            .collect();
        let mut out = Vec::new();
        for m in ours {
            let id = m.machine_id.clone().unwrap_or_default();
            let reclaimed = match by_id.get(&id.to_ascii_lowercase()) {
                // Gone: a Spot VM evicted with policy Delete, or deleted behind HostFactory's back.
                None => true,
                // A Spot VM evicted with policy Deallocate.
                Some(v) => v["properties"]["priority"].as_str() == Some("Spot") && matches!(power(v), Some("deallocated" | "deallocating")),
            };
            if !by_id.contains_key(&id.to_ascii_lowercase()) {
                held.ended(&id.to_ascii_lowercase())?;
            }
            if reclaimed {
                out.push(Reclaim {
                    name: m.name.clone(),
                    machine_id: Some(id),
                    grace_period: 0,
                });
            }
        }
        Ok(out)
    }
}

/// The text of a provider error.
fn text_of(e: &ProviderError) -> &str {
    let (ProviderError::InvalidTemplate(m)
    | ProviderError::InvalidInput(m)
    | ProviderError::Capacity(m)
    | ProviderError::Unavailable(m)
    | ProviderError::Denied(m)
    | ProviderError::Internal(m)) = e;
    m
}

fn gone(name: &str, id: &str, now: u64, why: &str) -> Machine {
    Machine {
        machine_id: id.to_string(),
        name: name.to_string(),
        private_ip: String::new(),
        public_ip: None,
        launch_time: now,
        state: MachineState::Terminated,
        message: Some(why.to_string()),
    }
}

hfwasm_guest_sdk::export!(Azure);
