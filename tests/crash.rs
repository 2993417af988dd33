//! Crash safety, the way it happens on a site: the call is killed (abort, as `kill -9`
//! leaves it) at each named step of requestMachines and requestReturnMachines, HostFactory
//! carries on (it never got an answer, so it polls what it knows and retries returns), and
//! after the creation timeout nothing is lost and nothing leaks — checked in the EC2
//! emulator and with `hfwasm store check`, on SQLite, JSON and PostgreSQL.

mod common;

use common::moto::{Moto, aws_tree, templates};
use common::pg::Postgres;
use common::*;
use serde_json::{Value, json};

const TEMPLATE: &str = "OnDemand-Template-VM";
const STEPS: [&str; 4] = ["before-write-ahead", "after-write-ahead", "after-provider", "after-final-write"];

/// A later HostFactory cycle, past `INSTANCE_CREATION_TIMEOUT`: getReturnRequests (which
/// sweeps) listing the hosts HostFactory holds.
fn later_cycle(tree: &HfTree, held: &[String]) {
    tree.set_env("HFWASM_NOW_OFFSET_SECS", "3600");
    let machines: Vec<Value> = held.iter().map(|n| json!({"name": n})).collect();
    tree.ok("getReturnRequests", &json!({"machines": machines}));
    tree.unset_env("HFWASM_NOW_OFFSET_SECS");
}

fn killed(tree: &HfTree, step: &str, call: &str, input: &Value) {
    tree.set_env("HFWASM_FAULT", step);
    let o = tree.run(call, input);
    tree.unset_env("HFWASM_FAULT");
    assert_ne!(o.code, 0, "{step}: the fault point must kill {call}");
    assert_eq!(o.json, Value::Null, "{step}: nothing reached HostFactory");
}

fn crash_matrix(storage: Value) {
    let moto = Moto::start();
    let (subnet, sg, ami) = moto.network();
    let tree = aws_tree(&moto, templates(&subnet, &sg, &ami));
    tree.config(&json!({
        "aws": {"config_file": "poolprov_config.json", "templates_file": "poolprov_templates.json"},
        "storage": storage,
    }));
    // A host HostFactory holds throughout, so every cycle lists something.
    let keep = tree.request(TEMPLATE, 1);
    let held = machine_names(&tree.until_final(&keep), "succeed");
    assert_eq!(held.len(), 1);
    let baseline = moto.live();

    for step in STEPS {
        // requestMachines dies at `step`: HostFactory never learns the id.
        killed(
            &tree,
            &format!("request-machines:{step}"),
            "requestMachines",
            &json!({"template": {"templateId": TEMPLATE, "machineCount": 2}}),
        );
        let during = moto.live().len() - baseline.len();
        let expected_launch = if ["after-provider", "after-final-write"].contains(&step) {
            2
        } else {
            0
        };
        assert_eq!(during, expected_launch, "{step}: instances launched before the crash");
        later_cycle(&tree, &held);
        assert_eq!(
            moto.live(),
            baseline,
            "requestMachines killed {step}: the sweep must leave only what HostFactory holds"
        );
        let report = store_check(&tree);
        assert_eq!(
            report["accepted"], 0,
            "requestMachines killed {step}: nothing left half-done: {report:#}"
        );

        // requestReturnMachines dies at `step`: HostFactory retries the return later.
        let id = tree.request(TEMPLATE, 1);
        let name = machine_names(&tree.until_final(&id), "succeed").remove(0);
        let instance = moto.live().into_iter().find(|i| !baseline.contains(i)).expect("the new instance");
        killed(
            &tree,
            &format!("request-return-machines:{step}"),
            "requestReturnMachines",
            &json!({"machines": [{"name": name}]}),
        );
        let mut listed = held.clone();
        listed.push(name.clone());
        later_cycle(&tree, &listed);
        let ret = tree.ok("requestReturnMachines", &json!({"machines": [{"name": name}]}));
        let done = tree.until_final(ret["requestId"].as_str().expect("return id"));
        assert_eq!(
            done["status"], "complete",
            "requestReturnMachines killed {step}: the retry completes: {done}"
        );
        assert!(
            !moto.live().contains(&instance),
            "requestReturnMachines killed {step}: {instance} must be gone"
        );
        assert_eq!(moto.live(), baseline, "requestReturnMachines killed {step}");
        let report = store_check(&tree);
        assert_eq!(report["accepted"], 0, "requestReturnMachines killed {step}: {report:#}");
    }
    // The request HostFactory knew all along is untouched.
    assert_eq!(tree.until_final(&keep)["status"], "complete");
    assert_eq!(moto.live(), baseline);
}

#[test]
fn kill_at_every_step_on_sqlite() {
    crash_matrix(json!({"strategy": "sql", "sql_strategy": {"type": "sqlite"}}));
}

#[test]
fn kill_at_every_step_on_json() {
    crash_matrix(json!({"strategy": "json", "json_strategy": {"storage_type": "split_files"}}));
}

#[test]
fn kill_at_every_step_on_postgres() {
    let pg = Postgres::start();
    pg.create_database("crash");
    crash_matrix(pg.storage_config("crash"));
}

/// Hosts of the on-prem pool free for `template`.
fn available(tree: &HfTree, template_id: &str) -> u64 {
    template(&tree.ok("getAvailableTemplates", &json!({})), template_id)["availableNumber"]
        .as_u64()
        .expect("availableNumber")
}

/// Later cycles an hour apart (past every claim and threshold) listing `held`, with real
/// time between them for the admin's power commands to finish, until `template_id` has
/// `free` hosts again (or five hours passed).
fn cycles_until_free(tree: &HfTree, held: &[String], template_id: &str, free: u64) -> u64 {
    for hour in 1..=5 {
        tree.set_env("HFWASM_NOW_OFFSET_SECS", &(hour * 3600).to_string());
        let machines: Vec<Value> = held.iter().map(|n| json!({"name": n})).collect();
        tree.ok("getReturnRequests", &json!({"machines": machines}));
        tree.unset_env("HFWASM_NOW_OFFSET_SECS");
        std::thread::sleep(std::time::Duration::from_millis(500));
        if available(tree, template_id) == free {
            break;
        }
    }
    available(tree, template_id)
}

/// The on-prem pool with power commands: a call killed at any step of a return (HostFactory
/// retries it), of a request (HostFactory never learns it) or of a release the host starts
/// itself (a machine past its pending timeout) leaves every host held by a request
/// HostFactory holds it through or back in the pool, and no answer claims a host freed
/// while its lease is still held.
#[test]
fn on_prem_kills_at_every_step_leave_every_host_held_or_in_the_pool() {
    // slow-1 powers on until the gate opens (at most 60 s, and opened when the test ends
    // however it ends, so no command outlives it).
    struct Gate(tempfile::TempDir);
    impl Drop for Gate {
        fn drop(&mut self) {
            let _ = std::fs::write(self.0.path().join("open"), "");
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
    let gate = Gate(tempfile::tempdir().expect("gate dir"));
    let open = gate.0.path().join("open");
    let inventory = format!(
        "defaults template=t ncpus=2 nram=2048 power_off=\"sleep 0.2\"\n\
         node-1 10.8.0.1\nnode-2 10.8.0.2\nnode-3 10.8.0.3\n\
         slow-1 10.8.0.9 template=slow ncpus=2 nram=2048 power_on=\"i=0; while [ ! -e {} ] && [ $i -lt 1200 ]; do sleep 0.05; i=$((i+1)); done\"\n",
        open.display()
    );
    let tree = HfTree::new(&inventory);
    let keep = tree.request("t", 1);
    let held = machine_names(&tree.until_final(&keep), "succeed");
    assert_eq!(available(&tree, "t"), 2);
    for step in STEPS {
        // requestReturnMachines dies at `step`; HostFactory retries the return.
        let id = tree.request("t", 1);
        let name = machine_names(&tree.until_final(&id), "succeed").remove(0);
        assert_eq!(available(&tree, "t"), 1);
        killed(
            &tree,
            &format!("request-return-machines:{step}"),
            "requestReturnMachines",
            &json!({"machines": [{"name": name}]}),
        );
        let ret = tree.ok("requestReturnMachines", &json!({"machines": [{"name": name}]}));
        let done = tree.until_final(ret["requestId"].as_str().expect("return id"));
        assert_eq!(done["status"], "complete", "return killed {step}: the retry completes: {done}");
        if available(&tree, "t") != 2 {
            let db = tree.work.join("hfwasm.sqlite");
            let dump = std::process::Command::new("sqlite3").arg(&db).arg("select namespace, key, value from kv; select id, kind, phase, status, created_at from requests; select request_id, machine_id, name, state from machines;").output().expect("sqlite3");
            eprintln!(
                "DUMP {} {}",
                String::from_utf8_lossy(&dump.stdout),
                String::from_utf8_lossy(&dump.stderr)
            );
            eprintln!("{}", std::fs::read_to_string(tree.logs.join("hfwasm.log")).unwrap_or_default());
        }
        assert_eq!(
            available(&tree, "t"),
            2,
            "return killed {step}: the retry said {name} is back, so the pool must have it"
        );

        // requestMachines dies at `step`; the sweep releases (and powers off) what it leased.
        killed(
            &tree,
            &format!("request-machines:{step}"),
            "requestMachines",
            &json!({"template": {"templateId": "t", "machineCount": 2}}),
        );
        assert_eq!(
            cycles_until_free(&tree, &held, "t", 2),
            2,
            "request killed {step}: the pool gets its hosts back"
        );
        let report = store_check(&tree);
        assert_eq!(report["accepted"], 0, "killed {step}: nothing left half-done: {report:#}");
    }
    // A release the host starts itself: slow-1 does not finish powering on, so a status call
    // past the pending timeout fails it and releases it; that call dies at each step.
    for step in STEPS {
        let _ = std::fs::remove_file(&open);
        let id = tree.request("slow", 1);
        tree.set_env("HFWASM_NOW_OFFSET_SECS", "7200");
        tree.set_env("HFWASM_FAULT", &format!("host-return:{step}"));
        let o = tree.run("getRequestStatus", &json!({"requests": [{"requestId": id}]}));
        tree.unset_env("HFWASM_FAULT");
        assert_ne!(o.code, 0, "host-return:{step} must kill the status call");
        // The hung power-on ends (as power-run's own timeout would end it): only then may
        // the power-off run, one command per host.
        std::fs::write(&open, "").expect("open the gate");
        std::thread::sleep(std::time::Duration::from_millis(400));
        // HostFactory polls again (still past the timeout). Killed before the release was
        // recorded, the machine may have come up meanwhile: then HostFactory holds it and
        // the sweep must leave it to HostFactory; else it failed and the host released it.
        let report = tree.until_final(&id);
        tree.unset_env("HFWASM_NOW_OFFSET_SECS");
        let kept = machine_names(&report, "succeed");
        if step == "before-write-ahead" {
            assert_eq!(kept, ["slow-1"], "{step}: nothing was released, it came up: {report}");
        }
        if step == "after-final-write" {
            assert_eq!(machine_names(&report, "fail"), ["slow-1"], "{step}: it was released: {report}");
        }
        if kept.is_empty() {
            assert_eq!(
                cycles_until_free(&tree, &[], "slow", 1),
                1,
                "host-return killed {step}: slow-1 is back in the pool"
            );
        } else {
            assert_eq!(
                cycles_until_free(&tree, &kept, "slow", 1),
                0,
                "host-return killed {step}: the sweep left slow-1 to HostFactory"
            );
            let ret = tree.ok("requestReturnMachines", &json!({"machines": [{"name": "slow-1"}]}));
            assert_eq!(tree.until_final(ret["requestId"].as_str().expect("id"))["status"], "complete");
            assert_eq!(
                available(&tree, "slow"),
                1,
                "{step}: returned by HostFactory, slow-1 is back in the pool"
            );
        }
    }
    assert_eq!(tree.until_final(&keep)["status"], "complete");
    assert_eq!(available(&tree, "t"), 2);
    let report = store_check(&tree);
    assert_eq!(report["accepted"], 0, "nothing left half-done: {report:#}");
}
