//! Replay throughput: placement decisions re-evaluated per second on one core, by the
//! built-in Wasm default policy (fuel-metered, as `hfwasm replay` runs it) and by a Rhai
//! script implementing the same WEIGHTED rule, over synthetic recorded decisions (three
//! candidate providers each). Figures, not assertions; the issue's target for the Wasm
//! policy is 10,000 evaluations per second per core.

use std::time::Instant;

use anyhow::{Result, anyhow};
use hfwasm::domain::model::{Attribute, AttributeKind, Template};
use hfwasm::limits::{GuestLimits, LimitOverrides};
use hfwasm::policy::placement::{self, Candidate, Circuit, Decision, Placement, PlacementPolicy};
use hfwasm::policy::rhai::{RhaiPolicy, ScriptLimits};
use hfwasm::policy::wasm::WasmPlacementPolicy;
use hfwasm::runtime::{GuestCode, GuestEngine, PrecompiledCache};
use serde_json::json;

/// WEIGHTED in Rhai, as the built-in guest does it.
const WEIGHTED_RHAI: &str = r#"
fn choose_providers(ctx, request, candidates) {
    let open = candidates.filter(|c| c.circuit != "open" && c.weight > 0);
    let total = 0;
    for c in open { total += c.weight; }
    let names = [];
    if total > 0 {
        let r = request.draw % total;
        for c in open {
            if r < c.weight { names.push(c.name); break; }
            r -= c.weight;
        }
    }
    for c in candidates { if !names.contains(c.name) { names.push(c.name); } }
    names
}
"#;

fn decisions(n: usize) -> Vec<Decision> {
    let template = |price: &str| Template {
        id: "OnDemand-Template-VM".into(),
        max_number: 100,
        available_number: None,
        attributes: vec![
            Attribute {
                name: "ncpus".into(),
                kind: AttributeKind::Numeric,
                value: "2".into(),
            },
            Attribute {
                name: "price".into(),
                kind: AttributeKind::Numeric,
                value: price.into(),
            },
        ],
        extra: Default::default(),
    };
    (0..n)
        .map(|i| {
            let id = format!("req-{i:08}");
            let candidates = [("aws-east", 1, 100, "0.10"), ("aws-west", 2, 80, "0.12"), ("onprem", 3, 60, "0.01")]
                .into_iter()
                .map(|(name, priority, weight, price)| Candidate {
                    name: name.into(),
                    kind: "aws".into(),
                    priority,
                    weight,
                    cost_threshold: None,
                    circuit: Circuit::Closed,
                    template: template(price),
                })
                .collect();
            Decision {
                at: 1_700_000_000 + i as u64,
                policy: "live".into(),
                settings: json!({}),
                request: Placement {
                    draw: placement::draw(&id),
                    request_id: id,
                    template_id: "OnDemand-Template-VM".into(),
                    count: 1 + (i % 4) as u32,
                },
                candidates,
                live: vec!["aws-east".into(), "aws-west".into(), "onprem".into()],
            }
        })
        .collect()
}

fn rate(name: &str, policy: &mut dyn PlacementPolicy, ds: &[Decision]) -> Result<()> {
    // One warm-up pass, then the timed one.
    hfwasm::policy::replay::replay("bench", policy, &ds[..ds.len().min(100)], None, None, |_, _| {});
    let t0 = Instant::now();
    let report = hfwasm::policy::replay::replay("bench", policy, ds, None, None, |_, _| {});
    let secs = t0.elapsed().as_secs_f64();
    if report.failed > 0 {
        return Err(anyhow!(
            "{name}: {} decision(s) failed: {:?}",
            report.failed,
            report.rows.iter().find_map(|r| r.error.clone())
        ));
    }
    println!(
        "{name:<52} {:>10.0} {:>9.1} {:>8}",
        ds.len() as f64 / secs,
        secs * 1e6 / ds.len() as f64,
        report.differ
    );
    Ok(())
}

/// Prints evaluations per second per core for each policy.
pub fn run(iterations: usize) -> Result<()> {
    let n = (iterations * 1000).max(2000);
    let ds = decisions(n);
    let dir = tempfile::tempdir()?;
    let cache = PrecompiledCache::new(dir.path().join("cache"));
    let limits = GuestLimits::from_overrides(&LimitOverrides {
        fuel: Some(1_000_000_000),
        random_seed: Some(0),
        ..Default::default()
    })
    .map_err(|e| anyhow!(e))?;
    let engine = GuestEngine::with_options(true, false).map_err(|e| anyhow!("{e:#}"))?;
    println!("\nreplay throughput: {n} recorded placement decisions (3 candidates each), one core");
    println!("{:<52} {:>10} {:>9} {:>8}", "candidate policy", "evals/s", "us/eval", "differ");
    for sp in ["PRIORITY_FAILOVER", "COST_OPTIMIZED", "WEIGHTED"] {
        let code = GuestCode {
            name: "default-policy",
            wasm: hfwasm::builtin::DEFAULT_POLICY,
            grants: &[],
            settings: &Default::default(),
            limits,
            coredump_dir: None,
        };
        let (mut p, _) = WasmPlacementPolicy::load(&engine, &cache, code, &json!({"selection_policy": sp})).map_err(|e| anyhow!("{e}"))?;
        rate(&format!("Wasm builtin:default-policy {sp} (fuel)"), &mut p, &ds)?;
    }
    let script = dir.path().join("weighted.rhai");
    std::fs::write(&script, WEIGHTED_RHAI)?;
    let mut rhai = RhaiPolicy::load(
        "weighted.rhai",
        &script,
        &json!({}),
        ScriptLimits::default(),
        ("choose_providers", "ctx, request, candidates"),
    )
    .map_err(|e| anyhow!("{e}"))?;
    rate("Rhai WEIGHTED", &mut rhai, &ds)?;
    Ok(())
}
