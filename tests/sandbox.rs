//! Guests that misbehave are stopped by their limits with a named error; the host survives,
//! the store is intact, and the next call works.

mod common;

use common::*;
use serde_json::json;

fn use_guest(tree: &HfTree, file: &str, grants: &[&str], limits: serde_json::Value) {
    tree.config(&json!({
        "provider": {"guest": "bad"},
        "guests": {"bad": {"wasm": guest_wasm(file).display().to_string(), "grants": grants, "limits": limits}}
    }));
}

/// A finished request made with the good guest, to prove later that nothing was lost.
fn finished_request(tree: &HfTree) -> String {
    let id = tree.request(PLAIN_TEMPLATE, 1);
    assert_eq!(tree.until_final(&id)["status"], "complete");
    id
}

fn still_intact(tree: &HfTree, id: &str) {
    // A finished request is answered from the store without loading any guest.
    let s = tree.ok("getRequestStatus", &json!({"requests": [{"requestId": id}]}));
    assert_eq!(s["requests"][0]["status"], "complete");
    // And with the good guest back, the pool answers again.
    tree.default_config();
    let t = tree.ok("getAvailableTemplates", &json!({}));
    assert_eq!(t["templates"][0]["availableNumber"], 2);
}

#[test]
fn an_endless_loop_is_stopped_by_the_deadline() {
    let tree = HfTree::new(&plain_inventory(3));
    let id = finished_request(&tree);
    use_guest(&tree, "hfwasm_testing_spin.wasm", &[], json!({"timeout_ms": 300}));
    let t0 = std::time::Instant::now();
    let e = tree.err("getAvailableTemplates", &json!({}), "GUEST_TIMEOUT");
    let msg = e["error"]["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("guest 'bad'") && msg.contains("'templates'") && msg.contains("300 ms"),
        "{msg}"
    );
    assert!(t0.elapsed().as_secs() < 30, "the deadline must end the call");
    assert_eq!(
        (e["error"]["details"]["guest"].as_str(), e["error"]["details"]["export"].as_str()),
        (Some("bad"), Some("templates"))
    );
    // The same guest under requestMachines: stopped again, nothing recorded as leased.
    tree.err(
        "requestMachines",
        &json!({"template": {"templateId": PLAIN_TEMPLATE, "machineCount": 1}}),
        "GUEST_TIMEOUT",
    );
    still_intact(&tree, &id);
}

#[test]
fn a_memory_bomb_is_stopped_by_the_memory_limit() {
    let tree = HfTree::new(&plain_inventory(3));
    let id = finished_request(&tree);
    use_guest(&tree, "hfwasm_testing_membomb.wasm", &[], json!({"memory_mib": 32}));
    let e = tree.err("getAvailableTemplates", &json!({}), "GUEST_MEMORY_LIMIT");
    let msg = e["error"]["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("guest 'bad'") && msg.contains("32 MiB") && msg.contains("memory_mib"),
        "{msg}"
    );
    still_intact(&tree, &id);
}

#[test]
fn an_ungranted_import_is_refused_at_load() {
    let tree = HfTree::new(&plain_inventory(3));
    let id = finished_request(&tree);
    // The on-prem guest imports kv, inventory and power; grant it only log and inventory.
    tree.config(&json!({
        "provider": {"guest": "pool"},
        "guests": {"pool": {"wasm": "builtin:onprem", "grants": ["log", "inventory"]}}
    }));
    let e = tree.err("getAvailableTemplates", &json!({}), "GUEST_LOAD_ERROR");
    let msg = e["error"]["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("guest 'pool'")
            && msg.contains("hostfactory:capabilities/")
            && msg.contains("@0.2.0")
            && msg.contains("guests.pool.grants"),
        "{msg}"
    );
    still_intact(&tree, &id);
}

#[test]
fn a_changed_guest_file_takes_effect_on_the_next_call() {
    let tree = HfTree::new(&plain_inventory(3));
    let file = tree.dir.path().join("provider.wasm");
    let onprem = std::path::Path::new(env!("HFWASM_GUEST_DIR")).join("hfwasm_guest_onprem.wasm");
    std::fs::copy(&onprem, &file).expect("copy");
    tree.config(&json!({
        "provider": {"guest": "site"},
        "guests": {"site": {"wasm": file.display().to_string(), "grants": ["log", "kv", "inventory", "power"], "limits": {"timeout_ms": 300}}}
    }));
    tree.ok("getAvailableTemplates", &json!({}));
    // Same path, new content: the cache key is the content hash, so no stale code runs.
    std::fs::copy(guest_wasm("hfwasm_testing_spin.wasm"), &file).expect("swap");
    tree.err("getAvailableTemplates", &json!({}), "GUEST_TIMEOUT");
    std::fs::copy(&onprem, &file).expect("swap back");
    tree.ok("getAvailableTemplates", &json!({}));
}

#[test]
fn unbounded_recursion_is_stopped_by_the_stack_limit() {
    let tree = HfTree::new(&plain_inventory(3));
    let id = finished_request(&tree);
    use_guest(&tree, "hfwasm_testing_recursion.wasm", &[], json!({}));
    let e = tree.err("getAvailableTemplates", &json!({}), "GUEST_TRAP");
    let msg = e["error"]["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("guest 'bad'") && msg.contains("'templates'") && msg.contains("stack"),
        "{msg}"
    );
    still_intact(&tree, &id);
}

#[test]
fn a_trap_leaves_a_core_dump_where_config_asks() {
    let tree = HfTree::new(&plain_inventory(3));
    let id = finished_request(&tree);
    tree.config(&json!({
        "provider": {"guest": "bad"},
        "guests": {"bad": {
            "wasm": guest_wasm("hfwasm_testing_recursion.wasm").display().to_string(),
            "grants": [],
            "coredump_dir": "dumps"
        }}
    }));
    let e = tree.err("getAvailableTemplates", &json!({}), "GUEST_TRAP");
    let msg = e["error"]["message"].as_str().unwrap_or_default();
    let dumps: Vec<_> = std::fs::read_dir(tree.work.join("dumps"))
        .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    assert_eq!(dumps.len(), 1, "one dump per trap: {dumps:?}");
    let dump = &dumps[0];
    let name = dump.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    assert!(name.starts_with("bad-templates-") && name.ends_with(".coredump"), "{name}");
    assert!(msg.contains("core dump: ") && msg.contains(&dump.display().to_string()), "{msg}");
    let bytes = std::fs::read(dump).expect("dump");
    assert!(
        bytes.starts_with(b"\0asm") && bytes.windows(4).any(|w| w == b"core"),
        "a wasm core dump"
    );
    still_intact(&tree, &id);
    // Without the setting, no dump is written.
    use_guest(&tree, "hfwasm_testing_recursion.wasm", &[], json!({}));
    tree.err("getAvailableTemplates", &json!({}), "GUEST_TRAP");
    assert_eq!(std::fs::read_dir(tree.work.join("dumps")).map(|d| d.count()).unwrap_or(0), 1);
}

#[test]
fn a_flood_of_host_calls_is_stopped_by_the_call_timeout() {
    let tree = HfTree::new(&plain_inventory(3));
    let id = finished_request(&tree);
    use_guest(&tree, "hfwasm_testing_flood.wasm", &["log", "kv"], json!({"call_timeout_ms": 1500}));
    let t0 = std::time::Instant::now();
    let e = tree.err("getAvailableTemplates", &json!({}), "GUEST_TIMEOUT");
    let msg = e["error"]["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("guest 'bad'") && msg.contains("1500 ms") && msg.contains("limits.call_timeout_ms"),
        "{msg}"
    );
    assert!(
        t0.elapsed().as_secs() < 5,
        "the wall-time limit ends the call at once, not at timeout_ms (10 s)"
    );
    still_intact(&tree, &id);
}

#[test]
fn time_waiting_in_host_calls_does_not_count_as_running_time() {
    // The JSON store parses its whole file on every kv call; with 3,000 requests in it a
    // call takes milliseconds while the guest's own work between calls takes microseconds.
    // 150 ms of running time is plenty although the call takes far longer.
    let tree = HfTree::new(&plain_inventory(3));
    tree.config(&json!({
        "storage": {"strategy": "json"},
        "provider": {"guest": "bad", "settings": {"calls": 150}},
        "guests": {"bad": {"wasm": guest_wasm("hfwasm_testing_flood.wasm").display().to_string(), "grants": ["log", "kv"], "limits": {"timeout_ms": 150}}}
    }));
    let requests: Vec<serde_json::Value> = (0..3000)
        .map(|i| {
            json!({"id": format!("req-{i:05}"), "kind": "provision", "template_id": "t", "count": 2, "phase": "submitted",
                   "status": "complete", "outstanding": 0, "created_at": 1000 + i, "updated_at": 1000 + i, "claimed": true,
                   "machines": (0..2).map(|m| json!({"machine_id": format!("m-{i}-{m}"), "name": format!("h-{i}-{m}"),
                       "private_ip": "10.0.0.1", "launch_time": 1000, "state": "running"})).collect::<Vec<_>>()})
        })
        .collect();
    let doc = tree.dir.path().join("big.json");
    std::fs::write(&doc, json!({"schema_version": 3, "requests": requests}).to_string()).expect("doc");
    let (code, out, err) = admin(&tree, &["store", "import", doc.to_str().expect("path")]);
    assert_eq!(code, 0, "{out}{err}");
    let t0 = std::time::Instant::now();
    let t = tree.ok("getAvailableTemplates", &json!({}));
    let took = t0.elapsed();
    assert_eq!(t["templates"][0]["templateId"], "flood");
    assert!(
        took.as_millis() > 300,
        "the call must outlast the guest's 150 ms by far for this test to mean anything: {took:?}"
    );
}

#[test]
fn a_guest_sees_no_environment_no_files_no_network_and_no_credentials() {
    let tree = HfTree::new(&plain_inventory(3));
    let secret = tree.dir.path().join("credentials");
    std::fs::write(&secret, "[default]\naws_secret_access_key=hunter2\n").expect("secret");
    // A listener the guest will try to reach.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listen");
    let addr = listener.local_addr().expect("addr").to_string();
    tree.set_env("AWS_SECRET_ACCESS_KEY", "hunter2");
    // A year ahead: the guest's clock must follow the call's time, not the machine's.
    tree.set_env("HFWASM_NOW_OFFSET_SECS", "31536000");
    tree.set_env("PGPASSWORD", "hunter2");
    tree.config(&json!({
        "provider": {"guest": "bad", "settings": {"paths": [secret.display().to_string()], "connect": [addr]}},
        "guests": {"bad": {"wasm": guest_wasm("hfwasm_testing_snoop.wasm").display().to_string(), "grants": ["log"]}}
    }));
    let t = tree.ok("getAvailableTemplates", &json!({}));
    let seen = &t["templates"][0];
    assert_eq!(seen["env"], json!([]), "no environment variables at all: {seen:#}");
    for f in seen["files"].as_array().expect("files") {
        assert!(f.as_str().is_some_and(|s| s.contains("refused")), "no file is readable: {seen:#}");
    }
    // (`cwd` is only wasi-libc's name for "/", which the line above shows holds nothing.)
    for k in ["dirs", "resolve"] {
        assert!(seen[k].as_str().is_some_and(|s| s.starts_with("refused")), "{k}: {seen:#}");
    }
    let tcp = seen["tcp"].as_array().expect("tcp");
    assert_eq!(tcp.len(), 1);
    assert!(tcp[0].as_str().is_some_and(|s| s.contains("refused")), "no sockets: {seen:#}");
    assert!(!t.to_string().contains("hunter2"), "the secret never reaches the guest");
    assert_eq!(seen["clock"], seen["now"], "the guest's wall clock is the call's time: {seen:#}");
    let real = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let clock = seen["clock"].as_u64().unwrap_or(0);
    assert!(
        clock.abs_diff(real + 31_536_000) < 120,
        "not the machine's clock: {clock} vs {real}"
    );
    listener.set_nonblocking(true).expect("nonblocking");
    assert!(listener.accept().is_err(), "nothing connected to the listener");
}

#[test]
fn an_enormous_answer_is_refused_by_the_answer_limit() {
    let tree = HfTree::new(&plain_inventory(3));
    let id = finished_request(&tree);
    // The default limit (16 MiB) already refuses ~24 MiB of templates.
    use_guest(&tree, "hfwasm_testing_bigoutput.wasm", &[], json!({}));
    let e = tree.err("getAvailableTemplates", &json!({}), "GUEST_MEMORY_LIMIT");
    let msg = e["error"]["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("guest 'bad'") && msg.contains("16384 KiB") && msg.contains("limits.answer_kib"),
        "{msg}"
    );
    still_intact(&tree, &id);
}

#[test]
fn guest_check_reports_grants_and_refuses_what_is_not_a_component() {
    let check = |file: &std::path::Path, json: bool| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_hfwasm"));
        cmd.args(["guest", "check"]).arg(file);
        if json {
            cmd.arg("--json");
        }
        let out = cmd.output().expect("run");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (code, out, err) = check(&guest_wasm("hfwasm_guest_aws.wasm"), true);
    assert_eq!(code, 0, "{out}{err}");
    let report: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(report["grants"], json!(["log", "kv", "ec2", "autoscaling"]));
    assert_eq!(report["problems"], json!([]));
    assert!(
        report["exports"]
            .as_array()
            .is_some_and(|e| e.contains(&json!("hostfactory:provider/provider@0.2.0")))
    );
    let (code, out, _) = check(&guest_wasm("hfwasm_testing_snoop.wasm"), false);
    assert_eq!(code, 0);
    assert!(
        out.contains("grants it needs: []") && out.contains("this host can run it: yes"),
        "{out}"
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let core = dir.path().join("core.wasm");
    std::fs::write(&core, b"\0asm\x01\0\0\0").expect("core module");
    let (code, _, err) = check(&core, false);
    assert_eq!(code, 1);
    assert!(
        err.contains("core WebAssembly module, not a component") && err.contains("wasm32-wasip2"),
        "{err}"
    );
    let text = dir.path().join("notes.wasm");
    std::fs::write(&text, "hello").expect("text");
    let (code, _, err) = check(&text, false);
    assert_eq!(code, 1);
    assert!(err.contains("not a WebAssembly file"), "{err}");
    let (code, _, err) = check(&dir.path().join("missing.wasm"), false);
    assert_eq!(code, 1);
    assert!(err.contains("cannot read"), "{err}");
}

#[test]
fn a_seeded_guest_draws_the_same_random_numbers_every_run() {
    let tree = HfTree::new(&plain_inventory(1));
    let draw = |seed: Option<u64>| -> String {
        let mut guest = json!({"wasm": guest_wasm("hfwasm_testing_snoop.wasm").display().to_string(), "grants": ["log"]});
        if let Some(s) = seed {
            guest["limits"] = json!({"random_seed": s});
        }
        tree.config(&json!({"provider": {"guest": "bad"}, "guests": {"bad": guest}}));
        let t = tree.ok("getAvailableTemplates", &json!({}));
        t["templates"][0]["random"].as_str().expect("random").to_string()
    };
    let (a, b) = (draw(Some(42)), draw(Some(42)));
    assert_eq!(a, b, "the same seed, the same numbers, in two processes");
    assert_ne!(draw(Some(43)), a, "another seed, other numbers");
    assert_ne!(draw(None), draw(None), "without a seed, fresh randomness each run");
}

#[test]
fn fuel_stops_a_loop_after_the_same_work_every_time() {
    let tree = HfTree::new(&plain_inventory(3));
    let id = finished_request(&tree);
    // A generous deadline: only the fuel can stop it.
    use_guest(
        &tree,
        "hfwasm_testing_spin.wasm",
        &[],
        json!({"fuel": 20_000_000, "timeout_ms": 600_000}),
    );
    let t0 = std::time::Instant::now();
    for _ in 0..2 {
        let e = tree.err("getAvailableTemplates", &json!({}), "GUEST_TIMEOUT");
        let msg = e["error"]["message"].as_str().unwrap_or_default();
        assert!(
            msg.contains("ran out of its fuel of 20000000") && msg.contains("limits.fuel"),
            "{msg}"
        );
    }
    assert!(t0.elapsed().as_secs() < 60, "fuel, not the deadline, stopped it");
    // The on-prem guest with ample fuel works as usual; a fuel of 0 is refused by config.
    tree.config(&json!({"guests": {"onprem": {"wasm": "builtin:onprem", "grants": ["log", "kv", "inventory", "power"], "limits": {"fuel": 10_000_000_000u64}}}}));
    tree.ok("getAvailableTemplates", &json!({}));
    tree.config(
        &json!({"guests": {"onprem": {"wasm": "builtin:onprem", "grants": ["log", "kv", "inventory", "power"], "limits": {"fuel": 0}}}}),
    );
    let e = tree.err("getAvailableTemplates", &json!({}), "CONFIG_ERROR");
    assert!(e["error"]["message"].as_str().is_some_and(|m| m.contains("limits.fuel")), "{e}");
    tree.default_config();
    still_intact(&tree, &id);
}

#[test]
fn answers_that_break_the_contract_are_refused_and_nothing_of_them_is_stored() {
    let tree = HfTree::new(&plain_inventory(1));
    let liar = |lie: &str| {
        tree.config(&json!({
            "provider": {"guest": "liar", "settings": {"lie": lie}},
            "guests": {"liar": {"wasm": guest_wasm("hfwasm_testing_liar.wasm").display().to_string(), "grants": ["log"]}}
        }));
    };
    for (lie, needle) in [
        ("many", "500 live machines for a request of 1"),
        ("duplicate", "reported more than once"),
        ("name", "not a host name"),
    ] {
        liar(lie);
        let e = tree.err(
            "requestMachines",
            &json!({"template": {"templateId": "t", "machineCount": 1}}),
            "GUEST_CONTRACT",
        );
        let m = e["error"]["message"].as_str().unwrap_or_default();
        assert!(m.contains(needle), "{lie}: {m}");
    }
    // Nothing of those answers was stored: no request holds a machine.
    let report = store_check(&tree);
    assert_eq!(report["machines"], 0, "{report:#}");
    // A lie in a status answer fails that request, not the call.
    liar("");
    let id = tree.request("t", 1);
    liar("many");
    let r = tree.ok(
        "getRequestStatus",
        &json!({"requests": [{"requestId": id}, {"requestId": "req-unknown"}]}),
    );
    assert_eq!(r["requests"].as_array().map(Vec::len), Some(2), "{r}");
    let log = std::fs::read_to_string(tree.logs.join("hfwasm-pool.log")).unwrap_or_default();
    assert!(log.contains("breaks the HostFactory contract"), "{log}");
    // A numeric attribute that is not a number.
    liar("numeric");
    let e = tree.err("getAvailableTemplates", &json!({}), "GUEST_CONTRACT");
    assert!(
        e["error"]["message"].as_str().is_some_and(|m| m.contains("'ncpus' is \"lots\"")),
        "{e}"
    );
}

#[test]
fn a_planted_or_changed_compiled_guest_is_never_run() {
    use std::os::unix::fs::PermissionsExt;
    let tree = HfTree::new(&plain_inventory(3));
    let cache = tree.dir.path().join("cache");
    tree.set_env("HFWASM_CACHE_DIR", &cache.display().to_string());
    let file = tree.dir.path().join("provider.wasm");
    let onprem = std::path::Path::new(env!("HFWASM_GUEST_DIR")).join("hfwasm_guest_onprem.wasm");
    std::fs::copy(&onprem, &file).expect("copy");
    tree.config(&json!({
        "provider": {"guest": "site"},
        "guests": {"site": {"wasm": file.display().to_string(), "grants": ["log", "kv", "inventory", "power"], "limits": {"timeout_ms": 300}}}
    }));
    let cwasm = || -> Vec<std::path::PathBuf> {
        let mut v: Vec<_> = std::fs::read_dir(&cache)
            .expect("cache")
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "cwasm"))
            .collect();
        v.sort_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok());
        v
    };
    tree.ok("getAvailableTemplates", &json!({}));
    let good = cwasm().remove(0);
    assert_eq!(std::fs::metadata(&good).expect("meta").permissions().mode() & 0o777, 0o600);
    // Another guest's compiled code, as an attacker would plant it under the good one's name.
    std::fs::copy(guest_wasm("hfwasm_testing_spin.wasm"), &file).expect("swap");
    tree.err("getAvailableTemplates", &json!({}), "GUEST_TIMEOUT");
    let spin = cwasm().into_iter().find(|p| p != &good).expect("spin's cwasm");
    std::fs::copy(&onprem, &file).expect("swap back");
    std::fs::copy(&spin, &good).expect("plant");
    tree.ok("getAvailableTemplates", &json!({}));
    let log = std::fs::read_to_string(tree.logs.join("hfwasm-pool.log")).unwrap_or_default();
    assert!(
        log.contains("precompiled guest refused") && log.contains("seal does not match"),
        "{log}"
    );
    // A compiled guest others may write is refused too.
    std::fs::set_permissions(&good, std::fs::Permissions::from_mode(0o666)).expect("chmod");
    tree.ok("getAvailableTemplates", &json!({}));
    assert_eq!(
        std::fs::metadata(&good).expect("meta").permissions().mode() & 0o777,
        0o600,
        "recompiled, private again"
    );

    // A cache directory shared with other users: this user's own directory inside it.
    let shared = tree.dir.path().join("shared-cache");
    std::fs::create_dir(&shared).expect("mkdir");
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).expect("chmod");
    tree.set_env("HFWASM_CACHE_DIR", &shared.display().to_string());
    tree.ok("getAvailableTemplates", &json!({}));
    let own: Vec<_> = std::fs::read_dir(&shared)
        .expect("shared")
        .filter_map(Result::ok)
        .map(|e| e.file_name())
        .collect();
    assert_eq!(own.len(), 1, "{own:?}");
    assert!(own[0].to_string_lossy().starts_with("hfwasm-"), "{own:?}");
    let mode = std::fs::metadata(shared.join(&own[0])).expect("meta").permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
}
