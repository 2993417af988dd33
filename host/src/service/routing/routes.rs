//! Which provider made which machine: a request's routing record (its legs, each a
//! provider, the units it took on and the machines it made) in the store, and attributing
//! hosts HostFactory names to their makers across calls.

use super::*;

/// The part of a request one provider was asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Leg {
    /// Member name.
    pub(super) provider: String,
    /// Units it was asked for and took on (0 once it refused).
    pub(super) count: u32,
    /// Ids of the machines it made for the request.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(super) machines: Vec<String>,
}

impl Route {
    /// Adds the ids of `machines` to `provider`'s leg; true when something was new.
    pub(super) fn add(&mut self, provider: &str, machines: &[Machine]) -> bool {
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
    pub(super) fn maker(&self, id: &str) -> Option<&str> {
        self.legs
            .iter()
            .find(|l| l.machines.iter().any(|m| m == id))
            .map(|l| l.provider.as_str())
    }
}

/// A request's routing record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Route {
    pub(super) legs: Vec<Leg>,
}

/// Distinct requests whose routes one attribution needs, beyond which the router reads all
/// routes in one scan rather than one record each (a round trip each on PostgreSQL).
pub(super) const ROUTE_SCAN_AT: usize = 8;

pub(super) const REQ: &str = "req/";

impl<'a> Router<'a> {
    /// Request `request_id`'s route, read once per call (a reclaim check over many hosts
    /// of one request reads it once).
    pub(super) fn route(&self, request_id: &str) -> Result<Option<Route>, ProviderError> {
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

    pub(super) fn save_route(&self, request_id: &str, route: &Route) -> Result<(), ProviderError> {
        let v = serde_json::to_string(route).map_err(|e| ProviderError::Internal(e.to_string()))?;
        self.store
            .kv_set(&self.namespace(), &format!("{REQ}{request_id}"), &v)
            .map_err(Self::store_err)?;
        self.routes.borrow_mut().insert(request_id.to_string(), Some(route.clone()));
        Ok(())
    }

    /// Records in request `request_id`'s route that member `i` made `machines`.
    pub(super) fn own(&mut self, request_id: &str, i: usize, machines: &[Machine]) -> Result<(), ProviderError> {
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
    pub(super) fn prefetch<'h>(&mut self, hosts: impl Iterator<Item = (Option<&'h str>, &'h str)>) -> Result<(), ProviderError> {
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
    pub(super) fn owner(&mut self, machine_id: Option<&str>, name: &str) -> Result<Option<usize>, ProviderError> {
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
    pub(super) fn prune_routes(&self) -> Result<usize, ProviderError> {
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
    pub(super) fn group_refs(&mut self, refs: &[MachineRef]) -> Result<(Vec<(usize, Vec<MachineRef>)>, Vec<MachineRef>), ProviderError> {
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
}

/// A machine to return that no provider is recorded for.
pub(super) fn unattributed(r: MachineRef, now: u64) -> Machine {
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

/// Machine id -> the provider whose leg made it, from the routing records of an instance
/// (kv namespace `hfwasm.route/<instance>`, key -> record): how `hfwasm machines` names each
/// machine's provider. Records that do not parse are skipped (the router logs them when it
/// reads them).
pub fn machine_makers(records: &std::collections::BTreeMap<String, String>) -> HashMap<String, String> {
    let mut makers = HashMap::new();
    for value in records.values() {
        if let Ok(route) = serde_json::from_str::<Route>(value) {
            for leg in route.legs {
                for id in leg.machines {
                    makers.insert(id, leg.provider.clone());
                }
            }
        }
    }
    makers
}
