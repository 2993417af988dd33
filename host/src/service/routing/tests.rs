//! The router with scripted members: top-ups, status and returns reach each maker.

//! The router against two scripted member providers and a real SQLite store: what it
//! asks each member for, and that every later call on a machine reaches the member that
//! made it, in this call and in the next process (routes are in the store).

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use super::*;
use crate::store::SqliteStore;

/// What one scripted member did: counts asked for, host names released, machine ids
/// asked about.
#[derive(Default)]
struct Log {
    asked: Vec<u32>,
    released: Vec<String>,
    status_of: Vec<String>,
}

/// A member offering template `t` with `free` hosts; its machines are `<name>-<n>`.
struct Scripted {
    name: &'static str,
    free: u32,
    log: Rc<RefCell<Log>>,
}

fn machine(id: &str, state: MachineState) -> Machine {
    Machine {
        machine_id: id.into(),
        name: format!("{id}.example"),
        private_ip: "10.0.0.1".into(),
        public_ip: None,
        launch_time: 1,
        state,
        message: None,
    }
}

impl Provider for Scripted {
    fn templates(&mut self, _: &CallContext) -> Result<Vec<Template>, ProviderError> {
        Ok(vec![Template {
            id: "t".into(),
            max_number: 10,
            available_number: Some(self.free),
            attributes: vec![
                Attribute {
                    name: "type".into(),
                    kind: AttributeKind::Text,
                    value: "X86_64".into(),
                },
                Attribute {
                    name: "ncpus".into(),
                    kind: AttributeKind::Numeric,
                    value: "2".into(),
                },
                Attribute {
                    name: "nram".into(),
                    kind: AttributeKind::Numeric,
                    value: "1024".into(),
                },
            ],
            extra: serde_json::Map::new(),
        }])
    }
    fn request_machines(&mut self, _: &CallContext, req: &ProvisionRequest) -> Result<ProvisionProgress, ProviderError> {
        self.log.borrow_mut().asked.push(req.count);
        let n = req.count.min(self.free);
        Ok(ProvisionProgress {
            machines: (0..n)
                .map(|i| machine(&format!("{}-{i}", self.name), MachineState::Running))
                .collect(),
            outstanding: 0,
            message: None,
            units: None,
        })
    }
    fn requests_status(
        &mut self,
        _: &CallContext,
        queries: &[StatusQuery],
    ) -> Result<Vec<Result<ProvisionProgress, ProviderError>>, ProviderError> {
        let mut log = self.log.borrow_mut();
        Ok(queries
            .iter()
            .map(|q| {
                log.status_of.extend(q.known.iter().map(|m| m.machine_id.clone()));
                Ok(ProvisionProgress {
                    machines: q.known.clone(),
                    outstanding: 0,
                    message: None,
                    units: None,
                })
            })
            .collect())
    }
    fn release_machines(&mut self, _: &CallContext, _: &str, machines: &[MachineRef]) -> Result<Vec<Machine>, ProviderError> {
        let mut log = self.log.borrow_mut();
        Ok(machines
            .iter()
            .map(|r| {
                log.released.push(r.name.clone());
                let id = r
                    .machine_id
                    .clone()
                    .unwrap_or_else(|| r.name.trim_end_matches(".example").to_string());
                machine(&id, MachineState::Terminated)
            })
            .collect())
    }
    fn release_status(&mut self, _: &CallContext, _: &str, known: &[Machine]) -> Result<Vec<Machine>, ProviderError> {
        Ok(known.to_vec())
    }
    fn owned_machines(&mut self, _: &CallContext) -> Result<Vec<OwnedMachine>, ProviderError> {
        Ok(Vec::new())
    }
    fn reclaim_candidates(&mut self, _: &CallContext, _: &[MachineRef]) -> Result<Vec<Reclaim>, ProviderError> {
        Ok(Vec::new())
    }
}

fn info(name: &str, priority: u32) -> Member {
    Member {
        name: name.into(),
        kind: "scripted".into(),
        priority,
        weight: 1,
        cost_threshold: None,
        settings: serde_json::json!({}),
    }
}

/// A router over members `a` (priority 1, 2 hosts free) and `b` (priority 2, 5 free).
fn router<'a>(store: &Arc<dyn StateStore>, a: &Rc<RefCell<Log>>, b: &Rc<RefCell<Log>>) -> Router<'a> {
    let member = |name: &'static str, free: u32, log: &Rc<RefCell<Log>>| -> ProviderLoader<'a> {
        let log = log.clone();
        Box::new(move || Ok(Box::new(Scripted { name, free, log }) as Box<dyn Provider>))
    };
    Router::new(
        store.clone(),
        "inst",
        vec![(info("a", 1), member("a", 2, a)), (info("b", 2), member("b", 5, b))],
    )
}

#[test]
fn a_request_is_topped_up_across_members_and_each_machine_goes_back_to_its_maker() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store: Arc<dyn StateStore> = Arc::new(SqliteStore::open(&dir.path().join("s.db")).expect("store"));
    let (a, b) = (Rc::new(RefCell::new(Log::default())), Rc::new(RefCell::new(Log::default())));
    let ctx = CallContext {
        provider_instance: "inst".into(),
        settings: serde_json::json!({}),
        now: 100,
    };
    // One offer, capacities summed.
    let offer = router(&store, &a, &b).templates(&ctx).expect("templates");
    assert_eq!((offer.len(), offer[0].available_number), (1, Some(7)));
    // Three hosts: the preferred member gives what it has, the next tops up.
    let req = ProvisionRequest {
        request_id: "req-1".into(),
        template_id: "t".into(),
        count: 3,
        rc_account: None,
    };
    let made = router(&store, &a, &b).request_machines(&ctx, &req).expect("request");
    let mut ids: Vec<String> = made.machines.iter().map(|m| m.machine_id.clone()).collect();
    ids.sort();
    assert_eq!(ids, ["a-0", "a-1", "b-0"]);
    assert_eq!((a.borrow().asked.clone(), b.borrow().asked.clone()), (vec![2], vec![1]));
    // A later process (a new router) asks each member about its own machines only...
    let query = StatusQuery {
        request: req.clone(),
        known: made.machines.clone(),
    };
    let status = router(&store, &a, &b).requests_status(&ctx, &[query]).expect("status");
    assert_eq!(status.len(), 1);
    assert_eq!(a.borrow().status_of, ["a-0", "a-1"]);
    assert_eq!(b.borrow().status_of, ["b-0"]);
    // ...and returns each machine through its maker, even named only by host name.
    let refs: Vec<MachineRef> = made
        .machines
        .iter()
        .map(|m| MachineRef {
            name: m.name.clone(),
            machine_id: (m.machine_id != "b-0").then(|| m.machine_id.clone()),
        })
        .collect();
    store
        .insert_request(
            &crate::store::RequestRecord {
                id: "req-1".into(),
                kind: crate::store::RequestKind::Provision,
                template_id: Some("t".into()),
                count: 3,
                rc_account: None,
                phase: crate::store::Phase::Submitted,
                status: crate::domain::lifecycle::RequestStatus::Complete,
                outstanding: 0,
                message: None,
                created_at: 100,
                updated_at: 100,
                claimed: true,
            },
            &made.machines,
        )
        .expect("record the request as the service would");
    let released = router(&store, &a, &b).release_machines(&ctx, "ret-1", &refs).expect("release");
    assert_eq!(released.len(), 3);
    assert_eq!(a.borrow().released, ["a-0.example", "a-1.example"]);
    assert_eq!(b.borrow().released, ["b-0.example"]);
}
