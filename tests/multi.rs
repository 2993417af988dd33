//! Several providers behind one HostFactory provider instance, from the seed's v2 config
//! (`provider.providers[]` with more than one enabled), against two moto servers (two
//! clouds: one can be made unreachable while the other serves). Checked through the real
//! scripts: which emulator the hosts are in, failover when the primary fails, its circuit
//! opening and closing across processes, weights honoured over many requests, COST_OPTIMIZED
//! with thresholds, a partial on-prem answer topped up from AWS, and returns, status and
//! reclaims routed to the provider that made each host.

mod common;

use common::moto::{Moto, templates};
use common::*;
use serde_json::{Value, json};

const TEMPLATE: &str = "OnDemand-Template-VM";

/// Writes IBM's files `<prefix>_config.json` / `<prefix>_templates.json` for `moto` into
/// `tree`'s conf dir (each emulator has its own subnet and image).
fn ibm_files(tree: &HfTree, prefix: &str, moto: &Moto) {
    // Each cloud its own addresses, so host names differ across them.
    let n = if prefix == "east" { 10 } else { 20 };
    let (subnet, sg, ami) = moto.network_in(n);
    let config = json!({
        "AWS_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": moto.endpoint,
        "AWS_CREDENTIAL_FILE": "credentials",
        "AWS_CONNECTION_TIMEOUT_MS": "3000",
        "AWS_REQUEST_RETRY_ATTEMPTS": 0,
        "AWS_INSTANCE_PENDING_TIMEOUT_SEC": 180,
    });
    std::fs::write(tree.conf.join(format!("{prefix}_config.json")), config.to_string()).expect("config");
    let mut t = templates(&subnet, &sg, &ami);
    t[0]["maxNumber"] = json!(60);
    std::fs::write(
        tree.conf.join(format!("{prefix}_templates.json")),
        json!({"templates": t}).to_string(),
    )
    .expect("templates");
}

/// A tree with inventory `inventory` and credentials for the emulators.
fn tree(inventory: &str) -> HfTree {
    let tree = HfTree::new(inventory);
    tree.set_env("AWS_EC2_METADATA_DISABLED", "true");
    std::fs::write(
        tree.conf.join("credentials"),
        "[default]\naws_access_key_id = testing\naws_secret_access_key = testing\n",
    )
    .expect("creds");
    tree
}

/// Two emulated clouds and a tree with IBM's files for each (`east_*` for the first,
/// `west_*` for the second).
fn two_clouds() -> (Moto, Moto, HfTree) {
    let (a, b) = (Moto::start(), Moto::start());
    let tree = tree("");
    ibm_files(&tree, "east", &a);
    ibm_files(&tree, "west", &b);
    (a, b, tree)
}

/// A seed provider entry for IBM files `<prefix>_*`.
fn aws(name: &str, prefix: &str, extra: Value) -> Value {
    let mut p = json!({
        "name": name, "type": "aws", "enabled": true,
        "config": {"config_file": format!("{prefix}_config.json"), "templates_file": format!("{prefix}_templates.json")}
    });
    for (k, v) in extra.as_object().expect("extra object") {
        if k == "config" {
            for (ck, cv) in v.as_object().expect("config object") {
                p["config"][ck] = cv.clone();
            }
        } else {
            p[k] = v.clone();
        }
    }
    p
}

/// Points IBM file `<prefix>_config.json` at a closed port (the cloud is gone) or back.
fn set_endpoint(tree: &HfTree, prefix: &str, endpoint: &str) {
    let f = tree.conf.join(format!("{prefix}_config.json"));
    let mut c: Value = serde_json::from_str(&std::fs::read_to_string(&f).expect("read")).expect("json");
    c["AWS_ENDPOINT_URL"] = json!(endpoint);
    std::fs::write(&f, c.to_string()).expect("write");
}

fn dead_endpoint() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    format!("http://127.0.0.1:{port}")
}

/// (name, machineId) of the request's `succeed` machines.
fn hosts(req: &Value) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = req["machines"]
        .as_array()
        .expect("machines")
        .iter()
        .filter(|m| m["result"] == "succeed")
        .map(|m| {
            (
                m["name"].as_str().expect("name").into(),
                m["machineId"].as_str().expect("id").into(),
            )
        })
        .collect();
    v.sort();
    v
}

/// (PrivateDnsName, id) of `moto`'s instances made for request `id`.
fn made_by(moto: &Moto, id: &str) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = moto.instances_of(id).into_iter().map(|(iid, _, dns, _)| (dns, iid)).collect();
    v.sort();
    v
}

fn state(moto: &Moto, id: &str) -> String {
    moto.instances().into_iter().find(|x| x.0 == id).map(|x| x.1).unwrap_or_default()
}

fn log(tree: &HfTree) -> String {
    std::fs::read_to_string(tree.logs.join("hfwasm-pool.log")).unwrap_or_default()
}

#[test]
fn priority_failover_survives_a_dead_primary_and_returns_to_it_after_recovery() {
    let (a, b, tree) = two_clouds();
    // Scenario 3's shape: three providers by priority, the third disabled.
    tree.config(&json!({
        "version": "2.0.0",
        "provider": {
            "active_provider": "aws-primary",
            "selection_policy": "PRIORITY_FAILOVER",
            "circuit_breaker": {"enabled": true, "failure_threshold": 2, "recovery_timeout": 300},
            "providers": [
                aws("aws-primary", "east", json!({"priority": 1, "weight": 100, "config": {"region": "us-east-1"}})),
                aws("aws-secondary", "west", json!({"priority": 2, "weight": 80, "config": {"region": "us-east-1"}})),
                {"name": "aws-tertiary", "type": "aws", "enabled": false, "priority": 3, "config": {"region": "eu-west-1"}}
            ]
        }
    }));
    // One offer: the template both have, once.
    let offer = tree.ok("getAvailableTemplates", &json!({}));
    let ids: Vec<&str> = offer["templates"]
        .as_array()
        .expect("templates")
        .iter()
        .filter_map(|t| t["templateId"].as_str())
        .collect();
    assert_eq!(ids.iter().filter(|i| **i == TEMPLATE).count(), 1, "{ids:?}");
    let t = offer["templates"]
        .as_array()
        .expect("t")
        .iter()
        .find(|t| t["templateId"] == TEMPLATE)
        .expect("template");
    assert_eq!(t["maxNumber"], 120, "both providers' maxNumber (60 each): {t}");

    // Healthy: everything goes to the primary.
    let first = tree.request(TEMPLATE, 2);
    let done = tree.until_final(&first);
    assert_eq!(done["status"], "complete", "{done}");
    assert_eq!(hosts(&done), made_by(&a, &first), "names are the primary's PrivateDnsNames");
    assert!(made_by(&b, &first).is_empty());

    // The primary's cloud goes away: requests fail over to the secondary, and after two
    // failures (two processes) its circuit opens.
    set_endpoint(&tree, "east", &dead_endpoint());
    let mut on_secondary = Vec::new();
    for _ in 0..3 {
        let id = tree.request(TEMPLATE, 1);
        let done = tree.until_final(&id);
        assert_eq!(done["status"], "complete", "{done}");
        assert_eq!(hosts(&done), made_by(&b, &id));
        assert_eq!(made_by(&b, &id).len(), 1);
        on_secondary.push(id);
    }
    let text = log(&tree);
    // The first two requests fail over (a template read calls no cloud, so each fails at
    // its launch); the second failure opens the circuit, so the third skips the primary.
    assert_eq!(
        text.matches("provider failed; trying the next one").count(),
        2,
        "failover is logged"
    );
    assert_eq!(
        text.matches("circuit open: requests are refused").count(),
        1,
        "opened once, by the second failure"
    );
    assert!(
        text.contains("provider skipped: its circuit is open"),
        "the third request skipped the primary without calling it"
    );
    // Status of the primary's request while its cloud is unreachable: still answered from
    // the store (it is final).
    assert_eq!(tree.until_final(&first)["status"], "complete");

    // The cloud is back, but the circuit stays open until the recovery timeout.
    set_endpoint(&tree, "east", &a.endpoint);
    let id = tree.request(TEMPLATE, 1);
    assert_eq!(made_by(&b, &id).len(), 1, "still on the secondary while the circuit is open");
    assert!(made_by(&a, &id).is_empty());
    tree.until_final(&id);
    on_secondary.push(id);
    // After the timeout the trial goes to the primary, succeeds, and the circuit closes.
    tree.set_env("HFWASM_NOW_OFFSET_SECS", "400");
    let trial = tree.request(TEMPLATE, 1);
    assert_eq!(tree.until_final(&trial)["status"], "complete");
    assert_eq!(made_by(&a, &trial).len(), 1, "the trial went to the primary");
    assert!(log(&tree).contains("circuit closed"));

    // One return naming hosts of both providers: each is terminated in its own cloud.
    let (pa_name, pa_id) = hosts(&tree.until_final(&first))[0].clone();
    let (sb_name, sb_id) = hosts(&tree.until_final(&on_secondary[0]))[0].clone();
    let ret = tree.ok(
        "requestReturnMachines",
        &json!({"machines": [{"name": pa_name, "machineId": pa_id}, {"name": sb_name, "machineId": sb_id}]}),
    );
    let rid = ret["requestId"].as_str().expect("id").to_string();
    let done = tree.until_final(&rid);
    assert_eq!(done["status"], "complete", "{done}");
    assert_eq!(state(&a, &pa_id), "terminated", "{done}");
    assert_eq!(state(&b, &sb_id), "terminated", "{done}");

    // Reclaims: a host terminated behind our back in the secondary's cloud is reported;
    // live hosts of both are not.
    let (gone_name, gone_id) = hosts(&tree.until_final(&on_secondary[1]))[0].clone();
    b.terminate(&gone_id);
    let (live_a, _) = hosts(&tree.until_final(&trial))[0].clone();
    let (live_b, _) = hosts(&tree.until_final(&on_secondary[2]))[0].clone();
    let r = tree.ok(
        "getReturnRequests",
        &json!({"machines": [{"name": gone_name}, {"name": live_a}, {"name": live_b}]}),
    );
    let names: Vec<&str> = r["requests"]
        .as_array()
        .expect("requests")
        .iter()
        .filter_map(|x| x["machine"].as_str())
        .collect();
    assert_eq!(names, [gone_name.as_str()], "{r}");
}

#[test]
fn weighted_selection_honours_the_weights_over_many_requests() {
    let (a, b, tree) = two_clouds();
    tree.config(&json!({
        "version": "2.0.0",
        "provider": {
            "selection_policy": "WEIGHTED",
            "providers": [aws("heavy", "east", json!({"weight": 3})), aws("light", "west", json!({"weight": 1}))]
        }
    }));
    const N: usize = 48;
    for _ in 0..N {
        tree.request(TEMPLATE, 1);
    }
    let (on_a, on_b) = (a.live().len(), b.live().len());
    assert_eq!(on_a + on_b, N, "one host per request, no overshoot");
    // Expected 36 of 48 on `heavy` (weight 3 of 4); binomial sd = 3. Tolerance: 4 sd.
    assert!((24..=44).contains(&on_a), "heavy got {on_a} of {N}, light {on_b}");
}

#[test]
fn cost_optimized_takes_the_cheapest_within_its_threshold() {
    let (a, b, tree) = two_clouds();
    let config = |west_price: f64| {
        json!({
            "version": "2.0.0",
            "provider": {
                "selection_policy": "COST_OPTIMIZED",
                "providers": [
                    aws("aws-primary", "east", json!({"priority": 1, "config": {"cost_threshold": 0.50}})),
                    aws("aws-cheap", "west", json!({"priority": 2, "config": {"cost_threshold": 0.10}}))
                ]
            },
            "placement": {
                "guest": "builtin:default-policy",
                "settings": {"prices": {"aws-primary": {"*": 0.20}, "aws-cheap": {TEMPLATE: west_price}}},
                "on_error": "fail_closed"
            }
        })
    };
    tree.config(&config(0.05));
    let id = tree.request(TEMPLATE, 1);
    assert_eq!(
        (made_by(&a, &id).len(), made_by(&b, &id).len()),
        (0, 1),
        "the cheaper one, despite its priority"
    );
    // Above its cost_threshold, the cheap one is not used at all.
    tree.config(&config(0.15));
    let id = tree.request(TEMPLATE, 1);
    assert_eq!((made_by(&a, &id).len(), made_by(&b, &id).len()), (1, 0));
    // A broken placement setting fails closed, named.
    let mut broken = config(0.05);
    broken["placement"]["settings"]["prices"] = json!({"aws-cheap": "cheap"});
    tree.config(&broken);
    let e = tree.err(
        "requestMachines",
        &json!({"template": {"templateId": TEMPLATE, "machineCount": 1}}),
        "POLICY_ERROR",
    );
    let msg = e["error"]["message"].as_str().unwrap_or_default();
    assert!(msg.contains("default-policy") && msg.contains("settings.prices.aws-cheap"), "{msg}");
    assert_eq!(a.live().len() + b.live().len(), 2, "nothing launched by the failed request");

    // A site's own Wasm guest (here the built-in one's code, installed from a file) and a
    // guest that is not a placement policy (a trapping provider guest), which fails open.
    std::fs::copy(
        guest_wasm("hfwasm_guest_default_policy.wasm"),
        tree.conf.join("site-placement.wasm"),
    )
    .expect("copy");
    std::fs::copy(guest_wasm("hfwasm_testing_spin.wasm"), tree.conf.join("spin.wasm")).expect("copy");
    let mut site = config(0.05);
    site["guests"] = json!({"site": {"wasm": "site-placement.wasm"}, "spin": {"wasm": "spin.wasm"}});
    site["placement"]["guest"] = json!("site");
    tree.config(&site);
    let id = tree.request(TEMPLATE, 1);
    assert_eq!(
        (made_by(&a, &id).len(), made_by(&b, &id).len()),
        (0, 1),
        "the site's guest chose the cheap one"
    );
    site["placement"]["guest"] = json!("spin");
    site["placement"]["on_error"] = json!("fail_open");
    tree.config(&site);
    let id = tree.request(TEMPLATE, 1);
    assert_eq!((made_by(&a, &id).len(), made_by(&b, &id).len()), (1, 0), "fell open: by priority");
    assert!(log(&tree).contains("not a placement policy guest"), "named why");

    // The same hook as a Rhai script: the core cannot tell who answered.
    std::fs::write(
        tree.conf.join("place.rhai"),
        "fn choose_providers(ctx, request, candidates) {\n    let out = [];\n    for c in candidates { if c.name == ctx.settings.only && request.count > 0 { out.push(c.name); } }\n    out\n}\n",
    )
    .expect("script");
    let mut rhai = config(0.05);
    rhai["placement"] = json!({"script": "place.rhai", "settings": {"only": "aws-primary"}});
    tree.config(&rhai);
    let id = tree.request(TEMPLATE, 1);
    assert_eq!(
        (made_by(&a, &id).len(), made_by(&b, &id).len()),
        (1, 0),
        "the script chose aws-primary"
    );
    // A script that never ends is stopped, logged by name, and fails open: by priority.
    std::fs::write(
        tree.conf.join("spin.rhai"),
        "fn choose_providers(ctx, request, candidates) { loop {} }\n",
    )
    .expect("script");
    rhai["placement"] = json!({"script": "spin.rhai", "limits": {"max_operations": 10000}});
    tree.config(&rhai);
    let id = tree.request(TEMPLATE, 1);
    assert_eq!(
        (made_by(&a, &id).len(), made_by(&b, &id).len()),
        (1, 0),
        "priority order: aws-primary first"
    );
    let text = log(&tree);
    assert!(
        text.contains("placement policy failed") && text.contains("spin.rhai") && text.contains("placement.limits.max_operations"),
        "{text}"
    );
}

#[test]
fn a_partial_on_prem_answer_is_topped_up_from_aws_and_returns_go_to_each() {
    let a = Moto::start();
    // Scenario 5's shape (hybrid): the on-prem pool first, AWS behind it.
    let tree = tree(&format!(
        "defaults template={TEMPLATE} ncpus=1 nram=1024\nrack-01 10.9.0.1\nrack-02 10.9.0.2\n"
    ));
    ibm_files(&tree, "east", &a);
    tree.config(&json!({
        "version": "2.0.0",
        "provider": {
            "active_provider": "onprem-pool",
            "providers": [
                {"name": "onprem-pool", "type": "onprem", "priority": 2},
                aws("aws-burst", "east", json!({"priority": 1}))
            ]
        }
    }));
    let id = tree.request(TEMPLATE, 3);
    let done = tree.until_final(&id);
    assert_eq!(done["status"], "complete", "{done}");
    let names: Vec<String> = hosts(&done).into_iter().map(|(n, _)| n).collect();
    let cloud = made_by(&a, &id);
    assert_eq!(cloud.len(), 1, "one host topped up from AWS: {done}");
    assert_eq!(names.len(), 3, "{done}");
    assert!(
        names.contains(&"rack-01".to_string()) && names.contains(&"rack-02".to_string()),
        "{names:?}"
    );
    assert!(names.contains(&cloud[0].0));
    let msg = done["message"].as_str().unwrap_or_default();
    assert!(msg.contains("from onprem-pool") && msg.contains("from aws-burst"), "{msg}");
    // `hfwasm machines` names each host's maker, with its IP, from the store alone.
    let (code, out, err) = admin(&tree, &["machines", "--json"]);
    assert_eq!(code, 0, "{err}");
    let listed: Vec<Value> = serde_json::from_str(&out).expect("machines --json");
    let maker = |name: &str| listed.iter().find(|m| m["name"] == name).map(|m| m["provider"].clone());
    assert_eq!(maker("rack-01"), Some(json!("onprem-pool")), "{out}");
    assert_eq!(maker(&cloud[0].0), Some(json!("aws-burst")), "{out}");
    assert!(
        listed
            .iter()
            .all(|m| m["request"] == id.as_str() && m["ip"].as_str().is_some_and(|ip| !ip.is_empty())),
        "{out}"
    );

    // Return everything (a little later): the pool frees its hosts, AWS terminates its instance.
    tree.set_env("HFWASM_NOW_OFFSET_SECS", "10");
    let machines: Vec<Value> = hosts(&done).into_iter().map(|(n, i)| json!({"name": n, "machineId": i})).collect();
    let ret = tree.ok("requestReturnMachines", &json!({"machines": machines}));
    let rid = ret["requestId"].as_str().expect("id").to_string();
    assert_eq!(tree.until_final(&rid)["status"], "complete");
    assert_eq!(state(&a, &cloud[0].1), "terminated");
    // The pool's hosts are free again: a new request of 2 gets both, nothing from AWS.
    tree.set_env("HFWASM_NOW_OFFSET_SECS", "20");
    let again = tree.request(TEMPLATE, 2);
    let done = tree.until_final(&again);
    assert_eq!(made_by(&a, &again).len(), 0, "{done}");
    assert_eq!(hosts(&done).len(), 2);

    // Routing records go with their requests: a year later the finished, returned request is
    // pruned from the store, and the orphan scan deletes its route.
    let routes = |tree: &HfTree| -> Vec<String> {
        let (_, out, _) = admin(tree, &["store", "export"]);
        let doc: Value = serde_json::from_str(&out).expect("export");
        doc["kv"]["hfwasm.route/pool"]
            .as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default()
    };
    assert!(routes(&tree).contains(&format!("req/{id}")), "{:?}", routes(&tree));
    tree.set_env("HFWASM_NOW_OFFSET_SECS", &(400 * 86400).to_string());
    tree.ok("getReturnRequests", &json!({"machines": []}));
    // The sweep prunes after its orphan scan; the next scan (orphan_scan_secs later) sheds
    // the route.
    tree.set_env("HFWASM_NOW_OFFSET_SECS", &(400 * 86400 + 700).to_string());
    tree.ok("getReturnRequests", &json!({"machines": []}));
    let left = routes(&tree);
    assert!(!left.contains(&format!("req/{id}")), "{left:?}");
    assert!(
        left.contains(&format!("req/{again}")),
        "hosts still held keep their route: {left:?}"
    );
}

#[test]
fn a_crash_after_a_failover_leaks_nothing_in_either_cloud() {
    let (a, b, tree) = two_clouds();
    tree.config(&json!({
        "version": "2.0.0",
        "provider": {"providers": [aws("aws-primary", "east", json!({"priority": 1})), aws("aws-secondary", "west", json!({"priority": 2}))]}
    }));
    // The primary fails at its first call; the secondary launches; the process dies before
    // anything reaches the store or HostFactory.
    set_endpoint(&tree, "east", &dead_endpoint());
    tree.set_env("HFWASM_FAULT", "request-machines:after-provider");
    let o = tree.run("requestMachines", &json!({"template": {"templateId": TEMPLATE, "machineCount": 2}}));
    assert_eq!(o.json, Value::Null, "nothing reached HostFactory");
    tree.unset_env("HFWASM_FAULT");
    set_endpoint(&tree, "east", &a.endpoint);
    assert_eq!((a.live().len(), b.live().len()), (0, 2), "the secondary launched before the crash");
    // After the creation timeout the sweep finds them through the routing record, at the
    // provider that made them.
    tree.set_env("HFWASM_NOW_OFFSET_SECS", "3600");
    tree.ok("getReturnRequests", &json!({"machines": []}));
    assert_eq!((a.live().len(), b.live().len()), (0, 0), "abandoned instances are terminated");
}

/// `hfwasm replay ...` for the tree; returns (exit code, stdout, stderr).
fn replay(tree: &HfTree, args: &[&str]) -> (i32, String, String) {
    let mut all = vec!["replay"];
    all.extend_from_slice(args);
    admin(tree, &all)
}

#[test]
fn recorded_placements_replay_deterministically_and_show_each_difference() {
    let (a, b, tree) = two_clouds();
    tree.config(&json!({
        "version": "2.0.0",
        "provider": {
            "selection_policy": "PRIORITY_FAILOVER",
            "providers": [aws("aws-primary", "east", json!({"priority": 1})), aws("aws-secondary", "west", json!({"priority": 2}))]
        },
        "placement": {"guest": "builtin:default-policy", "settings": {"prices": {"aws-primary": {"*": 0.2}, "aws-secondary": {"*": 0.1}}}},
        "recording": {"enabled": true}
    }));
    let mut ids = Vec::new();
    for i in 0..4 {
        // Two decisions now, two 1000 s later.
        if i == 2 {
            tree.set_env("HFWASM_NOW_OFFSET_SECS", "1000");
        }
        ids.push(tree.request(TEMPLATE, 1 + i as u32));
    }
    assert_eq!((a.live().len(), b.live().len()), (10, 0), "all live decisions went to the primary");

    // A candidate that agrees except for one request: exactly that difference shows.
    std::fs::write(
        tree.conf.join("flip.rhai"),
        "fn choose_providers(ctx, request, candidates) {\n    let names = [];\n    for c in candidates { names.push(c.name); }\n    if request.request_id == ctx.settings.flip { names.reverse(); }\n    names\n}\n",
    )
    .expect("script");
    let script = tree.conf.join("flip.rhai");
    let settings = json!({"flip": ids[1]}).to_string();
    let (code, out, err) = replay(
        &tree,
        &["--policy", script.to_str().expect("path"), "--settings", &settings, "--json"],
    );
    assert_eq!(code, 0, "{err}");
    let r: Value = serde_json::from_str(&out).expect("json report");
    assert_eq!(
        (r["decisions"].as_u64(), r["same"].as_u64(), r["differ"].as_u64()),
        (Some(4), Some(3), Some(1)),
        "{r}"
    );
    let differs: Vec<&Value> = r["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .filter(|row| row["same"] == false)
        .collect();
    assert_eq!(differs.len(), 1);
    assert_eq!(differs[0]["request_id"], json!(ids[1]));
    assert_eq!(differs[0]["live"], json!(["aws-primary", "aws-secondary"]));
    assert_eq!(differs[0]["candidate"], json!(["aws-secondary", "aws-primary"]));
    // Hosts by first choice: request 2 asked for 2 hosts, moved from primary to secondary;
    // cost from the live policy's prices.
    assert_eq!(r["hosts_by_first_choice"]["aws-primary"], json!([10, 8]), "{r}");
    assert_eq!(r["hosts_by_first_choice"]["aws-secondary"], json!([0, 2]), "{r}");
    let cost = &r["cost"];
    assert!(
        (cost["live"].as_f64().unwrap_or(0.0) - 2.0).abs() < 1e-9 && (cost["candidate"].as_f64().unwrap_or(0.0) - 1.8).abs() < 1e-9,
        "{cost}"
    );

    // The same replay twice: byte-identical reports, text and JSON.
    let weighted = [
        "--policy",
        "builtin:default-policy",
        "--settings",
        r#"{"selection_policy": "COST_OPTIMIZED", "prices": {"aws-secondary": {"*": 0.01}}}"#,
    ];
    let first = replay(&tree, &weighted);
    let second = replay(&tree, &weighted);
    assert_eq!(first.0, 0, "{}", first.2);
    assert_eq!(first.1, second.1, "byte-identical");
    assert!(first.1.contains("4 decision(s): 0 same, 4 differ, 0 failed"), "{}", first.1);
    let mut json_args = weighted.to_vec();
    json_args.push("--json");
    assert_eq!(replay(&tree, &json_args).1, replay(&tree, &json_args).1);

    // --from / --to select by the recorded time.
    let at: Vec<u64> = r["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .filter_map(|row| row["at"].as_u64())
        .collect();
    let from = (at[0] + 500).to_string();
    let (_, out, _) = replay(&tree, &["--policy", "builtin:default-policy", "--from", &from, "--json"]);
    let late: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(late["decisions"], 2, "{late}");
    let to = (at[0] + 500).to_string();
    let (_, out, _) = replay(&tree, &["--policy", "builtin:default-policy", "--to", &to, "--json"]);
    assert_eq!(serde_json::from_str::<Value>(&out).expect("json")["decisions"], 2);

    let (_, out, _) = replay(&tree, &["--policy", "builtin:default-policy", "--to", "1"]);
    assert!(out.contains("nothing recorded in this range"), "{out}");

    // Fuel meters a Wasm candidate: too little fails every decision, named, and a run that
    // failed everything exits non-zero (after printing the report).
    let (code, out, err) = replay(&tree, &["--policy", "builtin:default-policy", "--fuel", "1000"]);
    assert_eq!(code, 1, "{err}");
    assert!(out.contains("0 same, 0 differ, 4 failed") && out.contains("fuel"), "{out}");
    assert!(err.contains("failed every recorded decision"), "{err}");
    // A reader that stops early (here: at once, long before the report is printed) ends the
    // run quietly: no panic on the closed pipe.
    let piped = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "'{}' replay --policy builtin:default-policy --json | true",
            env!("CARGO_BIN_EXE_hfwasm")
        ))
        .env("HF_PROVIDER_NAME", "pool")
        .env("HF_PROVIDER_CONFDIR", &tree.conf)
        .env("HF_PROVIDER_WORKDIR", &tree.work)
        .env("HFWASM_CACHE_DIR", test_cache())
        .output()
        .expect("sh");
    let perr = String::from_utf8_lossy(&piped.stderr);
    assert!(!perr.contains("panicked") && !perr.contains("Broken pipe"), "{perr}");
    // A candidate that is not a policy is refused, named.
    let (code, _, err) = replay(&tree, &["--policy", "/nonexistent/cand.wasm"]);
    assert_eq!(code, 1);
    assert!(err.contains("cand") && err.contains("POLICY_ERROR"), "{err}");
}

#[test]
fn a_shadow_placement_is_logged_and_stored_never_acted_on() {
    let (a, b, tree) = two_clouds();
    std::fs::write(
        tree.conf.join("west-first.rhai"),
        "fn choose_providers(ctx, request, candidates) { [\"aws-west\", \"aws-east\"] }\n",
    )
    .expect("script");
    tree.config(&json!({
        "version": "2.0.0",
        "provider": {"providers": [aws("aws-east", "east", json!({"priority": 1})), aws("aws-west", "west", json!({"priority": 2}))]},
        "placement": {"guest": "builtin:default-policy", "shadow": {"script": "west-first.rhai"}}
    }));
    let id = tree.request(TEMPLATE, 1);
    assert_eq!((made_by(&a, &id).len(), made_by(&b, &id).len()), (1, 0), "the live placement acted");
    assert!(log(&tree).contains("shadow placement differs from the live one"), "logged");
    let (_, out, _) = admin(&tree, &["store", "export"]);
    let doc: Value = serde_json::from_str(&out).expect("export");
    let shadows = doc["kv"]["hfwasm.shadow/pool"].as_object().expect("shadow kv");
    let (key, verdict) = shadows.iter().next().expect("one verdict");
    assert!(key.starts_with("placement/") && key.ends_with(&id), "{key}");
    let v: Value = serde_json::from_str(verdict.as_str().expect("text")).expect("json");
    assert_eq!(
        (v["same"].as_bool(), v["policy"].as_str()),
        (Some(false), Some("west-first.rhai")),
        "{v}"
    );
    assert_eq!(v["candidate"], json!(["aws-west", "aws-east"]));
}

#[test]
fn a_request_larger_than_one_provider_is_split_across_them() {
    let (a, b, tree) = two_clouds();
    tree.config(&json!({
        "version": "2.0.0",
        "provider": {"providers": [aws("aws-east", "east", json!({"priority": 1})), aws("aws-west", "west", json!({"priority": 2}))]}
    }));
    // Each has maxNumber 60: 63 hosts are 60 from the first and 3 from the second.
    let id = tree.request(TEMPLATE, 63);
    let done = tree.until_final(&id);
    assert_eq!(done["status"], "complete", "{}", done["message"]);
    assert_eq!((made_by(&a, &id).len(), made_by(&b, &id).len()), (60, 3));
    assert_eq!(hosts(&done).len(), 63);
    // More than both have together is refused before anything is launched.
    let e = tree.err(
        "requestMachines",
        &json!({"template": {"templateId": TEMPLATE, "machineCount": 121}}),
        "INVALID_MACHINE_COUNT",
    );
    assert!(e["error"]["message"].as_str().is_some_and(|m| m.contains("121")), "{e}");
    assert_eq!(a.live().len() + b.live().len(), 63);
}

/// HostFactory's getAvailableTemplates polls alone open a dead provider's circuit: it is
/// then left out without being asked (no connect timeout on every poll) while the other's
/// templates are still offered. When it is back, `hfwasm serve`'s reconciler probes that
/// one circuit once it is due its trial, and closes it: the next poll offers both again.
#[test]
fn polls_alone_open_a_dead_providers_circuit() {
    let (a, _b, tree) = two_clouds();
    tree.config(&json!({
        "version": "2.0.0",
        "provider": {
            "selection_policy": "PRIORITY_FAILOVER",
            "circuit_breaker": {"enabled": true, "failure_threshold": 2, "recovery_timeout": 300},
            "providers": [
                aws("aws-primary", "east", json!({"priority": 1, "config": {"region": "us-east-1"}})),
                aws("aws-secondary", "west", json!({"priority": 2, "config": {"region": "us-east-1"}}))
            ]
        }
    }));
    set_endpoint(&tree, "east", &dead_endpoint());
    for poll in 0..3 {
        let offer = tree.ok("getAvailableTemplates", &json!({}));
        let t = offer["templates"]
            .as_array()
            .expect("templates")
            .iter()
            .find(|t| t["templateId"] == TEMPLATE)
            .cloned()
            .expect("the secondary's template is still offered");
        assert_eq!(t["maxNumber"], 60, "poll {poll}: only the secondary's hosts: {t}");
    }
    let text = log(&tree);
    let skipped = text.matches("left out of the offer: its circuit is open").count();
    assert_eq!(
        text.matches("provider's templates left out of the offer").count() - skipped,
        2,
        "the first two polls asked the dead provider and failed"
    );
    assert_eq!(
        text.matches("circuit open: requests are refused").count(),
        1,
        "two failed polls opened it: {text}"
    );
    assert_eq!(
        text.matches("left out of the offer: its circuit is open").count(),
        1,
        "the third poll did not ask the dead provider"
    );

    // The primary is back; past the recovery timeout the reconciler's probe closes it.
    set_endpoint(&tree, "east", &a.endpoint);
    let mut serve = std::process::Command::new(env!("CARGO_BIN_EXE_hfwasm"))
        .args(["serve", "--listen", "127.0.0.1:0", "--reconcile-secs", "1", "--logdir"])
        .arg(&tree.logs)
        .env("HF_PROVIDER_NAME", "pool")
        .env("HF_PROVIDER_CONFDIR", &tree.conf)
        .env("HF_PROVIDER_WORKDIR", &tree.work)
        .env("HFWASM_CACHE_DIR", test_cache())
        .env("HFWASM_NOW_OFFSET_SECS", "400")
        .envs(tree.env.lock().expect("env").clone())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start hfwasm serve");
    let t0 = std::time::Instant::now();
    while !log(&tree).contains("probe: the provider answers") {
        assert!(t0.elapsed().as_secs() < 30, "no probe within 30 s: {}", log(&tree));
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let _ = serve.kill();
    let _ = serve.wait();
    let text = log(&tree);
    assert_eq!(
        text.matches("probe: the provider answers").count(),
        1,
        "only the due circuit is probed: {text}"
    );
    let line = text.lines().find(|l| l.contains("probe: the provider answers")).unwrap_or_default();
    assert!(line.contains("aws-primary"), "the primary's circuit was the one probed: {line}");
    tree.set_env("HFWASM_NOW_OFFSET_SECS", "400");
    let offer = tree.ok("getAvailableTemplates", &json!({}));
    let t = offer["templates"]
        .as_array()
        .and_then(|ts| ts.iter().find(|t| t["templateId"] == TEMPLATE))
        .cloned()
        .expect("template");
    assert!(t["maxNumber"].as_i64().is_some_and(|n| n > 60), "both providers offered again: {t}");
}
