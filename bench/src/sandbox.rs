//! What the sandbox costs: one warm `offer-templates` call of the built-in default policy
//! (100 templates in, ranked and filtered) with each layer added in turn, measured
//! in-process since the layers cost microseconds; and, per example guest (Rust, Python,
//! JavaScript), the cold compile time and the warm call. Figures, not assertions.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use hfwasm::domain::model::{Attribute, AttributeKind, CallContext, Template};
use hfwasm::engine::bindings::policy::TemplateSelector;
use hfwasm::engine::bindings::policy::exports::hostfactory::policy::template_policy as wit;
use hfwasm::engine::sandbox::HostWait;
use hfwasm::engine::sandbox::{self, Layers, Sandbox};
use hfwasm::limits::{GuestLimits, LimitOverrides};
use hfwasm::policy::TemplatePolicy;
use hfwasm::policy::wasm::WasmTemplatePolicy;
use hfwasm::runtime::{GuestCode, GuestEngine, PrecompiledCache};
use serde_json::json;

const TEMPLATES: usize = 100;

fn templates() -> Vec<Template> {
    (0..TEMPLATES)
        .map(|i| {
            let a = |n: &str, v: String| Attribute {
                name: n.into(),
                kind: if n == "type" { AttributeKind::Text } else { AttributeKind::Numeric },
                value: v,
            };
            Template {
                id: format!("tmpl-{i:03}"),
                max_number: 100,
                available_number: Some(50),
                attributes: vec![
                    a("type", "X86_64".into()),
                    a("ncpus", (2 << (i % 5)).to_string()),
                    a("nram", (8192 << (i % 5)).to_string()),
                ],
                extra: Default::default(),
            }
        })
        .collect()
}

/// Prices for every other template, a few above `max_price`.
fn settings() -> serde_json::Value {
    let prices: serde_json::Map<String, serde_json::Value> = (0..TEMPLATES)
        .step_by(2)
        .map(|i| (format!("tmpl-{i:03}"), json!(0.05 * (1 + i % 17) as f64)))
        .collect();
    json!({"prices": prices, "max_price": 0.7})
}

/// A wasmtime result as an anyhow one (wasmtime's error is not `std::error::Error`).
fn w<T>(r: wasmtime::Result<T>) -> Result<T> {
    r.map_err(|e| anyhow!("{e:#}"))
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Median of `calls` timed runs of `f` after a warm-up.
fn time_calls(calls: usize, mut f: impl FnMut() -> Result<()>) -> Result<Duration> {
    for _ in 0..20 {
        f()?;
    }
    let mut v = Vec::with_capacity(calls);
    for _ in 0..calls {
        let t0 = Instant::now();
        f()?;
        v.push(t0.elapsed());
    }
    Ok(median(v))
}

/// A raw instance of the default policy under `engine`, with only `layers`.
fn raw(
    engine: &GuestEngine,
    cache: &PrecompiledCache,
    layers: Layers,
    limits: GuestLimits,
) -> Result<(wasmtime::Store<Sandbox>, TemplateSelector)> {
    let (component, _) = w(cache.load(engine, hfwasm::builtin::DEFAULT_POLICY))?;
    let mut linker = wasmtime::component::Linker::<Sandbox>::new(engine.engine());
    wasmtime_wasi_link(&mut linker)?;
    let mut store =
        sandbox::new_store_with(engine, "bench", &limits, Sandbox::new(limits, HostWait::default()), layers).map_err(|e| anyhow!("{e}"))?;
    let b = w(TemplateSelector::instantiate(&mut store, &component, &linker))?;
    Ok((store, b))
}

fn wasmtime_wasi_link(linker: &mut wasmtime::component::Linker<Sandbox>) -> Result<()> {
    hfwasm::engine::sandbox::add_wasi(linker).map_err(|e| anyhow!("{e:#}"))
}

fn ctx() -> CallContext {
    CallContext {
        provider_instance: "bench".into(),
        settings: json!({}),
        now: 1_700_000_000,
    }
}

/// The example guests, built from source with `hfwasm guest build` (skipped, with the
/// reason, where a toolchain is missing).
fn examples(repo: &Path, bin: &Path, out: &Path) -> Vec<(&'static str, Result<Vec<u8>>)> {
    let mut v: Vec<(&'static str, Result<Vec<u8>>)> = vec![("Rust (builtin:default-policy)", Ok(hfwasm::builtin::DEFAULT_POLICY.to_vec()))];
    for (label, dir) in [
        ("Python (componentize-py)", "python-selector"),
        ("JavaScript (componentize-js)", "js-selector"),
    ] {
        let wasm = out.join(format!("{dir}.wasm"));
        let py = std::env::var_os("HFWASM_COMPONENTIZE_PY").unwrap_or_else(|| repo.join(".venv/bin/componentize-py").into());
        let built = Command::new(bin)
            .args(["guest", "build"])
            .arg(repo.join("examples").join(dir))
            .arg("--out")
            .arg(&wasm)
            .env("HFWASM_COMPONENTIZE_PY", py)
            .output()
            .context("run hfwasm guest build")
            .and_then(|o| {
                if o.status.success() {
                    std::fs::read(&wasm).context("read the built guest")
                } else {
                    let err = String::from_utf8_lossy(&o.stderr);
                    bail!("not built: {}", err.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("?"))
                }
            });
        v.push((label, built));
    }
    v
}

/// Prints the layer table and the example-guest table.
pub fn run(repo: &Path, bin: &Path, iterations: usize) -> Result<()> {
    let calls = (iterations * 100).max(200);
    let dir = tempfile::tempdir()?;
    let cache = PrecompiledCache::new(dir.path().join("cache"));
    let ts = templates();
    let wts: Vec<wit::Template> = ts.iter().map(hfwasm::policy::wasm::to_wit).collect();
    let settings = settings();
    let wctx = wit::PolicyContext {
        provider_instance: "bench".into(),
        settings_json: settings.to_string(),
        now: 1_700_000_000,
    };
    let limits = GuestLimits::default();
    let fuel_limits = GuestLimits::from_overrides(&LimitOverrides {
        fuel: Some(1_000_000_000),
        ..Default::default()
    })
    .map_err(|e| anyhow!(e))?;

    println!("\nsandbox layers: one warm offer-templates call of the built-in default policy ({TEMPLATES} templates), median of {calls}");
    println!("{:<56} {:>10} {:>9}", "layers", "us/call", "vs bare");
    let bare_engine = w(GuestEngine::without_deadlines())?;
    let engine = w(GuestEngine::new())?;
    let fuel_engine = w(GuestEngine::with_fuel(true))?;
    let none = Layers {
        memory_limiter: false,
        deadlines: false,
    };
    let raw_row = |engine: &GuestEngine, layers: Layers, limits: GuestLimits| -> Result<Duration> {
        let (mut store, b) = raw(engine, &cache, layers, limits)?;
        time_calls(calls, || {
            if let Some(f) = limits.fuel {
                w(store.set_fuel(f))?;
            }
            if layers.deadlines {
                store.set_epoch_deadline(GuestEngine::ticks(limits.timeout));
            }
            w(b.hostfactory_policy_template_policy().call_offer_templates(&mut store, &wctx, &wts))?.map_err(|e| anyhow!(e))?;
            Ok(())
        })
    };
    let deadlines_only = Layers {
        memory_limiter: false,
        deadlines: true,
    };
    let no_settings = hfwasm::capabilities::Settings::new();
    let code = |l: GuestLimits| GuestCode {
        name: "bench",
        wasm: hfwasm::builtin::DEFAULT_POLICY,
        grants: &[],
        settings: &no_settings,
        limits: l,
        coredump_dir: None,
    };
    let shipped = |engine: &GuestEngine, l: GuestLimits| -> Result<Duration> {
        let (mut p, _) = WasmTemplatePolicy::load(engine, &cache, code(l), &settings).map_err(|e| anyhow!("{e}"))?;
        time_calls(calls, || p.offer_templates(&ctx(), &ts).map(drop).map_err(|e| anyhow!("{e}")))
    };
    let rows: Vec<(&str, Duration)> = vec![
        (
            "bare: no deadline, no memory limiter, no fuel",
            raw_row(&bare_engine, none, limits)?,
        ),
        ("+ epoch deadline", raw_row(&engine, deadlines_only, limits)?),
        (
            "+ memory limiter (the store as guests get it)",
            raw_row(&engine, Layers::ALL, limits)?,
        ),
        (
            "+ call runner, answer check, type conversion (as shipped)",
            shipped(&engine, limits)?,
        ),
        (
            "+ fuel metering (raw store, all layers)",
            raw_row(&fuel_engine, Layers::ALL, fuel_limits)?,
        ),
        ("as shipped + limits.fuel", shipped(&fuel_engine, fuel_limits)?),
    ];
    let bare = rows[0].1;
    for (label, d) in &rows {
        println!(
            "{label:<56} {:>10.1} {:>8.2}x",
            d.as_secs_f64() * 1e6,
            d.as_secs_f64() / bare.as_secs_f64().max(1e-12)
        );
    }

    println!("\nexample guests: cold compile (cranelift, this machine) and one warm offer-templates call ({TEMPLATES} templates)");
    println!(
        "{:<32} {:>9} {:>11} {:>12} {:>10}",
        "guest", "size KiB", "compile s", "warm us/call", "vs Rust"
    );
    let out: PathBuf = dir.path().join("examples");
    std::fs::create_dir_all(&out)?;
    let mut rust_call = None;
    for (label, wasm) in examples(repo, bin, &out) {
        let wasm = match wasm {
            Ok(w) => w,
            Err(e) => {
                println!("{label:<32} skipped: {e:#}");
                continue;
            }
        };
        let t0 = Instant::now();
        w(engine.engine().precompile_component(&wasm))?;
        let compile = t0.elapsed();
        let roomy = GuestLimits::from_overrides(&LimitOverrides {
            memory_mib: Some(512),
            ..Default::default()
        })
        .map_err(|e| anyhow!(e))?;
        let (mut p, _) = WasmTemplatePolicy::load(
            &engine,
            &cache,
            GuestCode {
                name: label,
                wasm: &wasm,
                grants: &[],
                settings: &Default::default(),
                limits: roomy,
                coredump_dir: None,
            },
            &settings,
        )
        .map_err(|e| anyhow!("{e}"))?;
        let d = time_calls((calls / 10).max(50), || {
            p.offer_templates(&ctx(), &ts).map(drop).map_err(|e| anyhow!("{e}"))
        })?;
        let base = *rust_call.get_or_insert(d);
        println!(
            "{label:<32} {:>9} {:>11.2} {:>12.1} {:>9.1}x",
            wasm.len().div_ceil(1024),
            compile.as_secs_f64(),
            d.as_secs_f64() * 1e6,
            d.as_secs_f64() / base.as_secs_f64().max(1e-12)
        );
    }
    // The same policy as a Rhai script: parsed, not compiled, so "compile" is the parse.
    let script = repo.join("examples/rhai-selector/selector.rhai");
    let t0 = Instant::now();
    let mut rhai = hfwasm::policy::rhai::RhaiPolicy::load(
        "selector.rhai",
        &script,
        &settings,
        Default::default(),
        ("offer_templates", "ctx, templates"),
    )
    .map_err(|e| anyhow!("{e}"))?;
    let parse = t0.elapsed();
    let d = time_calls((calls / 10).max(50), || {
        rhai.offer_templates(&ctx(), &ts).map(drop).map_err(|e| anyhow!("{e}"))
    })?;
    let base = rust_call.unwrap_or(d);
    println!(
        "{:<32} {:>9} {:>11.4} {:>12.1} {:>9.1}x",
        "Rhai script (policy.script)",
        std::fs::metadata(&script).map_or(0, |m| m.len()).div_ceil(1024),
        parse.as_secs_f64(),
        d.as_secs_f64() * 1e6,
        d.as_secs_f64() / base.as_secs_f64().max(1e-12)
    );
    Ok(())
}
