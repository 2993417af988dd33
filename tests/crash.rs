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
