//! Per-backend figures: the write and read calls through the real scripts on SQLite, both
//! JSON layouts and PostgreSQL (a throwaway server started here, as the tests do), and one
//! getRequestStatus over 1,000 open requests holding 10,000 machines, on a store seeded
//! through the library.

use std::path::Path;

use anyhow::{Context, Result};
use hfwasm::domain::lifecycle::RequestStatus;
use hfwasm::domain::model::{Machine, MachineState};
use hfwasm::store::{JsonLayout, Phase, RequestKind, RequestRecord, StoreSpec, Synchronous};
use serde_json::{Value, json};

use super::{Sample, Tree, figures, row};

/// The throwaway PostgreSQL server the tests use (also the scale section's).
#[path = "../../tests/common/pg.rs"]
pub(crate) mod pg;

const OPEN_REQUESTS: usize = 1000;
const MACHINES_EACH: usize = 10;

/// [`Tree::new_onprem`] with `hfwasm.json` naming `storage`.
fn tree(bin: &Path, storage: &Value, hosts: usize) -> Result<Tree> {
    let t = Tree::new_onprem(bin, hosts)?;
    std::fs::write(t.conf.join("hfwasm.json"), serde_json::to_string(&json!({"storage": storage}))?)?;
    Ok(t)
}

/// The store `storage` names for a tree, as hfwasm would open it.
fn spec(t: &Tree, storage: &Value, pg: Option<&pg::Postgres>, db: &str) -> StoreSpec {
    match storage["strategy"].as_str() {
        Some("json") => StoreSpec::Json {
            dir: t.work.join("state"),
            layout: if storage["json_strategy"]["storage_type"] == "split_files" {
                JsonLayout::SplitFiles
            } else {
                JsonLayout::SingleFile
            },
        },
        _ => match pg.filter(|_| storage["sql_strategy"]["type"] == "postgresql") {
            Some(pg) => StoreSpec::Postgres(pg.settings(db)),
            None => StoreSpec::Sqlite {
                path: t.work.join("hfwasm.sqlite"),
                synchronous: Synchronous::Normal,
            },
        },
    }
}

/// 1,000 open provision requests of 10 running machines each, with their leases, as the
/// on-prem guest would have left them; returns the request ids.
fn seed(spec: &StoreSpec, now: u64) -> Result<Vec<String>> {
    let store = hfwasm::store::open(spec)?;
    let mut ids = Vec::with_capacity(OPEN_REQUESTS);
    for r in 0..OPEN_REQUESTS {
        let id = format!("req-bench-{r:04}");
        let machines: Vec<Machine> = (0..MACHINES_EACH)
            .map(|m| {
                let h = r * MACHINES_EACH + m;
                Machine {
                    machine_id: format!("pool-{h:05}"),
                    name: format!("pool-{h:05}"),
                    private_ip: format!("10.{}.{}.{}", 30 + h / 62500, (h / 250) % 250, h % 250 + 1),
                    public_ip: None,
                    launch_time: now,
                    state: MachineState::Running,
                    message: None,
                }
            })
            .collect();
        let rec = RequestRecord {
            id: id.clone(),
            kind: RequestKind::Provision,
            template_id: Some("pool".into()),
            count: MACHINES_EACH as u32,
            rc_account: None,
            phase: Phase::Submitted,
            status: RequestStatus::Running,
            outstanding: 1,
            message: None,
            created_at: now,
            updated_at: now,
            claimed: true,
        };
        store.insert_request(&rec, &machines)?;
        for m in &machines {
            store.kv_set("bench/onprem", &format!("lease/{}", m.name), &id)?;
        }
        ids.push(id);
    }
    Ok(ids)
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Runs the store figures; `iterations` runs per small call.
pub fn run(bin: &Path, iterations: usize) -> Result<()> {
    println!("\nstores: the same calls on each backend (on-prem guest, {iterations} runs each)");
    println!("{:<44} {:>8} {:>8} {:>9} {:>9}", "call", "median", "p90", "peak RSS", "vs sqlite");
    let pg = std::panic::catch_unwind(pg::Postgres::start).ok();
    let mut backends: Vec<(&str, Value)> = vec![
        ("sqlite", json!({"strategy": "sql", "sql_strategy": {"type": "sqlite"}})),
        (
            "json single_file",
            json!({"strategy": "json", "json_strategy": {"storage_type": "single_file"}}),
        ),
        (
            "json split_files",
            json!({"strategy": "json", "json_strategy": {"storage_type": "split_files"}}),
        ),
    ];
    if let Some(pg) = &pg {
        pg.create_database("bench_small");
        let mut s = pg.storage_config("bench_small");
        s["sql_strategy"]["pool_size"] = json!(1);
        backends.push(("postgresql", s));
    } else {
        println!("(postgresql skipped: no server binaries; run dev/test.sh once to install them)");
    }
    let mut sqlite_medians: Vec<std::time::Duration> = Vec::new();
    for (bi, (name, storage)) in backends.iter().enumerate() {
        let mut t = tree(bin, storage, iterations + 5)?;
        for _ in 0..3 {
            t.call("getAvailableTemplates", &json!({}))?;
        }
        let mut ids = Vec::new();
        let mut req = Vec::new();
        for _ in 0..iterations {
            let s = t.call("requestMachines", &json!({"template": {"templateId": "pool", "machineCount": 1}}))?;
            let v: Value = serde_json::from_str(&s.stdout)?;
            ids.push(v["requestId"].as_str().context("requestId")?.to_string());
            req.push(s);
        }
        let status: Vec<Sample> = ids
            .iter()
            .map(|id| t.call("getRequestStatus", &json!({"requests": [{"requestId": id}]})))
            .collect::<Result<_>>()?;
        let mut ret = Vec::new();
        for id in &ids {
            let v = t.json("getRequestStatus", &json!({"requests": [{"requestId": id}]}))?;
            let m = &v["requests"][0]["machines"][0];
            ret.push(t.call(
                "requestReturnMachines",
                &json!({"machines": [{"name": m["name"], "machineId": m["machineId"]}]}),
            )?);
        }
        for (i, (call, samples)) in [
            ("requestMachines", &req),
            ("getRequestStatus", &status),
            ("requestReturnMachines", &ret),
        ]
        .into_iter()
        .enumerate()
        {
            let f = figures(samples);
            if bi == 0 {
                sqlite_medians.push(f.median);
            }
            row(&format!("{name}: {call}"), &f, sqlite_medians[i]);
        }
    }

    println!(
        "\none getRequestStatus over {OPEN_REQUESTS} open requests holding {} machines (on-prem guest, no cloud calls)",
        OPEN_REQUESTS * MACHINES_EACH
    );
    let mut big: Vec<(&str, Value)> = vec![("sqlite", backends[0].1.clone()), ("json single_file", backends[1].1.clone())];
    if let Some(pg) = &pg {
        pg.create_database("bench_big");
        big.push(("postgresql", pg.storage_config("bench_big")));
    }
    let mut sqlite_big = None;
    for (name, storage) in big {
        let mut t = tree(bin, &storage, OPEN_REQUESTS * MACHINES_EACH)?;
        t.call("getAvailableTemplates", &json!({}))?;
        let ids = seed(&spec(&t, &storage, pg.as_ref(), "bench_big"), now())?;
        let input = json!({"requests": ids.iter().map(|id| json!({"requestId": id})).collect::<Vec<_>>()});
        let first = t.call("getRequestStatus", &input)?;
        let answer: Value = serde_json::from_str(&first.stdout)?;
        let complete = answer["requests"]
            .as_array()
            .map(|a| a.iter().filter(|r| r["status"] == "complete").count())
            .unwrap_or(0);
        if complete != OPEN_REQUESTS {
            anyhow::bail!(
                "{name}: only {complete} of {OPEN_REQUESTS} seeded requests completed: {}",
                answer["requests"][0]
            );
        }
        let again = t.call("getRequestStatus", &input)?;
        let f = figures(std::slice::from_ref(&first));
        let base = *sqlite_big.get_or_insert(f.median);
        row(&format!("{name}: first poll ({complete} complete)"), &f, base);
        row(
            &format!("{name}: next poll (all final)"),
            &figures(std::slice::from_ref(&again)),
            base,
        );
    }
    println!("target (issue #5): the first poll <= 1 s on sqlite");
    Ok(())
}
