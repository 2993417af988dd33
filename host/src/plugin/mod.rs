//! The plugin: wires directories, config, store, guests and policies into one HostFactory
//! call. The admin commands' side (`config check`, `guest precompile`, `replay`,
//! `power-run`) is `admin.rs`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use serde_json::Value;

use crate::capabilities::inventory::Inventory;
use crate::capabilities::power::PowerRunner;
use crate::config::{Config, GuestSource, GuestSpec, PolicySource};
use crate::domain::model::PolicyError;
use crate::domain::model::{AbortKind, CallContext, ProviderError};
use crate::hf::{self, Call, ErrorCode, HfError, ProviderDirs};
use crate::policy::TemplatePolicy;
use crate::policy::placement::PlacementPolicy;
use crate::policy::wasm::{WasmPlacementPolicy, WasmTemplatePolicy};
use crate::runtime::{CacheOutcome, GuestCode, GuestEngine, GuestResources, PrecompiledCache, WasmProvider};
use crate::service::routing::Router;
use crate::service::{LifecycleTimes, Provider, ProviderLoader, Service};
use crate::store::StateStore;
use crate::{builtin, limits};

mod admin;

/// A provider instance ready to answer calls.
pub struct Plugin {
    /// Its directories.
    pub dirs: ProviderDirs,
    /// Its validated config.
    pub config: Config,
    inventory: Option<Arc<Inventory>>,
    /// Leave the call's resources to process exit ([`Plugin::exit_after_call`]).
    exit_after_call: bool,
}

impl Plugin {
    /// Loads config (and the inventory, when the provider guest is granted it).
    pub fn open(dirs: ProviderDirs) -> Result<Self, HfError> {
        let mut plugin = Self::open_config(dirs)?;
        let needs_inventory = std::iter::once(&plugin.config.provider)
            .chain(plugin.config.members.iter().map(|m| &m.guest))
            .flat_map(|g| g.grants.iter())
            .any(|c| matches!(c.short_name(), "inventory" | "power"));
        if needs_inventory {
            let inv = Inventory::load(&plugin.config.inventory_file).map_err(|e| {
                HfError::new(ErrorCode::InventoryError, e.to_string())
                    .with("file", e.file.display().to_string())
                    .with("line", e.line)
            })?;
            plugin.inventory = Some(Arc::new(inv));
        }
        Ok(plugin)
    }

    /// Loads config only, not the inventory: for the store commands, which must work on a
    /// site whose inventory file is broken (to export or check its state while it is fixed).
    pub fn open_config(dirs: ProviderDirs) -> Result<Self, HfError> {
        let config = Config::load(&dirs.conf_dir, &dirs.work_dir, &dirs.name).map_err(|e| {
            let mut err = HfError::new(ErrorCode::ConfigError, e.to_string()).with("file", e.file.display().to_string());
            if let Some(s) = &e.setting {
                err = err.with("setting", s.clone());
            }
            err
        })?;
        Ok(Self {
            dirs,
            config,
            inventory: None,
            exit_after_call: false,
        })
    }

    /// For a process that exits once its one call is answered (the five calls' CLI): the
    /// guest's sandbox, its EC2 client and runtime and the store are not dropped after the
    /// call but left to the exit, which frees them all at once, about half a millisecond
    /// sooner than their destructors (DESIGN.md §8.27). Every write is committed by then;
    /// PostgreSQL takes a connection closed outside a transaction as a normal goodbye.
    /// Never for a process that goes on.
    pub fn exit_after_call(mut self) -> Self {
        self.exit_after_call = true;
        self
    }

    /// Where this call's metrics go after the answer (`monitoring.metrics_endpoint`), with
    /// the provider instance that groups them; None unless `monitoring.enabled`.
    pub fn metrics_push(&self) -> Option<(String, String)> {
        self.config.metrics_push.clone().map(|url| (url, self.dirs.name.clone()))
    }

    /// How long one HostFactory call may take in all: the longest `call_timeout_ms` of the
    /// provider guests plus a quarter of it (5 to 20 s more: loading and compiling a guest
    /// comes first), so that a guest's own deadline, which starts when the guest is called,
    /// answers first when it is the guest that runs long; the default (200 s) answers at
    /// 221 s, inside HostFactory's action timeout.
    pub fn call_deadline(&self) -> std::time::Duration {
        let longest = std::iter::once(&self.config.provider)
            .chain(self.config.members.iter().map(|m| &m.guest))
            .map(|g| g.limits.call_timeout)
            .max()
            .unwrap_or(std::time::Duration::from_secs(200));
        longest
            + (longest / 4).clamp(std::time::Duration::from_secs(5), std::time::Duration::from_secs(20))
            + std::time::Duration::from_secs(1)
    }

    /// Where compiled guests are cached: `HFWASM_CACHE_DIR`, else `<workdir>/.hfwasm-cache`.
    pub fn cache(&self) -> PrecompiledCache {
        let dir = std::env::var_os("HFWASM_CACHE_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| self.dirs.work_dir.join(".hfwasm-cache"));
        PrecompiledCache::new(dir)
    }

    /// Opens the configured state store.
    pub fn open_store(&self) -> Result<Arc<dyn StateStore>, HfError> {
        Ok(Arc::from(crate::store::open(&self.config.store)?))
    }

    fn times(&self) -> LifecycleTimes {
        LifecycleTimes {
            pending_timeout_secs: self.config.pending_timeout_secs,
            abandon_after_secs: self.config.abandon_after_secs,
            retention_secs: self.config.retention.as_secs(),
            orphan_scan_secs: self.config.orphan_scan_secs,
            claim_secs: self.call_deadline().as_secs() + 1,
        }
    }

    /// The provider guest's bytes.
    pub fn guest_bytes(&self) -> Result<std::borrow::Cow<'static, [u8]>, ProviderError> {
        Self::bytes_of(&self.config.provider)
    }

    /// The engine a guest needs: fuel metering and core dumps only where config asks.
    fn engine_for(spec: &GuestSpec) -> wasmtime::Result<GuestEngine> {
        GuestEngine::with_options(spec.limits.fuel.is_some(), spec.coredump_dir.is_some())
    }

    /// A guest's bytes: built in, or read from its file.
    fn bytes_of(spec: &GuestSpec) -> Result<std::borrow::Cow<'static, [u8]>, ProviderError> {
        match &spec.source {
            GuestSource::Builtin(name) => builtin::bytes(name)
                .map(std::borrow::Cow::Borrowed)
                .ok_or_else(|| ProviderError::Aborted {
                    kind: AbortKind::Load,
                    provider: spec.name.clone(),
                    operation: "load".into(),
                    message: format!("guest '{}': no built-in guest {name}", spec.name),
                }),
            GuestSource::File(path) => limits::read_capped_bytes(path, limits::MAX_WASM_BYTES)
                .map(std::borrow::Cow::Owned)
                .map_err(|e| ProviderError::Aborted {
                    kind: AbortKind::Load,
                    provider: spec.name.clone(),
                    operation: "load".into(),
                    message: format!("guest '{}': cannot read {}: {e}", spec.name, path.display()),
                }),
        }
    }

    fn load_provider(&self, store: Arc<dyn StateStore>) -> Result<(WasmProvider, CacheOutcome), ProviderError> {
        let spec = &self.config.provider;
        self.load_guest(spec, &spec.name, self.config.ec2.clone(), store)
    }

    /// Loads provider guest `spec`, its kv in namespace `<instance>/<kv_name>`, with an EC2
    /// client on `ec2` when it has one.
    fn load_guest(
        &self,
        spec: &GuestSpec,
        kv_name: &str,
        ec2: Option<crate::capabilities::ec2::Ec2Settings>,
        store: Arc<dyn StateStore>,
    ) -> Result<(WasmProvider, CacheOutcome), ProviderError> {
        let wasm = Self::bytes_of(spec)?;
        let engine = Self::engine_for(spec).map_err(|e| ProviderError::Aborted {
            kind: AbortKind::Load,
            provider: spec.name.clone(),
            operation: "load".into(),
            message: format!("cannot start the wasm engine: {e:#}"),
        })?;
        let mut lent = crate::capabilities::Lent::default();
        if let Some(inv) = &self.inventory {
            lent.insert(inv.clone());
        }
        lent.insert(self.power_runner());
        lent.insert(crate::capabilities::http::tokens::TokenCacheDir(self.dirs.work_dir.clone()));
        if let Some(s) = ec2 {
            // One client (one connection, one credential cache) for EC2 and Auto Scaling.
            let client = Arc::new(crate::capabilities::ec2::Ec2Client::new(s));
            lent.insert(client.clone() as Arc<dyn crate::capabilities::ec2::Ec2Api>);
            lent.insert(client as Arc<dyn crate::capabilities::autoscaling::AutoscalingApi>);
        }
        let res = GuestResources {
            store,
            namespace: crate::store::namespaces::guest(&self.dirs.name, kv_name),
            owner: self.dirs.name.clone(),
            lent,
        };
        WasmProvider::load(
            &engine,
            &self.cache(),
            GuestCode {
                name: &spec.name,
                wasm: &wasm,
                grants: &spec.grants,
                settings: &spec.settings,
                limits: spec.limits,
                coredump_dir: spec.coredump_dir.as_deref(),
            },
            res,
        )
    }

    /// Loads policy `spec` for one hook: a Rhai script defining `hook` (name, parameters)
    /// wrapped by `script`, or a Wasm guest loaded by `wasm` (its own engine when it meters
    /// fuel).
    fn load_hook<P: ?Sized + 'static>(
        &self,
        spec: &crate::config::PolicySpec,
        hook: (&str, &str),
        script: impl FnOnce(crate::policy::rhai::RhaiPolicy) -> Box<P>,
        wasm: impl FnOnce(&GuestEngine, &PrecompiledCache, GuestCode<'_>, &Value) -> Result<(Box<P>, CacheOutcome), PolicyError>,
    ) -> Result<Box<P>, PolicyError> {
        let g = match &spec.source {
            PolicySource::Guest(g) => g.as_ref(),
            PolicySource::Script { file, limits } => {
                return Ok(script(crate::policy::rhai::RhaiPolicy::load(
                    &spec.name(),
                    file,
                    &spec.settings,
                    *limits,
                    hook,
                )?));
            }
        };
        let err = |message: String| PolicyError {
            policy: g.name.clone(),
            message,
        };
        let bytes = Self::bytes_of(g).map_err(|e| err(e.to_string()))?;
        let engine = Self::engine_for(g).map_err(|e| err(format!("cannot start the wasm engine: {e:#}")))?;
        let code = GuestCode {
            name: &g.name,
            wasm: &bytes,
            grants: &[],
            settings: &g.settings,
            limits: g.limits,
            coredump_dir: g.coredump_dir.as_deref(),
        };
        let (policy, outcome) = wasm(&engine, &self.cache(), code, &spec.settings)?;
        if outcome == CacheOutcome::Compiled {
            tracing::info!(policy = %g.name, "policy guest compiled into the cache (first use after a change)");
        }
        Ok(policy)
    }

    /// Loads the configured template policy.
    fn load_policy(&self, spec: &crate::config::PolicySpec) -> Result<Box<dyn TemplatePolicy>, PolicyError> {
        self.load_hook(
            spec,
            ("offer_templates", "ctx, templates"),
            |s| Box::new(s) as Box<dyn TemplatePolicy>,
            |engine, cache, code, settings| {
                WasmTemplatePolicy::load(engine, cache, code, settings).map(|(p, o)| (Box::new(p) as Box<dyn TemplatePolicy>, o))
            },
        )
    }

    /// Loads the placement policy (several providers).
    fn load_placement(&self, spec: &crate::config::PolicySpec) -> Result<Box<dyn PlacementPolicy>, PolicyError> {
        self.load_hook(
            spec,
            ("choose_providers", "ctx, request, candidates"),
            |s| Box::new(s) as Box<dyn PlacementPolicy>,
            |engine, cache, code, settings| {
                WasmPlacementPolicy::load(engine, cache, code, settings).map(|(p, o)| (Box::new(p) as Box<dyn PlacementPolicy>, o))
            },
        )
    }

    /// The provider of one call: the configured guest, or with several providers a router
    /// over them (each loaded on first use, each with its own breaker).
    fn provider_loader<'s>(&'s self, store: Arc<dyn StateStore>) -> ProviderLoader<'s> {
        if self.config.members.is_empty() {
            return Box::new(move || {
                let (p, outcome) = self.load_provider(store)?;
                if outcome == CacheOutcome::Compiled {
                    tracing::info!(guest = %self.config.provider.name, "guest compiled into the cache (first use after a change)");
                }
                Ok(Box::new(p) as Box<dyn Provider>)
            });
        }
        Box::new(move || {
            let members = self
                .config
                .members
                .iter()
                .map(|m| {
                    let info = m.member.clone();
                    let store = store.clone();
                    let loader: ProviderLoader<'s> = Box::new(move || {
                        let (p, _) = self.load_guest(&m.guest, &m.member.name, m.ec2.clone(), store)?;
                        Ok(Box::new(p) as Box<dyn Provider>)
                    });
                    (info, loader)
                })
                .collect();
            let mut router = Router::new(store, &self.dirs.name, members);
            if let Some(b) = self.config.breaker {
                router = router.with_breakers(b);
            }
            if let Some(spec) = &self.config.placement {
                router = router.with_placement(Box::new(move || self.load_placement(spec)), spec.on_error);
                if let Some(shadow) = spec.shadow.as_deref() {
                    router = router.with_shadow(Box::new(move || self.load_placement(shadow)));
                }
                if let Some(keep) = self.config.recording {
                    router = router.with_recording(keep, &spec.name(), spec.settings.clone());
                }
            }
            Ok(Box::new(router) as Box<dyn Provider>)
        })
    }

    /// A service for one call: the provider loaded on first use, the template policy too.
    fn service<'s>(&'s self, store: &'s dyn StateStore, loader: ProviderLoader<'s>) -> Service<'s> {
        let mut service = Service::new(store, loader, self.context(), self.times());
        if let Some(keep) = self.config.recording {
            service = service.with_recording(keep);
        }
        // With several providers, each has its own breaker inside the router.
        if let (Some(b), true) = (self.config.breaker, self.config.members.is_empty()) {
            service = service.with_breaker(&self.config.provider.name, b);
        }
        match &self.config.policy {
            Some(spec) => {
                let service = service.with_template_policy(Box::new(move || self.load_policy(spec)), spec.on_error);
                match spec.shadow.as_deref() {
                    Some(shadow) => service.with_shadow_policy(Box::new(move || self.load_policy(shadow))),
                    None => service,
                }
            }
            None => service,
        }
    }

    /// How the power capability starts `hfwasm power-run`: this binary, with this call's dirs.
    fn power_runner(&self) -> PowerRunner {
        let mut dir_args: Vec<std::ffi::OsString> = vec!["--confdir".into(), self.dirs.conf_dir.clone().into()];
        dir_args.extend(["--workdir".into(), self.dirs.work_dir.clone().into()]);
        if let Some(l) = &self.dirs.log_dir {
            dir_args.extend(["--logdir".into(), l.clone().into()]);
        }
        PowerRunner {
            exe: std::env::current_exe().unwrap_or_else(|_| PathBuf::from("hfwasm")),
            dir_args,
            log_dir: self.dirs.work_dir.join("power"),
            instance: self.dirs.name.clone(),
        }
    }

    fn context(&self) -> CallContext {
        CallContext {
            provider_instance: self.dirs.name.clone(),
            settings: self.config.settings.clone(),
            now: crate::clock::now_secs(),
        }
    }

    /// Runs one HostFactory call on the input file and returns the JSON answer.
    pub fn run_call(&self, call: Call, input: &Path) -> Result<hf::output::Answer, HfError> {
        let t0 = Instant::now();
        let result = hf::input::read_object(call, input).and_then(|obj| self.run_object(call, obj));
        Self::count(call, &result, t0);
        result
    }

    /// Runs one HostFactory call on its input as a JSON object (`hfwasm serve` reads it from
    /// a request body) and returns the JSON answer.
    pub fn run_input(&self, call: Call, input: &[u8]) -> Result<hf::output::Answer, HfError> {
        let t0 = Instant::now();
        let result = hf::input::parse_object(call, input, "request body").and_then(|obj| self.run_object(call, obj));
        Self::count(call, &result, t0);
        result
    }

    /// Counts a call for `/metrics`: its outcome (`ok` or the error code) and wall time.
    fn count(call: Call, result: &Result<hf::output::Answer, HfError>, t0: Instant) {
        let outcome = match result {
            Ok(_) => "ok",
            Err(e) => e.code.as_str(),
        };
        crate::metrics::call(call.name(), outcome, t0.elapsed().as_secs_f64());
    }

    fn run_object(&self, call: Call, obj: serde_json::Map<String, Value>) -> Result<hf::output::Answer, HfError> {
        let span = tracing::info_span!("hf_call", call = call.name(), instance = %self.dirs.name);
        let _enter = span.enter();
        let t0 = Instant::now();
        for n in &self.config.notes {
            tracing::info!("{n}");
        }
        for p in &self.config.problems {
            tracing::warn!(file = %p.file.display(), setting = p.setting.as_deref().unwrap_or(""), "left out: {}", p.message);
        }
        let store = self.open_store()?;
        // The JSON tree goes before the work starts unless the call is to be recorded.
        let input = hf::input::call_input(call, &obj);
        let obj = self.config.recording.map(|_| obj);
        let result = input.and_then(|input| self.answer(input, &store));
        if let (Some(keep), Some(obj)) = (self.config.recording, obj) {
            let output = match &result {
                Ok(hf::output::Answer::Doc(v)) => v.clone(),
                Ok(hf::output::Answer::Status(r)) => hf::output::request_status(r),
                Err(e) => e.to_envelope(),
            };
            crate::recording::record_call(
                store.as_ref(),
                &self.dirs.name,
                keep,
                crate::clock::now_secs(),
                call,
                &Value::Object(obj),
                &output,
            );
        }
        tracing::info!(elapsed_us = t0.elapsed().as_micros() as u64, "call done");
        if self.exit_after_call {
            std::mem::forget(store);
        }
        result
    }

    /// The answer to a call with `input`.
    fn answer(&self, input: hf::input::CallInput, store: &Arc<dyn StateStore>) -> Result<hf::output::Answer, HfError> {
        use hf::input::CallInput;
        let loader = self.provider_loader(store.clone());
        let mut service = self.service(store.as_ref(), loader);
        let answer = match input {
            CallInput::Templates => hf::output::templates(&service.get_available_templates()?),
            CallInput::RequestMachines(input) => {
                let (id, message) = service.request_machines(&input.template_id, input.machine_count, input.rc_account)?;
                serde_json::to_value(hf::output::RequestAccepted {
                    request_id: &id,
                    message: &message,
                })
                .map_err(|e| HfError::new(ErrorCode::Internal, e.to_string()))?
            }
            CallInput::ReturnMachines(input) => {
                let machines = match input {
                    hf::input::ReturnInput::Machines(m) => m,
                    hf::input::ReturnInput::Request(id) => service.machines_of_request(&id)?,
                };
                let (id, message) = service.request_return_machines(machines)?;
                serde_json::to_value(hf::output::RequestAccepted {
                    request_id: &id,
                    message: &message,
                })
                .map_err(|e| HfError::new(ErrorCode::Internal, e.to_string()))?
            }
            CallInput::RequestStatus(ids) => {
                let reports = service.get_request_status(&ids)?;
                if self.exit_after_call {
                    std::mem::forget(service);
                }
                return Ok(hf::output::Answer::Status(reports));
            }
            CallInput::ReturnRequests(hosts) => hf::output::return_requests(&service.get_return_requests(&hosts)?),
        };
        if self.exit_after_call {
            std::mem::forget(service);
        }
        Ok(hf::output::Answer::Doc(answer))
    }
}
