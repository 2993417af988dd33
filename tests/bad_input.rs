//! Bad input, each answered with a schema-valid error envelope on stdout, exit 1, a code,
//! and a message naming the offending file, field, template, line or key; and nothing
//! recorded before is lost.

mod common;

use common::*;
use serde_json::json;

fn message(e: &serde_json::Value) -> String {
    e["error"]["message"].as_str().unwrap_or_default().to_string()
}

#[test]
fn bad_inputs_are_named_and_nothing_is_lost() {
    let tree = HfTree::new(&plain_inventory(4));
    let id = tree.request(PLAIN_TEMPLATE, 2);
    assert_eq!(tree.until_final(&id)["status"], "complete");

    // Malformed JSON: names the file, line and column.
    let o = tree.run_text("requestMachines", "{\n\t\"template\": {\"templateId\": \"x\",\n");
    let e = expect_error("requestMachines", &o, "INVALID_JSON");
    assert!(message(&e).contains("hf_in_") && e["error"]["details"]["line"].is_number(), "{e}");

    // Missing input file.
    let missing = tree.dir.path().join("gone.json");
    let e = expect_error("getRequestStatus", &tree.run_file("getRequestStatus", &missing), "INPUT_NOT_FOUND");
    assert!(message(&e).contains("gone.json"), "{e}");

    // Unknown template: names it and lists what exists.
    let e = tree.err(
        "requestMachines",
        &json!({"template": {"templateId": "nope", "machineCount": 1}}),
        "TEMPLATE_NOT_FOUND",
    );
    assert!(message(&e).contains("'nope'"), "{e}");
    assert_eq!(e["error"]["details"]["available_templates"], json!([PLAIN_TEMPLATE]));

    // machineCount missing, zero, negative, fractional, and above what the pool has.
    for (count, needle) in [
        (None, "missing `template.machineCount`"),
        (Some(json!(0)), "at least 1"),
        (Some(json!(-3)), "at least 1"),
        (Some(json!(1.5)), "whole number"),
    ] {
        let mut t = json!({"templateId": PLAIN_TEMPLATE});
        if let Some(c) = count {
            t["machineCount"] = c;
        }
        let e = tree.err("requestMachines", &json!({"template": t}), "INVALID_MACHINE_COUNT");
        assert!(message(&e).contains(needle), "{e}");
    }
    let e = tree.err(
        "requestMachines",
        &json!({"template": {"templateId": PLAIN_TEMPLATE, "machineCount": 3}}),
        "INVALID_MACHINE_COUNT",
    );
    assert!(message(&e).contains("availableNumber 2"), "only two of four hosts are free: {e}");
    let e = tree.err(
        "requestMachines",
        &json!({"template": {"templateId": PLAIN_TEMPLATE, "machineCount": 9}}),
        "INVALID_MACHINE_COUNT",
    );
    assert!(message(&e).contains("maxNumber 4"), "{e}");

    // Wrong shapes name the field.
    let e = tree.err("requestReturnMachines", &json!({"machines": [{"machineId": "x"}]}), "INVALID_INPUT");
    assert!(message(&e).contains("machines[0]"), "{e}");
    let e = tree.err("getRequestStatus", &json!({"requests": "req-1"}), "INVALID_INPUT");
    assert!(message(&e).contains("`requests`"), "{e}");

    // A broken inventory line names file and line.
    std::fs::write(
        tree.conf.join("inventory.txt"),
        plain_inventory(4) + "node-05 10.1.0.999 ncpus=4 nram=8192\n",
    )
    .expect("inventory");
    let e = tree.err("getAvailableTemplates", &json!({}), "INVENTORY_ERROR");
    assert!(
        message(&e).contains("inventory.txt line 5") && message(&e).contains("10.1.0.999"),
        "{e}"
    );
    assert_eq!(e["error"]["details"]["line"], 5);
    // The store commands still work: state can be checked and exported while it is fixed.
    let (code, out, err) = admin(&tree, &["store", "check"]);
    assert_eq!(code, 0, "store check with a broken inventory: {out}{err}");
    let (code, out, err) = admin(&tree, &["store", "export"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\"requests\""), "{out}");
    std::fs::write(tree.conf.join("inventory.txt"), plain_inventory(4)).expect("inventory");

    // An unknown config key names key and file.
    tree.config(&json!({"provider": {"guest": "onprem", "pending_timeout": 5}}));
    let e = tree.err("getAvailableTemplates", &json!({}), "CONFIG_ERROR");
    assert!(
        message(&e).contains("hfwasm.json") && message(&e).contains("pending_timeout"),
        "{e}"
    );
    assert_eq!(e["error"]["details"]["setting"], "provider.pending_timeout");
    tree.default_config();

    // Nothing was lost: the first request is intact, and its hosts are still leased.
    let s = tree.until_final(&id);
    assert_eq!((s["status"].as_str(), machine_names(&s, "succeed").len()), (Some("complete"), 2));
    let t = tree.ok("getAvailableTemplates", &json!({}));
    assert_eq!(t["templates"][0]["availableNumber"], 2);
}

#[test]
fn a_call_without_its_input_file_still_answers_json() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hfwasm"))
        .args(["requestMachines", "--bogus"])
        .env("HF_PROVIDER_CONFDIR", "/nonexistent")
        .env("HF_PROVIDER_WORKDIR", "/nonexistent")
        .output()
        .expect("run");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON document");
    assert_eq!(out.status.code(), Some(1));
    assert_valid("error", &v);
}

#[test]
fn get_available_templates_reads_no_file_dev_null_and_empty_alike() {
    let tree = HfTree::new(&plain_inventory(1));
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_hfwasm"))
            .args(args)
            .env("HF_PROVIDER_NAME", "pool")
            .env("HF_PROVIDER_CONFDIR", &tree.conf)
            .env("HF_PROVIDER_WORKDIR", &tree.work)
            .env("HFWASM_CACHE_DIR", test_cache())
            .output()
            .expect("run");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON document");
        assert_eq!(out.status.code(), Some(0), "{args:?}: {v}");
        assert_eq!(v["templates"][0]["templateId"], PLAIN_TEMPLATE, "{v}");
    };
    run(&["getAvailableTemplates"]);
    run(&["getAvailableTemplates", "-f", "/dev/null"]);
    let empty = tree.dir.path().join("empty.json");
    std::fs::write(&empty, "").expect("empty");
    run(&["getAvailableTemplates", "-f", empty.to_str().expect("path")]);
}

#[test]
fn missing_binary_gives_an_error_document() {
    let out = std::process::Command::new(repo().join("scripts/getAvailableTemplates.sh"))
        .args(["-f", "/dev/null"])
        .env("HFWASM_BIN", "/nonexistent/hfwasm")
        .output()
        .expect("run");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON document");
    assert_eq!(out.status.code(), Some(1));
    assert_valid("error", &v);
    assert!(v["error"]["message"].as_str().is_some_and(|m| m.contains("HFWASM_BIN")), "{v}");
}

#[test]
fn a_state_store_the_user_cannot_write_names_its_owner_and_the_fix() {
    use std::os::unix::fs::PermissionsExt;
    let tree = HfTree::new(&plain_inventory(1));
    // The work dir belongs to someone else (as root: run as `nobody`; otherwise: read-only).
    std::fs::create_dir_all(&tree.work).expect("work dir");
    let as_root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout == b"0\n")
        .unwrap_or(false);
    let mut cmd = if as_root {
        for p in [
            tree.dir.path(),
            &tree.dir.path().join("conf"),
            &tree.dir.path().join("conf/providers"),
            &tree.conf,
        ] {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        }
        std::fs::set_permissions(tree.conf.join("inventory.txt"), std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let mut c = std::process::Command::new("setpriv");
        c.args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"]);
        c.arg(env!("CARGO_BIN_EXE_hfwasm"));
        c
    } else {
        std::fs::set_permissions(&tree.work, std::fs::Permissions::from_mode(0o555)).expect("chmod");
        std::process::Command::new(env!("CARGO_BIN_EXE_hfwasm"))
    };
    let input = tree.dir.path().join("in.json");
    std::fs::write(&input, "{}").expect("input");
    std::fs::set_permissions(&input, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let out = cmd
        .args(["getAvailableTemplates", "-f"])
        .arg(&input)
        .env("HF_PROVIDER_NAME", "pool")
        .env("HF_PROVIDER_CONFDIR", &tree.conf)
        .env("HF_PROVIDER_WORKDIR", &tree.work)
        .output()
        .expect("run");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON document");
    assert_eq!(json["error"]["code"], "STORE_ERROR", "{json}");
    let m = message(&json);
    if as_root {
        assert!(
            m.contains("owned by root") && m.contains("hfwasm runs as nobody") && m.contains("chown -R nobody"),
            "{m}"
        );
    } else {
        assert!(m.contains("read-only") && m.contains("chmod u+w"), "{m}");
    }
    let _ = std::fs::set_permissions(&tree.work, std::fs::Permissions::from_mode(0o755));
}

#[test]
fn unbounded_inputs_and_settings_are_refused_by_name_in_time() {
    let tree = HfTree::new(&plain_inventory(2));
    // An input larger than any HostFactory writes: refused before it is parsed.
    let big = format!("{{\"requests\": [{}]}}", vec!["{\"requestId\": \"req-x\"}"; 900_000].join(","));
    assert!(big.len() > 16 << 20);
    let t0 = std::time::Instant::now();
    let o = tree.run_text("getRequestStatus", &big);
    let e = expect_error("getRequestStatus", &o, "INVALID_INPUT");
    assert!(message(&e).contains("MAX_INPUT_BYTES"), "{e}");
    assert!(t0.elapsed().as_secs() < 10, "refused at once");

    // 200,000 ids (each twice) answer in linear time, one answer per distinct id (a
    // quadratic reading took minutes).
    let ids: Vec<serde_json::Value> = (0..200_000).map(|i| json!({"requestId": format!("req-{}", i % 100_000)})).collect();
    let t0 = std::time::Instant::now();
    let r = tree.ok("getRequestStatus", &json!({"requests": ids}));
    assert_eq!(r["requests"].as_array().map(Vec::len), Some(100_000));
    assert!(t0.elapsed().as_secs() < 30, "took {:?}", t0.elapsed());

    // Settings pointing at things that are not files of theirs, or numbers past any use.
    for (config, setting, needle) in [
        (json!({"inventory": {"file": "/dev/zero"}}), None, "not a regular file"),
        (
            json!({"guests": {"onprem": {"wasm": "/dev/zero"}}, "provider": {"guest": "onprem"}}),
            None,
            "not a regular file",
        ),
        (
            json!({"logging": {"backup_count": 10_000_000}}),
            Some("logging.backup_count"),
            "at most 100",
        ),
    ] {
        tree.config(&config);
        let t0 = std::time::Instant::now();
        let o = tree.run("getAvailableTemplates", &json!({}));
        assert_eq!(o.code, 1, "{config}: {}", o.json);
        let m = message(&o.json);
        assert!(m.contains(needle), "{config}: {m}");
        if let Some(s) = setting {
            assert_eq!(o.json["error"]["details"]["setting"], s, "{}", o.json);
        }
        assert!(t0.elapsed().as_secs() < 10, "{config}: answered in time");
    }
    // Another file named as the inventory: its content never reaches the answer.
    std::fs::write(tree.dir.path().join("secrets"), "admin:s3cr3t-passw0rd:0:0:/root\n").expect("secrets");
    tree.config(&json!({"inventory": {"file": tree.dir.path().join("secrets")}}));
    let e = tree.err("getAvailableTemplates", &json!({}), "INVENTORY_ERROR");
    assert!(
        !e.to_string().contains("s3cr3t") && message(&e).contains("is this the inventory file?"),
        "{e}"
    );
}
