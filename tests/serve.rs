//! `hfwasm serve` as an operator runs it: started on a free loopback port, driven over HTTP
//! beside HostFactory's scripts on the same store, its `/metrics` parsed by the Prometheus
//! project's own text-format parser (`prometheus_client` in the test venv), its readiness
//! following the store (a PostgreSQL server stopped under it), and its token guard.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};

use common::*;
use serde_json::{Value, json};

/// A running `hfwasm serve` for a tree; killed when dropped.
struct Server {
    child: Child,
    addr: String,
}

impl Server {
    fn start(tree: &HfTree, extra: &[&str]) -> Self {
        Self::start_with(tree, extra, &[])
    }

    fn start_with(tree: &HfTree, extra: &[&str], env: &[(&str, &str)]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_hfwasm"))
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(extra)
            .arg("--logdir")
            .arg(&tree.logs)
            .env("HF_PROVIDER_NAME", "pool")
            .env("HF_PROVIDER_CONFDIR", &tree.conf)
            .env("HF_PROVIDER_WORKDIR", &tree.work)
            .env("HFWASM_CACHE_DIR", test_cache())
            .envs(env.iter().copied())
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("start hfwasm serve");
        let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
        let addr = loop {
            match lines.next() {
                Some(Ok(l)) => {
                    if let Some(a) = l.split("listening on http://").nth(1) {
                        break a.trim().to_string();
                    }
                }
                _ => panic!("hfwasm serve ended before listening: {:?}", child.wait()),
            }
        };
        // Keep draining stderr so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Server { child, addr }
    }

    /// One HTTP/1.1 exchange: (status, body).
    fn call(&self, method: &str, path: &str, body: Option<&str>, token: Option<&str>) -> (u16, String) {
        let mut s = TcpStream::connect(&self.addr).expect("connect");
        let body = body.unwrap_or("");
        let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: {}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.addr,
            body.len()
        )
        .expect("send");
        let mut out = String::new();
        s.read_to_string(&mut out).expect("read");
        let (head, body) = out.split_once("\r\n\r\n").expect("an HTTP answer");
        let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).expect("status");
        (status, body.to_string())
    }

    fn json(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let (status, text) = self.call(method, path, body.map(|b| b.to_string()).as_deref(), None);
        (
            status,
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {text}")),
        )
    }

    /// requestMachines of `count` plain hosts; the request id.
    fn request(&self, count: u32) -> String {
        self.hf(
            "requestMachines",
            json!({"template": {"templateId": PLAIN_TEMPLATE, "machineCount": count}}),
        )["requestId"]
            .as_str()
            .expect("requestId")
            .to_string()
    }

    fn hf(&self, call: &str, body: Value) -> Value {
        let (status, v) = self.json("POST", &format!("/v1/hostfactory/{call}"), Some(body));
        assert_eq!(status, 200, "{call}: {v}");
        v
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Samples of a Prometheus text document as the `prometheus_client` parser reads them:
/// (name, labels, value). Panics if the parser refuses the document.
fn parse_metrics(text: &str) -> Vec<(String, Value, f64)> {
    let python = repo().join(".venv/bin/python");
    let mut child = Command::new(&python)
        .args([
            "-c",
            "import json, sys\nfrom prometheus_client.parser import text_string_to_metric_families\n\
             print(json.dumps([[s.name, s.labels, s.value] for f in text_string_to_metric_families(sys.stdin.read()) for s in f.samples]))",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e} (dev/setup.sh installs prometheus_client into .venv)", python.display()));
    child.stdin.take().expect("stdin").write_all(text.as_bytes()).expect("write");
    let out = child.wait_with_output().expect("parser");
    assert!(
        out.status.success(),
        "the Prometheus parser refused /metrics: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let samples: Vec<(String, Value, f64)> = serde_json::from_slice(&out.stdout).expect("parser output");
    samples
}

fn sample(samples: &[(String, Value, f64)], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|(n, l, _)| n == name && labels.iter().all(|(k, v)| l[*k] == *v))
        .map(|s| s.2)
}

#[test]
fn a_full_cycle_over_rest_and_the_scripts_on_one_store_with_health_and_metrics() {
    let tree = HfTree::new(&plain_inventory(4));
    let server = Server::start(&tree, &[]);
    assert_eq!(server.json("GET", "/health/live", None).0, 200);
    let (status, ready) = server.json("GET", "/health/ready", None);
    assert_eq!(status, 200, "{ready}");
    assert!(ready["checks"][0].as_str().is_some_and(|c| c.starts_with("store: ")), "{ready}");

    // The same answers as the scripts, over HTTP.
    let t = server.hf("getAvailableTemplates", json!({}));
    assert_eq!(template(&t, PLAIN_TEMPLATE)["availableNumber"], 4, "{t}");
    let id = server.request(2);
    // A script sees what the server did (one store), and the server what a script did.
    let done = tree.until_final(&id);
    assert_eq!(done["status"], "complete", "{done}");
    let mine = machine_names(&done, "succeed");
    assert_eq!(mine.len(), 2);
    let other = tree.request(PLAIN_TEMPLATE, 1);
    let st = server.hf("getRequestStatus", json!({"requests": [{"requestId": other}]}));
    assert_eq!(st["requests"][0]["status"], "complete", "{st}");
    let (_, machines) = server.json("GET", "/v1/machines", None);
    let names: Vec<&str> = strings(&machines, "name");
    assert_eq!(names.len(), 3, "{machines}");
    let (_, requests) = server.json("GET", "/v1/requests", None);
    assert!(strings(&requests, "id").contains(&id.as_str()), "{requests}");
    let (status, offer) = server.json("GET", "/v1/templates", None);
    assert_eq!(status, 200);
    assert_eq!(template(&offer, PLAIN_TEMPLATE)["availableNumber"], 1, "3 of 4 hosts held: {offer}");

    // Returned over HTTP; its status through the script.
    let ret = server.hf(
        "requestReturnMachines",
        json!({"machines": mine.iter().map(|n| json!({"name": n})).collect::<Vec<_>>()}),
    );
    let rid = ret["requestId"].as_str().expect("return id").to_string();
    assert_eq!(tree.until_final(&rid)["status"], "complete");
    assert_eq!(server.hf("getReturnRequests", json!({"machines": []}))["requests"], json!([]));

    // Bad input: the script's error envelope, with an HTTP status that says whose fault.
    let (status, e) = server.call("POST", "/v1/hostfactory/requestMachines", Some("{not json"), None);
    assert_eq!(status, 400, "{e}");
    assert!(e.contains("INVALID_JSON"), "{e}");
    let (status, e) = server.json(
        "POST",
        "/v1/hostfactory/requestMachines",
        Some(json!({"template": {"templateId": "nope", "machineCount": 1}})),
    );
    assert_eq!((status, e["error"]["code"].as_str()), (404, Some("TEMPLATE_NOT_FOUND")), "{e}");
    assert_eq!(server.json("POST", "/v1/hostfactory/doSomething", Some(json!({}))).0, 404);
    let (status, doc) = server.json("GET", "/openapi.json", None);
    assert_eq!(status, 200);
    assert!(doc["paths"]["/v1/hostfactory/requestMachines"]["post"].is_object(), "{doc}");

    // Metrics: the server's own calls (the scripts' processes count their own), the
    // store's state, in a document the Prometheus parser accepts.
    let (status, text) = server.call("GET", "/metrics", None, None);
    assert_eq!(status, 200);
    let m = parse_metrics(&text);
    let calls = |call: &str, outcome: &str| sample(&m, "hfwasm_calls_total", &[("call", call), ("outcome", outcome)]);
    assert_eq!(calls("requestMachines", "ok"), Some(1.0), "{text}");
    assert_eq!(calls("requestMachines", "INVALID_JSON"), Some(1.0), "{text}");
    assert_eq!(calls("requestMachines", "TEMPLATE_NOT_FOUND"), Some(1.0), "{text}");
    assert_eq!(calls("getRequestStatus", "ok"), Some(1.0), "{text}");
    assert_eq!(
        sample(&m, "hfwasm_call_duration_seconds_count", &[("call", "requestMachines")]),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &m,
            "hfwasm_call_duration_seconds_bucket",
            &[("call", "requestMachines"), ("le", "+Inf")]
        ),
        Some(3.0)
    );
    assert_eq!(
        sample(&m, "hfwasm_machines", &[("state", "running")]),
        Some(1.0),
        "the script's host is live, the two returned are not: {text}"
    );
    assert_eq!(sample(&m, "hfwasm_store_up", &[]), Some(1.0));
    let log = std::fs::read_to_string(tree.logs.join("hfwasm-pool.log")).unwrap_or_default();
    assert!(
        log.contains("http served") && log.contains("/v1/hostfactory/requestMachines"),
        "{log}"
    );

    // The site decommissions the script's host by deleting it from the inventory: the
    // running server reads the inventory per request, as a script does, and wants it back.
    let host = st["requests"][0]["machines"][0]["name"].as_str().expect("host").to_string();
    let inventory = std::fs::read_to_string(tree.conf.join("inventory.txt")).expect("inventory");
    let kept: String = inventory
        .lines()
        .filter(|l| !l.starts_with(&host))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(tree.conf.join("inventory.txt"), kept).expect("inventory");
    let back = server.hf("getReturnRequests", json!({"machines": [{"name": host}]}));
    assert_eq!(back["requests"][0]["machine"], host.as_str(), "{back}");
}

#[test]
fn a_token_guards_everything_but_health_and_another_address_needs_one() {
    let tree = HfTree::new(&plain_inventory(1));
    let token_file = tree.dir.path().join("token");
    std::fs::write(&token_file, "s3cret-token\n").expect("token");
    let server = Server::start(&tree, &["--token-file", token_file.to_str().expect("path")]);
    let (status, body) = server.call("GET", "/v1/requests", None, None);
    assert_eq!(status, 401, "{body}");
    assert_eq!(server.call("GET", "/v1/requests", None, Some("s3cret-tokeX")).0, 401);
    assert_eq!(
        server.call("POST", "/v1/hostfactory/getAvailableTemplates", Some("{}"), None).0,
        401
    );
    assert_eq!(server.call("GET", "/v1/requests", None, Some("s3cret-token")).0, 200);
    assert_eq!(server.call("GET", "/health/live", None, None).0, 200);
    assert_eq!(server.call("GET", "/health/ready", None, None).0, 200);

    let out = Command::new(env!("CARGO_BIN_EXE_hfwasm"))
        .args(["serve", "--listen", "0.0.0.0:0"])
        .env("HF_PROVIDER_NAME", "pool")
        .env("HF_PROVIDER_CONFDIR", &tree.conf)
        .env("HF_PROVIDER_WORKDIR", &tree.work)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--token-file") && err.contains("0.0.0.0"), "{err}");
}

#[test]
fn readiness_follows_the_store_a_stopped_postgres_makes_it_unready() {
    let pg = common::pg::Postgres::start();
    pg.create_database("serve");
    let tree = HfTree::new(&plain_inventory(2));
    tree.config(&json!({"storage": pg.storage_config("serve")}));
    let server = Server::start(&tree, &[]);
    let (status, ready) = server.json("GET", "/health/ready", None);
    assert_eq!(status, 200, "{ready}");
    let id = server.request(1);
    drop(pg);
    let (status, ready) = server.json("GET", "/health/ready", None);
    assert_eq!(status, 503, "{ready}");
    assert_eq!(ready["error"]["code"], "STORE_ERROR", "{ready}");
    assert_eq!(server.json("GET", "/health/live", None).0, 200, "alive, only not ready");
    let (status, e) = server.json(
        "POST",
        "/v1/hostfactory/getRequestStatus",
        Some(json!({"requests": [{"requestId": id}]})),
    );
    assert_eq!((status, e["error"]["code"].as_str()), (503, Some("STORE_ERROR")), "{e}");
    let (_, text) = server.call("GET", "/metrics", None, None);
    assert_eq!(sample(&parse_metrics(&text), "hfwasm_store_up", &[]), Some(0.0), "{text}");
}

/// `hfwasm_reconciler_leader` of a replica (None while it cannot be scraped).
fn leader(s: &Server) -> Option<f64> {
    let (status, text) = std::panic::catch_unwind(|| s.call("GET", "/metrics", None, None)).ok()?;
    (status == 200)
        .then(|| sample(&parse_metrics(&text), "hfwasm_reconciler_leader", &[]))
        .flatten()
}

#[test]
fn one_of_two_replicas_on_one_postgres_reconciles_and_the_other_takes_over_when_it_dies() {
    let pg = common::pg::Postgres::start();
    pg.create_database("replicas");
    let tree = HfTree::new(&plain_inventory(3));
    tree.config(&json!({"storage": pg.storage_config("replicas")}));
    // A requestMachines killed after the pool leased its hosts: recorded, never answered.
    tree.set_env("HFWASM_FAULT", "request-machines:after-provider");
    let o = tree.run(
        "requestMachines",
        &json!({"template": {"templateId": PLAIN_TEMPLATE, "machineCount": 2}}),
    );
    assert_ne!(o.code, 0, "the fault point kills the call");
    tree.unset_env("HFWASM_FAULT");
    let free = || template(&tree.ok("getAvailableTemplates", &json!({})), PLAIN_TEMPLATE)["availableNumber"].clone();
    assert_eq!(free(), 1, "two hosts held by the abandoned request");

    // Two replicas whose clocks run an hour ahead: the request is long abandoned for them.
    // No HostFactory call comes; the lease holder's reconciler repairs it by itself.
    let start = |tree: &HfTree| Server::start_with(tree, &["--reconcile-secs", "1"], &[("HFWASM_NOW_OFFSET_SECS", "3600")]);
    let a = start(&tree);
    let b = start(&tree);
    let t0 = std::time::Instant::now();
    while free() != json!(3) {
        assert!(t0.elapsed().as_secs() < 20, "the reconciler did not release the abandoned hosts");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    // The pass that released them ends (the gauge is set when a pass is over; a guest
    // compiled for the first time makes that pass slow), then exactly one holds the lease,
    // pass after pass.
    let t0 = std::time::Instant::now();
    while [leader(&a), leader(&b)].iter().flatten().sum::<f64>() != 1.0 {
        assert!(t0.elapsed().as_secs() < 20, "no replica reports the lease");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    for _ in 0..3 {
        let leaders = [leader(&a), leader(&b)];
        assert_eq!(
            leaders.iter().flatten().sum::<f64>(),
            1.0,
            "one leader: {leaders:?}\n{}",
            std::fs::read_to_string(tree.logs.join("hfwasm-pool.log")).unwrap_or_default()
        );
        std::thread::sleep(std::time::Duration::from_millis(700));
    }
    let (mut dead, alive) = if leader(&a) == Some(1.0) { (a, b) } else { (b, a) };
    // The leader dies without a word (no SIGTERM, no release): the other takes the lease
    // once it expires (three passes), and the calls go on over the survivor meanwhile.
    let _ = dead.child.kill();
    let _ = dead.child.wait();
    let t0 = std::time::Instant::now();
    while leader(&alive) != Some(1.0) {
        assert!(t0.elapsed().as_secs() < 15, "the surviving replica never took the lease over");
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    let id = alive.request(1);
    let st = alive.hf("getRequestStatus", json!({"requests": [{"requestId": id}]}));
    assert_eq!(st["requests"][0]["status"], "complete", "{st}");
}

/// The counters of cloud calls a guest made through the server: EC2 actions for the AWS
/// guest on moto, HTTP method and host for the Azure guest on the ARM fake (the `http`
/// capability's request counters).
#[test]
fn metrics_count_the_cloud_calls_of_either_cloud() {
    let moto = common::moto::Moto::start();
    let (subnet, sg, ami) = moto.network();
    let tree = common::moto::aws_tree(&moto, common::moto::templates(&subnet, &sg, &ami));
    let server = Server::start_with(&tree, &[], &[("AWS_EC2_METADATA_DISABLED", "true")]);
    let id = server.hf(
        "requestMachines",
        json!({"template": {"templateId": "OnDemand-Template-VM", "machineCount": 1}}),
    )["requestId"]
        .as_str()
        .expect("id")
        .to_string();
    server.hf("getRequestStatus", json!({"requests": [{"requestId": id}]}));
    let (_, text) = server.call("GET", "/metrics", None, None);
    let m = parse_metrics(&text);
    let ec2 = |action: &str| {
        sample(
            &m,
            "hfwasm_cloud_calls_total",
            &[("service", "ec2"), ("action", action), ("outcome", "ok")],
        )
    };
    assert!(ec2("RunInstances").is_some_and(|n| n >= 1.0), "{text}");
    assert!(ec2("DescribeInstances").is_some_and(|n| n >= 1.0), "{text}");

    let fake = common::arm::Arm::start(16);
    let tree = common::arm::azure_tree(&fake, |_| {});
    let server = Server::start(&tree, &[]);
    let vm = server.hf(
        "requestMachines",
        json!({"template": {"templateId": "Template-VM-0", "machineCount": 1}}),
    );
    assert!(vm["requestId"].is_string(), "{vm}");
    let (_, text) = server.call("GET", "/metrics", None, None);
    let m = parse_metrics(&text);
    let puts = sample(
        &m,
        "hfwasm_cloud_calls_total",
        &[("service", "http"), ("action", "PUT 127.0.0.1"), ("outcome", "2xx")],
    );
    assert_eq!(puts, Some(2.0), "one NIC and one VM created: {text}");
}

/// The reconciler probes a circuit due a trial (seed `provider.circuit_breaker`): the cloud
/// went away and two requests opened the circuit; the cloud is back. Past the recovery
/// timeout the leader's probe (a listing of the provider's machines) closes the circuit
/// with no HostFactory request spent as the trial and nothing launched; while the cloud is
/// still away, the probe keeps it open for another period.
#[test]
fn the_reconciler_probes_an_open_circuit_and_closes_it_when_the_cloud_is_back() {
    let moto = common::moto::Moto::start();
    let (subnet, sg, ami) = moto.network();
    let tree = common::moto::aws_tree(&moto, common::moto::templates(&subnet, &sg, &ami));
    tree.config(&json!({
        "aws": {"config_file": "poolprov_config.json", "templates_file": "poolprov_templates.json"},
        "provider": {"circuit_breaker": {"enabled": true, "failure_threshold": 2, "recovery_timeout": 300}}
    }));
    let (config_file, good) = common::moto::cloud_goes_away(&tree);
    let request = json!({"template": {"templateId": "OnDemand-Template-VM", "machineCount": 1}});
    for _ in 0..2 {
        tree.err("requestMachines", &request, "PROVIDER_UNAVAILABLE");
    }
    let circuit = |s: &Server, state: &str| {
        let (_, text) = s.call("GET", "/metrics", None, None);
        sample(
            &parse_metrics(&text),
            "hfwasm_circuit_state",
            &[("provider", "aws"), ("state", state)],
        )
    };
    let wait_for = |s: &Server, state: &str| {
        let t0 = std::time::Instant::now();
        while circuit(s, state) != Some(1.0) {
            assert!(t0.elapsed().as_secs() < 30, "circuit not {state} within 30 s");
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    };
    let later = [("AWS_EC2_METADATA_DISABLED", "true"), ("HFWASM_NOW_OFFSET_SECS", "400")];
    {
        // Still away: the probe fails and the circuit stays open (reopened for a period).
        let server = Server::start_with(&tree, &["--reconcile-secs", "1"], &later);
        wait_for(&server, "open");
        let log = std::fs::read_to_string(tree.logs.join("hfwasm-pool.log")).unwrap_or_default();
        assert!(log.contains("probe: the provider still fails"), "the failed probe is logged");
    }
    std::fs::write(&config_file, good.to_string()).expect("write");
    // Back, and past the reopened period too: the probe closes it.
    let later = [("AWS_EC2_METADATA_DISABLED", "true"), ("HFWASM_NOW_OFFSET_SECS", "800")];
    let server = Server::start_with(&tree, &["--reconcile-secs", "1"], &later);
    wait_for(&server, "closed");
    assert!(moto.live().is_empty(), "the probe launched nothing");
    let log = std::fs::read_to_string(tree.logs.join("hfwasm-pool.log")).unwrap_or_default();
    assert!(log.contains("probe: the provider answers"), "the probe is logged");
    // And HostFactory's next request goes straight through.
    let id = server.hf("requestMachines", request)["requestId"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(id.starts_with("req-"), "{id}");
}
