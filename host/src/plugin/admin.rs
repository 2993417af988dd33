//! The admin commands' side of the plugin: `config check` (the whole chain, listed), `guest
//! precompile`, `replay` of a candidate placement policy, `power-run`, and what the store
//! holds as `machines` and `requests`.

use super::*;
use crate::domain::model::MachineState;

/// One machine as `hfwasm machines` lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MachineLine {
    /// The provider that made it: the member's name with several providers, else the
    /// provider guest's.
    pub provider: String,
    /// Template it was made from.
    pub template: String,
    /// The provision request that holds it.
    pub request: String,
    /// Provider state as last recorded (`pending`, `running`, ..., `terminated`, `failed`).
    pub state: String,
    /// Host name.
    pub name: String,
    /// Private address (empty while unknown).
    pub ip: String,
    /// Public address, when it has one.
    pub public_ip: Option<String>,
    /// Provider id.
    pub machine_id: String,
    /// Launch time, epoch seconds.
    pub launched: u64,
}

/// One request as `hfwasm requests` lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RequestLine {
    /// Request id (`req-…`, `ret-…`, or a host-made return).
    pub id: String,
    /// `provision` or `return`.
    pub kind: String,
    /// Template (provision only).
    pub template: Option<String>,
    /// Units asked for (provision) or hosts to return.
    pub count: u32,
    /// HostFactory's status as last derived.
    pub status: String,
    /// Machines recorded under it.
    pub machines: usize,
    /// Creation time, epoch seconds.
    pub created: u64,
    /// Last change, epoch seconds.
    pub updated: u64,
    /// Its message for HostFactory, if any.
    pub message: Option<String>,
}

impl Plugin {
    /// The body of the hidden `hfwasm power-run`: runs `host`'s configured power command
    /// for `action` (`on`/`off`) and records its outcome in the store.
    pub fn power_run(&self, host: &str, action: &str, claim: Option<&str>) -> Result<(), HfError> {
        use crate::capabilities::power;
        let act = power::parse_action(action)
            .ok_or_else(|| HfError::new(ErrorCode::InvalidInput, format!("--action must be `on` or `off`, not `{action}`")))?;
        let store = self.open_store()?;
        power::run_and_record(
            store.as_ref(),
            &power::namespace(&self.dirs.name),
            self.inventory.as_deref(),
            &self.dirs.work_dir.join("power"),
            host,
            act,
            claim,
        )
        .map(drop)
        .map_err(|e| HfError::new(ErrorCode::Internal, e))
    }

    /// `hfwasm replay`: re-runs candidate policy `policy` (a `.rhai` script,
    /// `builtin:default-policy`, or a Wasm component file) with `settings` over the decisions
    /// recorded in this instance's store within `from..=to`, for each hook it has
    /// (placement, template offers). A Wasm candidate runs with
    /// `fuel` per decision and a fixed random seed, so two runs give the same report.
    pub fn replay(
        &self,
        policy: &str,
        settings: Value,
        range: (Option<u64>, Option<u64>),
        fuel: u64,
        progress: impl FnMut(usize, usize),
    ) -> Result<crate::policy::replay::Report, HfError> {
        use crate::builtin::BUILTIN_DEFAULT_POLICY;
        use crate::config::PolicySpec;
        use crate::limits::GuestLimits;
        if !settings.is_object() {
            return Err(HfError::new(
                ErrorCode::InvalidInput,
                "--settings must be a JSON object".to_string(),
            ));
        }
        let source = if policy.ends_with(".rhai") {
            PolicySource::Script {
                file: PathBuf::from(policy),
                limits: crate::policy::rhai::ScriptLimits::default(),
            }
        } else {
            let (name, source) = if policy == BUILTIN_DEFAULT_POLICY {
                ("default-policy".to_string(), GuestSource::Builtin(BUILTIN_DEFAULT_POLICY))
            } else {
                let path = PathBuf::from(policy);
                let name = path
                    .file_stem()
                    .map_or_else(|| policy.to_string(), |s| s.to_string_lossy().into_owned());
                (name, GuestSource::File(path))
            };
            PolicySource::Guest(Box::new(GuestSpec {
                name,
                source,
                grants: Vec::new(),
                limits: GuestLimits {
                    fuel: Some(fuel),
                    random_seed: Some(0),
                    ..GuestLimits::default()
                },
                settings: Default::default(),
                coredump_dir: None,
            }))
        };
        let spec = PolicySpec {
            source,
            settings,
            on_error: crate::policy::OnError::FailClosed,
            shadow: None,
        };
        // The candidate replays every hook it has: placement, template offers, or both.
        let placement = self.load_placement(&spec);
        let template = self.load_policy(&spec);
        let (name, mut placement, mut template) = match (placement, template) {
            (Err(p), Err(t)) => {
                let message = if p.message == t.message {
                    p.to_string()
                } else {
                    format!("not a placement policy ({}) nor a template policy ({})", p.message, t.message)
                };
                return Err(HfError::new(ErrorCode::PolicyError, message).with("policy", p.policy));
            }
            (p, t) => {
                let name = match (&p, &t) {
                    (Ok(p), _) => p.name().to_string(),
                    (_, Ok(t)) => t.name().to_string(),
                    _ => String::new(),
                };
                (name, p.ok(), t.ok())
            }
        };
        let store = self.open_store()?;
        let (from, to) = range;
        let mut progress = progress;
        let mut report = match placement.as_mut() {
            Some(p) => {
                let decisions = crate::policy::replay::load(store.as_ref(), &self.dirs.name, from, to)?;
                crate::policy::replay::replay(&self.dirs.name, p.as_mut(), &decisions, from, to, &mut progress)
            }
            None => crate::policy::replay::Report::empty(&self.dirs.name, &name, from, to),
        };
        if let Some(t) = template.as_mut() {
            let offers = crate::policy::replay::load_offers(store.as_ref(), &self.dirs.name, from, to)?;
            report.offers = Some(crate::policy::replay::replay_offers(
                &self.dirs.name,
                t.as_mut(),
                &offers,
                &mut progress,
            ));
        }
        Ok(report)
    }

    /// Compiles the provider guest and the policy guest, if any, into the cache; returns
    /// for each its name, cache file, whether it was new, and the time it took.
    pub fn precompile(&self) -> Result<Vec<(String, PathBuf, CacheOutcome, std::time::Duration)>, HfError> {
        let mut specs = vec![&self.config.provider];
        specs.extend(self.config.members.iter().map(|m| &m.guest));
        specs.extend(self.config.policy.as_ref().and_then(|p| p.guest()));
        specs.extend(self.config.placement.as_ref().and_then(|p| p.guest()));
        for p in [&self.config.policy, &self.config.placement].into_iter().flatten() {
            specs.extend(p.shadow.as_deref().and_then(|s| s.guest()));
        }
        // One entry per distinct code (several providers may run the same built-in guest).
        let mut seen: Vec<(GuestSource, bool, bool)> = Vec::new();
        specs.retain(|g| {
            let key = (g.source.clone(), g.limits.fuel.is_some(), g.coredump_dir.is_some());
            let new = !seen.contains(&key);
            seen.push(key);
            new
        });
        let cache = self.cache();
        let mut done = Vec::new();
        let total = specs.len();
        for (i, spec) in specs.into_iter().enumerate() {
            // Progress on stderr: a large guest (Python, JavaScript) compiles for seconds.
            eprintln!(
                "guest precompile: {}/{total} '{}' ({} KiB of wasm)...",
                i + 1,
                spec.name,
                Self::bytes_of(spec).map_or(0, |b| b.len() >> 10)
            );
            let wasm = Self::bytes_of(spec).map_err(HfError::from)?;
            let engine =
                Self::engine_for(spec).map_err(|e| HfError::new(ErrorCode::Internal, format!("cannot start the wasm engine: {e:#}")))?;
            let t0 = Instant::now();
            let (_, outcome) = cache
                .load(&engine, &wasm)
                .map_err(|e| HfError::new(ErrorCode::GuestLoadError, format!("guest '{}': {e:#}", spec.name)))?;
            done.push((spec.name.clone(), cache.path_for(&engine, &wasm), outcome, t0.elapsed()));
        }
        Ok(done)
    }

    /// Checks the whole chain (config, inventory, store, guest load, templates) and
    /// describes it, one line per item.
    pub fn check(&self) -> Result<CheckReport, HfError> {
        let c = &self.config;
        let mut lines = vec![
            format!("provider instance: {}", self.dirs.name),
            format!("conf dir:  {}", self.dirs.conf_dir.display()),
            format!("work dir:  {}", self.dirs.work_dir.display()),
            format!(
                "log dir:   {}",
                self.dirs
                    .log_dir
                    .as_ref()
                    .map_or("(stderr)".to_string(), |d| d.display().to_string())
            ),
            format!(
                "config:    {}",
                match (&c.file, &c.ibm_files) {
                    (Some(f), _) => f.display().to_string(),
                    (None, Some(i)) => format!("IBM {} files {} and {}", i.cloud, i.config.display(), i.templates.display()),
                    (None, None) => "embedded defaults (no hfwasm.json)".to_string(),
                }
            ),
            format!(
                "guest:     {} from {} (grants: {}; memory {} MiB, timeout {} ms)",
                c.provider.name,
                match &c.provider.source {
                    GuestSource::Builtin(n) => n.to_string(),
                    GuestSource::File(p) => p.display().to_string(),
                },
                c.provider.grants.iter().map(|g| g.short_name()).collect::<Vec<_>>().join(", "),
                c.provider.limits.memory_bytes >> 20,
                c.provider.limits.timeout.as_millis()
            ),
        ];
        if !c.members.is_empty() {
            // Several providers: each has its own line below.
            lines.retain(|l| !l.starts_with("guest:"));
        }
        if let Some(p) = &c.policy {
            let on_error = if p.on_error == crate::policy::OnError::FailOpen {
                "fail_open"
            } else {
                "fail_closed"
            };
            lines.push(match &p.source {
                PolicySource::Guest(g) => format!(
                    "policy:    {} from {} (on_error {on_error}; memory {} MiB, timeout {} ms)",
                    g.name,
                    match &g.source {
                        GuestSource::Builtin(n) => n.to_string(),
                        GuestSource::File(f) => f.display().to_string(),
                    },
                    g.limits.memory_bytes >> 20,
                    g.limits.timeout.as_millis()
                ),
                PolicySource::Script { file, limits } => format!(
                    "policy:    Rhai script {} (on_error {on_error}; {} operations, timeout {} ms)",
                    file.display(),
                    limits.max_operations,
                    limits.timeout_ms
                ),
            });
        }
        if let Some(ec2) = &c.ec2 {
            lines.push(format!(
                "ec2:       region {}, endpoint {}, credentials {}",
                ec2.region,
                ec2.endpoint_url.as_deref().unwrap_or("(AWS default)"),
                ec2.credential_file
                    .as_ref()
                    .map_or("from the standard chain".to_string(), |f| f.display().to_string())
            ));
        }
        if let Some(inv) = &self.inventory {
            lines.push(format!("inventory: {} ({} hosts)", inv.file.display(), inv.hosts.len()));
        }
        for m in &c.members {
            lines.push(format!(
                "provider:  {} ({}, priority {}, weight {}{}{})",
                m.member.name,
                m.member.kind,
                m.member.priority,
                m.member.weight,
                m.member.cost_threshold.map_or(String::new(), |t| format!(", cost_threshold {t}")),
                m.ec2.as_ref().map_or(String::new(), |e| format!(
                    "; region {}, endpoint {}",
                    e.region,
                    e.endpoint_url.as_deref().unwrap_or("(AWS default)")
                ))
            ));
        }
        if let Some(p) = &c.placement {
            lines.push(format!(
                "placement: {} (settings {}; on_error {})",
                p.name(),
                p.settings,
                if p.on_error == crate::policy::OnError::FailOpen {
                    "fail_open"
                } else {
                    "fail_closed"
                }
            ));
        }
        let store = self.open_store()?;
        lines.push(format!("store:     {}", c.store.describe()));
        let provider: Box<dyn Provider> = if c.members.is_empty() {
            let (provider, outcome) = self.load_provider(store.clone()).map_err(HfError::from)?;
            lines.push(format!(
                "guest load: ok ({})",
                if outcome == CacheOutcome::Hit {
                    "precompiled cache hit"
                } else {
                    "compiled now"
                }
            ));
            Box::new(provider)
        } else {
            for m in &c.members {
                self.load_guest(&m.guest, &m.member.name, m.ec2.clone(), store.clone())
                    .map_err(HfError::from)?;
            }
            lines.push(format!("guest load: ok ({} providers)", c.members.len()));
            if let Some(spec) = &c.placement {
                self.load_placement(spec)
                    .map_err(|e| HfError::new(crate::hf::ErrorCode::PolicyError, e.to_string()).with("policy", e.policy))?;
                lines.push("placement load: ok".into());
            }
            (self.provider_loader(store.clone()))().map_err(HfError::from)?
        };
        if let Some(spec) = &c.policy {
            // Loaded here to report a broken policy even when it would fail open.
            self.load_policy(spec)
                .map_err(|e| HfError::new(crate::hf::ErrorCode::PolicyError, e.to_string()).with("policy", e.policy))?;
            lines.push("policy load: ok".into());
        }
        let loader: ProviderLoader<'_> = Box::new(move || Ok(provider));
        let (templates, guest_warnings) =
            crate::logging::capture_guest_warnings(|| self.service(store.as_ref(), loader).get_available_templates());
        let templates = templates?;
        let mut problems = Vec::new();
        for w in guest_warnings {
            lines.push(format!("PROBLEM:   {w}"));
            problems.push(serde_json::json!({"guest": c.provider.name, "message": w}));
        }
        for n in &c.notes {
            lines.push(format!("note:      {n}"));
        }
        for p in &c.problems {
            lines.push(format!(
                "PROBLEM:   {}{}: {}",
                p.file.display(),
                p.setting.as_deref().map_or(String::new(), |s| format!(" [{s}]")),
                p.message
            ));
            problems.push(serde_json::json!({"file": p.file, "setting": p.setting, "message": p.message}));
        }
        for t in &templates {
            let attr = |n: &str| t.attribute(n).map_or("?".to_string(), |a| a.value.clone());
            lines.push(format!(
                "template:  {} (maxNumber {}, available {}, ncpus {}, nram {} MB)",
                t.id,
                t.max_number,
                t.available_number.map_or("?".to_string(), |n| n.to_string()),
                attr("ncpus"),
                attr("nram")
            ));
        }
        Ok(CheckReport {
            lines,
            notes: c.notes.clone(),
            problems,
            templates: crate::hf::output::templates(&templates)["templates"].take(),
        })
    }

    /// Every machine the store holds under a provision request, with its provider; only
    /// live ones (not terminated or failed) unless `all`. Read from the store alone: no guest
    /// is loaded and no cloud is called.
    pub fn machines(&self, all: bool) -> Result<Vec<MachineLine>, HfError> {
        Ok(self.machine_lines(&self.open_store()?.export()?, all))
    }

    /// [`Plugin::machines`] of an exported store.
    fn machine_lines(&self, doc: &crate::store::Document, all: bool) -> Vec<MachineLine> {
        let routes = doc.kv.get(&crate::store::namespaces::routes(&self.dirs.name));
        let makers = routes.map(crate::service::routing::machine_makers).unwrap_or_default();
        let single = self.config.provider.name.clone();
        let mut out = Vec::new();
        for r in doc
            .requests
            .iter()
            .filter(|r| r.kind == crate::store::RequestKind::Provision.as_str())
        {
            for m in &r.machines {
                let ended = matches!(MachineState::parse(&m.state), Some(MachineState::Terminated | MachineState::Failed));
                if ended && !all {
                    continue;
                }
                let provider = match makers.get(&m.machine_id) {
                    Some(p) => p.clone(),
                    None if self.config.members.is_empty() => single.clone(),
                    None => "(unknown)".into(),
                };
                out.push(MachineLine {
                    provider,
                    template: r.template_id.clone().unwrap_or_default(),
                    request: r.id.clone(),
                    state: m.state.clone(),
                    name: m.name.clone(),
                    ip: m.private_ip.clone(),
                    public_ip: m.public_ip.clone(),
                    machine_id: m.machine_id.clone(),
                    launched: m.launch_time,
                });
            }
        }
        out
    }

    /// Every request the store holds (provision and return, the host's own returns
    /// included), oldest first. Read from the store alone.
    pub fn requests(&self) -> Result<Vec<RequestLine>, HfError> {
        let doc = self.open_store()?.export()?;
        Ok(doc
            .requests
            .into_iter()
            .map(|r| RequestLine {
                machines: r.machines.len(),
                id: r.id,
                kind: r.kind,
                template: r.template_id,
                count: r.count,
                status: r.status,
                created: r.created_at,
                updated: r.updated_at,
                message: r.message,
            })
            .collect())
    }

    /// One pass of `hfwasm serve`'s background reconciler, by the replica holding the
    /// store's reconciler lease (`holder` names this replica; the lease lasts `ttl_secs`
    /// unless renewed by the next pass): the sweep getReturnRequests runs (requests a
    /// killed call abandoned, returns nobody polls, the orphan scan on its interval) without
    /// waiting for HostFactory's next poll. `None` when another replica holds the lease;
    /// else how many requests it repaired.
    pub fn reconcile(&self, holder: &str, ttl_secs: u64) -> Result<Option<usize>, HfError> {
        let store = self.open_store()?;
        let lease = crate::service::lease::Lease::new(store.as_ref(), &self.dirs.name, holder, ttl_secs);
        if !lease.acquire(crate::clock::now_secs())? {
            return Ok(None);
        }
        let loader = self.provider_loader(store.clone());
        let mut service = self.service(store.as_ref(), loader);
        let swept = service.sweep()?;
        // Circuits due a trial are probed now rather than spending a HostFactory request.
        let probed = match self.config.breaker {
            Some(_) => service.probe_circuits()?,
            None => Vec::new(),
        };
        for (provider, outcome) in probed {
            match outcome {
                Ok(()) => tracing::info!(%provider, "probe: the provider answers; circuit closed"),
                Err(e) => {
                    tracing::warn!(%provider, error = %e, "probe: the provider still fails; circuit open for another recovery period")
                }
            }
        }
        Ok(Some(swept))
    }

    /// Gives up the reconciler lease if `holder` holds it (a replica stopping cleanly, so
    /// another takes over at once instead of after the lease expires).
    pub fn release_lease(&self, holder: &str) -> Result<(), HfError> {
        let store = self.open_store()?;
        Ok(crate::service::lease::Lease::new(store.as_ref(), &self.dirs.name, holder, 0).release()?)
    }

    /// What `hfwasm serve`'s `/health/ready` checks, one line each: the store answers (its
    /// id is read, a query on a server store) and every provider guest's code is at hand.
    /// The cloud is not called: a probe every few seconds must not cost cloud calls; the
    /// circuit breakers' states (in `/metrics`) say how the providers have been answering.
    pub fn ready(&self) -> Result<Vec<String>, HfError> {
        let store = self.open_store()?;
        let id = crate::store::store_id(store.as_ref())?;
        let mut lines = vec![format!("store: {} (id {id})", self.config.store.describe())];
        for g in std::iter::once(&self.config.provider).chain(self.config.members.iter().map(|m| &m.guest)) {
            Self::bytes_of(g).map_err(|e| HfError::new(ErrorCode::GuestLoadError, format!("provider guest '{}': {e}", g.name)))?;
            lines.push(format!("guest {}: code at hand", g.name));
        }
        Ok(lines)
    }

    /// Gauges of what the store holds, for `/metrics` beside the process's counters:
    /// machines by provider and state, open requests by kind, and each provider's circuit.
    pub fn state_metrics(&self) -> Result<String, HfError> {
        use std::fmt::Write;
        let label = crate::metrics::label;
        let mut out = String::new();
        // One read of the store for every gauge (a scrape comes every few seconds).
        let store = self.open_store()?;
        let doc = store.export()?;
        let mut by: std::collections::BTreeMap<(String, String), u64> = std::collections::BTreeMap::new();
        for m in self.machine_lines(&doc, false) {
            *by.entry((m.provider, m.state)).or_default() += 1;
        }
        crate::metrics::family(
            &mut out,
            "hfwasm_machines",
            "gauge",
            "Live machines the store holds, by provider and state.",
        );
        for ((provider, state), n) in &by {
            let _ = writeln!(
                out,
                "hfwasm_machines{{provider=\"{}\",state=\"{}\"}} {n}",
                label(provider),
                label(state)
            );
        }
        let mut open: std::collections::BTreeMap<&str, u64> = std::collections::BTreeMap::new();
        for r in doc.requests.iter().filter(|r| r.status == "running") {
            *open.entry(r.kind.as_str()).or_default() += 1;
        }
        crate::metrics::family(&mut out, "hfwasm_open_requests", "gauge", "Requests still running, by kind.");
        for (kind, n) in &open {
            let _ = writeln!(out, "hfwasm_open_requests{{kind=\"{}\"}} {n}", label(kind));
        }
        if let Some(policy) = self.config.breaker {
            let now = crate::clock::now_secs();
            crate::metrics::family(
                &mut out,
                "hfwasm_circuit_state",
                "gauge",
                "Each provider's circuit breaker: 1 for its current state.",
            );
            let names: Vec<&str> = if self.config.members.is_empty() {
                vec![self.config.provider.name.as_str()]
            } else {
                self.config.members.iter().map(|m| m.member.name.as_str()).collect()
            };
            for name in names {
                let circuit = crate::service::breaker::Breaker::new(store.as_ref(), &self.dirs.name, name, policy).circuit(now)?;
                for state in ["closed", "half-open", "open"] {
                    let v = u8::from(circuit.as_str() == state);
                    let _ = writeln!(out, "hfwasm_circuit_state{{provider=\"{}\",state=\"{state}\"}} {v}", label(name));
                }
            }
        }
        Ok(out)
    }
}

/// What `hfwasm config check` found: its report lines (text), and the same as data for
/// `--json`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CheckReport {
    /// One line per item checked (`conf dir:  ...`, `guest load: ok`, `PROBLEM:   ...`).
    pub lines: Vec<String>,
    /// How the config is served where its words say otherwise.
    pub notes: Vec<String>,
    /// What is left out and why (`file`, `setting`, `message`; or a `guest` and its warning).
    pub problems: Vec<serde_json::Value>,
    /// The templates HostFactory would be offered, in getAvailableTemplates' format.
    pub templates: serde_json::Value,
}
