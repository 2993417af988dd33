//! Two hfwasm installations (separate conf and work dirs, as on two Symphony master
//! candidates) sharing one PostgreSQL database (or one set of DynamoDB tables) and one EC2
//! account (moto): a request made
//! through one is answered and returned through the other; when one dies mid-request, the
//! other settles what it left behind.

mod common;

use common::moto::{Moto, aws_tree, templates};
use common::pg::Postgres;
use common::*;
use serde_json::{Value, json};

const TEMPLATE: &str = "OnDemand-Template-VM";

fn host(moto: &Moto, storage: &Value, network: &(String, String, String)) -> HfTree {
    let tree = aws_tree(moto, templates(&network.0, &network.1, &network.2));
    tree.config(&json!({
        "aws": {"config_file": "poolprov_config.json", "templates_file": "poolprov_templates.json"},
        "storage": storage,
    }));
    tree
}

#[test]
fn two_installations_share_one_postgres() {
    let pg = Postgres::start();
    pg.create_database("shared");
    let moto = Moto::start();
    two_installations_share_one_store(&moto, &pg.storage_config("shared"));
}

/// The same over DynamoDB tables (the seed's storage), in moto's DynamoDB.
#[test]
fn two_installations_share_one_dynamodb() {
    let moto = Moto::start();
    let storage = json!({"type": "dynamodb", "dynamodb": {"table_prefix": "shared", "region": "us-east-1", "endpoint_url": moto.endpoint}});
    two_installations_share_one_store(&moto, &storage);
}

fn two_installations_share_one_store(moto: &Moto, storage: &Value) {
    let network = moto.network();
    let a = host(moto, storage, &network);
    let b = host(moto, storage, &network);
    if storage["type"] == "dynamodb" {
        // The store's client takes the standard AWS chain: here the shared credentials file
        // the EC2 side reads through IBM's AWS_CREDENTIAL_FILE.
        for t in [&a, &b] {
            t.set_env("AWS_SHARED_CREDENTIALS_FILE", t.conf.join("credentials").to_str().expect("utf8"));
        }
    }
    assert_ne!(a.work, b.work);

    // Requested through A, followed and finished through B.
    let id = a.request(TEMPLATE, 2);
    let req = b.until_final(&id);
    assert_eq!(req["status"], "complete", "{req}");
    let names = machine_names(&req, "succeed");
    assert_eq!(names.len(), 2);
    let dns: Vec<String> = moto.instances_of(&id).into_iter().map(|x| x.2).collect();
    for n in &names {
        assert!(dns.contains(n), "{n} is a PrivateDnsName of the request's instances {dns:?}");
    }
    // Both answer the same.
    assert_eq!(a.until_final(&id), req);

    // Both poll at once, many times: the shared rows stay single.
    std::thread::scope(|s| {
        for t in [&a, &b, &a, &b] {
            let id = &id;
            s.spawn(move || {
                for _ in 0..5 {
                    t.ok("getRequestStatus", &json!({"requests": [{"requestId": id}]}));
                }
            });
        }
    });
    let report = store_check(&b);
    assert_eq!(report["machines"], 2, "{report:#}");

    // Returned through B, the return followed through A.
    let machines: Vec<Value> = names.iter().map(|n| json!({"name": n})).collect();
    let ret = b.ok("requestReturnMachines", &json!({"machines": machines}));
    let ret_id = ret["requestId"].as_str().expect("return id").to_string();
    let done = a.until_final(&ret_id);
    assert_eq!(done["status"], "complete", "{done}");
    assert!(moto.live().is_empty(), "returned instances are terminated in the emulator");

    // A dies right after launching: HostFactory never got the id. B's next cycles, past
    // the creation timeout, terminate what A launched; a retry through B works.
    a.set_env("HFWASM_FAULT", "request-machines:after-provider");
    let o = a.run("requestMachines", &json!({"template": {"templateId": TEMPLATE, "machineCount": 2}}));
    a.unset_env("HFWASM_FAULT");
    assert_eq!(o.json, Value::Null);
    assert_eq!(moto.live().len(), 2, "A launched before it died");
    b.ok("getReturnRequests", &json!({"machines": []}));
    assert_eq!(moto.live().len(), 2, "within the creation timeout the call might still be running");
    b.set_env("HFWASM_NOW_OFFSET_SECS", "3600");
    b.ok("getReturnRequests", &json!({"machines": []}));
    b.unset_env("HFWASM_NOW_OFFSET_SECS");
    assert!(moto.live().is_empty(), "B settled what A left behind");
    let retry = b.request(TEMPLATE, 1);
    assert_eq!(a.until_final(&retry)["status"], "complete");
    assert_eq!(moto.live().len(), 1);
    let report = store_check(&a);
    assert_eq!(report["accepted"], 0, "{report:#}");
}

#[test]
fn a_power_command_started_through_one_installation_is_followed_through_the_other() {
    let pg = Postgres::start();
    pg.create_database("power");
    let marker = tempfile::tempdir().expect("tempdir");
    let gate = marker.path().join("gate");
    let runs = marker.path().join("runs");
    let inventory = format!(
        "node-1 10.7.0.1 template=t ncpus=2 nram=2048 power_on=\"echo {{name}} >> {r}; i=0; while [ ! -e {g} ] && [ $i -lt 1200 ]; do sleep 0.05; i=$((i+1)); done\"\n",
        r = runs.display(),
        g = gate.display()
    );
    let install = || {
        let tree = HfTree::new(&inventory);
        tree.config(&json!({"storage": pg.storage_config("power")}));
        tree
    };
    let (a, b) = (install(), install());
    let id = a.request("t", 1);
    // B sees the command A started still running, and does not start it again.
    for _ in 0..3 {
        let r = b.ok("getRequestStatus", &json!({"requests": [{"requestId": id}]}));
        assert_eq!(r["requests"][0]["status"], "running", "{r}");
    }
    let t0 = std::time::Instant::now();
    while !runs.exists() && t0.elapsed().as_secs() < 10 {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    std::fs::write(&gate, b"").expect("gate");
    let done = b.until_final(&id);
    assert_eq!(done["status"], "complete", "{done}");
    assert_eq!(machine_names(&done, "succeed"), ["node-1"]);
    let started = std::fs::read_to_string(&runs).expect("runs");
    assert_eq!(
        started.lines().count(),
        1,
        "the power-on command ran once, not once per installation: {started:?}"
    );
}
