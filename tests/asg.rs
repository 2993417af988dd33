//! Auto Scaling groups as a launch method (ORB's `providerApi: ASG` templates; the seed's
//! `handlers.types.asg`), through the real scripts against moto's EC2 and Auto Scaling: a
//! group per request, instances reported as they come InService, returns that leave the
//! group with its capacity lowered, the group deleted when empty, and the hosts a group
//! replaces behind HostFactory's back reclaimed while the replacements are returned.

mod common;

use common::moto::{EmulatedGroup, Moto, aws_tree};
use common::*;
use serde_json::{Value, json};

/// ORB's own `ASG-OnDemand` template (tests/data/orb/aws_templates.json, as ORB ships it)
/// with the site's network values, which ORB takes from its template defaults. Its weights
/// are set to 1: moto lowers a group's capacity by instances, not units, when instances
/// leave it, and relaunches the difference of a weighted group (docs/moto-notes.md).
fn orb_asg_template(subnet: &str, sg: &str, ami: &str) -> Value {
    let text = std::fs::read_to_string(repo().join("tests/data/orb/aws_templates.json")).expect("ORB templates");
    let all: Value = serde_json::from_str(&text).expect("json");
    let mut t = all["templates"]
        .as_array()
        .expect("templates")
        .iter()
        .find(|t| t["templateId"] == "ASG-OnDemand")
        .cloned()
        .expect("ORB ships ASG-OnDemand");
    assert_eq!(t["providerApi"], "ASG");
    t["vmTypes"] = json!({"t3.medium": 1});
    t["imageId"] = json!(ami);
    t["subnetId"] = json!(subnet);
    t["securityGroupIds"] = json!([sg]);
    t
}

fn group_of(moto: &Moto, request_id: &str) -> Option<EmulatedGroup> {
    moto.groups().into_iter().find(|g| g.name == format!("hfwasm-pool-{request_id}"))
}

fn returned(tree: &HfTree, machines: &[(String, String)]) {
    let input: Vec<Value> = machines.iter().map(|(n, i)| json!({"name": n, "machineId": i})).collect();
    let r = tree.ok("requestReturnMachines", &json!({"machines": input}));
    let done = tree.until_final(r["requestId"].as_str().expect("return id"));
    assert_eq!(done["status"], "complete", "{done}");
}

#[test]
fn a_request_is_a_group_from_launch_to_deletion() {
    let moto = Moto::start();
    let (subnet, sg, ami) = moto.network();
    let tree = aws_tree(&moto, json!([orb_asg_template(&subnet, &sg, &ami)]));
    let t = tree.ok("getAvailableTemplates", &json!({}));
    assert_eq!(template(&t, "ASG-OnDemand")["availableNumber"], 15, "{t}");

    let id = tree.request("ASG-OnDemand", 3);
    let done = tree.until_final(&id);
    assert_eq!(done["status"], "complete", "{done}");
    let machines = names_and_ids(&done);
    assert_eq!(machines.len(), 3, "{done}");

    // One group for the request, named and tagged for it, holding exactly its hosts, which
    // carry the ownership tags and are named by private DNS name.
    let g = group_of(&moto, &id).expect("the request's group");
    assert_eq!(g.desired, 3);
    let mut in_group: Vec<String> = g.instances.iter().map(|i| i.0.clone()).collect();
    in_group.sort();
    let mut reported: Vec<String> = machines.iter().map(|m| m.1.clone()).collect();
    reported.sort();
    assert_eq!(in_group, reported, "HostFactory gets the group's instances");
    assert!(g.instances.iter().all(|i| i.1 == "InService"), "{g:?}");
    for (k, v) in [
        ("hfwasm:provider", "pool"),
        ("hfwasm:request", id.as_str()),
        ("hfwasm:template", "ASG-OnDemand"),
    ] {
        assert!(g.tags.contains(&(k.to_string(), v.to_string())), "group tag {k}: {g:?}");
    }
    for (iid, state, dns, tags) in moto.instances_of(&id) {
        assert_eq!(state, "running");
        assert!(machines.contains(&(dns.clone(), iid.clone())), "{iid} named {dns}: {machines:?}");
        assert!(
            tags.contains(&("Environment".into(), "prod".into())),
            "ORB's instanceTags: {tags:?}"
        );
        assert!(tags.contains(&("hfwasm:provider".into(), "pool".into())), "{tags:?}");
    }
    assert_eq!(moto.running_types_of(&id), ["t3.medium"; 3]);
    // Full: it launches and replaces nothing behind HostFactory's back any more.
    for p in ["Launch", "ReplaceUnhealthy", "AZRebalance"] {
        assert!(g.suspended.contains(&p.to_string()), "{p} suspended: {g:?}");
    }
    let lt = g.launch_template.clone().expect("launches from a launch template");
    assert!(moto.launch_templates().contains(&lt));
    let t = tree.ok("getAvailableTemplates", &json!({}));
    assert_eq!(template(&t, "ASG-OnDemand")["availableNumber"], 12, "{t}");

    // One returned: out of the group (whose capacity drops with it) and terminated.
    returned(&tree, &machines[..1]);
    let g = group_of(&moto, &id).expect("group still holds two");
    assert_eq!(g.desired, 2, "{g:?}");
    assert_eq!(g.instances.len(), 2, "nothing replaced the returned host: {g:?}");
    assert!(!g.instances.iter().any(|i| i.0 == machines[0].1));
    let state = |iid: &str| moto.instances().into_iter().find(|x| x.0 == iid).map(|x| x.1).unwrap_or_default();
    assert_eq!(state(&machines[0].1), "terminated");

    // The rest returned: the group and the launch template made for it are gone.
    returned(&tree, &machines[1..]);
    assert!(group_of(&moto, &id).is_none(), "{:?}", moto.groups());
    assert!(!moto.launch_templates().contains(&lt), "the group's launch template went with it");
    assert!(moto.live().is_empty(), "{:?}", moto.instances());
    let t = tree.ok("getAvailableTemplates", &json!({}));
    assert_eq!(template(&t, "ASG-OnDemand")["availableNumber"], 15, "{t}");
}

#[test]
fn hosts_the_group_replaces_are_reclaimed_and_replacements_returned() {
    let moto = Moto::start();
    let (subnet, sg, ami) = moto.network();
    let tree = aws_tree(&moto, json!([orb_asg_template(&subnet, &sg, &ami)]));
    // The store's history begins before the request (the orphan scan judges only what follows).
    tree.ok("getReturnRequests", &json!({"machines": []}));
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let id = tree.request("ASG-OnDemand", 3);
    let done = tree.until_final(&id);
    assert_eq!(done["status"], "complete", "{done}");
    let machines = names_and_ids(&done);
    let listed = json!({"machines": machines.iter().map(|(n, i)| json!({"name": n, "machineId": i})).collect::<Vec<_>>()});
    assert_eq!(tree.ok("getReturnRequests", &listed)["requests"], json!([]), "all healthy");

    // Auto Scaling finds one unhealthy: HostFactory is told before the group replaces it.
    let (n0, i0) = machines[0].clone();
    moto.mark_unhealthy(&i0);
    let rr = tree.ok("getReturnRequests", &listed);
    assert_eq!(rr["requests"], json!([{"machine": n0, "machineId": i0, "gracePeriod": 0}]), "{rr}");

    // The group replaces another behind HostFactory's back: that host is reclaimed too.
    let (n1, i1) = machines[1].clone();
    let before: Vec<String> = group_of(&moto, &id).expect("group").instances.into_iter().map(|i| i.0).collect();
    moto.replace_in_group(&i1);
    let g = group_of(&moto, &id).expect("group");
    let replacement: Vec<String> = g.instances.iter().map(|i| i.0.clone()).filter(|i| !before.contains(i)).collect();
    assert_eq!(replacement.len(), 1, "moto replaced it: {g:?}");
    let rr = tree.ok("getReturnRequests", &listed);
    let reclaimed: Vec<&str> = rr["requests"]
        .as_array()
        .expect("requests")
        .iter()
        .filter_map(|r| r["machineId"].as_str())
        .collect();
    assert!(reclaimed.contains(&i0.as_str()) && reclaimed.contains(&i1.as_str()), "{rr}");

    // HostFactory returns what it was told of; the replacement, which no request accounts
    // for, is returned by the orphan scan: out of the group, capacity lowered, terminated.
    returned(&tree, &[(n0, i0.clone()), (n1, i1)]);
    tree.set_env("HFWASM_NOW_OFFSET_SECS", "3600");
    tree.ok("getReturnRequests", &json!({"machines": []}));
    tree.unset_env("HFWASM_NOW_OFFSET_SECS");
    let state = |iid: &str| moto.instances().into_iter().find(|x| x.0 == iid).map(|x| x.1).unwrap_or_default();
    assert_eq!(state(&replacement[0]), "terminated", "the replacement is an orphan");
    assert_eq!(state(&i0), "terminated");
    let g = group_of(&moto, &id).expect("the kept host's group");
    assert_eq!(
        g.instances.iter().map(|i| i.0.clone()).collect::<Vec<_>>(),
        [machines[2].1.clone()],
        "only the host HostFactory keeps: {g:?}"
    );
    assert_eq!(g.desired, 1, "{g:?}");
    returned(&tree, &machines[2..]);
    assert!(group_of(&moto, &id).is_none(), "{:?}", moto.groups());
    assert!(moto.live().is_empty(), "{:?}", moto.instances());
}

/// A call killed after the group was made and before HostFactory heard of it: the sweep
/// returns what the group launched (detached, terminated) and deletes the group.
#[test]
fn a_crash_after_the_group_was_made_leaks_nothing() {
    let moto = Moto::start();
    let (subnet, sg, ami) = moto.network();
    let tree = aws_tree(&moto, json!([orb_asg_template(&subnet, &sg, &ami)]));
    tree.set_env("HFWASM_FAULT", "request-machines:after-provider");
    let o = tree.run(
        "requestMachines",
        &json!({"template": {"templateId": "ASG-OnDemand", "machineCount": 2}}),
    );
    assert_ne!(o.code, 0, "the fault point kills the call");
    assert_eq!(o.json, Value::Null, "nothing reached HostFactory");
    tree.unset_env("HFWASM_FAULT");
    let groups = moto.groups();
    assert_eq!(groups.len(), 1, "the group was made before the crash: {groups:?}");
    assert_eq!(moto.live().len(), 2);

    // Within the creation timeout nothing is touched; after it the sweep returns them.
    tree.ok("getReturnRequests", &json!({"machines": []}));
    assert_eq!(moto.live().len(), 2);
    tree.set_env("HFWASM_NOW_OFFSET_SECS", "3600");
    tree.ok("getReturnRequests", &json!({"machines": []}));
    tree.unset_env("HFWASM_NOW_OFFSET_SECS");
    assert!(moto.live().is_empty(), "abandoned instances are terminated: {:?}", moto.instances());
    assert!(moto.groups().is_empty(), "and their group deleted: {:?}", moto.groups());

    // And the provider still works.
    let id = tree.request("ASG-OnDemand", 1);
    assert_eq!(tree.until_final(&id)["status"], "complete");
}
