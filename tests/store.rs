//! The state stores, proven the way HostFactory uses them: the same behaviour suite against
//! a real PostgreSQL server and moto's DynamoDB; 32 processes at once through the real
//! scripts on each backend; moving state from SQLite to PostgreSQL and DynamoDB and back
//! with export/import; and bad storage settings answered with one JSON error naming the
//! setting.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use common::moto::Moto;
use common::pg::Postgres;
use common::*;
use hfwasm::store::behaviour::{self, Opener};
use hfwasm::store::{DynamoSettings, DynamoStore, PgStore, StateStore, StoreError};
use serde_json::{Value, json};

#[test]
fn postgres_passes_the_behaviour_suite() {
    let pg = Postgres::start();
    let mut n = 0;
    behaviour::run_all(&mut || {
        n += 1;
        let db = format!("suite{n}");
        pg.create_database(&db);
        let settings = pg.settings(&db);
        Arc::new(move || Ok(Box::new(PgStore::open(&settings)?) as Box<dyn StateStore>)) as Opener
    });
}

/// The SDK in this process finds moto's test credentials in the environment; set once,
/// before any test of this binary reads it.
fn aws_env() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        for (k, v) in common::moto::ENV {
            // SAFETY: every test of this binary calls this first, before it starts threads
            // that read the environment; no other writer exists.
            unsafe { std::env::set_var(k, v) };
        }
    });
}

fn dynamo_settings(moto: &Moto, prefix: &str) -> DynamoSettings {
    DynamoSettings {
        table_prefix: prefix.into(),
        region: "us-east-1".into(),
        endpoint_url: Some(moto.endpoint.clone()),
        profile: None,
        backup: false,
        connect_timeout: std::time::Duration::from_secs(5),
    }
}

fn dynamo_config(moto: &Moto, prefix: &str) -> Value {
    json!({"type": "dynamodb", "dynamodb": {"table_prefix": prefix, "region": "us-east-1", "endpoint_url": moto.endpoint}})
}

#[test]
fn dynamodb_passes_the_behaviour_suite() {
    aws_env();
    let moto = Moto::start();
    let mut n = 0;
    behaviour::run_all(&mut || {
        n += 1;
        let settings = dynamo_settings(&moto, &format!("suite{n}"));
        Arc::new(move || Ok(Box::new(DynamoStore::open(&settings)?) as Box<dyn StateStore>)) as Opener
    });
}

/// Sixteen first opens at once create the tables once and all work; a newer schema is
/// refused; `backup_enabled` turns point-in-time recovery on; a request too large for one
/// item spills into pages and reads back whole.
#[test]
fn dynamodb_tables_are_made_once_and_hold_large_requests() {
    use hfwasm::domain::model::MachineState;
    aws_env();
    let moto = Moto::start();
    let mut settings = dynamo_settings(&moto, "race");
    settings.backup = true;
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..16)
            .map(|i| {
                let settings = settings.clone();
                s.spawn(move || {
                    let store = DynamoStore::open(&settings).expect("open during the race");
                    store.kv_set("ns", &format!("k{i}"), "v").expect("write after the race");
                })
            })
            .collect();
        for h in handles {
            h.join().expect("thread");
        }
    });
    let store = DynamoStore::open(&settings).expect("open");
    assert_eq!(store.kv_scan("ns", "k").expect("scan").len(), 16);
    let report = store.inspect().expect("inspect");
    assert_eq!((report.backend, report.schema_version), ("dynamodb", hfwasm::store::SCHEMA_VERSION));
    assert!(report.problems.is_empty(), "{report:?}");

    // What the tables look like to AWS's own client: three tables, on-demand, PITR on.
    let client = dynamo_client(&moto);
    moto.rt.block_on(async {
        for t in ["race-requests", "race-kv", "race-meta"] {
            let d = client.describe_table().table_name(t).send().await.expect("describe");
            let billing = d
                .table()
                .and_then(|t| t.billing_mode_summary())
                .and_then(|b| b.billing_mode())
                .cloned();
            assert_eq!(billing, Some(aws_sdk_dynamodb::types::BillingMode::PayPerRequest), "{t}");
            let b = client.describe_continuous_backups().table_name(t).send().await.expect("backups");
            let status = b
                .continuous_backups_description()
                .and_then(|c| c.point_in_time_recovery_description())
                .and_then(|p| p.point_in_time_recovery_status())
                .cloned();
            assert_eq!(status, Some(aws_sdk_dynamodb::types::PointInTimeRecoveryStatus::Enabled), "{t}");
        }
    });

    // 5,000 machines in one request: more than one item holds; stored and read back whole,
    // then one machine changed (the pages rewritten together).
    let rec = behaviour::record("req-big", hfwasm::store::RequestKind::Provision, 1);
    let machines: Vec<_> = (0..5000)
        .map(|i| {
            behaviour::machine(
                &format!("i-{i:017}"),
                &format!("ip-10-0-{}-{}.ec2.internal", i / 250, i % 250),
                MachineState::Pending,
            )
        })
        .collect();
    store.insert_request(&rec, &machines).expect("insert a large request");
    assert_eq!(store.machines("req-big").expect("read"), machines);
    let mut last = machines[4999].clone();
    last.state = MachineState::Running;
    store.update_request(&rec, std::slice::from_ref(&last)).expect("update");
    let back = open_dynamo(&settings).machines("req-big").expect("read again");
    assert_eq!(back.len(), 5000);
    assert_eq!(back[4999].state, MachineState::Running);
    assert_eq!(back[0], machines[0]);
    let items = moto.rt.block_on(client.scan().table_name("race-requests").send()).expect("scan");
    assert!(items.count() > 1, "the request spans {} items", items.count());
    assert_eq!(store.export().expect("export").requests[0].machines.len(), 5000);

    // A newer hfwasm's tables are refused by name.
    moto.rt
        .block_on(
            client
                .put_item()
                .table_name("race-meta")
                .item("id", aws_sdk_dynamodb::types::AttributeValue::S("schema".into()))
                .item("version", aws_sdk_dynamodb::types::AttributeValue::N("99".into()))
                .send(),
        )
        .expect("bump schema");
    match DynamoStore::open(&settings) {
        Err(e @ StoreError::SchemaTooNew { found: 99, .. }) => assert!(e.to_string().contains("upgrade hfwasm"), "{e}"),
        other => panic!("expected SchemaTooNew, got {:?}", other.err()),
    }
}

/// An endpoint that accepts connections and never answers: a named error, in bounded time.
#[test]
fn a_dynamodb_endpoint_that_never_answers_fails_in_bounded_time() {
    aws_env();
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("listener");
    let hung = DynamoSettings {
        table_prefix: "hung".into(),
        region: "us-east-1".into(),
        endpoint_url: Some(format!("http://{}", silent.local_addr().expect("addr"))),
        profile: None,
        backup: false,
        connect_timeout: std::time::Duration::from_secs(1),
    };
    let t0 = Instant::now();
    let e = DynamoStore::open(&hung).err().expect("nobody answers");
    assert!(
        t0.elapsed() < hfwasm::limits::STORE_CALL_TIMEOUT + std::time::Duration::from_secs(5),
        "bounded: {:?}",
        t0.elapsed()
    );
    assert!(e.to_string().contains("storage.dynamodb.endpoint_url"), "{e}");
}

fn open_dynamo(settings: &DynamoSettings) -> DynamoStore {
    DynamoStore::open(settings).expect("open")
}

fn dynamo_client(moto: &Moto) -> aws_sdk_dynamodb::Client {
    let creds = aws_credential_types::Credentials::new("testing", "testing", None, None, "test");
    let conf = aws_sdk_dynamodb::Config::builder()
        .behavior_version(aws_sdk_dynamodb::config::BehaviorVersion::latest())
        .region(aws_sdk_dynamodb::config::Region::new("us-east-1"))
        .credentials_provider(creds)
        .endpoint_url(&moto.endpoint)
        .http_client(aws_smithy_http_client::Builder::new().build_http())
        .build();
    aws_sdk_dynamodb::Client::from_conf(conf)
}

#[test]
fn postgres_first_use_races_safely_and_a_newer_schema_is_refused() {
    let pg = Postgres::start();
    pg.create_database("race");
    let settings = pg.settings("race");
    // Sixteen processes' worth of first calls on an empty database: one migrates, all work.
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..16)
            .map(|i| {
                let settings = settings.clone();
                s.spawn(move || {
                    let store = PgStore::open(&settings).expect("open during the race");
                    store.kv_set("ns", &format!("k{i}"), "v").expect("write after the race");
                })
            })
            .collect();
        for h in handles {
            h.join().expect("thread");
        }
    });
    let store = PgStore::open(&settings).expect("open");
    assert_eq!(store.kv_scan("ns", "k").expect("scan").len(), 16);
    let report = store.inspect().expect("inspect");
    assert_eq!(report.schema_version, hfwasm::store::SCHEMA_VERSION);
    pg.client("race")
        .and_then(|mut c| c.batch_execute("UPDATE hfwasm_schema SET version = 99"))
        .expect("bump schema");
    match PgStore::open(&settings) {
        Err(e @ StoreError::SchemaTooNew { found: 99, .. }) => {
            assert!(e.to_string().contains("upgrade hfwasm"), "{e}")
        }
        other => panic!("expected SchemaTooNew, got {:?}", other.err()),
    }
}

/// A PostgreSQL server that takes TLS only (RDS with `rds.force_ssl`): plain text is refused
/// naming `sslmode`; `require` encrypts; `verify-full` with the CA file checks the chain and
/// the name (`localhost` passes, `127.0.0.1` is not on the certificate and fails naming the
/// host), `verify-ca` checks the chain alone; a CA that did not sign the certificate fails
/// naming `sslrootcert`. Then a HostFactory cycle through the scripts on `verify-full`.
#[test]
fn postgres_over_tls_with_each_sslmode() {
    use hfwasm::store::SslMode;
    let pg = Postgres::start_tls();
    pg.create_database("tls");
    let ca = pg.ca.clone().expect("CA of the TLS server");
    let encrypted = || -> i64 {
        let mut c = pg.client("tls").expect("admin client");
        c.query_one(
            "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE a.application_name = 'hfwasm' AND s.ssl",
            &[],
        )
        .and_then(|r| r.try_get(0))
        .expect("pg_stat_ssl")
    };
    let setting_of = |e: StoreError| match e {
        StoreError::Connect { setting, message, .. } => (setting, message),
        other => panic!("expected a connection error, got {other}"),
    };

    let plain = pg.settings("tls");
    let (setting, message) = setting_of(PgStore::open(&plain).err().expect("plain text refused"));
    assert_eq!(setting, "storage.sql_strategy.sslmode", "{message}");

    let mut require = pg.settings("tls");
    require.ssl_mode = SslMode::Require;
    let store = PgStore::open(&require).expect("require");
    store.kv_set("ns", "k", "v").expect("write over TLS");
    assert!(encrypted() >= 1, "the store's connection is encrypted");
    drop(store);

    let mut full = pg.settings("tls");
    full.host = "localhost".into();
    full.ssl_mode = SslMode::VerifyFull;
    full.ssl_root_cert = Some(ca.clone());
    let store = PgStore::open(&full).expect("verify-full to the name on the certificate");
    assert_eq!(store.kv_get("ns", "k").expect("read").as_deref(), Some("v"));
    drop(store);

    let mut by_address = full.clone();
    by_address.host = "127.0.0.1".into();
    let (setting, message) = setting_of(PgStore::open(&by_address).err().expect("the address is not on the certificate"));
    assert_eq!(setting, "storage.sql_strategy.host", "{message}");
    by_address.ssl_mode = SslMode::VerifyCa;
    PgStore::open(&by_address).expect("verify-ca checks the chain only");
    // A Unix socket is never TLS, whatever the mode (as with libpq).
    let mut socket = full.clone();
    socket.host = pg.socket_dir();
    PgStore::open(&socket).expect("verify-full over the local socket connects in plain text");

    let other = tempfile::tempdir().expect("tempdir");
    let out = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ])
        .args([
            "-keyout",
            "k.pem",
            "-out",
            "other-ca.crt",
            "-days",
            "1",
            "-subj",
            "/CN=not the server's CA",
        ])
        .current_dir(other.path())
        .output()
        .expect("openssl");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut wrong_ca = full.clone();
    wrong_ca.ssl_root_cert = Some(other.path().join("other-ca.crt"));
    let (setting, message) = setting_of(PgStore::open(&wrong_ca).err().expect("a CA that did not sign it"));
    assert_eq!(setting, "storage.sql_strategy.sslrootcert", "{message}");
    assert!(message.contains("other-ca.crt"), "the CA file is named: {message}");

    // Through the scripts, as a site configures it: the CA file beside the config.
    let tree = HfTree::new(&plain_inventory(2));
    std::fs::copy(&ca, tree.conf.join("rds-ca.pem")).expect("copy CA");
    let mut storage = pg.storage_config("tls");
    storage["sql_strategy"]["host"] = json!("localhost");
    storage["sql_strategy"]["sslmode"] = json!("verify-full");
    storage["sql_strategy"]["sslrootcert"] = json!("rds-ca.pem");
    tree.config(&json!({"storage": storage}));
    let id = tree.request(PLAIN_TEMPLATE, 1);
    assert_eq!(tree.until_final(&id)["status"], "complete");
    let report = store_check(&tree);
    assert_eq!(report["backend"], "postgresql");
    assert!(
        report["location"].as_str().is_some_and(|l| l.contains("sslmode=verify-full")),
        "{report:#}"
    );
    // The same file with the mode removed: refused by the server, named.
    storage["sql_strategy"]["sslmode"] = json!("disable");
    storage["sql_strategy"].as_object_mut().expect("object").remove("sslrootcert");
    tree.config(&json!({"storage": storage}));
    let e = tree.err("getAvailableTemplates", &json!({}), "STORE_ERROR");
    assert_eq!(e["error"]["details"]["setting"], "storage.sql_strategy.sslmode", "{e}");
}

/// A server that never answers a statement (here: a table locked by another session) fails
/// the store operation with a named error once `statement_timeout` passes; nothing hangs.
#[test]
fn a_locked_up_postgres_fails_in_bounded_time() {
    let pg = Postgres::start();
    pg.create_database("locked");
    let mut settings = pg.settings("locked");
    settings.statement_timeout = std::time::Duration::from_secs(1);
    let store = PgStore::open(&settings).expect("open");
    store.kv_set("ns", "k", "v").expect("write");
    let mut locker = pg.client("locked").expect("connect");
    let mut tx = locker.transaction().expect("begin");
    tx.batch_execute("LOCK TABLE kv IN ACCESS EXCLUSIVE MODE").expect("lock");
    let t0 = Instant::now();
    let e = store.kv_get("ns", "k").expect_err("a locked table cannot be read");
    assert!(t0.elapsed() < std::time::Duration::from_secs(10), "bounded: {:?}", t0.elapsed());
    assert!(e.to_string().contains("statement timeout"), "{e}");
    drop(tx);
    assert_eq!(store.kv_get("ns", "k").expect("read after").as_deref(), Some("v"));
    // The setting is bounded and PostgreSQL's own.
    let tree = HfTree::new(&plain_inventory(1));
    let mut storage = pg.storage_config("locked");
    storage["sql_strategy"]["statement_timeout"] = json!(0);
    tree.config(&json!({"storage": storage}));
    let e = tree.err("getAvailableTemplates", &json!({}), "CONFIG_ERROR");
    assert!(e.to_string().contains("statement_timeout"), "{e}");
}

/// 32 HostFactory-like clients at once, 10 rounds each: request one host, poll until final,
/// return it, poll the return until final. Checks that no two clients ever held one host
/// at the same time, that every id HostFactory got stays known, that all hosts come back,
/// and that the store holds exactly the requests made, with no problems.
fn thirty_two_clients_ten_rounds(storage: Value) {
    thirty_two_clients_ten_rounds_with(storage, &[]);
}

fn thirty_two_clients_ten_rounds_with(storage: Value, env: &[(&str, &str)]) {
    const CLIENTS: usize = 32;
    const ROUNDS: usize = 10;
    let tree = Arc::new(HfTree::new(&plain_inventory(40)));
    tree.config(&json!({"storage": storage}));
    for (k, v) in env {
        tree.set_env(k, v);
    }
    let t0 = Instant::now();
    let handles: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let tree = tree.clone();
            std::thread::spawn(move || {
                // (host, held from, held until) in test-clock microseconds: the host was
                // certainly leased between requestMachines answering and the return starting.
                let mut held = Vec::new();
                for round in 0..ROUNDS {
                    let id = tree.request(PLAIN_TEMPLATE, 1);
                    let from = t0.elapsed().as_micros();
                    let req = tree.until_final(&id);
                    assert_eq!(req["status"], "complete", "client {c} round {round}: {req}");
                    let names = machine_names(&req, "succeed");
                    assert_eq!(names.len(), 1, "client {c} round {round}: {req}");
                    let until = t0.elapsed().as_micros();
                    let ret = tree.ok("requestReturnMachines", &json!({"machines": [{"name": names[0]}]}));
                    let ret_id = ret["requestId"].as_str().expect("return id").to_string();
                    let done = tree.until_final(&ret_id);
                    assert_eq!(done["status"], "complete", "client {c} round {round}: {done}");
                    held.push((names[0].clone(), from, until, id, ret_id));
                }
                held
            })
        })
        .collect();
    let mut leases: BTreeMap<String, Vec<(u128, u128, String)>> = BTreeMap::new();
    let mut ids = Vec::new();
    for h in handles {
        for (host, from, until, id, ret_id) in h.join().expect("client thread") {
            leases.entry(host).or_default().push((from, until, id.clone()));
            ids.push(id);
            ids.push(ret_id);
        }
    }
    for (host, mut spans) in leases {
        spans.sort();
        for w in spans.windows(2) {
            assert!(w[0].1 <= w[1].0, "{host} was held by {} and {} at the same time", w[0].2, w[1].2);
        }
    }
    let unique: std::collections::BTreeSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), CLIENTS * ROUNDS * 2, "request ids are unique");
    let t = tree.ok("getAvailableTemplates", &json!({}));
    assert_eq!(t["templates"][0]["availableNumber"], 40, "every host came back");
    let report = store_check(&tree);
    let count = |k: &str| report["requests"][k].as_u64().unwrap_or(0);
    assert_eq!(count("provision/complete"), (CLIENTS * ROUNDS) as u64, "{report:#}");
    assert_eq!(count("return/complete"), (CLIENTS * ROUNDS) as u64, "{report:#}");
    assert_eq!(report["accepted"], 0);
    let total: u64 = report["requests"]
        .as_object()
        .expect("requests")
        .values()
        .filter_map(Value::as_u64)
        .sum();
    assert_eq!(total, (CLIENTS * ROUNDS * 2) as u64, "no lost or extra request: {report:#}");
    eprintln!(
        "{} calls' worth of rounds on {} in {:.1} s",
        CLIENTS * ROUNDS * 4,
        report["backend"],
        t0.elapsed().as_secs_f64()
    );
}

#[test]
fn thirty_two_processes_on_sqlite() {
    thirty_two_clients_ten_rounds(json!({"strategy": "sql", "sql_strategy": {"type": "sqlite"}}));
}

#[test]
fn thirty_two_processes_on_json_single_file() {
    thirty_two_clients_ten_rounds(json!({"strategy": "json", "json_strategy": {"storage_type": "single_file"}}));
}

#[test]
fn thirty_two_processes_on_json_split_files() {
    thirty_two_clients_ten_rounds(json!({"strategy": "json", "json_strategy": {"storage_type": "split_files"}}));
}

#[test]
fn thirty_two_processes_on_postgres() {
    let pg = Postgres::start();
    pg.create_database("hammer");
    thirty_two_clients_ten_rounds(pg.storage_config("hammer"));
}

#[test]
fn thirty_two_processes_on_dynamodb() {
    let moto = Moto::start();
    thirty_two_clients_ten_rounds_with(dynamo_config(&moto, "hammer"), &common::moto::ENV);
}

#[test]
fn export_and_import_move_state_from_sqlite_to_postgres_without_losing_a_request() {
    let pg = Postgres::start();
    pg.create_database("moved");
    move_state(&pg.storage_config("moved"), &[], "postgresql");
}

/// SQLite to DynamoDB, and on from DynamoDB to PostgreSQL: both directions of the tables.
#[test]
fn export_and_import_move_state_to_dynamodb_and_out_again() {
    let moto = Moto::start();
    let tree = move_state(&dynamo_config(&moto, "moved"), &common::moto::ENV, "dynamodb");
    let pg = Postgres::start();
    pg.create_database("onward");
    let export = tree.dir.path().join("from-dynamodb.json");
    let (code, _, err) = admin(&tree, &["store", "export", "--out", export.to_str().expect("utf8")]);
    assert_eq!(code, 0, "{err}");
    let before = store_check(&tree);
    tree.config(&json!({"storage": pg.storage_config("onward")}));
    let (code, out, err) = admin(&tree, &["store", "import", export.to_str().expect("utf8")]);
    assert_eq!(code, 0, "{out}{err}");
    let after = store_check(&tree);
    assert_eq!(after["requests"], before["requests"], "{after:#}");
    assert_eq!(after["kv_entries"], before["kv_entries"], "{after:#}");
    let t = tree.ok("getAvailableTemplates", &json!({}));
    assert_eq!(t["templates"][0]["availableNumber"], 4, "the leases moved too");
}

/// Makes state on SQLite (2 hosts held, 1 returned), exports it, imports it into `to`
/// (`backend` by name) and carries on there; returns the tree, configured for `to`.
fn move_state(to: &Value, env: &[(&str, &str)], backend: &str) -> HfTree {
    let tree = HfTree::new(&plain_inventory(6));
    for (k, v) in env {
        tree.set_env(k, v);
    }
    let held = tree.request(PLAIN_TEMPLATE, 2);
    let held_before = tree.until_final(&held);
    let returned = tree.request(PLAIN_TEMPLATE, 1);
    let name = machine_names(&tree.until_final(&returned), "succeed").remove(0);
    let ret = tree.ok("requestReturnMachines", &json!({"machines": [{"name": name}]}))["requestId"]
        .as_str()
        .expect("id")
        .to_string();
    tree.until_final(&ret);
    let export = tree.dir.path().join("state.json");
    let (code, _, err) = admin(&tree, &["store", "export", "--out", export.to_str().expect("utf8")]);
    assert_eq!(code, 0, "{err}");
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&export).expect("export file")).expect("json");
    assert_eq!(doc["requests"].as_array().map(Vec::len), Some(3));

    tree.config(&json!({"storage": to}));
    let (code, out, err) = admin(&tree, &["store", "import", export.to_str().expect("utf8")]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("imported 3 request(s)"), "{out}");
    let (code, _, err) = admin(&tree, &["store", "import", export.to_str().expect("utf8")]);
    assert_eq!(code, 1, "a second import into the now non-empty store is refused");
    assert!(err.contains("already holds 3 request(s)"), "{err}");

    // HostFactory carries on against the new store: the same answers, the leases still held.
    assert_eq!(tree.until_final(&held), held_before);
    let t = tree.ok("getAvailableTemplates", &json!({}));
    assert_eq!(t["templates"][0]["availableNumber"], 4, "2 of 6 hosts still leased after the move");
    let report = store_check(&tree);
    assert_eq!(report["backend"], backend);
    assert_eq!(report["requests"]["provision/complete"], 2);
    tree
}

#[test]
fn bad_storage_settings_give_one_json_error_naming_the_setting() {
    let pg = Postgres::start();
    pg.create_database("hf");
    let tree = HfTree::new(&plain_inventory(2));
    let templates = |tree: &HfTree| tree.run("getAvailableTemplates", &json!({}));

    let mut wrong_password = pg.storage_config("hf");
    wrong_password["sql_strategy"]["password"] = json!("not-the-password");
    tree.config(&json!({"storage": wrong_password}));
    let e = expect_error("getAvailableTemplates", &templates(&tree), "STORE_ERROR");
    assert_eq!(e["error"]["details"]["setting"], "storage.sql_strategy.password", "{e}");
    assert!(!e.to_string().contains("not-the-password"), "the password never shows: {e}");

    let mut unreachable = pg.storage_config("hf");
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    unreachable["sql_strategy"]["port"] = json!(closed);
    tree.config(&json!({"storage": unreachable}));
    let e = expect_error("getAvailableTemplates", &templates(&tree), "STORE_ERROR");
    assert_eq!(e["error"]["details"]["setting"], "storage.sql_strategy.host", "{e}");
    let message = e["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(&format!("127.0.0.1:{closed}")) && message.contains("storage.sql_strategy.port"),
        "{e}"
    );
    assert!(!e.to_string().contains(pg::PASSWORD), "the password never shows: {e}");

    let mut no_db = pg.storage_config("no_such_db");
    no_db["sql_strategy"]["pool_size"] = json!(1);
    tree.config(&json!({"storage": no_db}));
    let e = expect_error("getAvailableTemplates", &templates(&tree), "STORE_ERROR");
    assert_eq!(e["error"]["details"]["setting"], "storage.sql_strategy.name", "{e}");

    // The password may also come from the standard environment, and errors then name it.
    let mut from_env = pg.storage_config("hf");
    from_env["sql_strategy"].as_object_mut().expect("object").remove("password");
    tree.config(&json!({"storage": from_env}));
    tree.set_env("PGPASSWORD", "wrong-again");
    let e = expect_error("getAvailableTemplates", &templates(&tree), "STORE_ERROR");
    assert_eq!(e["error"]["details"]["setting"], "PGPASSWORD", "{e}");
    tree.set_env("PGPASSWORD", pg::PASSWORD);
    assert_eq!(templates(&tree).code, 0, "right password from PGPASSWORD works");
    tree.unset_env("PGPASSWORD");

    for (storage, setting) in [
        (json!({"strategy": "mongodb"}), "storage.strategy"),
        (
            json!({"strategy": "sql", "sql_strategy": {"type": "postgresql", "hots": "db"}}),
            "storage.sql_strategy.hots",
        ),
        (
            json!({"strategy": "sql", "sql_strategy": {"type": "postgresql", "user": "u", "replication": {"enabled": true}}}),
            "storage.sql_strategy.replication",
        ),
    ] {
        tree.config(&json!({"storage": storage}));
        let o = templates(&tree);
        let e = expect_error("getAvailableTemplates", &o, "CONFIG_ERROR");
        assert_eq!(e["error"]["details"]["setting"], setting, "{e}");
        assert!(
            e["error"]["details"]["file"].as_str().unwrap_or_default().ends_with("hfwasm.json"),
            "{e}"
        );
    }
}
