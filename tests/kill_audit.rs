//! Random kills over full HostFactory cycles, then an audit that counts hosts. A simulated
//! HostFactory drives the real scripts (requests, status polls, returns, reclaim checks)
//! and each call is `kill -9`ed at a random moment about half the time, landing anywhere
//! in the call: while loading the guest, between the write-ahead record and the provider,
//! while a power command starts, while the answer is stored. HostFactory acts only on
//! answers it got (a killed return is retried later, a killed request is never known).
//! Afterwards, with no more kills, HostFactory settles what it knows and later cycles let
//! the sweep repair the rest; then every host must be held by a request HostFactory holds
//! it through, or back in the pool (on-prem), or terminated (EC2), and no host may ever
//! have been handed out twice.
//!
//! The seed is printed; `HFWASM_KILL_SEED` replays one run, `HFWASM_KILL_ROUNDS` sets how
//! many calls each run makes.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::moto::{Moto, aws_tree, templates};
use common::*;
use serde_json::{Value, json};

fn rounds(default: usize) -> usize {
    std::env::var("HFWASM_KILL_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// What the simulated HostFactory knows: only what answers told it.
#[derive(Default)]
struct Hf {
    /// Hosts it holds (by name), with the request it got each from and its machine id.
    held: BTreeMap<String, (String, String)>,
    /// Provision requests it polls.
    open: BTreeSet<String>,
    /// Return requests it polls, with their hosts (name, machine id).
    returning: BTreeMap<String, Vec<(String, String)>>,
    /// Hosts whose return got no answer (machine id → name): HostFactory no longer uses
    /// them and retries the return, naming the machine id as it always does.
    retry: BTreeMap<String, String>,
    /// Calls killed, by call name.
    kills: BTreeMap<&'static str, usize>,
    /// Calls answered.
    answered: usize,
    /// Time taken by calls not killed, and how many, by call name.
    took: BTreeMap<&'static str, (Duration, u32)>,
}

impl Hf {
    /// Takes in a getRequestStatus answer: final provision requests hand over their hosts
    /// (each host to one holder only), final returns are done.
    fn learn(&mut self, answer: &Value) {
        for r in answer["requests"].as_array().into_iter().flatten() {
            let id = r["requestId"].as_str().unwrap_or_default().to_string();
            if r["status"] == "running" {
                continue;
            }
            if self.open.remove(&id) {
                for m in r["machines"].as_array().into_iter().flatten().filter(|m| m["result"] == "succeed") {
                    let name = m["name"].as_str().expect("name").to_string();
                    let mid = m["machineId"].as_str().expect("machineId").to_string();
                    if let Some((other, _)) = self.held.insert(name.clone(), (id.clone(), mid)) {
                        panic!("host {name} handed out twice: to {other} and to {id}");
                    }
                }
            } else if let Some(hosts) = self.returning.remove(&id) {
                assert_eq!(r["status"], "complete", "return of {hosts:?} must complete: {r}");
            }
        }
    }

    fn polled_ids(&self) -> Vec<Value> {
        self.open
            .iter()
            .chain(self.returning.keys())
            .map(|id| json!({"requestId": id}))
            .collect()
    }
}

/// One HostFactory call, killed after a random delay about half the time. The delay is
/// drawn within how long that call took when it was not killed (a running mean per call),
/// so kills land inside calls rather than after them.
fn call(tree: &HfTree, hf: &mut Hf, rng: &mut Rng, name: &'static str, input: &Value) -> Option<Value> {
    let typical = hf.took.get(name).map(|(total, n)| *total / *n);
    let kill_at = typical.filter(|_| rng.below(2) == 0).map(|t| {
        let span = t.mul_f32(0.9).as_micros() as u64;
        Duration::from_micros(rng.below(span))
    });
    let t0 = std::time::Instant::now();
    match tree.run_killed(name, input, kill_at.unwrap_or(Duration::from_secs(120))) {
        None => {
            *hf.kills.entry(name).or_default() += 1;
            None
        }
        Some(o) => {
            hf.answered += 1;
            if kill_at.is_none() {
                let e = hf.took.entry(name).or_insert((Duration::ZERO, 0));
                e.0 += t0.elapsed();
                e.1 += 1;
            }
            (o.code == 0).then_some(o.json)
        }
    }
}

/// `rounds` random HostFactory calls with random kills, then HostFactory settles what it
/// knows (no kills), retries the returns that got no answer and returns all but `keep`
/// hosts; then later cycles (the clock moved
/// on past every timeout) let the sweep repair what the kills left.
fn drive(tree: &HfTree, template: &str, max_count: u64, rounds: usize, keep: usize) -> Hf {
    let (mut rng, seed) = Rng::seeded("HFWASM_KILL_SEED");
    println!("kill audit seed {seed} (HFWASM_KILL_SEED={seed} replays it), {rounds} calls");
    let mut hf = Hf::default();
    for _ in 0..rounds {
        match rng.below(4) {
            0 => {
                let count = 1 + rng.below(max_count);
                let input = json!({"template": {"templateId": template, "machineCount": count}});
                if let Some(a) = call(tree, &mut hf, &mut rng, "requestMachines", &input)
                    && let Some(id) = a["requestId"].as_str()
                {
                    hf.open.insert(id.to_string());
                }
            }
            1 if !hf.held.is_empty() || !hf.retry.is_empty() => {
                // Retries first, then a random choice of what it holds.
                let mut pick: Vec<(String, String)> = hf.retry.iter().map(|(mid, n)| (n.clone(), mid.clone())).collect();
                let chosen: Vec<String> = hf.held.keys().filter(|_| rng.below(2) == 0).cloned().collect();
                let chosen = if chosen.is_empty() && pick.is_empty() {
                    hf.held.keys().take(1).cloned().collect()
                } else {
                    chosen
                };
                for n in chosen {
                    if let Some((_, mid)) = hf.held.remove(&n) {
                        hf.retry.insert(mid.clone(), n.clone());
                        pick.push((n, mid));
                    }
                }
                if let Some(a) = call(tree, &mut hf, &mut rng, "requestReturnMachines", &return_input(&pick))
                    && let Some(id) = a["requestId"].as_str()
                {
                    for (_, mid) in &pick {
                        hf.retry.remove(mid);
                    }
                    hf.returning.insert(id.to_string(), pick);
                }
            }
            2 => {
                let machines: Vec<Value> = hf.held.keys().chain(hf.retry.values()).map(|n| json!({"name": n})).collect();
                call(tree, &mut hf, &mut rng, "getReturnRequests", &json!({"machines": machines}));
            }
            _ => {
                let ids = hf.polled_ids();
                if !ids.is_empty()
                    && let Some(a) = call(tree, &mut hf, &mut rng, "getRequestStatus", &json!({"requests": ids}))
                {
                    hf.learn(&a);
                }
            }
        }
    }
    // HostFactory settles what it knows, no more kills.
    settle(tree, &mut hf);
    let mut give_back: Vec<(String, String)> = std::mem::take(&mut hf.retry).into_iter().map(|(mid, n)| (n, mid)).collect();
    let names: Vec<String> = hf.held.keys().skip(keep).cloned().collect();
    for n in names {
        if let Some((_, mid)) = hf.held.remove(&n) {
            give_back.push((n, mid));
        }
    }
    if !give_back.is_empty() {
        let a = tree.ok("requestReturnMachines", &return_input(&give_back));
        hf.returning.insert(a["requestId"].as_str().expect("id").to_string(), give_back);
        settle(tree, &mut hf);
    }
    // Later cycles: each an hour on, so every claim, pending timeout and abandonment
    // threshold has passed; power commands get real time to finish between them.
    for hours in 1..=3 {
        tree.set_env("HFWASM_NOW_OFFSET_SECS", &(hours * 3600).to_string());
        let machines: Vec<Value> = hf.held.keys().map(|n| json!({"name": n})).collect();
        let reclaims = tree.ok("getReturnRequests", &json!({"machines": machines}));
        assert_eq!(
            reclaims["requests"],
            json!([]),
            "nothing HostFactory holds is reclaimed: {reclaims}"
        );
        tree.unset_env("HFWASM_NOW_OFFSET_SECS");
        std::thread::sleep(Duration::from_millis(800));
    }
    let killed: usize = hf.kills.values().sum();
    let typical: BTreeMap<&str, Duration> = hf.took.iter().map(|(k, (t, n))| (*k, *t / *n)).collect();
    println!(
        "{} calls answered, {killed} killed ({:?}; calls typically take {typical:?}); HostFactory holds {} host(s)",
        hf.answered,
        hf.kills,
        hf.held.len()
    );
    let report = store_check(tree);
    assert_eq!(report["accepted"], 0, "nothing left half-done: {report:#}");
    hf
}

/// A requestReturnMachines input naming each host and its machine id, as HostFactory does.
fn return_input(hosts: &[(String, String)]) -> Value {
    json!({"machines": hosts.iter().map(|(n, mid)| json!({"name": n, "machineId": mid})).collect::<Vec<_>>()})
}

/// On failure: what the store holds (through the `sqlite3` tool, when the machine has it)
/// and the log's warnings, so a failing seed can be understood without replaying it.
fn dump(tree: &HfTree) {
    let query = "select namespace, key, value from kv; select id, kind, phase, status, claimed, created_at, updated_at from requests; \
                 select request_id, machine_id, name, state, message from machines;";
    if let Ok(out) = std::process::Command::new("sqlite3")
        .arg(tree.work.join("hfwasm.sqlite"))
        .arg(query)
        .output()
    {
        eprintln!("store:\n{}", String::from_utf8_lossy(&out.stdout));
    }
    let log = std::fs::read_to_string(tree.logs.join("hfwasm.log")).unwrap_or_default();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR") || l.contains("power"))
        .collect();
    eprintln!("log (warnings and power):\n{}", lines[lines.len().saturating_sub(60)..].join("\n"));
}

/// Polls every request HostFactory knows until final (bounded), as it does every cycle.
fn settle(tree: &HfTree, hf: &mut Hf) {
    let t0 = std::time::Instant::now();
    while !hf.open.is_empty() || !hf.returning.is_empty() {
        if t0.elapsed() > Duration::from_secs(60) {
            dump(tree);
            panic!("requests still open after 60 s: {:?} {:?}", hf.open, hf.returning);
        }
        let a = tree.ok("getRequestStatus", &json!({"requests": hf.polled_ids()}));
        hf.learn(&a);
        std::thread::sleep(Duration::from_millis(150));
    }
}

#[test]
fn on_prem_hosts_are_held_or_back_in_the_pool_after_random_kills() {
    const HOSTS: usize = 6;
    let inventory: String =
        std::iter::once("defaults template=t ncpus=2 nram=2048 power_on=\"sleep 0.1\" power_off=\"sleep 0.1\"\n".to_string())
            .chain((1..=HOSTS).map(|i| format!("node-{i} 10.7.0.{i}\n")))
            .collect();
    let tree = HfTree::new(&inventory);
    let hf = drive(&tree, "t", 2, rounds(400), 2);
    let templates = tree.ok("getAvailableTemplates", &json!({}));
    let available = template(&templates, "t")["availableNumber"].as_u64().expect("availableNumber");
    if available as usize != HOSTS - hf.held.len() {
        dump(&tree);
    }
    assert_eq!(
        available as usize,
        HOSTS - hf.held.len(),
        "every host HostFactory does not hold is back in the pool (it holds {:?})",
        hf.held
    );
    // What HostFactory holds is still leased to it: a return of it goes through.
    if !hf.held.is_empty() {
        let hosts: Vec<(String, String)> = hf.held.iter().map(|(n, (_, mid))| (n.clone(), mid.clone())).collect();
        let a = tree.ok("requestReturnMachines", &return_input(&hosts));
        assert_eq!(tree.until_final(a["requestId"].as_str().expect("id"))["status"], "complete");
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let t = tree.ok("getAvailableTemplates", &json!({}));
            if template(&t, "t")["availableNumber"] == HOSTS {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "all hosts back in the pool: {t}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

#[test]
fn ec2_instances_are_held_or_terminated_after_random_kills() {
    let moto = Moto::start();
    let (subnet, sg, ami) = moto.network();
    let tree = aws_tree(&moto, templates(&subnet, &sg, &ami));
    tree.config(&json!({"aws": {"config_file": "poolprov_config.json", "templates_file": "poolprov_templates.json"}}));
    let hf = drive(&tree, "OnDemand-Template-VM", 2, rounds(150), 1);
    let live: BTreeSet<String> = moto
        .instances()
        .into_iter()
        .filter(|i| i.1 == "running" || i.1 == "pending")
        .map(|i| i.2)
        .collect();
    let held: BTreeSet<String> = hf.held.keys().cloned().collect();
    if live != held {
        dump(&tree);
    }
    assert_eq!(live, held, "the live instances are exactly those HostFactory holds");
}
