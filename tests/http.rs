//! The `http` capability through the real scripts: a guest granted `http` reaches only the
//! origins, methods and paths its grant names, with the credentials the host attaches (a
//! bearer token from a file, OAuth2 client credentials, a managed identity), 429 retried
//! after `Retry-After`, bodies capped; it never sees a secret, through headers, redirects or a
//! token endpoint's error body. The server is a small HTTP/1.1 responder on loopback that
//! records what it was sent.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use common::*;
use serde_json::{Value, json};

/// One request as the server saw it.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    headers: HashMap<String, String>,
    body: String,
}

/// A loopback HTTP server answering by path; `/busy` answers 429 once, then 200.
struct Server {
    port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
    /// `/api/slow` requests being answered now, and the most at once.
    slow: Arc<Mutex<(usize, usize)>>,
}

fn answer(path: &str, busy_seen: usize) -> (u16, Vec<(&'static str, String)>, String) {
    match path {
        "/api/ok" | "/api/slow" => (200, vec![], "hello".into()),
        "/api/busy" if busy_seen == 1 => (429, vec![("Retry-After", "1".into())], "slow down".into()),
        "/api/busy" => (200, vec![], "after-retry".into()),
        "/api/big" => (200, vec![], "x".repeat(2 << 20)),
        "/api/redirect" => (302, vec![("Location", "http://127.0.0.1:1/elsewhere".into())], String::new()),
        "/oauth/token" => (
            200,
            vec![],
            json!({"access_token": "oauth-token-7", "expires_in": 3600}).to_string(),
        ),
        "/oauth/refused" => (401, vec![], "invalid client secret: s3cret-value".into()),
        p if p.starts_with("/imds") => (200, vec![], json!({"access_token": "mi-token-9", "expires_in": "3600"}).to_string()),
        _ => (404, vec![], "not here".into()),
    }
}

impl Server {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("listen");
        let port = listener.local_addr().expect("addr").port();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let slow: Arc<Mutex<(usize, usize)>> = Arc::default();
        let log = seen.clone();
        let slow_log = slow.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let log = log.clone();
                let slow = slow_log.clone();
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        let mut parts = line.split_whitespace();
                        let (method, path) = (parts.next().unwrap_or("").to_string(), parts.next().unwrap_or("").to_string());
                        let mut headers = HashMap::new();
                        loop {
                            let mut h = String::new();
                            if reader.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
                                break;
                            }
                            if let Some((k, v)) = h.split_once(':') {
                                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
                            }
                        }
                        let len: usize = headers.get("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
                        let mut body = vec![0; len];
                        if reader.read_exact(&mut body).is_err() {
                            return;
                        }
                        let busy_seen = {
                            let mut l = log.lock().expect("log");
                            l.push(Seen {
                                method,
                                path: path.clone(),
                                headers,
                                body: String::from_utf8_lossy(&body).into(),
                            });
                            l.iter().filter(|s| s.path == "/api/busy").count()
                        };
                        if path == "/api/slow" {
                            {
                                let mut s = slow.lock().expect("slow");
                                s.0 += 1;
                                s.1 = s.1.max(s.0);
                            }
                            std::thread::sleep(std::time::Duration::from_millis(300));
                            slow.lock().expect("slow").0 -= 1;
                        }
                        let (status, extra, text) = answer(path.split('?').next().unwrap_or(""), busy_seen);
                        let mut out = format!("HTTP/1.1 {status} X\r\nContent-Length: {}\r\n", text.len());
                        for (k, v) in extra {
                            out.push_str(&format!("{k}: {v}\r\n"));
                        }
                        out.push_str("\r\n");
                        let mut s = reader.get_ref();
                        if s.write_all(out.as_bytes()).and_then(|()| s.write_all(text.as_bytes())).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Self { port, seen, slow }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn seen(&self, path: &str) -> Vec<Seen> {
        self.seen
            .lock()
            .expect("log")
            .iter()
            .filter(|s| s.path.starts_with(path))
            .cloned()
            .collect()
    }
}

fn probe(tree: &HfTree, requests: Value, grants: &[&str], http: Value) {
    tree.config(&json!({
        "provider": {"guest": "probe", "settings": {"requests": requests}},
        "guests": {"probe": {
            "wasm": guest_wasm("hfwasm_testing_httpprobe.wasm").display().to_string(),
            "grants": grants,
            "http": http
        }}
    }));
}

/// What the probe reported, one entry per request.
fn results(tree: &HfTree) -> (Vec<Value>, Value) {
    let t = tree.ok("getAvailableTemplates", &json!({}));
    let seen = t["templates"][0].clone();
    (seen["results"].as_array().cloned().unwrap_or_default(), seen)
}

#[test]
fn a_granted_guest_reaches_only_what_its_grant_names_with_the_hosts_credentials() {
    let server = Server::start();
    let tree = HfTree::new(&plain_inventory(1));
    let token = tree.dir.path().join("token");
    std::fs::write(&token, "file-token-1\n").expect("token");
    let get = |path: &str| json!({"method": "GET", "url": server.url(path)});
    probe(
        &tree,
        json!([
            get("/api/ok"),
            {"method": "POST", "url": server.url("/api/ok"), "body": "payload", "headers": {"content-type": "text/plain"}},
            {"method": "DELETE", "url": server.url("/api/ok")},
            get("/other"),
            get("/api/../other"),
            {"method": "GET", "url": "http://127.0.0.2:9/api/ok"},
            get("/api/busy"),
            get("/api/big"),
            get("/api/redirect")
        ]),
        &["log", "http"],
        json!({
            "allow": [{"url": server.url(""), "methods": ["GET", "POST"], "paths": ["/api/"],
                       "auth": {"type": "bearer", "token_file": token.display().to_string()}}],
            "max_response_bytes": 1048576,
            "retries": 2
        }),
    );
    let (r, seen) = results(&tree);
    assert_eq!(r.len(), 9, "{seen:#}");
    assert_eq!(
        (r[0]["status"].as_u64(), r[0]["body"].as_str()),
        (Some(200), Some("hello")),
        "{seen:#}"
    );
    assert_eq!(r[1]["status"], 200, "POST allowed: {seen:#}");
    for (i, why) in [(2, "method"), (3, "path"), (4, "path with .."), (5, "origin")] {
        assert!(
            r[i]["error"].as_str().is_some_and(|e| e.contains("HttpRequestDenied")),
            "{why} denied: {}",
            r[i]
        );
    }
    assert_eq!(
        (r[6]["status"].as_u64(), r[6]["body"].as_str()),
        (Some(200), Some("after-retry")),
        "429 retried: {seen:#}"
    );
    assert!(
        r[7]["error"].as_str().is_some_and(|e| e.contains("HttpResponseBodySize")),
        "capped: {}",
        r[7]
    );
    assert_eq!(r[8]["status"], 302, "a redirect is the guest's to follow, not the host's: {}", r[8]);
    assert!(
        seen["set_authorization"].as_str().is_some_and(|s| s.starts_with("refused")),
        "{seen:#}"
    );

    // The server saw the host's credentials on every request, and only the allowed ones.
    let ok = server.seen("/api/ok");
    assert_eq!(ok.len(), 2, "the DELETE never left the host: {ok:?}");
    assert!(
        ok.iter()
            .all(|s| s.headers.get("authorization").map(String::as_str) == Some("Bearer file-token-1")),
        "{ok:?}"
    );
    assert_eq!((ok[1].method.as_str(), ok[1].body.as_str()), ("POST", "payload"));
    assert!(server.seen("/other").is_empty(), "denied paths never reach the server");
    assert_eq!(server.seen("/api/busy").len(), 2, "one 429, one retry");
    // The guest never saw the token: not in anything it reported.
    assert!(!seen.to_string().contains("file-token-1"), "{seen:#}");
}

#[test]
fn oauth2_and_managed_identity_tokens_are_fetched_by_the_host_and_never_shown() {
    let server = Server::start();
    let tree = HfTree::new(&plain_inventory(1));
    let secret = tree.dir.path().join("client-secret");
    std::fs::write(&secret, "s3cret-value").expect("secret");
    let base = server.url("");
    // Two origins on one server would be one origin: the token endpoint of the second case
    // refuses, and its error body (which echoes the secret) must not reach the guest.
    probe(
        &tree,
        json!([
            {"method": "GET", "url": server.url("/api/ok")},
            {"method": "GET", "url": server.url("/api/ok?again")}
        ]),
        &["log", "http"],
        json!({"allow": [{"url": base, "paths": ["/api/"], "auth": {
            "type": "oauth2_client_credentials", "token_url": server.url("/oauth/token"),
            "client_id": "app-1", "client_secret_file": secret.display().to_string(), "scope": "https://management.azure.com/.default"}}]}),
    );
    let (r, seen) = results(&tree);
    assert_eq!(r[0]["status"], 200, "{seen:#}");
    assert_eq!(r[1]["status"], 200, "{seen:#}");
    let token_calls = server.seen("/oauth/token");
    assert_eq!(token_calls.len(), 1, "one token for the call's requests: {token_calls:?}");
    let form = &token_calls[0].body;
    assert!(
        form.contains("grant_type=client_credentials") && form.contains("client_id=app-1") && form.contains("client_secret=s3cret-value"),
        "{form}"
    );
    assert!(
        server
            .seen("/api/ok")
            .iter()
            .all(|s| s.headers.get("authorization").map(String::as_str) == Some("Bearer oauth-token-7"))
    );
    assert!(
        !seen.to_string().contains("oauth-token-7") && !seen.to_string().contains("s3cret"),
        "{seen:#}"
    );

    // A refused client secret: the request fails, naming the grant entry, and the endpoint's
    // body (which echoes the secret) goes nowhere the guest can read.
    probe(
        &tree,
        json!([{"method": "GET", "url": server.url("/api/ok")}]),
        &["log", "http"],
        json!({"allow": [{"url": base, "paths": ["/api/"], "auth": {
            "type": "oauth2_client_credentials", "token_url": server.url("/oauth/refused"),
            "client_id": "app-1", "client_secret_file": secret.display().to_string(), "scope": "x"}}]}),
    );
    let (r, seen) = results(&tree);
    let e = r[0]["error"].as_str().unwrap_or_default();
    assert!(e.contains("http.allow[0]") && !seen.to_string().contains("s3cret"), "{seen:#}");

    // A managed identity: the token comes from the metadata endpoint, asked with `Metadata: true`.
    probe(
        &tree,
        json!([{"method": "GET", "url": server.url("/api/ok")}]),
        &["log", "http"],
        json!({"allow": [{"url": base, "paths": ["/api/"], "auth": {
            "type": "managed_identity", "resource": "https://management.azure.com/", "endpoint": server.url("/imds/token")}}]}),
    );
    let (r, seen) = results(&tree);
    assert_eq!(r[0]["status"], 200, "{seen:#}");
    let imds = server.seen("/imds/token");
    assert!(
        imds.last()
            .is_some_and(|s| s.headers.get("metadata").map(String::as_str) == Some("true")
                && s.path.contains("resource=https%3A%2F%2Fmanagement.azure.com%2F")),
        "{imds:?}"
    );
    assert_eq!(
        server.seen("/api/ok").last().and_then(|s| s.headers.get("authorization").cloned()),
        Some("Bearer mi-token-9".into())
    );
}

#[test]
fn a_guest_importing_http_without_the_grant_is_refused_at_load_naming_the_grant() {
    let server = Server::start();
    let tree = HfTree::new(&plain_inventory(1));
    probe(
        &tree,
        json!([{"method": "GET", "url": server.url("/api/ok")}]),
        &["log"],
        json!({"allow": []}),
    );
    let e = tree.err("getAvailableTemplates", &json!({}), "GUEST_LOAD_ERROR");
    let msg = e["error"]["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("wasi:http") && msg.contains("\"http\"") && msg.contains("guests.probe.grants"),
        "{msg}"
    );
    assert!(server.seen("/").is_empty());
    // `guest check` says which grant it needs, with no config at all.
    let wasm = guest_wasm("hfwasm_testing_httpprobe.wasm");
    let (code, out, err) = admin(&tree, &["guest", "check", &wasm.display().to_string(), "--json"]);
    assert_eq!(code, 0, "{err}");
    let report: Value = serde_json::from_str(&out).expect("report");
    assert_eq!(report["grants"], json!(["http"]), "{report:#}");
    // A grant that is not valid is a config error naming the key.
    probe(
        &tree,
        json!([]),
        &["log", "http"],
        json!({"allow": [{"url": "https://x/with/path"}]}),
    );
    let e = tree.err("getAvailableTemplates", &json!({}), "CONFIG_ERROR");
    assert!(
        e["error"]["message"].as_str().is_some_and(|m| m.contains("guests.probe.http")),
        "{e}"
    );
}

/// A guest may have several requests on their way at once (the SDK's `send_all`), at most
/// `max_concurrent_requests`; more wait their turn rather than being refused.
#[test]
fn requests_overlap_up_to_the_grants_concurrency_cap() {
    let server = Server::start();
    let tree = HfTree::new(&plain_inventory(1));
    let slow: Vec<Value> = (0..6).map(|_| json!({"method": "GET", "url": server.url("/api/slow")})).collect();
    for (cap, expect) in [(2, 2..=2), (6, 3..=6)] {
        *server.slow.lock().expect("slow") = (0, 0);
        tree.config(&json!({
            "provider": {"guest": "probe", "settings": {"requests": slow, "concurrent": true}},
            "guests": {"probe": {
                "wasm": guest_wasm("hfwasm_testing_httpprobe.wasm").display().to_string(),
                "grants": ["log", "http"],
                "http": {"allow": [{"url": server.url(""), "paths": ["/api/"]}], "max_concurrent_requests": cap}
            }}
        }));
        let t0 = std::time::Instant::now();
        let (r, seen) = results(&tree);
        assert!(r.iter().all(|x| x["status"] == 200), "all answered: {seen:#}");
        let most = server.slow.lock().expect("slow").1;
        assert!(expect.contains(&most), "cap {cap}: {most} at once");
        if cap == 2 {
            assert!(t0.elapsed() >= std::time::Duration::from_millis(900), "three rounds of two");
        }
    }
}
