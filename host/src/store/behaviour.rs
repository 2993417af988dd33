//! The behaviour every [`StateStore`] backend must show, as one suite run against each of
//! them (SQLite and JSON by the unit tests, PostgreSQL by `tests/store.rs` against a real
//! server). Public so the integration tests can run it; not part of the product's API.

use std::sync::Arc;

use super::{Document, Phase, RequestKind, RequestRecord, StateStore, StoreError};
use crate::domain::lifecycle::RequestStatus;
use crate::domain::model::{Machine, MachineState};

/// Opens (another handle to) one store; called once per handle, possibly from threads.
pub type Opener = Arc<dyn Fn() -> Result<Box<dyn StateStore>, StoreError> + Send + Sync>;

/// A request record for the suite.
pub fn record(id: &str, kind: RequestKind, created_at: u64) -> RequestRecord {
    RequestRecord {
        id: id.into(),
        kind,
        template_id: (kind == RequestKind::Provision).then(|| "t".to_string()),
        count: 2,
        rc_account: None,
        phase: Phase::Accepted,
        status: RequestStatus::Running,
        outstanding: 2,
        message: None,
        created_at,
        updated_at: created_at,
        claimed: false,
    }
}

/// A machine for the suite.
pub fn machine(id: &str, name: &str, state: MachineState) -> Machine {
    Machine {
        machine_id: id.into(),
        name: name.into(),
        private_ip: "10.0.0.1".into(),
        public_ip: None,
        launch_time: 5,
        state,
        message: None,
    }
}

fn open(o: &Opener) -> Box<dyn StateStore> {
    match o() {
        Ok(s) => s,
        Err(e) => panic!("cannot open the store under test: {e}"),
    }
}

/// Runs every check, each on a fresh, empty store from `fresh`.
pub fn run_all(fresh: &mut dyn FnMut() -> Opener) {
    requests_round_trip(&fresh());
    machines_keep_order_and_upsert(&fresh());
    unchanged_state_is_not_rewritten(&fresh());
    batched_reads_and_writes(&fresh());
    stale_and_holders(&fresh());
    kv_semantics(&fresh());
    kv_insert_if_absent_has_one_winner_across_handles(&fresh());
    pruning(&fresh());
    pruning_keeps_held_machines(&fresh());
    export_import_round_trip(&fresh(), &fresh());
}

/// Insert, read back, update; unknown ids are `None`; a duplicate id is refused.
pub fn requests_round_trip(o: &Opener) {
    let s = open(o);
    let r = record("req-1", RequestKind::Provision, 10);
    s.insert_request(&r, &[]).expect("insert");
    assert_eq!(s.request("req-1").expect("read"), Some(r.clone()));
    assert_eq!(s.request("nope").expect("read unknown"), None);
    assert!(s.machines("nope").expect("machines of unknown").is_empty());
    assert!(s.insert_request(&r, &[]).is_err(), "a duplicate id must be refused");
    let mut u = r.clone();
    u.phase = Phase::Submitted;
    u.status = RequestStatus::Complete;
    u.outstanding = 0;
    u.message = Some("done".into());
    u.updated_at = 20;
    s.update_request(&u, &[]).expect("update");
    assert_eq!(
        open(o).request("req-1").expect("read again"),
        Some(u),
        "another handle sees the change"
    );
    s.update_request(&record("ghost", RequestKind::Provision, 1), &[])
        .expect("update of unknown is a no-op");
    assert_eq!(s.request("ghost").expect("read"), None);
}

/// Machines come back in first-recorded order; updates replace by machine id.
pub fn machines_keep_order_and_upsert(o: &Opener) {
    let s = open(o);
    let r = record("req-1", RequestKind::Provision, 10);
    s.insert_request(&r, &[machine("b", "host-b", MachineState::Pending)])
        .expect("insert");
    s.update_request(
        &r,
        &[
            machine("a", "host-a", MachineState::Pending),
            machine("b", "host-b", MachineState::Running),
        ],
    )
    .expect("update");
    s.update_request(&r, &[machine("a", "host-a", MachineState::Running)])
        .expect("update again");
    let got: Vec<(String, MachineState)> = s
        .machines("req-1")
        .expect("machines")
        .into_iter()
        .map(|m| (m.machine_id, m.state))
        .collect();
    assert_eq!(
        got,
        [("b".to_string(), MachineState::Running), ("a".to_string(), MachineState::Running)]
    );
}

/// A status call that finds nothing new leaves `updated_at` alone.
pub fn unchanged_state_is_not_rewritten(o: &Opener) {
    let s = open(o);
    let mut r = record("req-1", RequestKind::Provision, 10);
    s.insert_request(&r, &[]).expect("insert");
    r.updated_at = 99;
    s.update_request(&r, &[]).expect("same state, later time");
    assert_eq!(s.request("req-1").expect("read").map(|r| r.updated_at), Some(10));
    r.outstanding = 1;
    s.update_request(&r, &[]).expect("changed");
    assert_eq!(s.request("req-1").expect("read").map(|r| r.updated_at), Some(99));
}

/// `requests_with_machines` and `update_requests` (a status call's one read and one write)
/// mean what one `request`/`machines`/`update_request` each would: unknown ids absent and
/// skipped, machines in first-recorded order, a machine listed twice written as last
/// listed, unchanged requests not rewritten, a `None` message stored as none.
pub fn batched_reads_and_writes(o: &Opener) {
    let s = open(o);
    let a = record("req-a", RequestKind::Provision, 10);
    let b = record("req-b", RequestKind::Provision, 11);
    s.insert_request(&a, &[machine("a1", "host-a1", MachineState::Pending)])
        .expect("insert a");
    s.insert_request(&b, &[]).expect("insert b");
    let ids = ["req-a", "req-b", "nope"].map(String::from);
    let got = s.requests_with_machines(&ids).expect("batched read");
    assert_eq!(got.len(), 2, "an unknown id is absent");
    assert_eq!(got["req-a"].0, a);
    assert_eq!(got["req-a"].1, [machine("a1", "host-a1", MachineState::Pending)]);
    assert!(got["req-b"].1.is_empty());

    let mut a2 = a.clone();
    a2.phase = Phase::Submitted;
    a2.status = RequestStatus::Complete;
    a2.message = Some("done".into());
    a2.updated_at = 30;
    let mut b2 = b.clone();
    b2.updated_at = 31; // nothing else changed: not rewritten
    let mut late = machine("a0", "host-a0", MachineState::Pending);
    late.message = Some("first".into());
    let mut again = late.clone();
    again.state = MachineState::Running;
    again.message = None;
    s.update_requests(&[
        (
            a2.clone(),
            vec![late, machine("a1", "host-a1", MachineState::Running), again.clone()],
        ),
        (b2, vec![]),
        (
            record("ghost", RequestKind::Provision, 1),
            vec![machine("g", "host-g", MachineState::Running)],
        ),
    ])
    .expect("batched write");
    assert_eq!(s.request("req-a").expect("read"), Some(a2));
    assert_eq!(s.request("req-b").expect("read").map(|r| r.updated_at), Some(11));
    assert_eq!(s.request("ghost").expect("read"), None, "an unknown request is skipped");
    assert_eq!(
        s.machines("req-a").expect("machines"),
        [machine("a1", "host-a1", MachineState::Running), again],
        "first-recorded order kept; the twice-listed machine as last listed"
    );
    let again = open(o).requests_with_machines(&ids).expect("read again");
    assert_eq!(again["req-a"].1.len(), 2, "another handle sees the write");
}

/// `stale_requests` finds old `accepted` records and old provision requests HostFactory
/// never claimed, oldest first; `provision_holders` finds provision requests holding a
/// host, newest first, and `provision_holders_of` the same for several hosts at once.
pub fn stale_and_holders(o: &Opener) {
    let s = open(o);
    s.insert_request(
        &record("req-new", RequestKind::Provision, 50),
        &[machine("i-2", "h1", MachineState::Running)],
    )
    .expect("insert");
    s.insert_request(
        &record("req-old", RequestKind::Provision, 5),
        &[machine("i-1", "h1", MachineState::Terminated)],
    )
    .expect("insert");
    s.insert_request(
        &record("ret-1", RequestKind::Return, 7),
        &[machine("i-2", "h1", MachineState::Stopping)],
    )
    .expect("insert");
    let mut done = record("req-done", RequestKind::Provision, 1);
    done.phase = Phase::Submitted;
    done.claimed = true;
    s.insert_request(&done, &[]).expect("insert");
    let mut unclaimed = record("req-unclaimed", RequestKind::Provision, 2);
    unclaimed.phase = Phase::Submitted;
    s.insert_request(&unclaimed, &[]).expect("insert");
    let mut ret_done = record("ret-done", RequestKind::Return, 3);
    ret_done.phase = Phase::Submitted;
    ret_done.status = RequestStatus::Complete;
    s.insert_request(&ret_done, &[]).expect("insert");
    // Open returns HostFactory never polled: one not updated for long, one updated lately;
    // and one HostFactory polls (claimed), however old.
    let mut ret_open = record("ret-open", RequestKind::Return, 4);
    ret_open.phase = Phase::Submitted;
    s.insert_request(&ret_open, &[]).expect("insert");
    let mut ret_recent = record("ret-recent", RequestKind::Return, 6);
    ret_recent.phase = Phase::Submitted;
    ret_recent.updated_at = 45;
    s.insert_request(&ret_recent, &[]).expect("insert");
    let mut ret_polled = record("ret-polled", RequestKind::Return, 6);
    ret_polled.phase = Phase::Submitted;
    ret_polled.claimed = true;
    s.insert_request(&ret_polled, &[]).expect("insert");
    let stale: Vec<String> = s.stale_requests(40).expect("stale").into_iter().map(|r| r.id).collect();
    assert_eq!(stale, ["req-unclaimed", "ret-open", "req-old", "ret-1"]);
    unclaimed.claimed = true;
    s.update_request(&unclaimed, &[]).expect("claim");
    ret_open.claimed = true;
    s.update_request(&ret_open, &[]).expect("HostFactory learnt it");
    let stale: Vec<String> = s.stale_requests(40).expect("stale").into_iter().map(|r| r.id).collect();
    assert_eq!(stale, ["req-old", "ret-1"], "claimed requests are HostFactory's");
    let holders: Vec<String> = s.provision_holders("h1").expect("holders").into_iter().map(|(id, _)| id).collect();
    assert_eq!(holders, ["req-new", "req-old"]);
    // All at once, as returns and reclaim checks ask: the same answers, hosts with none absent.
    s.insert_request(
        &record("req-other", RequestKind::Provision, 60),
        &[machine("i-3", "h2", MachineState::Running)],
    )
    .expect("insert");
    let names: Vec<String> = ["h1", "h2", "h-none"].map(String::from).to_vec();
    let many = s.provision_holders_of(&names).expect("holders of");
    assert_eq!(many.len(), 2, "{many:?}");
    for name in ["h1", "h2"] {
        assert_eq!(many[name], s.provision_holders(name).expect("one"), "{name}");
    }
    assert!(s.provision_holders_of(&[]).expect("none").is_empty());
}

/// kv: set, get, overwrite, conditional delete, namespaces, prefix scan in byte order.
pub fn kv_semantics(o: &Opener) {
    let s = open(o);
    assert_eq!(s.kv_get("ns", "k").expect("get"), None);
    s.kv_set("ns", "k", "1").expect("set");
    s.kv_set("ns", "k", "2").expect("overwrite");
    assert_eq!(s.kv_get("ns", "k").expect("get"), Some("2".into()));
    assert_eq!(s.kv_get("other", "k").expect("namespaces are separate"), None);
    assert!(!s.kv_delete_if_equals("ns", "k", "1").expect("wrong value"));
    assert!(s.kv_delete_if_equals("ns", "k", "2").expect("right value"));
    assert_eq!(s.kv_get("ns", "k").expect("gone"), None);
    for k in ["lease/b", "lease/B", "lease/a", "leasex", "lease/\u{e9}", "other"] {
        s.kv_set("ns", k, k).expect("set");
    }
    let keys: Vec<String> = s.kv_scan("ns", "lease/").expect("scan").into_iter().map(|(k, _)| k).collect();
    assert_eq!(keys, ["lease/B", "lease/a", "lease/b", "lease/\u{e9}"], "byte order, prefix only");
    s.kv_delete("ns", "lease/a").expect("delete");
    s.kv_delete("ns", "never-there").expect("delete of absent is fine");
    assert_eq!(s.kv_scan("ns", "lease/").expect("scan").len(), 3);
    // Usage counts bytes, not characters, and only the namespace asked about.
    assert_eq!(s.kv_usage("ns").expect("usage").0, 5);
    s.kv_set("other-ns", "x", "y").expect("kv");
    s.kv_set("usage", "k\u{e9}", "v\u{e9}").expect("kv");
    assert_eq!(s.kv_usage("usage").expect("usage"), (1, 6));
    assert_eq!(s.kv_usage("empty").expect("usage"), (0, 0));
    // Bounded scans stop at either bound.
    let all = s.kv_scan_bounded("ns", "lease/", 3, 1 << 20).expect("scan").expect("within bounds");
    assert_eq!(all.len(), 3);
    assert_eq!(s.kv_scan_bounded("ns", "lease/", 2, 1 << 20).expect("scan"), None, "entries bound");
    assert_eq!(s.kv_scan_bounded("ns", "lease/", 10, 20).expect("scan"), None, "bytes bound");
}

/// Eight handles (threads) race to insert one key: exactly one wins.
pub fn kv_insert_if_absent_has_one_winner_across_handles(o: &Opener) {
    drop(open(o));
    let winners: usize = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let o = o.clone();
                scope.spawn(move || usize::from(open(&o).kv_insert_if_absent("ns", "lease/h1", &format!("req-{i}")).expect("insert")))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or(0)).sum()
    });
    assert_eq!(winners, 1);
}

/// Only finished requests older than the cut go, oldest first, at most `limit`, with
/// their machines.
pub fn pruning(o: &Opener) {
    let s = open(o);
    for (id, status, updated) in [
        ("req-a", RequestStatus::Complete, 10),
        ("req-b", RequestStatus::CompleteWithError, 20),
        ("req-c", RequestStatus::Complete, 30),
        ("req-open", RequestStatus::Running, 1),
        ("req-recent", RequestStatus::Complete, 500),
    ] {
        let mut r = record(id, RequestKind::Provision, updated);
        r.status = status;
        r.phase = Phase::Submitted;
        s.insert_request(&r, &[machine(&format!("i-{id}"), id, MachineState::Terminated)])
            .expect("insert");
    }
    assert_eq!(s.prune_finished(100, 2).expect("prune"), 2);
    assert_eq!(s.request("req-a").expect("read"), None);
    assert_eq!(s.request("req-b").expect("read"), None);
    assert!(s.machines("req-a").expect("machines").is_empty());
    assert!(
        s.provision_holders("req-a").expect("holders").is_empty(),
        "machines go with their request"
    );
    assert_eq!(s.prune_finished(100, 10).expect("prune"), 1);
    assert_eq!(s.prune_finished(100, 10).expect("prune"), 0);
    for kept in ["req-open", "req-recent"] {
        assert!(s.request(kept).expect("read").is_some(), "{kept} must stay");
    }
}

/// Pruning never forgets a machine the cluster still uses: a finished provision request
/// whose machines run on stays until a later finished return names them, and the return
/// stays until no earlier provision request holds its machines (a host name re-leased by
/// a newer request does not hold it back).
pub fn pruning_keeps_held_machines(o: &Opener) {
    let s = open(o);
    let finished = |id: &str, kind, created: u64, machines: &[Machine]| {
        let mut r = record(id, kind, created);
        r.status = RequestStatus::Complete;
        r.phase = Phase::Submitted;
        s.insert_request(&r, machines).expect("insert");
    };
    finished(
        "req-in-use",
        RequestKind::Provision,
        10,
        &[machine("i-1", "h-1", MachineState::Running)],
    );
    finished(
        "req-p1",
        RequestKind::Provision,
        20,
        &[machine("n-1", "node-1", MachineState::Running)],
    );
    finished(
        "ret-r1",
        RequestKind::Return,
        30,
        &[machine("n-1", "node-1", MachineState::Terminated)],
    );
    finished(
        "req-p2",
        RequestKind::Provision,
        40,
        &[machine("n-1", "node-1", MachineState::Running)],
    );
    let left = |s: &dyn StateStore| -> Vec<&str> {
        ["req-in-use", "req-p1", "ret-r1", "req-p2"]
            .into_iter()
            .filter(|id| s.request(id).expect("read").is_some())
            .collect()
    };
    assert_eq!(
        s.prune_finished(1000, 10).expect("prune"),
        1,
        "only req-p1: its host was returned after it"
    );
    assert_eq!(left(s.as_ref()), ["req-in-use", "ret-r1", "req-p2"]);
    assert_eq!(
        s.prune_finished(1000, 10).expect("prune"),
        1,
        "then ret-r1: no earlier request holds node-1"
    );
    assert_eq!(left(s.as_ref()), ["req-in-use", "req-p2"]);
    assert_eq!(s.prune_finished(1000, 10).expect("prune"), 0, "hosts in use are never forgotten");
    // A return in the same second as a provision of the same host name cannot be told to
    // come after it (the pool leased the returned host again at once): kept.
    finished(
        "ret-r2",
        RequestKind::Return,
        50,
        &[machine("n-2", "node-2", MachineState::Terminated)],
    );
    finished(
        "req-p3",
        RequestKind::Provision,
        50,
        &[machine("n-2", "node-2", MachineState::Running)],
    );
    s.prune_finished(1000, 10).expect("prune");
    assert!(s.request("req-p3").expect("read").is_some(), "req-p3 still holds node-2");
}

/// Export from one store, import into an empty one: the same document comes out. Import
/// into a non-empty store, or of a newer schema, is refused.
pub fn export_import_round_trip(from: &Opener, to: &Opener) {
    let a = open(from);
    let mut r = record("req-1", RequestKind::Provision, 10);
    r.rc_account = Some("acct".into());
    a.insert_request(
        &r,
        &[
            machine("i-1", "h1", MachineState::Running),
            machine("i-0", "h0", MachineState::Pending),
        ],
    )
    .expect("insert");
    a.insert_request(
        &record("ret-1", RequestKind::Return, 11),
        &[machine("i-1", "h1", MachineState::Stopping)],
    )
    .expect("insert");
    a.kv_set("inst/aws", "itype/m5.large", "2,8192").expect("kv");
    a.kv_set("inst/onprem", "lease/h1", "req-1").expect("kv");
    let doc = a.export().expect("export");
    assert_eq!(doc.requests.len(), 2);
    assert_eq!(doc.requests[0].machines.len(), 2);
    let b = open(to);
    b.import(&doc).expect("import into empty");
    assert_eq!(b.export().expect("export again"), doc);
    assert_eq!(b.machines("req-1").expect("machines")[0].machine_id, "i-1", "order survives");
    match b.import(&doc) {
        Err(StoreError::NotEmpty { requests: 2, kv: 2, .. }) => {}
        other => panic!("import into a non-empty store must be refused, got {other:?}"),
    }
    let newer = Document {
        schema_version: super::SCHEMA_VERSION + 1,
        ..Document::default()
    };
    assert!(matches!(a.import(&newer), Err(StoreError::SchemaTooNew { .. })));
}
