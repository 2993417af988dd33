//! The example template selectors in `examples/` (Python with componentize-py, JavaScript
//! with componentize-js), built by `hfwasm guest build` from source, installed under
//! `policy` in hfwasm.json, and driven through the real scripts: they decide what
//! HostFactory is offered, and a broken policy falls back as configured.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use serde_json::{Value, json};

/// Runs `hfwasm guest <args>` with the test cache (so `check` warms it) and the repo's
/// componentize-py; returns (exit code, stdout, stderr).
fn guest(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_hfwasm"))
        .arg("guest")
        .args(args)
        .env("HFWASM_CACHE_DIR", test_cache())
        .env("HFWASM_COMPONENTIZE_PY", repo().join(".venv/bin/componentize-py"))
        .output()
        .expect("run hfwasm");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// Builds the project in `dir` into `out` and checks what `guest build` reported.
fn build(dir: &Path, out: &Path) {
    let (code, stdout, stderr) = guest(&["build", dir.to_str().expect("dir"), "--out", out.to_str().expect("out")]);
    assert_eq!(code, 0, "guest build {}:\n{stdout}\n{stderr}", dir.display());
    assert!(
        stdout.contains(": template policy guest,")
            && stdout.contains("grants it needs: []")
            && stdout.contains("this host can run it: yes"),
        "{stdout}"
    );
    assert!(out.is_file());
    assert!(
        stderr.contains("guest build: running componentize-") && stderr.contains(" done in "),
        "progress is shown while the build runs: {stderr}"
    );
}

/// Three shapes: 2 small hosts (4 cpus), 2 big ones (16 cpus), 1 GPU host (32 cpus).
const INVENTORY: &str = "\
small-1 10.2.0.1 ncpus=4 nram=8192
small-2 10.2.0.2 ncpus=4 nram=8192
big-1 10.2.0.11 ncpus=16 nram=65536
big-2 10.2.0.12 ncpus=16 nram=65536
gpu-1 10.2.0.21 template=gpu ncpus=32 nram=262144 gpus=4
";
const SMALL: &str = "pool-4cpu-8192mb";
const BIG: &str = "pool-16cpu-65536mb";

fn with_policy(tree: &HfTree, wasm: &Path, settings: Value, on_error: &str) {
    tree.config(&json!({
        "guests": {"selector": {"wasm": wasm, "limits": {"memory_mib": 256}}},
        "policy": {"guest": "selector", "settings": settings, "on_error": on_error}
    }));
}

/// (templateId, rank) in offer order.
fn offered(t: &Value) -> Vec<(String, Option<String>)> {
    t["templates"]
        .as_array()
        .expect("templates")
        .iter()
        .map(|t| {
            (
                t["templateId"].as_str().expect("id").to_string(),
                t["attributes"]["rank"][1].as_str().map(str::to_string),
            )
        })
        .collect()
}

fn ids(v: &[(String, Option<String>)]) -> Vec<&str> {
    v.iter().map(|(id, _)| id.as_str()).collect()
}

/// The same checks for either language: the policy's settings, not the code, decide.
fn selector_decides_the_offer(wasm: &Path) {
    let tree = HfTree::new(INVENTORY);
    let provider_order = ids(&offered(&tree.ok("getAvailableTemplates", &json!({})))).join(",");

    // Per CPU: small 0.40/4 = 0.10, big 0.80/16 = 0.05, gpu 6.40/32 = 0.20 but above max_price.
    with_policy(
        &tree,
        wasm,
        json!({"prices": {SMALL: 0.40, BIG: 0.80, "gpu": 6.40}, "max_price": 5}),
        "fail_closed",
    );
    let t = tree.ok("getAvailableTemplates", &json!({}));
    assert_eq!(
        offered(&t),
        [(BIG.to_string(), Some("1".to_string())), (SMALL.to_string(), Some("2".to_string()))],
        "{t}"
    );
    // The provider's other attributes pass through untouched.
    assert_eq!(t["templates"][0]["attributes"]["ncpus"], json!(["Numeric", "16"]));

    // Other prices, other order; an unpriced template keeps its place after the priced ones.
    with_policy(&tree, wasm, json!({"prices": {SMALL: 0.10, "gpu": 1.60}}), "fail_closed");
    let t = tree.ok("getAvailableTemplates", &json!({}));
    assert_eq!(ids(&offered(&t)), [SMALL, "gpu", BIG], "{t}");
    assert_eq!(offered(&t)[2].1.as_deref(), Some("3"));

    // HostFactory requests from the offer; the cycle is the provider's as before.
    let done = tree.until_final(&tree.request(SMALL, 2));
    assert_eq!(done["status"], "complete", "{done}");
    let mut names = machine_names(&done, "succeed");
    names.sort();
    assert_eq!(names, ["small-1", "small-2"]);

    // A broken setting: fail_open offers the provider's templates unchanged...
    with_policy(&tree, wasm, json!({"prices": {"gpu": "cheap"}}), "fail_open");
    let o = tree.run("getAvailableTemplates", &json!({}));
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(ids(&offered(&o.json)).join(","), provider_order);
    assert!(offered(&o.json).iter().all(|(_, rank)| rank.is_none()), "{}", o.json);
    let log = std::fs::read_to_string(tree.logs.join("hfwasm-pool.log")).unwrap_or_default();
    let line = log.lines().rfind(|l| l.contains("template policy failed")).unwrap_or_default();
    assert!(
        line.contains("policy=selector") && line.contains("settings.prices.gpu") && line.contains("fail_open"),
        "the failure is logged with the policy's name and the policy's own message:\n{log}"
    );
    // ...and fail_closed fails the call, naming the policy and the setting.
    with_policy(&tree, wasm, json!({"prices": {"gpu": "cheap"}}), "fail_closed");
    let e = tree.err("getAvailableTemplates", &json!({}), "POLICY_ERROR");
    let message = e["error"]["message"].as_str().expect("message");
    assert!(
        message.contains("policy 'selector'") && message.contains("settings.prices.gpu"),
        "{e}"
    );
    assert_eq!(e["error"]["details"]["policy"], "selector");
}

fn example(name: &str) -> PathBuf {
    repo().join("examples").join(name)
}

/// The example `name` built once per test process (into a dir kept until it ends).
fn built(name: &str) -> PathBuf {
    static BUILT: std::sync::Mutex<Vec<(String, PathBuf)>> = std::sync::Mutex::new(Vec::new());
    static OUT: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    let mut done = BUILT.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, wasm)) = done.iter().find(|(n, _)| n == name) {
        return wasm.clone();
    }
    let wasm = OUT
        .get_or_init(|| tempfile::tempdir().expect("tempdir"))
        .path()
        .join(format!("{name}.wasm"));
    build(&example(name), &wasm);
    done.push((name.to_string(), wasm.clone()));
    wasm
}

#[test]
fn python_selector_builds_and_decides_the_offer() {
    selector_decides_the_offer(&built("python-selector"));
}

#[test]
fn js_selector_builds_and_decides_the_offer() {
    selector_decides_the_offer(&built("js-selector"));
}

/// What `policy` (a `.wasm` path, a built-in name, or a `.rhai` script) offers under
/// `settings`: the answer, or the error message.
fn offer(tree: &HfTree, policy: &str, settings: &Value) -> Result<Value, String> {
    if policy.ends_with(".rhai") {
        tree.config(&json!({"policy": {"script": policy, "settings": settings, "on_error": "fail_closed"}}));
    } else {
        tree.config(&json!({
            "guests": {"selector": {"wasm": policy, "limits": {"memory_mib": 256}}},
            "policy": {"guest": "selector", "settings": settings, "on_error": "fail_closed"}
        }));
    }
    let o = tree.run("getAvailableTemplates", &json!({}));
    match o.code {
        0 => Ok(o.json["templates"].clone()),
        _ => Err(o.json["error"]["message"].as_str().unwrap_or_default().to_string()),
    }
}

#[test]
fn the_python_js_rhai_and_builtin_selectors_make_the_same_offer() {
    let tree = HfTree::new(INVENTORY);
    let (py, js) = (built("python-selector"), built("js-selector"));
    let rhai = example("rhai-selector/selector.rhai");
    let cases = [
        json!({"prices": {SMALL: 0.40, BIG: 0.80, "gpu": 6.40}, "max_price": 5}),
        json!({"prices": {SMALL: 0.10, "gpu": 1.60}}),
        json!({}),
        // A tie per CPU (0.10 each) is broken by template id.
        json!({"prices": {SMALL: 0.40, BIG: 1.60}}),
        json!({"prices": {"gpu": -1}}),
        json!({"prices": [1, 2]}),
    ];
    let mut kinds = Vec::new();
    for settings in cases {
        let builtin = offer(&tree, "builtin:default-policy", &settings);
        assert_eq!(
            offer(&tree, py.to_str().expect("path"), &settings),
            builtin,
            "Python vs built-in for {settings}"
        );
        assert_eq!(
            offer(&tree, js.to_str().expect("path"), &settings),
            builtin,
            "JavaScript vs built-in for {settings}"
        );
        let script = offer(&tree, rhai.to_str().expect("path"), &settings);
        match (&script, &builtin) {
            (Ok(a), Ok(b)) => assert_eq!(a, b, "Rhai vs built-in for {settings}"),
            // The same message from the script, which is named by its file.
            (Err(a), Err(b)) => {
                let cause = |m: &str| {
                    m.split_once("settings")
                        .map(|(_, rest)| rest.split(" (").next().unwrap_or_default().to_string())
                };
                assert!(
                    a.contains("policy 'selector.rhai'") && cause(a) == cause(b),
                    "Rhai: {a}\nbuilt-in: {b}"
                );
            }
            _ => panic!("Rhai {script:?} vs built-in {builtin:?} for {settings}"),
        }
        kinds.push(
            builtin
                .map(|t| t.as_array().map_or(0, Vec::len))
                .map_err(|e| e.contains("policy 'selector'")),
        );
    }
    // The cases are not vacuous: offers of different sizes, and errors that name the policy.
    assert_eq!(kinds, [Ok(2), Ok(3), Ok(3), Ok(3), Err(true), Err(true)]);
}

#[test]
fn a_broken_rhai_policy_fails_as_configured_and_named() {
    let tree = HfTree::new(INVENTORY);
    let provider_order: Vec<String> = offered(&tree.ok("getAvailableTemplates", &json!({})))
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    let cases = [
        ("syntax.rhai", "fn offer_templates(ctx, templates) { let = ; }", "syntax.rhai"),
        (
            "missing.rhai",
            "fn something_else(x) { x }",
            "defines no `fn offer_templates(ctx, templates)`",
        ),
        (
            "throws.rhai",
            "fn offer_templates(ctx, templates) { throw \"no prices today\"; }",
            "threw no prices today",
        ),
        (
            "loops.rhai",
            "fn offer_templates(ctx, templates) { loop { } }",
            "policy.limits.max_operations",
        ),
        (
            "recurses.rhai",
            "fn deeper(n) { deeper(n + 1) } fn offer_templates(ctx, templates) { deeper(0) }",
            "policy.limits.max_call_levels",
        ),
        (
            "invents.rhai",
            "fn offer_templates(ctx, templates) { let t = templates[0]; t.id = \"free-lunch\"; [t] }",
            "'free-lunch'",
        ),
        ("shape.rhai", "fn offer_templates(ctx, templates) { 42 }", "an array of templates"),
    ];
    for (file, source, cause) in cases {
        std::fs::write(tree.conf.join(file), source).expect("script");
        // fail_closed: the call fails, naming the script and the cause.
        tree.config(&json!({"policy": {"script": file, "on_error": "fail_closed", "limits": {"max_operations": 100000}}}));
        let e = tree.err("getAvailableTemplates", &json!({}), "POLICY_ERROR");
        let message = e["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(&format!("policy '{file}'")) && message.contains(cause),
            "{file}: {message}"
        );
        // fail_open: the provider's templates, unchanged.
        tree.config(&json!({"policy": {"script": file, "on_error": "fail_open", "limits": {"max_operations": 100000}}}));
        let t = tree.ok("getAvailableTemplates", &json!({}));
        let ids: Vec<String> = offered(&t).into_iter().map(|(id, _)| id).collect();
        assert_eq!(ids, provider_order, "{file}");
    }
    // With no operation limit (0), the wall-time limit still stops a loop.
    tree.config(
        &json!({"policy": {"script": "loops.rhai", "on_error": "fail_closed", "limits": {"max_operations": 0, "timeout_ms": 300}}}),
    );
    let t0 = std::time::Instant::now();
    let e = tree.err("getAvailableTemplates", &json!({}), "POLICY_ERROR");
    assert!(
        e["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("policy.limits.timeout_ms")),
        "{e}"
    );
    assert!(t0.elapsed().as_secs() < 10);
    // Depth limits are capped where the host's stack is safe: a raised limit is refused by
    // name, and at the ceiling runaway recursion and nesting still end as a named error with
    // a JSON answer, never a process abort.
    tree.config(&json!({"policy": {"script": "recurses.rhai", "on_error": "fail_closed", "limits": {"max_call_levels": 100000}}}));
    let e = tree.err("getAvailableTemplates", &json!({}), "CONFIG_ERROR");
    assert_eq!(e["error"]["details"]["setting"], "policy.limits.max_call_levels", "{e}");
    assert!(e["error"]["message"].as_str().is_some_and(|m| m.contains("0..=64")), "{e}");
    tree.config(&json!({"policy": {"script": "recurses.rhai", "on_error": "fail_closed", "limits": {"max_call_levels": 64, "max_expr_depth": 128}}}));
    let e = tree.err("getAvailableTemplates", &json!({}), "POLICY_ERROR");
    assert!(e["error"]["message"].as_str().is_some_and(|m| m.contains("max_call_levels")), "{e}");
    let nested = format!(
        "fn offer_templates(ctx, templates) {{ let x = {}1{}; templates }}",
        "(".repeat(5000),
        ")".repeat(5000)
    );
    std::fs::write(tree.conf.join("nested.rhai"), nested).expect("script");
    tree.config(&json!({"policy": {"script": "nested.rhai", "on_error": "fail_closed", "limits": {"max_expr_depth": 128}}}));
    let e = tree.err("getAvailableTemplates", &json!({}), "POLICY_ERROR");
    assert!(e["error"]["message"].as_str().is_some_and(|m| m.contains("nested.rhai")), "{e}");
    // print() goes to the log, never to stdout (HostFactory's one JSON document).
    std::fs::write(
        tree.conf.join("chatty.rhai"),
        "fn offer_templates(ctx, templates) { print(\"hello from rhai\"); templates }",
    )
    .expect("script");
    tree.config(&json!({"policy": {"script": "chatty.rhai", "on_error": "fail_closed"}}));
    tree.ok("getAvailableTemplates", &json!({}));
    let log = std::fs::read_to_string(tree.logs.join("hfwasm-pool.log")).unwrap_or_default();
    assert!(log.contains("hello from rhai"), "print lands in the log");
    assert!(
        log.contains("policy=loops.rhai") && log.contains("template policy failed"),
        "logged with the script's name"
    );
}

#[test]
fn a_shadow_policy_is_logged_and_stored_never_acted_on() {
    let tree = HfTree::new(INVENTORY);
    let mut reversed: Vec<String> = offered(&tree.ok("getAvailableTemplates", &json!({})))
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    reversed.reverse();
    std::fs::write(
        tree.conf.join("reverse.rhai"),
        "fn offer_templates(ctx, templates) { let out = []; for t in templates { out.insert(0, t); } out }",
    )
    .expect("script");
    let prices = json!({"prices": {SMALL: 0.40, BIG: 0.80, "gpu": 6.40}});
    tree.config(&json!({"policy": {
        "guest": "builtin:default-policy", "settings": prices,
        "shadow": {"script": "reverse.rhai"}
    }}));
    let live = tree.ok("getAvailableTemplates", &json!({}));
    assert_eq!(ids(&offered(&live)), [BIG, SMALL, "gpu"], "the live policy decides: {live}");
    // The candidate's decision is stored beside the live one, with the verdict.
    let (code, out, err) = admin(&tree, &["store", "export"]);
    assert_eq!(code, 0, "{err}");
    let doc: Value = serde_json::from_str(&out).expect("export");
    let shadow = &doc["kv"]["hfwasm.shadow/pool"];
    let records: Vec<Value> = shadow
        .as_object()
        .expect("shadow decisions stored")
        .values()
        .map(|v| serde_json::from_str(v.as_str().expect("text")).expect("json"))
        .collect();
    assert_eq!(records.len(), 1, "{shadow}");
    let r = &records[0];
    assert_eq!(
        (r["policy"].as_str(), r["same"].as_bool()),
        (Some("reverse.rhai"), Some(false)),
        "{r}"
    );
    let order = |k: &str| {
        r[k].as_array()
            .expect("list")
            .iter()
            .map(|t| t["id"].as_str().unwrap_or("").to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(order("live"), [BIG, SMALL, "gpu"]);
    assert_eq!(order("candidate"), reversed, "the provider's order, reversed");
    let log = std::fs::read_to_string(tree.logs.join("hfwasm-pool.log")).unwrap_or_default();
    assert!(
        log.contains("shadow policy differs") && log.contains("shadow=reverse.rhai"),
        "{log}"
    );

    // A candidate that agrees is recorded as such; one that fails changes nothing either.
    tree.config(&json!({"policy": {"guest": "builtin:default-policy", "settings": prices,
        "shadow": {"guest": "builtin:default-policy", "settings": prices}}}));
    tree.ok("getAvailableTemplates", &json!({}));
    std::fs::write(
        tree.conf.join("broken.rhai"),
        "fn offer_templates(ctx, templates) { throw \"oops\" }",
    )
    .expect("script");
    tree.config(&json!({"policy": {"guest": "builtin:default-policy", "settings": prices, "shadow": {"script": "broken.rhai"}}}));
    let again = tree.ok("getAvailableTemplates", &json!({}));
    assert_eq!(offered(&again), offered(&live));
    let log = std::fs::read_to_string(tree.logs.join("hfwasm-pool.log")).unwrap_or_default();
    assert!(
        log.contains("shadow policy agrees") && log.contains("shadow policy failed"),
        "{log}"
    );
}

#[test]
fn guest_new_python_scaffolds_a_working_selector() {
    let dir = tempfile::tempdir().expect("tempdir");
    let project = dir.path().join("cheap-first");
    let p = project.to_str().expect("path");
    let (code, stdout, stderr) = guest(&["new", "cheap-first", "--dir", p, "--lang", "python"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(project.join("app.py").is_file() && project.join("wit/templates.wit").is_file());
    let wasm = project.join("cheap-first.wasm");
    let (code, stdout, stderr) = guest(&["build", p]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains(&format!("built {}", wasm.display())), "{stdout}");
    let tree = HfTree::new(INVENTORY);
    with_policy(&tree, &wasm, json!({"prices": {BIG: 0.10}}), "fail_closed");
    let t = tree.ok("getAvailableTemplates", &json!({}));
    assert_eq!(ids(&offered(&t))[0], BIG, "{t}");

    // The admin commands know the policy: precompile warms both guests, config check loads it.
    let (code, out, err) = admin(&tree, &["guest", "precompile"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("guest 'onprem': already cached") && out.contains("guest 'selector': already cached"),
        "{out}"
    );
    assert!(
        err.contains("guest precompile: 1/2 'onprem'") && err.contains("guest precompile: 2/2 'selector'"),
        "{err}"
    );
    let (code, out, err) = admin(&tree, &["config", "check"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("policy:    selector from") && out.contains("on_error fail_closed") && out.contains("policy load: ok"),
        "{out}"
    );
}

#[test]
fn guest_new_js_scaffolds_a_working_selector() {
    let dir = tempfile::tempdir().expect("tempdir");
    let project = dir.path().join("cheap-js");
    let p = project.to_str().expect("path");
    let (code, stdout, stderr) = guest(&["new", "cheap-js", "--dir", p, "--lang", "js"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let package = std::fs::read_to_string(project.join("package.json")).expect("package.json");
    assert!(package.contains("\"name\": \"cheap-js\""), "{package}");
    // The first build installs componentize-js from the project's lock with npm.
    let (code, stdout, stderr) = guest(&["build", p]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let tree = HfTree::new(INVENTORY);
    with_policy(
        &tree,
        &project.join("cheap-js.wasm"),
        json!({"prices": {"gpu": 0.01}}),
        "fail_closed",
    );
    let t = tree.ok("getAvailableTemplates", &json!({}));
    assert_eq!(ids(&offered(&t))[0], "gpu", "{t}");
}

#[test]
fn a_provider_guest_is_refused_as_a_policy_and_a_policy_as_a_provider() {
    let wasm = built("python-selector");
    let tree = HfTree::new(INVENTORY);
    // The selector named as the provider: the load error says what it is not.
    tree.config(&json!({
        "provider": {"guest": "selector"},
        "guests": {"selector": {"wasm": wasm}}
    }));
    let e = tree.err("getAvailableTemplates", &json!({}), "GUEST_LOAD_ERROR");
    let message = e["error"]["message"].as_str().expect("message");
    assert!(
        message.contains("does not export hostfactory:provider/provider") && message.contains("hostfactory:policy/template-policy@0.1.0"),
        "{e}"
    );
    // The on-prem provider named as the policy: refused in config, naming the setting.
    let onprem = guest_wasm("hfwasm_guest_onprem.wasm");
    tree.config(&json!({
        "guests": {"pool": {"wasm": onprem}},
        "policy": {"guest": "pool", "on_error": "fail_closed"}
    }));
    let e = tree.err("getAvailableTemplates", &json!({}), "POLICY_ERROR");
    let message = e["error"]["message"].as_str().expect("message");
    assert!(message.contains("does not export hostfactory:policy/template-policy"), "{e}");
}

#[test]
fn recorded_template_offers_replay_and_show_each_difference() {
    let tree = HfTree::new(INVENTORY);
    let config = |small: f64| {
        json!({
            "policy": {"guest": "builtin:default-policy", "settings": {"prices": {SMALL: small, BIG: 0.80, "gpu": 6.40}}},
            "recording": {"enabled": true, "keep": 2}
        })
    };
    tree.config(&config(0.10));
    // HostFactory asks every 30 s for the same offer: recorded once.
    for _ in 0..3 {
        tree.ok("getAvailableTemplates", &json!({}));
    }
    // The price of the small hosts doubles: small is no longer the cheapest CPU. Recorded.
    tree.config(&config(2.40));
    let live = tree.ok("getAvailableTemplates", &json!({}));
    assert_eq!(ids(&offered(&live))[0], BIG, "{live}");

    // The built-in policy with the first prices: the first offer the same, the second not.
    let settings = json!({"prices": {SMALL: 0.10, BIG: 0.80, "gpu": 6.40}}).to_string();
    let (code, out, err) = admin(
        &tree,
        &["replay", "--policy", "builtin:default-policy", "--settings", &settings, "--json"],
    );
    assert_eq!(code, 0, "{err}");
    let r: Value = serde_json::from_str(&out).expect("json");
    let o = &r["offers"];
    assert_eq!(
        (o["decisions"].as_u64(), o["same"].as_u64(), o["differ"].as_u64()),
        (Some(2), Some(1), Some(1)),
        "{o}"
    );
    let second = &o["rows"][1];
    assert_eq!(second["live"], json!([BIG, "gpu", SMALL]), "{second}");
    assert_eq!(second["candidate"], json!([SMALL, BIG, "gpu"]), "{second}");
    assert_eq!(r["decisions"], 0, "no placement was recorded (one provider)");
    // A Rhai candidate with only the template hook, twice: byte-identical text reports.
    std::fs::write(tree.conf.join("keep.rhai"), "fn offer_templates(ctx, templates) { templates }\n").expect("script");
    let script = tree.conf.join("keep.rhai");
    let run = || admin(&tree, &["replay", "--policy", script.to_str().expect("path")]);
    let (first, second) = (run(), run());
    assert_eq!(first.0, 0, "{}", first.2);
    assert_eq!(first.1, second.1);
    assert!(
        first.1.contains("offer totals: 2 offer(s): 0 same, 2 differ, 0 failed"),
        "{}",
        first.1
    );

    // The calls themselves are recorded too, input and answer (errors as their envelope),
    // in a ring of `keep` slots.
    let e = tree.err(
        "requestMachines",
        &json!({"template": {"templateId": "no-such", "machineCount": 1}}),
        "TEMPLATE_NOT_FOUND",
    );
    let (_, out, _) = admin(&tree, &["store", "export"]);
    let doc: Value = serde_json::from_str(&out).expect("export");
    let calls: Vec<Value> = doc["kv"]["hfwasm.record/pool"]
        .as_object()
        .expect("records")
        .iter()
        .filter(|(k, _)| k.starts_with("call/"))
        .map(|(_, v)| serde_json::from_str(v.as_str().expect("text")).expect("json"))
        .collect();
    assert_eq!(calls.len(), 2, "the last 2 calls: {calls:?}");
    let last = calls.iter().max_by_key(|c| c["seq"].as_u64()).expect("last");
    assert_eq!(last["call"], "requestMachines");
    assert_eq!(last["input"]["template"]["templateId"], "no-such");
    assert_eq!(last["output"], e, "the answer HostFactory got");
    assert!(
        calls
            .iter()
            .any(|c| c["call"] == "getAvailableTemplates" && c["output"]["templates"].is_array())
    );
}

#[test]
fn a_long_replay_shows_its_progress() {
    // 1,200 recorded placement decisions, imported as a store export would hold them.
    let tree = HfTree::new(INVENTORY);
    let candidate = |name: &str, priority: u32| {
        json!({"name": name, "kind": "aws", "priority": priority, "weight": 1, "cost_threshold": null, "circuit": "closed",
               "template": {"id": "t", "max_number": 10, "available_number": null, "attributes": [], "extra": {}}})
    };
    let records: serde_json::Map<String, Value> = (0..1200u64)
        .map(|i| {
            let d = json!({"at": 1_000 + i, "policy": "live", "settings": {},
                           "request": {"request_id": format!("req-{i}"), "template_id": "t", "count": 1, "draw": i},
                           "candidates": [candidate("a", 1), candidate("b", 2)], "live": ["a", "b"]});
            (format!("placement/{:020}-req-{i}", 1_000 + i), Value::String(d.to_string()))
        })
        .collect();
    let doc = tree.dir.path().join("records.json");
    std::fs::write(
        &doc,
        json!({"schema_version": 3, "requests": [], "kv": {"hfwasm.record/pool": records}}).to_string(),
    )
    .expect("doc");
    let (code, _, err) = admin(&tree, &["store", "import", doc.to_str().expect("path")]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = admin(&tree, &["replay", "--policy", "builtin:default-policy"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("1200 decision(s): 1200 same"), "{out}");
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("replay: ")).collect();
    assert_eq!(lines.len(), 10, "a line per tenth: {err}");
    assert!(lines[9].contains("100% (1200/1200 decisions)"), "{err}");
}
