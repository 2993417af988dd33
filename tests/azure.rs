//! The Azure provider through the real scripts, with IBM's `azureprov_config.json` and
//! `azureprov_templates.json` (tests/data/ibm/azure, never edited), against a stateful ARM
//! fake (tests/fakes/arm_fake.py). The fake is written from Azure's REST API specification;
//! it is not Azure and no emulator of it exists. It cannot show real latencies, ARM's
//! eventual consistency, its many other validations or real token claims; what it does show
//! is the REST conversation: the token fetched by the host with the site's service principal,
//! NIC then VM per host, async operations, paging, quota and throttling answers, Spot
//! evictions, and what is left behind (VMs, NICs, OS disks) after a return.

mod common;

use common::arm::{self, Arm, azure_tree, ibm_file};
use common::*;
use serde_json::{Value, json};

fn vms_of(fake: &Arm, request: &str) -> Vec<Value> {
    fake.state()["vms"]
        .as_array()
        .expect("vms")
        .iter()
        .filter(|v| v["tags"]["hfwasm:request"] == request)
        .cloned()
        .collect()
}

/// Polls getReturnRequests / getRequestStatus of return `id` until it is final.
fn until_returned(tree: &HfTree, id: &str) -> Value {
    let t0 = std::time::Instant::now();
    loop {
        let r = tree.ok("getRequestStatus", &json!({"requests": [{"requestId": id}]}));
        if r["requests"][0]["status"] != "running" {
            return r["requests"][0].clone();
        }
        assert!(t0.elapsed().as_secs() < 30, "return {id} still running: {r}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

fn decode64(s: &str) -> String {
    let mut bits = 0u32;
    let mut n = 0;
    let mut out = Vec::new();
    for c in s.bytes().filter(|c| *c != b'=') {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            _ => 63,
        };
        bits = (bits << 6) | u32::from(v);
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push((bits >> n) as u8);
        }
    }
    String::from_utf8(out).expect("utf-8")
}

#[test]
fn ibm_azure_samples_run_the_full_cycle_and_leave_nothing_behind() {
    let fake = Arm::start(100);

    // As IBM ships them: the credentials file is not on this machine, and the refusal says
    // which setting and which file, on one line.
    let tree = HfTree::new("");
    std::fs::remove_file(tree.conf.join("inventory.txt")).expect("no pool");
    std::fs::write(tree.conf.join("azureprov_config.json"), ibm_file("azureprov_config.json")).expect("config");
    std::fs::write(tree.conf.join("azureprov_templates.json"), ibm_file("azureprov_templates.json")).expect("templates");
    let o = tree.run("getAvailableTemplates", &json!({}));
    assert_eq!(o.code, 1, "{}", o.json);
    let msg = o.json["error"]["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("AZURE_CREDENTIAL_FILE") && msg.contains("/home/lsfadmin/credentials"),
        "{msg}"
    );

    let tree = azure_tree(&fake, |_| {});
    let t = tree.ok("getAvailableTemplates", &json!({}));
    for id in ["Template-VM-0", "Template-VM-1"] {
        let tpl = template(&t, id);
        // Standard_A4_v2 from the region's size catalogue: 4 cores, 8192 MB.
        assert_eq!(tpl["attributes"]["ncpus"], json!(["Numeric", "4"]), "{tpl}");
        assert_eq!(tpl["attributes"]["nram"], json!(["Numeric", "8192"]), "{tpl}");
        assert_eq!(tpl["attributes"]["mem"], json!(["Numeric", "8192"]), "{tpl}");
        assert_eq!(tpl["attributes"]["azurehost"], json!(["Boolean", "1"]), "{tpl}");
        assert_eq!(tpl["attributes"]["zone"], json!(["String", "asiasoutheast"]), "{tpl}");
        assert_eq!(tpl["maxNumber"], 4, "{tpl}");
    }

    let id = tree.request("Template-VM-0", 2);
    let done = tree.until_final(&id);
    assert_eq!(done["status"], "complete", "{done}");
    // maxNumber holds across requests: 2 of 4 are left, so 3 more are refused. The figure
    // comes from the guest's kv ledger: a template poll sends ARM nothing.
    let before = fake.requests().len();
    let t = tree.ok("getAvailableTemplates", &json!({}));
    let sent: Vec<Value> = fake.requests()[before..]
        .iter()
        .filter(|r| !r["path"].as_str().is_some_and(|p| p.starts_with("/_fake/")))
        .cloned()
        .collect();
    assert_eq!(sent, Vec::<Value>::new(), "a template poll calls no ARM API");
    assert_eq!(
        (
            template(&t, "Template-VM-0")["availableNumber"].clone(),
            template(&t, "Template-VM-1")["availableNumber"].clone()
        ),
        (json!(2), json!(4)),
        "{t}"
    );
    tree.err(
        "requestMachines",
        &json!({"template": {"templateId": "Template-VM-0", "machineCount": 3}}),
        "INVALID_MACHINE_COUNT",
    );
    let names = machine_names(&done, "succeed");
    assert_eq!(names.len(), 2, "{done}");
    let vms = vms_of(&fake, &id);
    assert_eq!(vms.len(), 2);
    for m in done["machines"].as_array().expect("machines") {
        let ip = m["privateIpAddress"].as_str().expect("ip");
        assert!(ip.starts_with("10.1.0."), "subnet1 of the template: {m}");
        // IBM's host names: host-<private address>.
        assert_eq!(m["name"], format!("host-{}", ip.replace('.', "-")), "{m}");
    }
    let state = fake.state();
    for vm in &vms {
        let p = &vm["properties"];
        assert_eq!(p["hardwareProfile"]["vmSize"], "Standard_A4_v2");
        assert_eq!(
            p["storageProfile"]["osDisk"]["managedDisk"]["storageAccountType"], "Standard_LRS",
            "IBM's STANDARD_LRS in Azure's spelling"
        );
        assert_eq!(p["osProfile"]["adminUsername"], "lsfuser", "IBM's default root user");
        assert_eq!(vm["tags"]["group"], "project1", "instanceTags");
        assert_eq!(vm["tags"]["hfwasm:template"], "Template-VM-0");
        let script = decode64(
            state["custom_data"][vm["name"].as_str().expect("name")]
                .as_str()
                .expect("customData"),
        );
        assert!(
            script.contains("export template_id='Template-VM-0'")
                && script.contains("'http://10.1.0.4/user_data.sh'")
                && script.contains("bash 'user_data.sh'"),
            "customScriptUri runs at first boot: {script}"
        );
    }
    for nic in state["nics"].as_array().expect("nics") {
        assert!(
            nic["properties"]["networkSecurityGroup"]["id"]
                .as_str()
                .is_some_and(|n| n.ends_with("/lsfsecuritygrp")),
            "{nic}"
        );
    }

    // The host fetched one token with the site's service principal for all these calls
    // (each a new process: the token is kept in a 0600 file of the work dir until a minute
    // before it expires); no answer carries it or the secret.
    assert_eq!(state["token_requests"].as_u64(), Some(1), "{state}");
    // A kept token the cloud stops taking (revoked) is dropped and a fresh one fetched at
    // once: the return below goes through.
    fake.control("POST", "revoke-tokens", &json!({}));
    let ret = tree.ok(
        "requestReturnMachines",
        &json!({"machines": names.iter().map(|n| json!({"name": n})).collect::<Vec<_>>()}),
    );
    assert!(!ret.to_string().contains(arm::SECRET));
    assert_eq!(
        fake.state()["token_requests"].as_u64(),
        Some(2),
        "one fresh token after the revocation"
    );
    let rid = ret["requestId"].as_str().expect("return id").to_string();
    let r = until_returned(&tree, &rid);
    assert_eq!(r["status"], "complete", "{r}");
    assert!(machine_names(&r, "succeed").len() == 2, "{r}");
    // Nothing left: VM, NIC and OS disk of each host are gone.
    let state = fake.state();
    for kind in ["vms", "nics", "disks"] {
        assert_eq!(state[kind].as_array().map(Vec::len), Some(0), "{kind} left behind: {state:#}");
    }
    let done = tree.ok("getRequestStatus", &json!({"requests": [{"requestId": id}]}));
    assert!(!done.to_string().contains(arm::SECRET));
    let t = tree.ok("getAvailableTemplates", &json!({}));
    assert_eq!(
        template(&t, "Template-VM-0")["availableNumber"],
        4,
        "the returned hosts are free again"
    );
}

#[test]
fn quota_throttling_failures_evictions_and_bad_templates_as_azure_answers_them() {
    // 8 cores: two Standard_A4_v2 hosts.
    let fake = Arm::start(8);
    let tree = azure_tree(&fake, |t| {
        let list = t["templates"].as_array_mut().expect("templates");
        let mut spot = list[1].clone();
        spot["templateId"] = json!("Spot-D2");
        spot["vmType"] = json!("Standard_D2s_v5");
        spot["vmPriority"] = json!("Spot");
        spot["evictionPolicy"] = json!("Delete");
        spot["maxPrice"] = json!(0.05);
        let mut ttl = list[1].clone();
        ttl["templateId"] = json!("With-TTL");
        ttl["ttl"] = json!(60);
        list.push(spot);
        list.push(ttl);
    });
    // A template with a key the guest refuses is left out, the others offered; the log
    // names the template, the key and why.
    let t = tree.ok("getAvailableTemplates", &json!({}));
    assert_eq!(
        strings(&t["templates"], "templateId"),
        ["Template-VM-0", "Template-VM-1", "Spot-D2"],
        "{t}"
    );
    let log = std::fs::read_to_string(tree.logs.join("hfwasm-pool.log")).unwrap_or_default();
    assert!(
        log.contains("'With-TTL'") && log.contains("`ttl`") && log.contains("requestReturnMachines"),
        "{log}"
    );
    tree.err(
        "requestMachines",
        &json!({"template": {"templateId": "With-TTL", "machineCount": 1}}),
        "TEMPLATE_NOT_FOUND",
    );

    // Quota: 3 asked, 2 fit; the request ends with the 2 and Azure's reason.
    let id = tree.request("Template-VM-0", 3);
    let done = tree.until_final(&id);
    assert_eq!(machine_names(&done, "succeed").len(), 2, "{done}");
    assert_eq!(done["status"], "complete_with_error", "{done}");
    assert!(done["message"].as_str().is_some_and(|m| m.contains("quota")), "{done}");
    assert_eq!(vms_of(&fake, &id).len(), 2);
    assert_eq!(
        fake.state()["nics"].as_array().map(Vec::len),
        Some(2),
        "the third host's NIC is not left over"
    );

    // Returned while ARM throttles: it answers 429 with Retry-After twice; the host waits
    // and retries, and the return goes through.
    fake.control("POST", "throttle", &json!({"count": 2, "retry_after": 1}));
    let before = fake.requests().len();
    let names = machine_names(&done, "succeed");
    let ret = tree.ok(
        "requestReturnMachines",
        &json!({"machines": names.iter().map(|n| json!({"name": n})).collect::<Vec<_>>()}),
    );
    let seen: Vec<u64> = fake.requests()[before..]
        .iter()
        .filter(|r| !r["path"].as_str().unwrap_or_default().starts_with("/_fake"))
        .filter_map(|r| r["status"].as_u64())
        .collect();
    assert_eq!(seen.iter().filter(|s| **s == 429).count(), 2, "{seen:?}");
    assert!(
        seen.iter().filter(|s| **s == 202).count() == 2,
        "both deletes went through: {seen:?}"
    );
    until_returned(&tree, ret["requestId"].as_str().expect("id"));

    // A VM Azure fails to provision: the host hears Azure's error, and the VM is deleted.
    fake.control(
        "POST",
        "fail-next-vm",
        &json!({"code": "AllocationFailed", "message": "Allocation failed. Please try another size (fake)."}),
    );
    let id = tree.request("Template-VM-1", 1);
    let done = tree.until_final(&id);
    assert_eq!(done["status"], "complete_with_error", "{done}");
    let m = &done["machines"][0];
    assert_eq!(m["result"], "fail", "{done}");
    assert!(m["message"].as_str().is_some_and(|x| x.contains("AllocationFailed")), "{done}");
    let t0 = std::time::Instant::now();
    while !vms_of(&fake, &id).is_empty() {
        assert!(t0.elapsed().as_secs() < 10, "the failed VM is deleted");
        tree.ok("getRequestStatus", &json!({"requests": [{"requestId": id}]}));
        std::thread::sleep(std::time::Duration::from_millis(200));
    }

    // A Spot VM: priority, eviction policy and price reach Azure; its eviction is a reclaim.
    let id = tree.request("Spot-D2", 1);
    let done = tree.until_final(&id);
    assert_eq!(done["status"], "complete", "{done}");
    let host = machine_names(&done, "succeed").pop().expect("host");
    let vm = vms_of(&fake, &id).pop().expect("vm");
    let p = &vm["properties"];
    assert_eq!(
        (
            p["priority"].clone(),
            p["evictionPolicy"].clone(),
            p["billingProfile"]["maxPrice"].clone()
        ),
        (json!("Spot"), json!("Delete"), json!(0.05))
    );
    let r = tree.ok("getReturnRequests", &json!({"machines": [{"name": host, "machineId": vm["id"]}]}));
    assert_eq!(r["requests"].as_array().map(Vec::len), Some(0), "not evicted yet: {r}");
    fake.control(
        "POST",
        &format!("evict/lsf_hostfactory/{}", vm["name"].as_str().expect("name")),
        &json!({}),
    );
    let r = tree.ok("getReturnRequests", &json!({"machines": [{"name": host, "machineId": vm["id"]}]}));
    assert_eq!(r["requests"][0]["machine"], host, "{r}");
}

#[test]
fn a_kill_after_the_cloud_call_leaves_nothing_once_the_request_is_abandoned() {
    let fake = Arm::start(100);
    let tree = azure_tree(&fake, |_| {});
    tree.set_env("HFWASM_FAULT", "request-machines:after-provider");
    let o = tree.run(
        "requestMachines",
        &json!({"template": {"templateId": "Template-VM-0", "machineCount": 2}}),
    );
    assert_ne!(o.code, 0, "the fault point kills the call");
    tree.unset_env("HFWASM_FAULT");
    assert_eq!(
        fake.state()["vms"].as_array().map(Vec::len),
        Some(2),
        "the VMs were made before the kill"
    );
    // Within INSTANCE_CREATION_TIMEOUT (15 min) nothing is touched; after it the sweep
    // releases what no answer reached HostFactory for.
    tree.ok("getReturnRequests", &json!({"machines": []}));
    assert_eq!(fake.state()["vms"].as_array().map(Vec::len), Some(2));
    tree.set_env("HFWASM_NOW_OFFSET_SECS", "3600");
    let t0 = std::time::Instant::now();
    loop {
        tree.ok("getReturnRequests", &json!({"machines": []}));
        let s = fake.state();
        if ["vms", "nics", "disks"].iter().all(|k| s[*k].as_array().is_some_and(Vec::is_empty)) {
            break;
        }
        assert!(t0.elapsed().as_secs() < 20, "abandoned hosts must go, NICs and disks too: {s:#}");
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    tree.unset_env("HFWASM_NOW_OFFSET_SECS");
    let id = tree.request("Template-VM-0", 1);
    assert_eq!(tree.until_final(&id)["status"], "complete");
}

/// The mission's promise: a site changes the Azure provider and serves HostFactory with it
/// without rebuilding the host. The guest's source is copied out of the repository, changed
/// (every VM gets a `site-build` tag), built there against the published guest SDK, and its
/// `.wasm` dropped into the conf dir beside IBM's files of an already-built hfwasm.
#[test]
fn a_site_built_azure_guest_serves_without_rebuilding_the_host() {
    let site = tempfile::tempdir().expect("tempdir");
    let src = site.path().join("src");
    std::fs::create_dir_all(&src).expect("src");
    for f in ["lib.rs", "arm.rs", "keys.rs", "template.rs"] {
        let mut text = std::fs::read_to_string(repo().join("guests/azure/src").join(f)).expect("guest source");
        if f == "lib.rs" {
            let line = "    m.insert(TAG_PROVIDER.into(), json!(provider));\n";
            assert!(text.contains(line), "the tag line moved; update this test");
            text = text.replace(
                line,
                &format!("{line}    m.insert(\"site-build\".into(), json!(\"out-of-tree\"));\n"),
            );
        }
        std::fs::write(src.join(f), text).expect("copy");
    }
    std::fs::write(
        site.path().join("Cargo.toml"),
        format!(
            "[package]\nname = \"site-azure\"\nversion = \"0.1.0\"\nedition = \"2024\"\n\n[lib]\ncrate-type = [\"cdylib\"]\n\n\
             [dependencies]\nhfwasm-guest-sdk = {{ path = {:?}, features = [\"http\"] }}\nserde_json = \"1\"\n\n\
             [profile.release]\nopt-level = \"s\"\nstrip = true\npanic = \"abort\"\n\n[workspace]\n",
            repo().join("guests/sdk").display().to_string()
        ),
    )
    .expect("manifest");
    // The versions the repository's guests are tested with.
    std::fs::copy(repo().join("guests/Cargo.lock"), site.path().join("Cargo.lock")).expect("lock");
    let target = test_cache().join("site-guest-target");
    let out = std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "--quiet", "--release", "--target", "wasm32-wasip2"])
        .current_dir(site.path())
        .env("CARGO_TARGET_DIR", &target)
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .output()
        .expect("run cargo");
    assert!(
        out.status.success(),
        "out-of-tree build failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let wasm = target.join("wasm32-wasip2/release/site_azure.wasm");

    let fake = Arm::start(100);
    let tree = azure_tree(&fake, |_| {});
    std::fs::copy(&wasm, tree.conf.join("site-azure.wasm")).expect("drop in the guest");
    tree.config(&json!({
        "azure": {"config_file": "azureprov_config.json", "templates_file": "azureprov_templates.json"},
        "guests": {"azure": {"wasm": "site-azure.wasm", "grants": ["log", "kv", "http"]}}
    }));
    let (code, out, err) = admin(&tree, &["config", "check"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("site-azure.wasm") && out.contains("http"), "{out}");
    let id = tree.request("Template-VM-1", 1);
    let done = tree.until_final(&id);
    assert_eq!(done["status"], "complete", "{done}");
    let vms = vms_of(&fake, &id);
    assert_eq!(vms.len(), 1);
    assert_eq!(vms[0]["tags"]["site-build"], "out-of-tree", "the site's guest made it: {}", vms[0]);
    assert!(machine_names(&done, "succeed")[0].starts_with("host-10-1-1-"), "subnet2: {done}");
}

/// The seed's scenario 5 (hybrid cloud), its config exactly as the seed writes it: aws +
/// azure + vmware under one HostFactory provider, COST_OPTIMIZED with cost thresholds.
/// AWS is moto, Azure the ARM fake, and the `vmware` entry is served by the on-prem pool
/// (no vSphere guest exists yet; the log says so). The site's files beside it: IBM's AWS
/// and Azure files (Azure's first template renamed to the AWS one's id, so both clouds
/// offer it and placement chooses) and an inventory.
#[test]
fn seed_scenario_5_hybrid_aws_azure_and_vmware_under_one_provider() {
    let moto = common::moto::Moto::start();
    let (subnet, sg, ami) = moto.network();
    let fake = Arm::start_in("eastus", 100);
    let shared = "OnDemand-Template-VM";
    let tree = azure_tree(&fake, |t| t["templates"][0]["templateId"] = json!(shared));
    std::fs::write(tree.conf.join("inventory.txt"), plain_inventory(2)).expect("inventory");
    tree.set_env("AWS_EC2_METADATA_DISABLED", "true");
    std::fs::write(
        tree.conf.join("aws-credentials"),
        "[default]\naws_access_key_id = testing\naws_secret_access_key = testing\n",
    )
    .expect("creds");
    std::fs::write(
        tree.conf.join("awsprov_config.json"),
        json!({"AWS_REGION": "us-east-1", "AWS_ENDPOINT_URL": moto.endpoint, "AWS_CREDENTIAL_FILE": "aws-credentials"}).to_string(),
    )
    .expect("aws config");
    std::fs::write(
        tree.conf.join("awsprov_templates.json"),
        json!({"templates": common::moto::templates(&subnet, &sg, &ami)}).to_string(),
    )
    .expect("aws templates");
    let seed: Value =
        serde_json::from_str(&std::fs::read_to_string(repo().join("tests/data/seeds/000_04.json")).expect("seed")).expect("json");
    assert_eq!(seed["provider"]["providers"][1]["type"], "azure", "the seed's scenario 5");
    tree.config(&seed);

    // Every provider's templates, each served by its maker.
    let t = tree.ok("getAvailableTemplates", &json!({}));
    for id in [shared, "Template-VM-1", PLAIN_TEMPLATE] {
        template(&t, id);
    }
    let log = std::fs::read_to_string(tree.logs.join("hfwasm-pool.log")).unwrap_or_default();
    assert!(
        log.contains("vmware") && log.contains("on-prem pool"),
        "the vmware entry says how it is served: {log}"
    );
    let (code, out, err) = admin(&tree, &["config", "check", "--json"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let doc: Value = serde_json::from_str(&out).expect("one JSON document");
    assert_eq!(doc["ok"], true, "{doc:#}");
    assert!(
        doc["notes"][0]
            .as_str()
            .is_some_and(|n| n.contains("onprem-fallback") && n.contains("vcenter.company.com")),
        "{doc:#}"
    );
    assert!(
        doc["lines"]
            .as_array()
            .is_some_and(|l| l.iter().any(|x| x.as_str().is_some_and(|x| x.contains("azure-secondary (azure")))),
        "{doc:#}"
    );

    // No prices known: COST_OPTIMIZED falls back to priority, the active provider (aws) first.
    let on_aws = tree.request(shared, 1);
    assert_eq!(tree.until_final(&on_aws)["status"], "complete");
    assert_eq!((moto.instances_of(&on_aws).len(), vms_of(&fake, &on_aws).len()), (1, 0));
    // Azure-only and pool-only templates go to their makers.
    let on_azure = tree.request("Template-VM-1", 1);
    assert_eq!(tree.until_final(&on_azure)["status"], "complete");
    assert_eq!(vms_of(&fake, &on_azure).len(), 1);
    let on_pool = tree.request(PLAIN_TEMPLATE, 1);
    let pool_done = tree.until_final(&on_pool);
    assert!(machine_names(&pool_done, "succeed")[0].starts_with("node-"), "{pool_done}");

    // With prices (hfwasm's `placement` beside the seed's keys): AWS at 0.20 is above its
    // cost_threshold 0.10, Azure at 0.09 within its 0.12: Azure serves the shared template.
    let mut priced = seed.clone();
    priced["placement"] =
        json!({"guest": "builtin:default-policy", "settings": {"prices": {"aws-primary": {"*": 0.20}, "azure-secondary": {"*": 0.09}}}});
    tree.config(&priced);
    let cheap = tree.request(shared, 1);
    assert_eq!(tree.until_final(&cheap)["status"], "complete");
    assert_eq!((moto.instances_of(&cheap).len(), vms_of(&fake, &cheap).len()), (0, 1));

    // `hfwasm machines` names each host's provider; returns go to each maker.
    let (code, out, err) = admin(&tree, &["machines", "--json"]);
    assert_eq!(code, 0, "{err}");
    let listed: Value = serde_json::from_str(&out).expect("json");
    let providers: std::collections::BTreeSet<&str> = strings(&listed, "provider").into_iter().collect();
    assert_eq!(
        providers,
        ["aws-primary", "azure-secondary", "onprem-fallback"].into_iter().collect(),
        "{listed:#}"
    );
    let mut names = Vec::new();
    for id in [&on_aws, &on_azure, &on_pool, &cheap] {
        let r = tree.ok("getRequestStatus", &json!({"requests": [{"requestId": id}]}));
        names.extend(machine_names(&r["requests"][0], "succeed"));
    }
    let ret = tree.ok(
        "requestReturnMachines",
        &json!({"machines": names.iter().map(|n| json!({"name": n})).collect::<Vec<_>>()}),
    );
    let r = until_returned(&tree, ret["requestId"].as_str().expect("id"));
    assert_eq!(machine_names(&r, "succeed").len(), 4, "{r}");
    assert!(fake.state()["vms"].as_array().is_some_and(Vec::is_empty), "Azure hosts deleted");
    assert!(moto.live().is_empty(), "AWS hosts terminated: {:?}", moto.live());
}

/// A VM of this installation that no record accounts for (made by a call whose answer was
/// lost, as far as the store knows) is deleted by the host's orphan scan; one tagged with
/// another installation's store, or with none, is left alone.
#[test]
fn the_orphan_scan_deletes_this_installations_unaccounted_vms_only() {
    let fake = Arm::start(100);
    let tree = azure_tree(&fake, |_| {});
    // A first scan marks when this store's history starts.
    let id = tree.request("Template-VM-0", 1);
    assert_eq!(tree.until_final(&id)["status"], "complete");
    let vm = vms_of(&fake, &id).pop().expect("vm");
    let ours = vm["tags"]["hfwasm:store"]
        .as_str()
        .expect("the guest tags the store id")
        .to_string();
    tree.ok("getReturnRequests", &json!({"machines": []}));
    let plant = |name: &str, store: Option<&str>| {
        let mut tags = json!({"hfwasm:provider": "pool", "hfwasm:request": "req-lost-answer", "hfwasm:template": "Template-VM-0"});
        if let Some(s) = store {
            tags["hfwasm:store"] = json!(s);
        }
        fake.control(
            "POST",
            "plant",
            &json!({"rg": "lsf_hostfactory", "name": name, "tags": tags, "created_offset_secs": 60}),
        );
    };
    plant("hf-orphan-ours", Some(&ours));
    plant("hf-orphan-theirs", Some("another-installations-store"));
    plant("hf-untagged", None);
    tree.set_env("HFWASM_NOW_OFFSET_SECS", "3600");
    let names = |s: &Value| -> Vec<String> { strings(&s["vms"], "name").into_iter().map(str::to_string).collect() };
    let t0 = std::time::Instant::now();
    loop {
        tree.ok("getReturnRequests", &json!({"machines": []}));
        let s = fake.state();
        if !names(&s).iter().any(|n| n == "hf-orphan-ours") {
            break;
        }
        assert!(t0.elapsed().as_secs() < 20, "the orphan must go: {s:#}");
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    let left = names(&fake.state());
    assert!(
        left.contains(&"hf-orphan-theirs".to_string()) && left.contains(&"hf-untagged".to_string()),
        "{left:?}"
    );
    assert!(left.iter().any(|n| *n == vm["name"]), "the recorded host stays: {left:?}");
}
