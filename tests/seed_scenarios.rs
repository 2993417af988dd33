//! Seed 001's deployment scenarios 1-3 (`tests/data/seeds/001_12.yaml` .. `001_14.yaml`),
//! fed exactly as the seed writes them, each file named by its own first-line comment and
//! found through the HostProvider's `CONFIG_PATH`, against moto (EC2 and DynamoDB) reached
//! through the standard `AWS_ENDPOINT_URL`: the DynamoDB tables the seed names appear and
//! hold the requests, each region keeps its own, point-in-time recovery is on where
//! `backup_enabled` says so, and `monitoring` pushes each call's metrics.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use common::moto::Moto;
use common::*;
use serde_json::json;

/// The files of a seed block: split where a `# config/<name>` comment starts one.
fn seed_files(block: &str) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(repo().join("tests/data/seeds").join(block)).expect("seed block");
    let mut files: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        if let Some(name) = line.strip_prefix("# config/") {
            files.push((name.trim().to_string(), String::new()));
        }
        let (_, body) = files.last_mut().expect("a seed block starts with its file name");
        body.push_str(line);
        body.push('\n');
    }
    files
}

/// A HostFactory tree whose config is the seed file `name` with `body`, found through
/// `CONFIG_PATH`, talking to `moto` with the profiles the seed names.
fn seed_tree(moto: &Moto, name: &str, body: &str) -> HfTree {
    let tree = HfTree::new("");
    let path = tree.conf.join(name);
    std::fs::write(&path, body).expect("seed config");
    tree.set_env("CONFIG_PATH", path.to_str().expect("utf8"));
    tree.set_env("AWS_ENDPOINT_URL", &moto.endpoint);
    tree.set_env("AWS_EC2_METADATA_DISABLED", "true");
    let creds = tree.conf.join("aws-credentials");
    std::fs::write(
        &creds,
        "[default]\naws_access_key_id = testing\naws_secret_access_key = testing\n[production]\naws_access_key_id = testing\naws_secret_access_key = testing\n",
    )
    .expect("credentials");
    tree.set_env("AWS_SHARED_CREDENTIALS_FILE", creds.to_str().expect("utf8"));
    tree
}

fn dynamodb(moto: &Moto, region: &str) -> aws_sdk_dynamodb::Client {
    let creds = aws_credential_types::Credentials::new("testing", "testing", None, None, "test");
    let conf = aws_sdk_dynamodb::Config::builder()
        .behavior_version(aws_sdk_dynamodb::config::BehaviorVersion::latest())
        .region(aws_sdk_dynamodb::config::Region::new(region.to_string()))
        .credentials_provider(creds)
        .endpoint_url(&moto.endpoint)
        .http_client(aws_smithy_http_client::Builder::new().build_http())
        .build();
    aws_sdk_dynamodb::Client::from_conf(conf)
}

/// Table names in `region`.
fn tables(moto: &Moto, region: &str) -> Vec<String> {
    let out = moto.rt.block_on(dynamodb(moto, region).list_tables().send()).expect("list tables");
    out.table_names().to_vec()
}

/// Scenario 1: one region, the seed's own table prefix and template, which names no subnet
/// (EC2 launches into the default VPC's) and a placeholder AMI id (moto launches any).
#[test]
fn scenario_1_single_region_on_dynamodb() {
    let moto = Moto::start();
    let files = seed_files("001_12.yaml");
    assert_eq!(files.len(), 1);
    let (name, body) = &files[0];
    assert_eq!(name, "config.yml");
    assert!(body.contains("type: dynamodb") && body.contains("ami-0abcdef1234567890"), "{body}");
    let tree = seed_tree(&moto, name, body);
    let offer = tree.ok("getAvailableTemplates", &json!({}));
    let t = offer["templates"]
        .as_array()
        .and_then(|ts| ts.iter().find(|t| t["templateId"] == "basic-template"))
        .unwrap_or_else(|| panic!("basic-template offered: {offer}"));
    assert_eq!(t["maxNumber"], 10, "{t}");
    assert_eq!(t["availableNumber"], 10, "{t}");
    let seeded: Vec<String> = tables(&moto, "us-east-1");
    for t in ["hostfactory-requests", "hostfactory-kv"] {
        assert!(seeded.contains(&t.to_string()), "the seed's `{t}` table exists: {seeded:?}");
    }
    let id = tree.request("basic-template", 2);
    let done = tree.until_final(&id);
    assert_eq!(done["status"], "complete", "{done}");
    let names = machine_names(&done, "succeed");
    assert_eq!(names.len(), 2, "{done}");
    let live = moto.instances_of(&id);
    assert_eq!(live.len(), 2);
    // The request lives in the seed's table, readable by AWS's own client.
    let item = moto
        .rt
        .block_on(
            dynamodb(&moto, "us-east-1")
                .get_item()
                .table_name("hostfactory-requests")
                .key("id", aws_sdk_dynamodb::types::AttributeValue::S(id.clone()))
                .key("pg", aws_sdk_dynamodb::types::AttributeValue::N("0".into()))
                .send(),
        )
        .expect("get item");
    let machines = item
        .item()
        .and_then(|i| i.get("m"))
        .and_then(|m| m.as_s().ok())
        .cloned()
        .unwrap_or_default();
    for n in &names {
        assert!(machines.contains(n.as_str()), "{n} stored with its request: {machines}");
    }
    let t = tree.ok("getAvailableTemplates", &json!({}));
    assert_eq!(t["templates"][0]["availableNumber"], 8);
    let ret = tree.ok(
        "requestReturnMachines",
        &json!({"machines": names.iter().map(|n| json!({"name": n})).collect::<Vec<_>>()}),
    );
    let done = tree.until_final(ret["requestId"].as_str().expect("return id"));
    assert_eq!(done["status"], "complete", "{done}");
    assert!(moto.live().is_empty(), "returned instances are terminated");
    let report = store_check(&tree);
    assert_eq!(report["backend"], "dynamodb", "{report:#}");
}

/// Scenario 2: two installations, one per region, each with its own tables in its own
/// region. (The seed's two files carry no templates: each installation offers none until
/// the site adds some, and says so rather than failing.)
#[test]
fn scenario_2_multi_region_keeps_each_regions_tables_apart() {
    let moto = Moto::start();
    let files = seed_files("001_13.yaml");
    let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["aws-us-east-1.yml", "aws-us-west-2.yml"]);
    for (name, body) in &files {
        let tree = seed_tree(&moto, name, body);
        let offer = tree.ok("getAvailableTemplates", &json!({}));
        assert_eq!(offer["templates"], json!([]), "{offer}");
        let report = store_check(&tree);
        assert_eq!(report["backend"], "dynamodb", "{report:#}");
    }
    let east = tables(&moto, "us-east-1");
    let west = tables(&moto, "us-west-2");
    assert!(east.contains(&"hostfactory-east-requests".to_string()), "{east:?}");
    assert!(west.contains(&"hostfactory-west-requests".to_string()), "{west:?}");
    assert!(!east.iter().any(|t| t.starts_with("hostfactory-west")), "{east:?}");
    assert!(!west.iter().any(|t| t.starts_with("hostfactory-east")), "{west:?}");
}

/// What a Pushgateway received: (request line, body) of each push.
type Pushes = Arc<Mutex<Vec<(String, String)>>>;

/// A stand-in Pushgateway on a free loopback port that keeps every push and answers 200.
fn pushgateway() -> (String, Pushes) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("listener");
    let url = format!("http://{}/metrics", listener.local_addr().expect("addr"));
    let got: Pushes = Arc::default();
    let keep = got.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let mut buf = Vec::new();
            let mut chunk = [0u8; 8192];
            // Headers, then as many body bytes as Content-Length says.
            let (head, body) = loop {
                let n = s.read(&mut chunk).unwrap_or(0);
                if n == 0 {
                    break (String::from_utf8_lossy(&buf).to_string(), String::new());
                }
                buf.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buf).to_string();
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let len: usize = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    if body.len() >= len {
                        break (head.to_string(), body.to_string());
                    }
                }
            };
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            keep.lock()
                .expect("pushes")
                .push((head.lines().next().unwrap_or("").to_string(), body));
        }
    });
    (url, got)
}

/// Scenario 3: the production profile, point-in-time recovery, the log file and rotation,
/// and monitoring. As written, its Pushgateway (`monitoring.internal`) is not there: every
/// call still answers, and the failed push is logged. With the endpoint pointed at a
/// Pushgateway, each call's metrics arrive there, in the text format, grouped by instance
/// and call.
#[test]
fn scenario_3_high_availability_with_backups_and_monitoring() {
    let moto = Moto::start();
    let files = seed_files("001_14.yaml");
    assert_eq!(files.len(), 1);
    let (name, body) = &files[0];
    assert_eq!(name, "production.yml");
    let log_path = "/var/log/hostfactory-plugin/app.log";
    assert!(body.contains(log_path) && body.contains("backup_enabled: true"), "{body}");
    let tree = seed_tree(&moto, name, body);
    let t0 = std::time::Instant::now();
    let offer = tree.ok("getAvailableTemplates", &json!({}));
    assert_eq!(offer["templates"], json!([]), "{offer}");
    assert!(
        t0.elapsed() < hfwasm::metrics::push::PUSH_TIMEOUT + std::time::Duration::from_secs(20),
        "an absent Pushgateway holds a call at most PUSH_TIMEOUT: {:?}",
        t0.elapsed()
    );
    let backups = moto
        .rt
        .block_on(
            dynamodb(&moto, "us-east-1")
                .describe_continuous_backups()
                .table_name("hostfactory-prod-requests")
                .send(),
        )
        .expect("backups");
    let status = backups
        .continuous_backups_description()
        .and_then(|c| c.point_in_time_recovery_description())
        .and_then(|p| p.point_in_time_recovery_status())
        .cloned();
    assert_eq!(status, Some(aws_sdk_dynamodb::types::PointInTimeRecoveryStatus::Enabled));
    // Where the seed's log file can be written (tests run as root here), it says why the
    // push failed; the seed's own setting is honoured, not redirected.
    if let Ok(log) = std::fs::read_to_string(log_path) {
        assert!(log.contains("monitoring.internal"), "the failed push is logged");
    }

    // The same file with the endpoint of a Pushgateway that is there.
    let (url, pushes) = pushgateway();
    let body = body.replace("http://monitoring.internal:8080/metrics", &url);
    let tree = seed_tree(&moto, name, &body);
    tree.ok("getAvailableTemplates", &json!({}));
    let e = tree.run("getRequestStatus", &json!({"requests": [{"requestId": "req-unknown"}]}));
    assert_eq!(e.code, 0, "{:?}", e.json);
    let got = pushes.lock().expect("pushes").clone();
    assert_eq!(got.len(), 2, "one push per call: {got:?}");
    let instance = tree.conf.file_name().and_then(|n| n.to_str()).expect("instance").to_string();
    assert_eq!(
        got[0].0,
        format!("PUT /metrics/job/hfwasm/instance/{instance}/call/getAvailableTemplates HTTP/1.1")
    );
    assert!(
        got[0]
            .1
            .contains("hfwasm_calls_total{call=\"getAvailableTemplates\",outcome=\"ok\"} 1"),
        "{}",
        got[0].1
    );
    assert!(got[1].0.contains("/call/getRequestStatus "), "{}", got[1].0);
    assert!(got[1].1.contains("# TYPE hfwasm_call_duration_seconds histogram"), "{}", got[1].1);
}
