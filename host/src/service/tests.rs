//! The lifecycle core against a scripted test double and a real SQLite store: the core
//! cannot tell the double from a Wasm guest.

use std::cell::RefCell;
use std::rc::Rc;

use super::*;
use crate::store::SqliteStore;

/// A provider whose answers the test sets, and which records what the store held when it
/// was asked to act (to prove write-ahead).
#[derive(Default)]
struct Script {
    templates: Vec<Template>,
    progress: Vec<Result<ProvisionProgress, ProviderError>>,
    release: Vec<Result<Vec<Machine>, ProviderError>>,
    seen_recorded: Vec<bool>,
    calls: Vec<String>,
    /// Request ids of each batched status call.
    status_batches: Vec<Vec<String>>,
    /// Answer this many fewer status queries than asked (a broken guest).
    answer_short: usize,
    /// What owned-machines lists.
    owned: Vec<OwnedMachine>,
    /// Host names of each release-machines call.
    released: Vec<Vec<String>>,
}

struct Double {
    script: Rc<RefCell<Script>>,
    store: Rc<SqliteStore>,
}

impl Provider for Double {
    fn templates(&mut self, _: &CallContext) -> Result<Vec<Template>, ProviderError> {
        self.script.borrow_mut().calls.push("templates".into());
        Ok(self.script.borrow().templates.clone())
    }
    fn request_machines(&mut self, _: &CallContext, req: &ProvisionRequest) -> Result<ProvisionProgress, ProviderError> {
        let recorded = self.store.request(&req.request_id).ok().flatten().is_some();
        let mut s = self.script.borrow_mut();
        s.seen_recorded.push(recorded);
        s.calls.push("request-machines".into());
        s.progress.remove(0)
    }
    fn requests_status(
        &mut self,
        _: &CallContext,
        queries: &[StatusQuery],
    ) -> Result<Vec<Result<ProvisionProgress, ProviderError>>, ProviderError> {
        let mut s = self.script.borrow_mut();
        s.status_batches
            .push(queries.iter().map(|q| q.request.request_id.clone()).collect());
        let mut out = Vec::new();
        for _ in queries.iter().take(queries.len().saturating_sub(s.answer_short)) {
            s.calls.push("request-status".into());
            out.push(s.progress.remove(0));
        }
        Ok(out)
    }
    fn release_machines(&mut self, _: &CallContext, id: &str, refs: &[MachineRef]) -> Result<Vec<Machine>, ProviderError> {
        let recorded = self.store.request(id).ok().flatten().is_some();
        let mut s = self.script.borrow_mut();
        s.released.push(refs.iter().map(|r| r.name.clone()).collect());
        s.seen_recorded.push(recorded);
        s.calls.push("release-machines".into());
        s.release.remove(0)
    }
    fn release_status(&mut self, _: &CallContext, _: &str, _: &[Machine]) -> Result<Vec<Machine>, ProviderError> {
        let mut s = self.script.borrow_mut();
        s.calls.push("release-status".into());
        s.release.remove(0)
    }
    fn owned_machines(&mut self, _: &CallContext) -> Result<Vec<OwnedMachine>, ProviderError> {
        let mut s = self.script.borrow_mut();
        s.calls.push("owned-machines".into());
        Ok(s.owned.clone())
    }
    fn reclaim_candidates(&mut self, _: &CallContext, machines: &[MachineRef]) -> Result<Vec<Reclaim>, ProviderError> {
        // Claims one listed host and one HostFactory never listed.
        let mut out: Vec<Reclaim> = machines
            .iter()
            .take(1)
            .map(|m| Reclaim {
                name: m.name.clone(),
                machine_id: None,
                grace_period: 0,
            })
            .collect();
        out.push(Reclaim {
            name: "stranger".into(),
            machine_id: None,
            grace_period: 0,
        });
        Ok(out)
    }
}

fn template(id: &str, max: i32, free: Option<u32>) -> Template {
    let attr = |n: &str, kind, v: &str| Attribute {
        name: n.into(),
        kind,
        value: v.into(),
    };
    Template {
        id: id.into(),
        max_number: max,
        available_number: free,
        attributes: vec![
            attr("type", AttributeKind::Text, "X86_64"),
            attr("ncpus", AttributeKind::Numeric, "2"),
            attr("nram", AttributeKind::Numeric, "4096"),
        ],
        extra: serde_json::Map::new(),
    }
}

fn machine(id: &str, state: MachineState, launch: u64) -> Machine {
    Machine {
        machine_id: id.into(),
        name: format!("h-{id}"),
        private_ip: "10.0.0.1".into(),
        public_ip: None,
        launch_time: launch,
        state,
        message: None,
    }
}

/// What a crash between the write-ahead record and the provider's answer leaves behind.
fn accepted_record(id: &str) -> RequestRecord {
    RequestRecord {
        claimed: false,
        id: id.into(),
        kind: RequestKind::Provision,
        template_id: Some("t".into()),
        count: 1,
        rc_account: None,
        phase: Phase::Accepted,
        status: RequestStatus::Running,
        outstanding: 1,
        message: None,
        created_at: 0,
        updated_at: 0,
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    store: Rc<SqliteStore>,
    script: Rc<RefCell<Script>>,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Rc::new(SqliteStore::open(&dir.path().join("s.db")).expect("store"));
        let script = Rc::new(RefCell::new(Script {
            templates: vec![template("t", 5, Some(3))],
            ..Default::default()
        }));
        Self { _dir: dir, store, script }
    }

    /// The provider's next provision answer: `machines`, nothing outstanding.
    fn will_report(&self, machines: Vec<Machine>) {
        self.script.borrow_mut().progress.push(Ok(ProvisionProgress {
            machines,
            outstanding: 0,
            message: None,
            units: None,
        }));
    }

    /// The provider's next release answer.
    fn will_release(&self, machines: Vec<Machine>) {
        self.script.borrow_mut().release.push(Ok(machines));
    }

    fn service(&self, now: u64) -> Service<'_> {
        let (script, store) = (self.script.clone(), self.store.clone());
        let loader: ProviderLoader<'_> = Box::new(move || Ok(Box::new(Double { script, store }) as Box<dyn Provider>));
        let ctx = CallContext {
            provider_instance: "test".into(),
            settings: serde_json::json!({}),
            now,
        };
        Service::new(
            self.store.as_ref(),
            loader,
            ctx,
            LifecycleTimes {
                pending_timeout_secs: 100,
                abandon_after_secs: 600,
                retention_secs: 7 * 86400,
                orphan_scan_secs: 600,
                claim_secs: 300,
            },
        )
    }
}

#[test]
fn request_is_recorded_before_the_provider_acts() {
    let f = Fixture::new();
    f.script.borrow_mut().progress.push(Ok(ProvisionProgress {
        machines: vec![machine("a", MachineState::Pending, 0)],
        outstanding: 1,
        message: None,
        units: None,
    }));
    let (id, _) = f.service(0).request_machines("t", 2, None).expect("accepted");
    assert_eq!(f.script.borrow().seen_recorded, [true]);
    let rec = f.store.request(&id).expect("read").expect("recorded");
    assert_eq!(
        (rec.phase, rec.status, rec.outstanding),
        (Phase::Submitted, RequestStatus::Running, 1)
    );
}

#[test]
fn a_provider_cannot_finish_a_request_with_machines_executing() {
    let f = Fixture::new();
    f.script.borrow_mut().progress.extend([
        Ok(ProvisionProgress {
            machines: vec![machine("a", MachineState::Running, 0)],
            outstanding: 1,
            message: None,
            units: None,
        }),
        // The provider claims nothing is outstanding while one machine still boots.
        Ok(ProvisionProgress {
            machines: vec![machine("a", MachineState::Running, 0), machine("b", MachineState::Pending, 0)],
            outstanding: 0,
            message: None,
            units: None,
        }),
        Ok(ProvisionProgress {
            machines: vec![machine("b", MachineState::Running, 0)],
            outstanding: 0,
            message: None,
            units: None,
        }),
    ]);
    let (id, _) = f.service(0).request_machines("t", 2, None).expect("accepted");
    let r = f.service(1).get_request_status(std::slice::from_ref(&id)).expect("status");
    assert_eq!(r[0].status, RequestStatus::Running);
    assert_eq!(
        r[0].machines.iter().map(|m| m.result).collect::<Vec<_>>(),
        [MachineResult::Succeed, MachineResult::Executing]
    );
    let r = f.service(2).get_request_status(std::slice::from_ref(&id)).expect("status");
    assert_eq!(r[0].status, RequestStatus::Complete);
    // Final: answered from the store, the provider is not asked again.
    let before = f.script.borrow().calls.len();
    let r = f.service(3).get_request_status(&[id]).expect("status");
    assert_eq!((r[0].status, f.script.borrow().calls.len()), (RequestStatus::Complete, before));
}

#[test]
fn unknown_ids_are_final_with_a_message_and_load_no_provider() {
    let f = Fixture::new();
    let r = f
        .service(0)
        .get_request_status(&["req-nope".into(), "ret-nope".into()])
        .expect("status");
    assert!(
        r.iter()
            .all(|x| x.status == RequestStatus::CompleteWithError && x.message.contains("unknown request id"))
    );
    assert!(f.script.borrow().calls.is_empty(), "no provider call for unknown ids");
}

#[test]
fn counts_are_checked_against_max_and_free() {
    let f = Fixture::new();
    assert!(matches!(
        f.service(0).request_machines("t", 6, None),
        Err(ServiceError::TooMany { .. })
    ));
    assert!(
        matches!(f.service(0).request_machines("t", 4, None), Err(ServiceError::TooMany { message }) if message.contains("availableNumber 3"))
    );
    match f.service(0).request_machines("x", 1, None) {
        Err(ServiceError::TemplateNotFound { available, .. }) => assert_eq!(available, ["t"]),
        other => panic!("expected TemplateNotFound, got {other:?}"),
    }
}

#[test]
fn partial_fulfilment_ends_complete_with_error() {
    let f = Fixture::new();
    f.script.borrow_mut().progress.push(Ok(ProvisionProgress {
        machines: vec![
            machine("a", MachineState::Running, 0),
            Machine {
                message: Some("no power".into()),
                ..machine("b", MachineState::Failed, 0)
            },
        ],
        outstanding: 0,
        message: None,
        units: None,
    }));
    let (id, _) = f.service(0).request_machines("t", 3, None).expect("accepted");
    let r = f.service(1).get_request_status(&[id]).expect("status");
    assert_eq!(r[0].status, RequestStatus::CompleteWithError);
    assert_eq!(r[0].machines[1].message, "no power");
}

#[test]
fn pending_machines_fail_after_the_timeout_and_are_released() {
    let f = Fixture::new();
    f.script.borrow_mut().progress.extend([
        Ok(ProvisionProgress {
            machines: vec![machine("a", MachineState::Pending, 0)],
            outstanding: 0,
            message: None,
            units: None,
        }),
        Ok(ProvisionProgress {
            machines: vec![machine("a", MachineState::Pending, 0)],
            outstanding: 0,
            message: None,
            units: None,
        }),
    ]);
    f.script.borrow_mut().release.push(Ok(vec![]));
    let (id, _) = f.service(0).request_machines("t", 1, None).expect("accepted");
    let r = f.service(500).get_request_status(&[id]).expect("status");
    assert_eq!(r[0].status, RequestStatus::CompleteWithError);
    assert!(
        r[0].machines[0].message.contains("pending_timeout_secs"),
        "{}",
        r[0].machines[0].message
    );
    assert!(f.script.borrow().calls.contains(&"release-machines".to_string()));
}

#[test]
fn a_crash_between_record_and_provider_answer_is_resumed() {
    let f = Fixture::new();
    // What a crash leaves: an accepted record and no machines.
    let rec = accepted_record("req-crashed");
    f.store.insert_request(&rec, &[]).expect("insert");
    f.will_report(vec![machine("a", MachineState::Running, 0)]);
    let r = f.service(1).get_request_status(&["req-crashed".into()]).expect("status");
    assert_eq!(r[0].status, RequestStatus::Complete);
    assert_eq!(f.script.borrow().calls, ["request-machines"], "resumed through request-machines");
}

#[test]
fn returns_are_recorded_first_and_unknown_hosts_succeed() {
    let f = Fixture::new();
    f.script.borrow_mut().release.extend([
        Ok(vec![machine("x", MachineState::Stopping, 0)]),
        Ok(vec![
            Machine {
                name: "h-x".into(),
                ..machine("x", MachineState::Terminated, 0)
            },
            Machine {
                name: "ghost".into(),
                ..machine("g", MachineState::Terminated, 0)
            },
        ]),
    ]);
    let refs = vec![
        MachineRef {
            name: "h-x".into(),
            machine_id: Some("x".into()),
        },
        MachineRef {
            name: "ghost".into(),
            machine_id: None,
        },
    ];
    let (id, _) = f.service(0).request_return_machines(refs).expect("accepted");
    assert!(id.starts_with("ret-"));
    assert_eq!(f.script.borrow().seen_recorded, [true]);
    let r = f.service(1).get_request_status(&[id]).expect("status");
    assert_eq!(r[0].status, RequestStatus::Complete);
    assert_eq!(r[0].machines.len(), 2);
    let (empty, msg) = f.service(2).request_return_machines(vec![]).expect("nothing to return");
    assert!(empty.starts_with("ret-") && msg.contains("No hosts"));
}

#[test]
fn transient_provider_errors_keep_the_request_running() {
    let f = Fixture::new();
    f.script.borrow_mut().progress.extend([
        Ok(ProvisionProgress {
            machines: vec![machine("a", MachineState::Pending, 0)],
            outstanding: 0,
            message: None,
            units: None,
        }),
        Err(ProviderError::Unavailable("cloud down".into())),
    ]);
    let (id, _) = f.service(0).request_machines("t", 1, None).expect("accepted");
    let r = f.service(1).get_request_status(&[id]).expect("status");
    assert_eq!(r[0].status, RequestStatus::Running);
    assert!(r[0].message.contains("cloud down"));
}

#[test]
fn reclaims_are_limited_to_hosts_hostfactory_listed() {
    let f = Fixture::new();
    let r = f
        .service(0)
        .get_return_requests(&[MachineRef {
            name: "h1".into(),
            machine_id: None,
        }])
        .expect("reclaim");
    assert_eq!(r.iter().map(|x| x.name.as_str()).collect::<Vec<_>>(), ["h1"]);
    assert!(f.service(0).get_return_requests(&[]).expect("empty").is_empty());
}

#[test]
fn abandoned_requests_are_released_by_the_sweep() {
    let f = Fixture::new();
    let rec = accepted_record("req-orphan");
    f.store.insert_request(&rec, &[]).expect("insert");
    // Too young: left alone (its call may still be running).
    assert_eq!(f.service(100).sweep().expect("sweep"), 0);
    f.will_report(vec![machine("a", MachineState::Running, 0)]);
    f.will_release(vec![machine("a", MachineState::Stopping, 0)]);
    assert_eq!(f.service(700).sweep().expect("sweep"), 1);
    assert!(f.script.borrow().calls.contains(&"release-machines".to_string()));
    let r = f.store.request("req-orphan").expect("read").expect("kept");
    assert_eq!((r.phase, r.status), (Phase::Submitted, RequestStatus::CompleteWithError));
    assert_eq!(f.service(800).sweep().expect("sweep"), 0, "repaired once");
}

#[test]
fn the_sweep_leaves_a_request_a_live_call_still_holds() {
    let f = Fixture::new();
    let rec = accepted_record("req-slow");
    f.store.insert_request(&rec, &[]).expect("insert");
    // A call started at 500 is still serving it (its claim holds until 800).
    let live = super::claims::take(f.store.as_ref(), "test", "req-slow", 500, 300)
        .expect("take")
        .expect("free");
    assert_eq!(f.service(700).sweep().expect("sweep"), 0, "old, but held by a live call");
    assert!(!f.script.borrow().calls.contains(&"release-machines".to_string()));
    assert_eq!(f.store.request("req-slow").expect("read").expect("kept").phase, Phase::Accepted);
    // The call ends (or its claim expires): now the sweep settles it.
    live.release();
    f.will_report(vec![machine("a", MachineState::Running, 0)]);
    f.will_release(vec![machine("a", MachineState::Stopping, 0)]);
    assert_eq!(f.service(700).sweep().expect("sweep"), 1);
    assert_eq!(
        f.store.kv_scan(&super::claims::namespace("test"), "").expect("scan"),
        vec![],
        "no claim left behind"
    );
}

#[test]
fn a_provider_failing_after_making_machines_leaks_nothing() {
    let f = Fixture::new();
    f.script
        .borrow_mut()
        .progress
        .push(Err(ProviderError::Unavailable("describe after launch failed".into())));
    assert!(f.service(0).request_machines("t", 1, None).is_err());
    // The failed request is final for status calls...
    let ids: Vec<String> = f
        .store
        .stale_requests(u64::MAX)
        .expect("records")
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(ids.len(), 1, "the write-ahead record stays");
    let r = f.service(1).get_request_status(&ids).expect("status");
    assert_eq!(r[0].status, RequestStatus::CompleteWithError);
    // ...and the sweep still releases what the provider had made for it.
    f.will_report(vec![machine("x", MachineState::Running, 0)]);
    f.will_release(vec![machine("x", MachineState::Stopping, 0)]);
    assert_eq!(f.service(700).sweep().expect("sweep"), 1);
    assert_eq!(f.script.borrow().calls.iter().filter(|c| *c == "release-machines").count(), 1);
}

#[test]
fn finished_requests_are_pruned_after_the_retention_and_unclaimed_ones_swept() {
    let f = Fixture::new();
    let mut done = accepted_record("req-done");
    done.phase = Phase::Submitted;
    done.status = RequestStatus::Complete;
    done.claimed = true;
    f.store.insert_request(&done, &[]).expect("insert");
    // HostFactory asked about it: claimed, final, and inside the retention: kept.
    f.service(7 * 86400 - 1).sweep().expect("sweep");
    assert!(f.store.request("req-done").expect("read").is_some());
    // Past the retention (7 days in the fixture) but within PRUNE_EVERY of the last
    // pruning: not yet (pruning is not every poll's work).
    f.service(7 * 86400 + 1).sweep().expect("sweep");
    assert!(f.store.request("req-done").expect("read").is_some());
    // Once PRUNE_EVERY has passed: gone, and nothing asked the provider.
    f.service(7 * 86400 - 1 + crate::limits::PRUNE_EVERY.as_secs())
        .sweep()
        .expect("sweep");
    assert_eq!(f.store.request("req-done").expect("read"), None);
    assert!(f.script.borrow().calls.is_empty(), "{:?}", f.script.borrow().calls);

    // A submitted request HostFactory never asked about (its call died before printing
    // the id) is settled by the sweep; one it asked about is left alone.
    let mut unclaimed = accepted_record("req-unclaimed");
    unclaimed.phase = Phase::Submitted;
    let mut asked = accepted_record("req-asked");
    asked.phase = Phase::Submitted;
    f.store
        .insert_request(&unclaimed, &[machine("u", MachineState::Running, 0)])
        .expect("insert");
    f.store
        .insert_request(&asked, &[machine("k", MachineState::Running, 0)])
        .expect("insert");
    f.will_report(vec![machine("k", MachineState::Running, 0)]);
    f.service(10).get_request_status(&["req-asked".to_string()]).expect("status");
    f.will_report(vec![machine("u", MachineState::Running, 0)]);
    f.will_release(vec![machine("u", MachineState::Stopping, 0)]);
    assert_eq!(f.service(700).sweep().expect("sweep"), 1, "only the unclaimed one");
    let r = f.store.request("req-unclaimed").expect("read").expect("kept");
    assert_eq!(r.status, RequestStatus::CompleteWithError);
    assert!(r.claimed, "settled once");
    assert_eq!(f.service(800).sweep().expect("sweep"), 0);
}

#[test]
fn one_status_call_asks_the_provider_once_for_every_open_request() {
    let f = Fixture::new();
    let mut ids = Vec::new();
    for (i, name) in ["a", "b", "c"].into_iter().enumerate() {
        let id = format!("req-{name}");
        let mut rec = accepted_record(&id);
        rec.phase = Phase::Submitted;
        f.store
            .insert_request(&rec, &[machine(name, MachineState::Pending, 0)])
            .expect("insert");
        f.will_report(vec![machine(
            name,
            if i == 1 { MachineState::Running } else { MachineState::Pending },
            0,
        )]);
        ids.push(id);
    }
    // An unknown id, a finished one and a repeated one ride along without provider calls.
    let mut done = accepted_record("req-done");
    done.phase = Phase::Submitted;
    done.status = RequestStatus::Complete;
    f.store.insert_request(&done, &[]).expect("insert");
    let asked: Vec<String> = ids
        .iter()
        .cloned()
        .chain(["req-unknown".to_string(), "req-done".to_string(), ids[1].clone()])
        .collect();
    let r = f.service(1).get_request_status(&asked).expect("status");
    assert_eq!(
        f.script.borrow().status_batches,
        [ids.clone()],
        "one batch with exactly the open requests"
    );
    let got: Vec<(&str, RequestStatus)> = r.iter().map(|r| (r.request_id.as_str(), r.status)).collect();
    assert_eq!(
        got,
        [
            ("req-a", RequestStatus::Running),
            ("req-b", RequestStatus::Complete),
            ("req-c", RequestStatus::Running),
            ("req-unknown", RequestStatus::CompleteWithError),
            ("req-done", RequestStatus::Complete),
            ("req-b", RequestStatus::Complete),
        ]
    );
    assert_eq!(r[1].machines[0].machine.name, "h-b");
}

#[test]
fn a_status_answer_of_the_wrong_length_fails_the_requests_it_cannot_match() {
    let f = Fixture::new();
    for name in ["a", "b"] {
        let mut rec = accepted_record(&format!("req-{name}"));
        rec.phase = Phase::Submitted;
        f.store
            .insert_request(&rec, &[machine(name, MachineState::Pending, 0)])
            .expect("insert");
        f.will_report(vec![machine(name, MachineState::Running, 0)]);
    }
    f.script.borrow_mut().answer_short = 1;
    // Long past the pending timeout: the error is final rather than retried.
    let r = f
        .service(100_000)
        .get_request_status(&["req-a".to_string(), "req-b".to_string()])
        .expect("status");
    for report in &r {
        assert_eq!(report.status, RequestStatus::CompleteWithError, "{report:?}");
        assert!(report.message.contains("answered 1 of 2 queries"), "{}", report.message);
    }
}

#[test]
fn the_orphan_scan_runs_at_its_interval_and_spares_open_requests() {
    let f = Fixture::new();
    let mut open = accepted_record("req-open");
    open.phase = Phase::Submitted;
    open.claimed = true;
    f.store.insert_request(&open, &[]).expect("insert");
    // First sweep: the store's history begins (nothing before it is judged).
    f.service(1_000).sweep().expect("sweep");
    let ours = crate::store::store_id(f.store.as_ref()).expect("store id");
    let owned = |req: &str, id: &str, launched: u64| OwnedMachine {
        request_id: req.into(),
        store_id: Some(ours.clone()),
        machine: machine(id, MachineState::Running, launched),
    };
    let mut other_cluster = owned("req-theirs", "t-1", 2_000);
    other_cluster.store_id = Some("another-store".into());
    f.script.borrow_mut().owned = vec![
        owned("req-open", "o-1", 2_000),
        owned("req-lost", "l-1", 2_000),
        owned("req-lost", "l-old", 900),
        other_cluster,
    ];
    // Nothing can be settled yet (the creation timeout is 600 s): not even listed.
    f.service(1_500).sweep().expect("sweep");
    assert!(!f.script.borrow().calls.contains(&"owned-machines".to_string()));
    f.will_report(Vec::new());
    f.will_release(vec![machine("l-1", MachineState::Stopping, 2_000)]);
    f.service(5_000).sweep().expect("sweep");
    assert_eq!(
        f.script.borrow().released,
        [vec!["h-l-1".to_string()]],
        "only the lost request's machine launched after the store began"
    );
    // Within the interval (600 s): not listed again.
    f.service(5_300).sweep().expect("sweep");
    assert_eq!(f.script.borrow().calls.iter().filter(|c| *c == "owned-machines").count(), 1);
}
