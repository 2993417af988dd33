//! The pool: inventory hosts grouped into templates, leases in kv, power commands.

use hfwasm_guest_sdk::*;
use std::collections::BTreeMap;

/// Machine type reported when the inventory gives none.
const DEFAULT_TYPE: &str = "X86_64";

/// kv key holding the id of the request that leased `host`.
pub fn lease_key(host: &str) -> String {
    format!("lease/{host}")
}

/// kv value marking a host as being powered off by return request `return_id`.
pub fn release_marker(return_id: &str) -> String {
    format!("return:{return_id}")
}

/// All inventory hosts, as the host parsed them.
pub struct Pool {
    hosts: Vec<inventory::InventoryHost>,
    /// Host name → position in `hosts`.
    by_name: std::collections::HashMap<String, usize>,
}

thread_local! {
    /// The inventory does not change within one HostFactory call (the host reads it once per
    /// process), and one call may ask about a thousand requests: read it once per instance.
    static POOL: std::cell::RefCell<Option<std::rc::Rc<Pool>>> = const { std::cell::RefCell::new(None) };
}

/// Hosts of one template, in inventory order, and the template's attributes.
pub struct Group<'a> {
    pub id: String,
    pub hosts: Vec<&'a inventory::InventoryHost>,
    pub attributes: Vec<Attribute>,
}

fn attr<'a>(host: &'a inventory::InventoryHost, key: &str) -> Option<&'a str> {
    host.attributes.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// The shape of a host as HostFactory attributes, `type`/`ncpus`/`nram` first.
fn shape(host: &inventory::InventoryHost) -> Result<Vec<Attribute>, ProviderError> {
    let number = |key: &str| -> Result<u64, ProviderError> {
        let v = attr(host, key).ok_or_else(|| {
            ProviderError::InvalidTemplate(format!(
                "inventory host '{}' has no {key}= (needed for HostFactory's {key} attribute)",
                host.name
            ))
        })?;
        v.parse::<u64>()
            .map_err(|_| ProviderError::InvalidTemplate(format!("inventory host '{}': {key}={v} is not a whole number", host.name)))
    };
    let mut attrs = vec![
        text("type", attr(host, "type").unwrap_or(DEFAULT_TYPE)),
        numeric("ncpus", number("ncpus")?),
        numeric("nram", number("nram")?),
    ];
    for (k, v) in &host.attributes {
        if matches!(k.as_str(), "type" | "ncpus" | "nram") {
            continue;
        }
        if v.parse::<f64>().is_ok_and(f64::is_finite) {
            attrs.push(numeric(k, v));
        } else {
            attrs.push(text(k, v));
        }
    }
    Ok(attrs)
}

fn describe(attrs: &[Attribute]) -> String {
    attrs
        .iter()
        .map(|a| format!("{}={}", a.name, a.value))
        .collect::<Vec<_>>()
        .join(" ")
}

impl Pool {
    /// The inventory, read through the host on first use in this instance.
    pub fn load() -> Result<std::rc::Rc<Self>, ProviderError> {
        if let Some(p) = POOL.with(|c| c.borrow().clone()) {
            return Ok(p);
        }
        let hosts = inventory::hosts()?;
        let by_name = hosts.iter().enumerate().map(|(i, h)| (h.name.clone(), i)).collect();
        let pool = std::rc::Rc::new(Self { hosts, by_name });
        POOL.with(|c| *c.borrow_mut() = Some(pool.clone()));
        Ok(pool)
    }

    /// The inventory entry for `name`.
    pub fn host(&self, name: &str) -> Option<&inventory::InventoryHost> {
        self.by_name.get(name).and_then(|&i| self.hosts.get(i))
    }

    /// Groups hosts into templates: by assigned `template`, else by identical shape
    /// (id `pool-<ncpus>cpu-<nram>mb`, plus the type when it is not X86_64).
    pub fn groups(&self) -> Result<Vec<Group<'_>>, ProviderError> {
        let mut groups: Vec<Group<'_>> = Vec::new();
        for host in &self.hosts {
            let attrs = shape(host)?;
            let id = match &host.template {
                Some(t) => t.clone(),
                None => derived_id(&attrs),
            };
            match groups.iter_mut().find(|g| g.id == id) {
                Some(g) => {
                    if g.attributes != attrs {
                        return Err(ProviderError::InvalidTemplate(format!(
                            "template '{id}' mixes host shapes: '{}' has {} but '{}' has {}; give them different templates",
                            g.hosts[0].name,
                            describe(&g.attributes),
                            host.name,
                            describe(&attrs)
                        )));
                    }
                    g.hosts.push(host);
                }
                None => groups.push(Group {
                    id,
                    hosts: vec![host],
                    attributes: attrs,
                }),
            }
        }
        Ok(groups)
    }

    /// The group for `template_id`, or an error naming the templates that exist.
    pub fn group(&self, template_id: &str) -> Result<Group<'_>, ProviderError> {
        let groups = self.groups()?;
        let names: Vec<String> = groups.iter().map(|g| g.id.clone()).collect();
        groups.into_iter().find(|g| g.id == template_id).ok_or_else(|| {
            ProviderError::InvalidTemplate(format!(
                "template '{template_id}' not found; the inventory defines: {}",
                names.join(", ")
            ))
        })
    }

    /// HostFactory templates with true counts: `maxNumber` = hosts in the group,
    /// `availableNumber` = those not leased.
    pub fn templates(&self, leased: &BTreeMap<String, String>) -> Result<Vec<Template>, ProviderError> {
        Ok(self
            .groups()?
            .into_iter()
            .map(|g| {
                let free = g.hosts.iter().filter(|h| !leased.contains_key(&h.name)).count();
                Template {
                    id: g.id,
                    max_number: i32::try_from(g.hosts.len()).unwrap_or(i32::MAX),
                    available_number: Some(u32::try_from(free).unwrap_or(u32::MAX)),
                    attributes: g.attributes,
                    extra_json: None,
                }
            })
            .collect())
    }
}

fn derived_id(attrs: &[Attribute]) -> String {
    let get = |n: &str| attrs.iter().find(|a| a.name == n).map(|a| a.value.as_str()).unwrap_or("");
    let mut id = format!("pool-{}cpu-{}mb", get("ncpus"), get("nram"));
    let ty = get("type");
    if ty != DEFAULT_TYPE {
        id.push('-');
        id.extend(
            ty.chars()
                .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }),
        );
    }
    id
}

/// Host name → request id (or return marker) for every leased host.
pub fn leased_hosts() -> Result<BTreeMap<String, String>, ProviderError> {
    Ok(kv::scan("lease/")?
        .into_iter()
        .filter_map(|(k, v)| k.strip_prefix("lease/").map(|h| (h.to_string(), v)))
        .collect())
}

/// The machine id of `host` while leased to `request_id`: one id per lease, so a return
/// names the lease it ends and can never end a later one (a return a killed call left
/// behind, carried out after the host was freed and leased again).
pub fn lease_machine_id(host: &str, request_id: &str) -> String {
    format!("{host}@{request_id}")
}

/// The request whose lease `machine_id` names; None for ids without one (hfwasm before
/// 0.2 used the bare host name).
fn lease_of(machine_id: &str) -> Option<&str> {
    machine_id.split_once('@').map(|(_, r)| r).filter(|r| !r.is_empty())
}

fn machine(host: &inventory::InventoryHost, request_id: &str, now: u64, state: MachineState, message: Option<String>) -> Machine {
    Machine {
        machine_id: lease_machine_id(&host.name, request_id),
        name: host.name.clone(),
        private_ip: host.ip.clone(),
        public_ip: None,
        launch_time: now,
        state,
        message,
    }
}

/// A host this request already holds, as found again after a crash: pending while a
/// power-on command may still have to run (advance_pending starts or checks it).
pub fn held_machine(host: &inventory::InventoryHost, request_id: &str, now: u64) -> Machine {
    let state = if host.has_power_on {
        MachineState::Pending
    } else {
        MachineState::Running
    };
    machine(host, request_id, now, state, None)
}

/// A freshly leased host: running at once, or pending while its power-on command runs.
pub fn start_host(host: &inventory::InventoryHost, request_id: &str, now: u64) -> Machine {
    if !host.has_power_on {
        return machine(host, request_id, now, MachineState::Running, None);
    }
    match power::start(&host.name, power::Action::On) {
        Ok(state) => power_on_outcome(machine(host, request_id, now, MachineState::Pending, None), state),
        Err(e) => {
            let msg = match e {
                power::PowerError::Denied(m) | power::PowerError::SpawnFailed(m) => m,
            };
            machine(
                host,
                request_id,
                now,
                MachineState::Failed,
                Some(format!("power-on command could not start: {msg}")),
            )
        }
    }
}

fn power_on_outcome(mut m: Machine, state: power::CommandState) -> Machine {
    match state {
        power::CommandState::NotConfigured | power::CommandState::Succeeded => m.state = MachineState::Running,
        power::CommandState::Running | power::CommandState::NotStarted => m.state = MachineState::Pending,
        power::CommandState::Failed(msg) => {
            m.state = MachineState::Failed;
            m.message = Some(format!("power-on command failed: {msg}"));
        }
    }
    m
}

/// Moves a pending machine on once its power-on command finished. A host whose command
/// failed is handed back to the pool (its lease dropped) and reported failed.
pub fn advance_pending(pool: &Pool, mut m: Machine, request_id: &str) -> Machine {
    if m.state != MachineState::Pending {
        return m;
    }
    // A host is this request's only while its lease says so: the host may have released it
    // (its pending timeout passed, in a call killed before that call recorded it failed).
    // Checked first, so nothing is powered on for a lease that ended.
    match kv::get(&lease_key(&m.name)) {
        Ok(Some(holder)) if holder == request_id => {}
        Ok(holder) => {
            m.state = MachineState::Failed;
            m.message = Some(format!(
                "released before it was ready{}; not this request's any more",
                holder.map(|h| format!(" (lease now '{h}')")).unwrap_or_default()
            ));
            return m;
        }
        Err(e) => {
            warn(&format!("could not read the lease of '{}': {e:?}; asking again next time", m.name));
            return m;
        }
    }
    let state = match power::state(&m.name, power::Action::On) {
        power::CommandState::NotStarted if pool.host(&m.name).is_some() => {
            // A crash after the lease but before the command started: start it now.
            power::start(&m.name, power::Action::On).unwrap_or_else(|e| match e {
                power::PowerError::Denied(x) | power::PowerError::SpawnFailed(x) => power::CommandState::Failed(x),
            })
        }
        s => s,
    };
    let m = power_on_outcome(m, state);
    if m.state == MachineState::Failed
        && let Err(e) = kv::delete_if_equals(&lease_key(&m.name), request_id)
    {
        warn(&format!("could not release lease of failed host '{}': {e:?}", m.name));
    }
    m
}

/// Starts returning one host: powers it off (if it has a command) and marks its lease as
/// being returned; the lease is freed once the command succeeded. Unknown or already
/// released hosts are reported terminated; a host another return is already releasing
/// reports that return's progress, so a retried return converges with the one a killed
/// call started.
pub fn release_host(pool: &Pool, r: &MachineRef, return_id: &str, now: u64) -> Result<Machine, ProviderError> {
    let m = Machine {
        machine_id: r.machine_id.clone().unwrap_or_else(|| r.name.clone()),
        name: r.name.clone(),
        private_ip: pool.host(&r.name).map(|h| h.ip.clone()).unwrap_or_default(),
        public_ip: None,
        launch_time: now,
        state: MachineState::Stopping,
        message: None,
    };
    release_step(pool, m, return_id, true)
}

/// Moves a stopping machine on: once the power-off command of the host succeeded (or it has
/// none), the lease is freed and only then is the machine `terminated`.
pub fn advance_release(pool: &Pool, m: Machine, return_id: &str) -> Result<Machine, ProviderError> {
    if m.state != MachineState::Stopping {
        return Ok(m);
    }
    release_step(pool, m, return_id, false)
}

/// True for a lease value that marks a host being returned.
fn is_release_marker(value: &str) -> bool {
    value.starts_with("return:")
}

/// One step of releasing `m`, from whatever state its lease is in. `first` is the return's
/// own first call (its release-machines), when a lease of an id without a request is ended
/// too; later calls end only the lease the machine id names.
fn release_step(pool: &Pool, mut m: Machine, return_id: &str, first: bool) -> Result<Machine, ProviderError> {
    let key = lease_key(&m.name);
    let Some(mut holder) = kv::get(&key)? else {
        m.state = MachineState::Terminated;
        if first {
            m.message = Some("host was not leased; nothing to release".into());
        }
        return Ok(m);
    };
    if !is_release_marker(&holder) {
        match lease_of(&m.machine_id) {
            Some(lease) if lease != holder => {
                // That lease ended already (a return HostFactory retried finished it) and the
                // host belongs to a new request now: not this return's to take.
                m.state = MachineState::Terminated;
                m.message = Some("this lease was already released; the host has been leased again since".into());
                return Ok(m);
            }
            None if !first => {
                // Freed (by this or another return) and already leased to a new request.
                m.state = MachineState::Terminated;
                return Ok(m);
            }
            _ => {}
        }
        // The power-off starts before the lease is marked, so under a marker the command's
        // outcome is always this return's (a call killed in between leaves the request's
        // lease, and the retry starts the command again: at least once, never zero times).
        if pool.host(&m.name).is_some_and(|h| h.has_power_off)
            && let Err(power::PowerError::Denied(msg) | power::PowerError::SpawnFailed(msg)) = power::start(&m.name, power::Action::Off)
        {
            m.state = MachineState::Failed;
            m.message = Some(format!("power-off command could not start: {msg}"));
            return Ok(m);
        }
        // Swap the request's lease for this return's marker (kv has no compare-and-swap:
        // delete the value read, then insert). Lost the race: whoever changed it is
        // releasing the host (a concurrent return), or it was freed and leased again; the
        // next step sees which.
        let marker = release_marker(return_id);
        if !(kv::delete_if_equals(&key, &holder)? && kv::insert_if_absent(&key, &marker)?) {
            return Ok(m);
        }
        holder = marker;
    }
    let restart = || {
        power::start(&m.name, power::Action::Off).unwrap_or_else(|e| match e {
            power::PowerError::Denied(x) | power::PowerError::SpawnFailed(x) => power::CommandState::Failed(x),
        })
    };
    let state = match power::state(&m.name, power::Action::Off) {
        // Its outcome was cleared (a power-run lost, or a power-on since): start it again.
        // Hosts without a power-off command report NotConfigured and are freed at once.
        power::CommandState::NotStarted => restart(),
        // A new return of a host whose power-off failed tries it again.
        power::CommandState::Failed(_) if first => restart(),
        s => s,
    };
    match state {
        power::CommandState::NotConfigured | power::CommandState::Succeeded => {
            // Only a freed lease makes a terminated machine; lost the race: the next call sees.
            if kv::delete_if_equals(&key, &holder)? {
                m.state = MachineState::Terminated;
            }
        }
        power::CommandState::Running | power::CommandState::NotStarted => {}
        power::CommandState::Failed(msg) => {
            // Keep the host out of the pool: it may still be running half-configured.
            m.state = MachineState::Failed;
            m.message = Some(format!(
                "power-off command failed: {msg}; host kept out of the pool (lease '{key}' held by '{holder}')"
            ));
        }
    }
    Ok(m)
}
