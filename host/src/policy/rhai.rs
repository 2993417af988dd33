//! Policies written as Rhai scripts (`policy.script`, `placement.script`): the light
//! alternative to a Wasm guest for a site's own rules. A template policy defines
//! `offer_templates(ctx, templates)`, a placement policy
//! `choose_providers(ctx, request, candidates)`. A script runs in an engine with no module loading, no `eval`, `print`/`debug` sent to the log,
//! and limits on operations, call depth, expression depth, string, array and map sizes and
//! wall time, so a broken or hostile script fails as a named policy error.

use std::path::Path;
use std::time::{Duration, Instant};

use rhai::{AST, Dynamic, Engine, Scope};
use serde::Deserialize;
use serde_json::{Value, json};

use super::placement::{Candidate, Placement, PlacementPolicy};
use super::{PolicyError, TemplatePolicy};
use crate::domain::model::{Attribute, AttributeKind, CallContext, Template};

/// Limits on one script call (`policy.limits`); Rhai's own names where it has them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScriptLimits {
    /// Operations per call (about one per expression node, loop turn or call).
    pub max_operations: u64,
    /// Nested function calls (unbounded recursion stops here).
    pub max_call_levels: usize,
    /// Nesting depth of expressions and statements.
    pub max_expr_depth: usize,
    /// Bytes in one string.
    pub max_string_size: usize,
    /// Elements in one array.
    pub max_array_size: usize,
    /// Properties in one object map.
    pub max_map_size: usize,
    /// Wall time per call, milliseconds.
    pub timeout_ms: u64,
}

impl Default for ScriptLimits {
    fn default() -> Self {
        Self {
            max_operations: 1_000_000,
            max_call_levels: 32,
            max_expr_depth: 64,
            max_string_size: 1 << 20,
            max_array_size: 100_000,
            max_map_size: 10_000,
            timeout_ms: 10_000,
        }
    }
}

impl ScriptLimits {
    /// The highest value config may set for each limit, with why. Call and expression depth
    /// are bounded by the host's stack: Rhai recurses on the native stack, and a depth past
    /// what the stack holds aborts the whole process (no JSON answer, `fail_open` cannot
    /// help), so the ceilings leave a wide margin under the main thread's 8 MiB.
    pub const CEILINGS: [(&'static str, u64, &'static str); 7] = [
        ("max_operations", 10_000_000_000, "operations per call"),
        ("max_call_levels", 64, "nested calls; deeper would risk the host's stack"),
        ("max_expr_depth", 128, "expression nesting; deeper would risk the host's stack"),
        ("max_string_size", 64 << 20, "bytes in one string"),
        ("max_array_size", 10_000_000, "elements in one array"),
        ("max_map_size", 1_000_000, "properties in one map"),
        ("timeout_ms", 600_000, "milliseconds per call"),
    ];

    /// Each limit within its ceiling, or the key and what to write.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        let values = [
            self.max_operations,
            self.max_call_levels as u64,
            self.max_expr_depth as u64,
            self.max_string_size as u64,
            self.max_array_size as u64,
            self.max_map_size as u64,
            self.timeout_ms,
        ];
        for ((key, ceiling, what), v) in Self::CEILINGS.iter().zip(values) {
            // Rhai reads 0 as "no limit" for depths and sizes; for operations the timeout
            // still bounds the call, and 0 call levels means no calls at all.
            let min = u64::from(!matches!(*key, "max_operations" | "max_call_levels"));
            if v < min || v > *ceiling {
                return Err((key, format!("`{key}` = {v}: must be {min}..={ceiling} ({what})")));
            }
        }
        Ok(())
    }
}

/// A loaded, compiled script.
pub struct RhaiPolicy {
    name: String,
    engine: Engine,
    ast: AST,
    settings: Value,
    limits: ScriptLimits,
    /// Config section the limits are set in (`policy` or `placement`), for messages.
    section: &'static str,
    deadline: std::sync::Arc<std::sync::Mutex<Option<Instant>>>,
}

/// What the script hands back for one template (strict: unknown fields are errors).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Offered {
    id: String,
    max_number: i64,
    available_number: Option<i64>,
    attributes: Vec<OfferedAttribute>,
    #[serde(default)]
    extra: serde_json::Map<String, Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OfferedAttribute {
    name: String,
    kind: String,
    value: String,
}

impl RhaiPolicy {
    /// Compiles `file`, which must define `hook` (a function name and its parameters, e.g.
    /// `("offer_templates", 2)`); `name` names the policy in logs and errors.
    pub fn load(name: &str, file: &Path, settings: &Value, limits: ScriptLimits, hook: (&str, &str)) -> Result<Self, PolicyError> {
        let err = |message: String| PolicyError {
            policy: name.to_string(),
            message,
        };
        let source = crate::limits::read_capped(file, crate::limits::MAX_CONFIG_BYTES)
            .map_err(|e| err(format!("cannot read {}: {e}", file.display())))?;
        let mut engine = Engine::new();
        engine.set_max_operations(limits.max_operations);
        engine.set_max_call_levels(limits.max_call_levels);
        engine.set_max_expr_depths(limits.max_expr_depth, limits.max_expr_depth);
        engine.set_max_string_size(limits.max_string_size);
        engine.set_max_array_size(limits.max_array_size);
        engine.set_max_map_size(limits.max_map_size);
        engine.set_max_modules(0);
        engine.set_module_resolver(rhai::module_resolvers::DummyModuleResolver::new());
        engine.disable_symbol("eval");
        let (p, d) = (name.to_string(), name.to_string());
        engine.on_print(move |s| tracing::info!(policy = %p, "{s}"));
        engine.on_debug(move |s, _, pos| tracing::debug!(policy = %d, %pos, "{s}"));
        let deadline = std::sync::Arc::new(std::sync::Mutex::new(None::<Instant>));
        let watch = deadline.clone();
        engine.on_progress(move |_| {
            let due = watch.lock().ok().and_then(|d| *d);
            due.filter(|d| Instant::now() >= *d).map(|_| Dynamic::from("wall-time limit"))
        });
        let ast = engine.compile(&source).map_err(|e| err(format!("{}: {e}", file.display())))?;
        let (hook, params) = hook;
        let arity = params.split(',').count();
        if !ast.iter_functions().any(|f| f.name == hook && f.params.len() == arity) {
            return Err(err(format!("{} defines no `fn {hook}({params})`", file.display())));
        }
        Ok(Self {
            name: name.to_string(),
            engine,
            ast,
            settings: settings.clone(),
            limits,
            section: if hook == "choose_providers" { "placement" } else { "policy" },
            deadline,
        })
    }

    /// Calls the script's `hook` under the wall-time limit, naming any failure.
    fn call(&self, hook: &str, args: impl rhai::FuncArgs) -> Result<Dynamic, PolicyError> {
        if let Ok(mut d) = self.deadline.lock() {
            *d = Some(Instant::now() + Duration::from_millis(self.limits.timeout_ms));
        }
        let t0 = Instant::now();
        let answer = self
            .engine
            .call_fn::<Dynamic>(&mut Scope::new(), &self.ast, hook, args)
            .map_err(|e| {
                let message = match *e {
                    rhai::EvalAltResult::ErrorRuntime(v, pos) => format!("threw {v} ({pos})"),
                    rhai::EvalAltResult::ErrorTooManyOperations(pos) => format!(
                        "ran more than {} operations ({pos}; {}.limits.max_operations) and was stopped",
                        self.limits.max_operations, self.section
                    ),
                    rhai::EvalAltResult::ErrorStackOverflow(pos) => format!(
                        "nested calls deeper than {} ({pos}; {}.limits.max_call_levels): unbounded recursion? It was stopped",
                        self.limits.max_call_levels, self.section
                    ),
                    rhai::EvalAltResult::ErrorTerminated(_, pos) => format!(
                        "ran past its wall-time limit of {} ms ({pos}; {}.limits.timeout_ms) and was stopped",
                        self.limits.timeout_ms, self.section
                    ),
                    other => other.to_string(),
                };
                self.error(message)
            })?;
        tracing::debug!(policy = %self.name, hook, elapsed_us = t0.elapsed().as_micros() as u64, "script call");
        Ok(answer)
    }

    fn to_dyn(&self, v: Value) -> Result<Dynamic, PolicyError> {
        rhai::serde::to_dynamic(v).map_err(|e| self.error(format!("cannot hand the script its input: {e}")))
    }

    fn error(&self, message: String) -> PolicyError {
        PolicyError {
            policy: self.name.clone(),
            message,
        }
    }

    fn read_answer(&self, answer: Dynamic) -> Result<Vec<Template>, PolicyError> {
        let offered: Vec<Offered> = rhai::serde::from_dynamic(&answer).map_err(|e| {
            self.error(format!(
                "offer_templates must return an array of templates shaped like its input: {e}"
            ))
        })?;
        offered
            .into_iter()
            .map(|o| {
                let attributes = o
                    .attributes
                    .into_iter()
                    .map(|a| {
                        let Some(kind) = AttributeKind::parse(&a.kind) else {
                            return Err(self.error(format!(
                                "template '{}': attribute '{}' has kind '{}'; use text, numeric or boolean",
                                o.id, a.name, a.kind
                            )));
                        };
                        Ok(Attribute {
                            name: a.name,
                            kind,
                            value: a.value,
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(Template {
                    max_number: i32::try_from(o.max_number)
                        .map_err(|_| self.error(format!("template '{}': max_number {} is out of range", o.id, o.max_number)))?,
                    available_number: o
                        .available_number
                        .map(u32::try_from)
                        .transpose()
                        .map_err(|_| self.error(format!("template '{}': available_number is out of range", o.id)))?,
                    id: o.id,
                    attributes,
                    extra: o.extra,
                })
            })
            .collect()
    }
}

impl TemplatePolicy for RhaiPolicy {
    fn name(&self) -> &str {
        &self.name
    }

    fn offer_templates(&mut self, ctx: &CallContext, templates: &[Template]) -> Result<Vec<Template>, PolicyError> {
        let to_dyn = |v: Value| self.to_dyn(v);
        let c = to_dyn(json!({"provider_instance": ctx.provider_instance, "settings": self.settings, "now": ctx.now}))?;
        let ts = to_dyn(Value::Array(
            templates
                .iter()
                .map(|t| {
                    json!({
                        "id": t.id,
                        "max_number": t.max_number,
                        "available_number": t.available_number,
                        "attributes": t.attributes.iter().map(|a| json!({"name": a.name, "kind": AttributeKind::name(a.kind), "value": a.value})).collect::<Vec<_>>(),
                        "extra": t.extra,
                    })
                })
                .collect(),
        ))?;
        let answer = self.call("offer_templates", (c, ts))?;
        self.read_answer(answer)
    }
}

impl PlacementPolicy for RhaiPolicy {
    fn name(&self) -> &str {
        &self.name
    }

    fn choose_providers(&mut self, ctx: &CallContext, request: &Placement, candidates: &[Candidate]) -> Result<Vec<String>, PolicyError> {
        let c = self.to_dyn(json!({"provider_instance": ctx.provider_instance, "settings": self.settings, "now": ctx.now}))?;
        // The draw as text too: Rhai integers are i64, a u64 may not fit.
        let r = self.to_dyn(json!({
            "request_id": request.request_id,
            "template_id": request.template_id,
            "count": request.count,
            "draw": (request.draw >> 1) as i64,
        }))?;
        let cs = self.to_dyn(Value::Array(
            candidates
                .iter()
                .map(|c| {
                    json!({
                        "name": c.name,
                        "kind": c.kind,
                        "priority": c.priority,
                        "weight": c.weight,
                        "cost_threshold": c.cost_threshold,
                        "circuit": c.circuit.as_str(),
                        "attributes": c.template.attributes.iter().map(|a| (a.name.clone(), Value::String(a.value.clone()))).collect::<serde_json::Map<_, _>>(),
                        "max_number": c.template.max_number,
                    })
                })
                .collect(),
        ))?;
        let answer = self.call("choose_providers", (c, r, cs))?;
        rhai::serde::from_dynamic::<Vec<String>>(&answer)
            .map_err(|e| self.error(format!("choose_providers must return an array of provider names: {e}")))
    }
}
