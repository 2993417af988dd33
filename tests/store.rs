//! The three state stores, proven the way HostFactory uses them: the same behaviour suite
//! against a real PostgreSQL server; 32 processes at once through the real scripts on
//! each backend; moving state from SQLite to PostgreSQL with export/import; and bad
//! storage settings answered with one JSON error naming the setting.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use common::pg::Postgres;
use common::*;
use hfwasm::store::behaviour::{self, Opener};
use hfwasm::store::{PgStore, StateStore, StoreError};
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
    const CLIENTS: usize = 32;
    const ROUNDS: usize = 10;
    let tree = Arc::new(HfTree::new(&plain_inventory(40)));
    tree.config(&json!({"storage": storage}));
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
fn export_and_import_move_state_from_sqlite_to_postgres_without_losing_a_request() {
    let pg = Postgres::start();
    pg.create_database("moved");
    let tree = HfTree::new(&plain_inventory(6));
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

    tree.config(&json!({"storage": pg.storage_config("moved")}));
    let (code, out, err) = admin(&tree, &["store", "import", export.to_str().expect("utf8")]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("imported 3 request(s)"), "{out}");
    let (code, _, err) = admin(&tree, &["store", "import", export.to_str().expect("utf8")]);
    assert_eq!(code, 1, "a second import into the now non-empty store is refused");
    assert!(err.contains("already holds 3 request(s)"), "{err}");

    // HostFactory carries on against PostgreSQL: the same answers, the leases still held.
    assert_eq!(tree.until_final(&held), held_before);
    let t = tree.ok("getAvailableTemplates", &json!({}));
    assert_eq!(t["templates"][0]["availableNumber"], 4, "2 of 6 hosts still leased after the move");
    let report = store_check(&tree);
    assert_eq!(report["backend"], "postgresql");
    assert_eq!(report["requests"]["provision/complete"], 2);
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
