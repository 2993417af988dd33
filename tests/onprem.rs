//! The on-prem pool provider end to end: admin power commands run by the host (a host stays
//! `executing` until its command succeeded, `fail` with the command's error if it failed),
//! returns with power-off, returns of unknown hosts, and the demo through the real scripts.

mod common;

use common::*;
use serde_json::json;

#[test]
fn power_on_commands_gate_readiness_and_failures_carry_the_commands_error() {
    let marker = tempfile::tempdir().expect("tempdir");
    let gate = marker.path().join("gate");
    let inventory = format!(
        "ok-1 10.5.0.1 template=t ncpus=2 nram=2048 power_on=\"i=0; while [ ! -e {g} ] && [ $i -lt 1200 ]; do sleep 0.05; i=$((i+1)); done; echo up {{name}}\"\n\
         bad-1 10.5.0.2 template=t ncpus=2 nram=2048 power_on=\"echo 'ssh: connect to host {{ip}}: No route to host' >&2; exit 255\"\n",
        g = gate.display()
    );
    let tree = HfTree::new(&inventory);
    let id = tree.request("t", 2);
    // The failing host fails on its own; the good one waits for its command: still running.
    let mut req;
    let t0 = std::time::Instant::now();
    loop {
        req = tree.ok("getRequestStatus", &json!({"requests": [{"requestId": id}]}))["requests"][0].clone();
        if machine_names(&req, "fail").len() == 1 || t0.elapsed().as_secs() > 20 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(req["status"], "running", "never final while a machine is executing: {req}");
    assert_eq!(machine_names(&req, "executing"), ["ok-1"]);
    let bad = req["machines"]
        .as_array()
        .expect("machines")
        .iter()
        .find(|m| m["name"] == "bad-1")
        .cloned()
        .expect("bad-1");
    let msg = bad["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("exit status 255") && msg.contains("No route to host") && msg.contains("10.5.0.2"),
        "{msg}"
    );
    // Open the gate: the good host comes up and the request ends with an error for the bad one.
    std::fs::write(&gate, b"").expect("gate");
    let done = tree.until_final(&id);
    assert_eq!(done["status"], "complete_with_error", "{done}");
    assert_eq!(machine_names(&done, "succeed"), ["ok-1"]);
    // The failed host went back to the pool; the good one is leased.
    let t = tree.ok("getAvailableTemplates", &json!({}));
    assert_eq!(t["templates"][0]["availableNumber"], 1);
}

#[test]
fn returns_power_off_and_unknown_hosts_succeed() {
    let tree = HfTree::new("defaults ncpus=2 nram=2048 power_off=\"sleep 0.3\"\na 10.6.0.1\nb 10.6.0.2\n");
    let id = tree.request("pool-2cpu-2048mb", 2);
    assert_eq!(tree.until_final(&id)["status"], "complete");
    let r = tree.ok(
        "requestReturnMachines",
        &json!({"machines": [{"name": "a", "machineId": "a"}, {"name": "never-seen", "machineId": "x-1"}]}),
    );
    let ret_id = r["requestId"].as_str().expect("id").to_string();
    assert!(ret_id.starts_with("ret-"));
    let first = tree.ok("getRequestStatus", &json!({"requests": [{"requestId": ret_id}]}));
    assert_eq!(first["requests"][0]["status"], "running", "a is powering off: {first}");
    let done = tree.until_final(&ret_id);
    assert_eq!(done["status"], "complete", "{done}");
    let mut gone = machine_names(&done, "succeed");
    gone.sort();
    assert_eq!(gone, ["a", "never-seen"]);
    let t = tree.ok("getAvailableTemplates", &json!({}));
    assert_eq!(t["templates"][0]["availableNumber"], 1, "a is free again, b still leased");
    // Returning a host twice (already gone) still succeeds.
    let again = tree.ok("requestReturnMachines", &json!({"machines": [{"name": "a", "machineId": "a"}]}));
    assert_eq!(tree.until_final(again["requestId"].as_str().expect("id"))["status"], "complete");
    // A return of nothing still gets an id, as IBM's plugin does.
    let none = tree.ok("requestReturnMachines", &json!({"machines": []}));
    assert_eq!(tree.until_final(none["requestId"].as_str().expect("id"))["status"], "complete");
}

#[test]
fn the_demo_runs_the_full_cycle_through_the_real_scripts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hfwasm"))
        .arg("demo")
        .arg("--dir")
        .arg(dir.path())
        .output()
        .expect("demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("Demo complete: 3 hosts provisioned, 2 returned, 1 reclaimed"),
        "{stdout}"
    );
    // The demo installed the real scripts and found the binary relative to them.
    assert!(dir.path().join("providerplugins/hfwasm/scripts/requestMachines.sh").is_file());
    assert!(dir.path().join("providerplugins/hfwasm/bin/hfwasm").exists());
    // Every path the demo prints exists afterwards (the kept tree's log dir).
    let logs = stdout
        .lines()
        .find_map(|l| l.strip_prefix("Logs: "))
        .expect("a kept tree names its logs");
    assert!(std::path::Path::new(logs).is_dir(), "{logs}");

    // Without --dir the tree is temporary: the demo says so instead of naming a path that
    // is gone when it returns.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hfwasm"))
        .arg("demo")
        .output()
        .expect("demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(!stdout.contains("Logs: "), "{stdout}");
    assert!(stdout.contains("were temporary and are removed now"), "{stdout}");
    let root = stdout
        .lines()
        .find_map(|l| l.strip_prefix("HostFactory tree laid out in "))
        .expect("tree line");
    assert!(!std::path::Path::new(root).exists(), "the temp tree is gone: {root}");
}

#[test]
fn the_seed_logging_keys_choose_the_file_level_and_rotation() {
    let tree = HfTree::new(&plain_inventory(2));
    tree.config(&serde_json::json!({
        "logging": {"level": "DEBUG", "file_path": "logs/app.log", "max_size": "1KB", "backup_count": 2}
    }));
    let log = tree.work.join("logs/app.log");
    tree.ok("getAvailableTemplates", &serde_json::json!({}));
    let text = std::fs::read_to_string(&log).expect("the log is at logging.file_path (relative to the work dir)");
    assert!(text.contains("DEBUG"), "level DEBUG: {text}");
    assert!(!tree.logs.join("hfwasm-pool.log").exists(), "file_path replaces the log dir's file");
    // Each call starts by rotating a file past max_size (a call writes a few hundred bytes,
    // so every third or so rotates); only backup_count old files stay.
    for _ in 0..12 {
        tree.ok("getAvailableTemplates", &serde_json::json!({}));
    }
    let rotated = |i: u32| tree.work.join(format!("logs/app.log.{i}"));
    assert!(rotated(1).is_file() && rotated(2).is_file(), "two backups");
    assert!(!rotated(3).exists(), "no more than backup_count");
    assert!(std::fs::metadata(&log).expect("log").len() < 64 << 10);
}

#[test]
fn secrets_stay_in_files_only_their_user_can_read_and_out_of_the_log() {
    use std::os::unix::fs::PermissionsExt;
    let tree = HfTree::new("node-1 10.6.0.1 template=t ncpus=2 nram=2048 power_on=\"sshpass -p Hunter2-secret true; true\"\n");
    // HostFactory started with a permissive umask: hfwasm's files are still its own.
    let input = tree.dir.path().join("req.json");
    std::fs::write(&input, r#"{"template": {"templateId": "t", "machineCount": 1}}"#).expect("input");
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "umask 000; exec '{}' -f '{}'",
            repo().join("scripts/requestMachines.sh").display(),
            input.display()
        ))
        .env("HFWASM_BIN", env!("CARGO_BIN_EXE_hfwasm"))
        .env("HF_PROVIDER_NAME", "pool")
        .env("HF_PROVIDER_CONFDIR", &tree.conf)
        .env("HF_PROVIDER_WORKDIR", &tree.work)
        .env("HF_PROVIDER_LOGDIR", &tree.logs)
        .env("HFWASM_CACHE_DIR", test_cache())
        .output()
        .expect("run");
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let id = answer["requestId"].as_str().expect("request id").to_string();
    let done = tree.until_final(&id);
    assert_eq!(done["status"], "complete", "{done}");
    let mode = |p: &std::path::Path| std::fs::metadata(p).map(|m| m.permissions().mode() & 0o777).unwrap_or(0);
    for file in [
        tree.work.join("hfwasm.sqlite"),
        tree.logs.join("hfwasm-pool.log"),
        tree.work.join("power/node-1.on.log"),
    ] {
        assert_eq!(mode(&file), 0o600, "{}", file.display());
    }
    for dir in [tree.work.clone(), tree.work.join("power")] {
        assert_eq!(mode(&dir) & 0o077, 0, "{} is not open to others", dir.display());
    }
    let log = std::fs::read_to_string(tree.logs.join("hfwasm-pool.log")).expect("log");
    assert!(log.contains("power command finished"), "{log}");
    assert!(!log.contains("Hunter2-secret"), "the command (and its password) is never logged");
}

/// A host whose power-off failed stays out of the pool (it may be half-configured), and
/// returning it again runs the power-off again; only a power-off that succeeded frees it.
#[test]
fn a_failed_power_off_keeps_the_host_out_until_a_return_succeeds() {
    let flag = tempfile::tempdir().expect("flag dir");
    let tried = flag.path().join("tried");
    let tree = HfTree::new(&format!(
        "node-1 10.9.0.1 template=t ncpus=2 nram=2048 power_off=\"[ -e {f} ] || {{ touch {f}; echo 'ipmi: timeout' >&2; exit 1; }}\"\n",
        f = tried.display()
    ));
    let id = tree.request("t", 1);
    let held = tree.until_final(&id);
    let mid = held["machines"][0]["machineId"].as_str().expect("machineId").to_string();
    assert_eq!(mid, format!("node-1@{id}"), "one machine id per lease");
    let input = json!({"machines": [{"name": "node-1", "machineId": mid}]});
    let first = tree.ok("requestReturnMachines", &input);
    let failed = tree.until_final(first["requestId"].as_str().expect("id"));
    assert_eq!(machine_names(&failed, "fail"), ["node-1"], "{failed}");
    assert!(
        failed.to_string().contains("ipmi: timeout"),
        "the command's error is passed on: {failed}"
    );
    let available = || template(&tree.ok("getAvailableTemplates", &json!({})), "t")["availableNumber"].clone();
    assert_eq!(available(), 0, "kept out of the pool");
    let again = tree.ok("requestReturnMachines", &input);
    let done = tree.until_final(again["requestId"].as_str().expect("id"));
    assert_eq!(done["status"], "complete", "{done}");
    assert_eq!(available(), 1, "back in the pool once powered off");
}

/// `hfwasm machines` and `hfwasm requests` list what the store holds, as a site admin reads it
/// (table or JSON), live machines only unless --all.
#[test]
fn machines_and_requests_list_what_the_store_holds() {
    let tree = HfTree::new(&plain_inventory(3));
    tree.default_config();
    let (code, out, _) = admin(&tree, &["machines"]);
    assert_eq!((code, out.trim()), (0, "(none)"), "an empty store lists nothing");
    let tid = PLAIN_TEMPLATE;
    let id = tree.request(tid, 3);
    let done = tree.until_final(&id);
    let names = machine_names(&done, "succeed");
    assert_eq!(names.len(), 3, "{done}");
    let first = done["machines"]
        .as_array()
        .and_then(|ms| ms.iter().find(|m| m["name"] == names[0].as_str()))
        .cloned()
        .expect("the first host");
    let ret = tree.ok(
        "requestReturnMachines",
        &json!({"machines": [{"name": first["name"], "machineId": first["machineId"]}]}),
    );
    let rid = ret["requestId"].as_str().expect("return id").to_string();
    assert_eq!(tree.until_final(&rid)["status"], "complete");

    let list = |args: &[&str]| -> Vec<serde_json::Value> {
        let (code, out, err) = admin(&tree, args);
        assert_eq!(code, 0, "{args:?}: {err}");
        serde_json::from_str(&out).expect("JSON array")
    };
    let live = list(&["machines", "--json"]);
    assert_eq!(live.len(), 2, "the returned host is not live: {live:?}");
    for m in &live {
        assert_eq!(m["provider"], "onprem");
        assert_eq!(m["template"], tid);
        assert_eq!(m["request"], id.as_str());
        assert_eq!(m["state"], "running");
        assert_ne!(m["name"], names[0].as_str());
        assert!(m["ip"].as_str().is_some_and(|ip| ip.starts_with("10.")), "{m}");
        assert_eq!(m["machine_id"], format!("{}@{id}", m["name"].as_str().unwrap_or_default()));
    }
    let all = list(&["machines", "--all", "--json"]);
    assert_eq!(all.len(), 3);
    assert!(
        all.iter().any(|m| m["name"] == names[0].as_str() && m["state"] == "terminated"),
        "{all:?}"
    );
    assert_eq!(list(&["machines", "--all", "--json", "--request", "req-none"]).len(), 0);

    let reqs = list(&["requests", "--json"]);
    assert_eq!(reqs.len(), 2, "{reqs:?}");
    assert_eq!(
        (reqs[0]["id"].as_str(), reqs[0]["kind"].as_str(), reqs[0]["machines"].as_u64()),
        (Some(id.as_str()), Some("provision"), Some(3))
    );
    assert_eq!(
        (reqs[1]["id"].as_str(), reqs[1]["kind"].as_str(), reqs[1]["status"].as_str()),
        (Some(rid.as_str()), Some("return"), Some("complete"))
    );
    assert_eq!(list(&["requests", "--open", "--json"]).len(), 0, "both are done");

    // The table: a header, one line per live machine, the names and IPs in it.
    let (_, table, _) = admin(&tree, &["machines"]);
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("PROVIDER") && lines[0].contains("IP"), "{table}");
    assert_eq!(lines.len(), 3, "{table}");
    assert!(live.iter().all(|m| table.contains(m["name"].as_str().unwrap_or("?"))), "{table}");

    // A broken config is refused with the file named, on stderr, exit 1.
    std::fs::write(tree.conf.join("hfwasm.json"), "{ not json").expect("write");
    let (code, out, err) = admin(&tree, &["machines"]);
    assert_eq!(code, 1);
    assert!(out.is_empty() && err.contains("hfwasm.json"), "{err}");
}
