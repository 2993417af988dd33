//! The store's content as one plain document: the JSON store's file format, the format of
//! `hfwasm store export/import`, and the in-memory model the JSON store edits. Rows read
//! from SQL come through the same [`StoredRequest`] / [`StoredMachine`] types, so each
//! stored spelling is parsed (and a corrupt one reported) in one place.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{Phase, RequestKind, RequestRecord, StoreError};
use crate::domain::lifecycle::RequestStatus;
use crate::domain::model::{Machine, MachineState};

/// Everything a store holds, in a form people can read and tools can move between backends.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Document {
    /// Schema version of the writer (see [`super::SCHEMA_VERSION`]).
    pub schema_version: i64,
    /// Requests with their machines, oldest first.
    #[serde(default)]
    pub requests: Vec<StoredRequest>,
    /// Guests' kv entries: namespace → key → value.
    #[serde(default)]
    pub kv: BTreeMap<String, BTreeMap<String, String>>,
}

/// One request row with its machines, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredRequest {
    /// Request id.
    pub id: String,
    /// `provision` or `return`.
    pub kind: String,
    /// Template (provision only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template_id: Option<String>,
    /// Units requested or hosts to return.
    pub count: u32,
    /// LSF `rc_account`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rc_account: Option<String>,
    /// `accepted` or `submitted`.
    pub phase: String,
    /// `running`, `complete` or `complete_with_error`.
    pub status: String,
    /// Units the provider still seeks.
    pub outstanding: u32,
    /// Message for HostFactory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Creation time, epoch seconds.
    pub created_at: u64,
    /// Last change, epoch seconds.
    pub updated_at: u64,
    /// HostFactory asked about it (documents older than schema 3 lack it: claimed).
    #[serde(default = "claimed_by_default")]
    pub claimed: bool,
    /// Its machines, in the order first recorded.
    #[serde(default)]
    pub machines: Vec<StoredMachine>,
}

/// One machine row, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredMachine {
    /// Provider id.
    pub machine_id: String,
    /// Host name.
    pub name: String,
    /// Private address.
    pub private_ip: String,
    /// Public address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_ip: Option<String>,
    /// Launch time, epoch seconds.
    pub launch_time: u64,
    /// Provider state (`pending`, `running`, ...).
    pub state: String,
    /// Failure reason or detail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

fn claimed_by_default() -> bool {
    true
}

impl StoredMachine {
    /// The stored form of `m`.
    pub fn from_machine(m: &Machine) -> Self {
        Self {
            machine_id: m.machine_id.clone(),
            name: m.name.clone(),
            private_ip: m.private_ip.clone(),
            public_ip: m.public_ip.clone(),
            launch_time: m.launch_time,
            state: m.state.as_str().to_string(),
            message: m.message.clone(),
        }
    }

    /// Back to the domain type; `location` names the store in a corruption error.
    pub fn to_machine(&self, location: &str) -> Result<Machine, StoreError> {
        let state = MachineState::parse(&self.state).ok_or_else(|| StoreError::Corrupt {
            location: location.to_string(),
            message: format!("machine {}: unknown state '{}'", self.machine_id, self.state),
        })?;
        Ok(Machine {
            machine_id: self.machine_id.clone(),
            name: self.name.clone(),
            private_ip: self.private_ip.clone(),
            public_ip: self.public_ip.clone(),
            launch_time: self.launch_time,
            state,
            message: self.message.clone(),
        })
    }
}

impl StoredRequest {
    /// The stored form of `rec` with `machines`.
    pub fn from_record(rec: &RequestRecord, machines: &[Machine]) -> Self {
        Self {
            id: rec.id.clone(),
            kind: rec.kind.as_str().to_string(),
            template_id: rec.template_id.clone(),
            count: rec.count,
            rc_account: rec.rc_account.clone(),
            phase: rec.phase.as_str().to_string(),
            status: rec.status.as_str().to_string(),
            outstanding: rec.outstanding,
            message: rec.message.clone(),
            created_at: rec.created_at,
            updated_at: rec.updated_at,
            claimed: rec.claimed,
            machines: machines.iter().map(StoredMachine::from_machine).collect(),
        }
    }

    /// Back to the domain record; `location` names the store in a corruption error.
    pub fn to_record(&self, location: &str) -> Result<RequestRecord, StoreError> {
        let corrupt = |message: String| StoreError::Corrupt {
            location: location.to_string(),
            message: format!("request {}: {message}", self.id),
        };
        let kind = match self.kind.as_str() {
            "provision" => RequestKind::Provision,
            "return" => RequestKind::Return,
            other => return Err(corrupt(format!("unknown kind '{other}'"))),
        };
        let phase = match self.phase.as_str() {
            "accepted" => Phase::Accepted,
            "submitted" => Phase::Submitted,
            other => return Err(corrupt(format!("unknown phase '{other}'"))),
        };
        let status = RequestStatus::parse(&self.status).ok_or_else(|| corrupt(format!("unknown status '{}'", self.status)))?;
        Ok(RequestRecord {
            id: self.id.clone(),
            kind,
            template_id: self.template_id.clone(),
            count: self.count,
            rc_account: self.rc_account.clone(),
            phase,
            status,
            outstanding: self.outstanding,
            message: self.message.clone(),
            created_at: self.created_at,
            updated_at: self.updated_at,
            claimed: self.claimed,
        })
    }

    /// The machines as domain values.
    pub fn to_machines(&self, location: &str) -> Result<Vec<Machine>, StoreError> {
        self.machines.iter().map(|m| m.to_machine(location)).collect()
    }

    /// True when the sweep must settle it: its call died before HostFactory learnt its id,
    /// or it is an open return HostFactory never polled, not updated since `before`.
    pub fn is_orphaned(&self, before: u64) -> bool {
        (self.created_at < before && (self.phase == "accepted" || (self.kind == "provision" && !self.claimed)))
            || (self.kind == "return" && !self.claimed && self.status == "running" && self.updated_at < before)
    }

    /// True for a request HostFactory will not ask about again (final status).
    pub fn is_finished(&self) -> bool {
        RequestStatus::parse(&self.status).is_some_and(RequestStatus::is_final)
    }
}

/// Whether finished request `r` may be pruned without forgetting a machine the cluster
/// still uses: the rule of [`super::StateStore::prune_finished`] for the JSON store (the
/// SQL stores state the same rule in `prune_sql`).
pub fn releasable(doc: &Document, r: &StoredRequest) -> bool {
    let returned_later = |name: &str| {
        doc.requests
            .iter()
            .any(|x| x.kind == "return" && x.created_at > r.created_at && x.is_finished() && x.machines.iter().any(|m| m.name == name))
    };
    if r.kind == "provision" {
        r.machines
            .iter()
            .all(|m| matches!(m.state.as_str(), "terminated" | "failed") || returned_later(&m.name))
    } else {
        !r.machines.iter().any(|rm| {
            doc.requests
                .iter()
                .any(|p| p.kind == "provision" && p.created_at <= r.created_at && p.machines.iter().any(|pm| pm.name == rm.name))
        })
    }
}

/// Machines of a request updated by `machines`: rows matched by machine id are replaced,
/// new ones appended, rows not mentioned kept — the same rule the SQL backends apply.
pub fn upsert_machines(stored: &mut Vec<StoredMachine>, machines: &[Machine]) {
    for m in machines {
        let new = StoredMachine::from_machine(m);
        match stored.iter_mut().find(|s| s.machine_id == m.machine_id) {
            Some(s) => *s = new,
            None => stored.push(new),
        }
    }
}

/// Counts and problems found in a store, for `hfwasm store check`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// Requests by kind and status (`provision/running` → n).
    pub requests: BTreeMap<String, usize>,
    /// Machine rows in all.
    pub machines: usize,
    /// Machines by state, of requests still open.
    pub open_machines: BTreeMap<String, usize>,
    /// Requests recorded but never answered (`accepted`).
    pub accepted: usize,
    /// kv entries in all.
    pub kv_entries: usize,
    /// What does not add up (each names the request or entry).
    pub problems: Vec<String>,
}

impl Document {
    /// Assembles a document from SQL rows: requests in order, machine rows as
    /// (request id, machine) in each request's order, kv rows as (namespace, key, value).
    pub fn from_rows(mut requests: Vec<StoredRequest>, machines: Vec<(String, StoredMachine)>, kv: Vec<(String, String, String)>) -> Self {
        let index: std::collections::HashMap<String, usize> = requests.iter().enumerate().map(|(i, r)| (r.id.clone(), i)).collect();
        for (id, m) in machines {
            if let Some(&i) = index.get(&id) {
                requests[i].machines.push(m);
            }
        }
        let mut doc = Document {
            schema_version: super::SCHEMA_VERSION,
            requests,
            kv: BTreeMap::new(),
        };
        for (ns, k, v) in kv {
            doc.kv.entry(ns).or_default().insert(k, v);
        }
        doc
    }

    /// Counts and consistency problems of this content; `location` names the store.
    pub fn summary(&self, location: &str) -> Summary {
        let mut s = Summary::default();
        let mut seen = std::collections::HashSet::new();
        for r in &self.requests {
            if !seen.insert(r.id.as_str()) {
                s.problems.push(format!("request {} is stored twice", r.id));
            }
            if let Err(e) = r.to_record(location).and_then(|_| r.to_machines(location)) {
                s.problems.push(e.to_string());
            }
            *s.requests.entry(format!("{}/{}", r.kind, r.status)).or_default() += 1;
            s.machines += r.machines.len();
            if r.phase == "accepted" {
                s.accepted += 1;
            }
            if !r.is_finished() {
                for m in &r.machines {
                    *s.open_machines.entry(m.state.clone()).or_default() += 1;
                }
            }
            let mut ids = std::collections::HashSet::new();
            for m in &r.machines {
                if !ids.insert(m.machine_id.as_str()) {
                    s.problems
                        .push(format!("request {}: machine {} is stored twice", r.id, m.machine_id));
                }
            }
        }
        s.kv_entries = self.kv.values().map(BTreeMap::len).sum();
        s
    }
}
