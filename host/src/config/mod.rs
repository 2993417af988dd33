//! hfwasm's configuration: `hfwasm.json` in the provider conf dir, or the embedded defaults
//! (the on-prem pool guest over `inventory.txt`) when there is none. Strict: an unknown
//! key is an error naming the key's path and the file.

pub mod ibm_aws;
pub mod orb;
pub mod seed;
pub mod storage;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::capabilities::ec2::{Ec2Grant, Ec2Settings};
use crate::capabilities::{Capability, Settings};
use crate::limits::{GuestLimits, LimitOverrides};
use crate::store::StoreSpec;

/// File name of hfwasm's own config inside the provider conf dir.
/// Config file names hfwasm looks for in the conf dir (at most one may exist): its own
/// JSON, or the same keys in YAML, including the seed's `config.yml`. `CONFIG_PATH` (the
/// seed's HostProvider parameter) names one anywhere instead.
pub const CONFIG_FILES: [&str; 5] = ["hfwasm.json", "hfwasm.yaml", "hfwasm.yml", "config.yml", "config.json"];
pub const CONFIG_FILE: &str = "hfwasm.json";

use crate::builtin::{BUILTIN_AWS, BUILTIN_DEFAULT_POLICY, BUILTIN_ONPREM};

/// A config problem: the file, the setting and what is wrong.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}: {message}", file.display())]
pub struct ConfigError {
    /// The config file (or conf dir).
    pub file: PathBuf,
    /// The setting's path (`guests.onprem.limits.memory_mib`), when known.
    pub setting: Option<String>,
    /// What is wrong and how to fix it.
    pub message: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    /// The seed's format version (`2.0.0`).
    version: Option<String>,
    #[serde(default)]
    provider: RawProvider,
    #[serde(default)]
    guests: BTreeMap<String, RawGuest>,
    #[serde(default)]
    inventory: RawInventory,
    #[serde(default)]
    storage: storage::RawStorage,
    #[serde(default)]
    logging: RawLogging,
    aws: Option<RawAws>,
    /// Seed 001's templates (YAML, snake_case), when no IBM templates file is used.
    templates: Option<Vec<serde_json::Value>>,
    /// Seed 001's region and templates in IBM's format, standing in for IBM's files.
    #[serde(skip)]
    inline_aws: Option<InlineAws>,
    /// Seed 001's `monitoring`: refused with the reason.
    monitoring: Option<serde_json::Value>,
    /// Seed 001's `caching`: refused with the reason.
    caching: Option<serde_json::Value>,
    /// ORB's `scheduler` (`type`, `config_root`): checked against what hfwasm is.
    scheduler: Option<RawScheduler>,
    /// ORB's `server` (its REST API): refused with the reason.
    server: Option<serde_json::Value>,
    policy: Option<RawPolicy>,
    /// Which of several providers serves a request; the same shape as `policy`.
    placement: Option<RawPolicy>,
    recording: Option<RawRecording>,
}

/// ORB's `scheduler`: which protocol the broker speaks and where its conf dir is.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScheduler {
    #[serde(rename = "type")]
    kind: Option<String>,
    config_root: Option<String>,
}

/// AWS templates that do not come with IBM's config file (seed 001's YAML, ORB's
/// templates file): the region from the seed's provider, and where the templates came from.
#[derive(Debug, Clone)]
struct InlineAws {
    region: String,
    templates: serde_json::Value,
    /// The file the templates were read from (ORB's), else the config file.
    from: Option<PathBuf>,
}

/// `recording`: keep calls (input and answer) and policy decisions for `hfwasm replay`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRecording {
    enabled: Option<bool>,
    keep: Option<usize>,
}

/// Default for `recording.keep`: decisions kept in the store.
pub const DEFAULT_RECORDING_KEEP: usize = 10_000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    guest: Option<String>,
    script: Option<PathBuf>,
    settings: Option<serde_json::Value>,
    on_error: Option<String>,
    limits: Option<crate::policy::rhai::ScriptLimits>,
    shadow: Option<RawShadow>,
}

/// `policy.shadow`: a candidate policy run beside the live one, never acted on.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawShadow {
    guest: Option<String>,
    script: Option<PathBuf>,
    settings: Option<serde_json::Value>,
    limits: Option<crate::policy::rhai::ScriptLimits>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAws {
    config_file: PathBuf,
    templates_file: PathBuf,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProvider {
    /// Seed 001's single-provider form: `type` with its `aws` section.
    #[serde(rename = "type")]
    kind: Option<String>,
    aws: Option<serde_json::Map<String, serde_json::Value>>,
    guest: Option<String>,
    settings: Option<serde_json::Value>,
    pending_timeout_secs: Option<u64>,
    abandon_after_secs: Option<u64>,
    orphan_scan_secs: Option<u64>,
    circuit_breaker: Option<RawBreaker>,
    active_provider: Option<String>,
    selection_policy: Option<String>,
    health_check_interval: Option<u64>,
    providers: Option<Vec<seed::RawSeedProvider>>,
    /// ORB's `provider_defaults` (`aws.template_defaults` fills ORB's templates).
    provider_defaults: Option<serde_json::Value>,
    /// ORB's `default_provider_type`: must name the type of the providers given.
    default_provider_type: Option<String>,
}

/// The seed's `provider.circuit_breaker`, under its own key names.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBreaker {
    enabled: Option<bool>,
    failure_threshold: Option<u32>,
    recovery_timeout: Option<u64>,
}

/// A guest entry. Its other keys are capability settings (`ec2`), each checked by its
/// capability; serde cannot deny unknown keys beside a flattened map, so `build` does.
#[derive(Debug, Deserialize)]
struct RawGuest {
    wasm: String,
    #[serde(default)]
    grants: Vec<String>,
    #[serde(default)]
    limits: LimitOverrides,
    coredump_dir: Option<PathBuf>,
    #[serde(flatten)]
    settings: BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInventory {
    file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLogging {
    level: Option<String>,
    file_path: Option<PathBuf>,
    max_size: Option<serde_json::Value>,
    backup_count: Option<u32>,
    /// Seed 001's `console_enabled`: refused with the reason.
    console_enabled: Option<bool>,
}

/// Where hfwasm's own log goes and how it is rotated (`logging`, the seed's keys).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSpec {
    /// `logging.file_path` (relative paths are relative to the work dir); none = the
    /// provider's log dir (`HF_PROVIDER_LOGDIR`), else stderr.
    pub file: Option<PathBuf>,
    /// Rotate when the file is larger than this (`logging.max_size`, MiB or "100MB").
    pub max_bytes: u64,
    /// Rotated files kept (`logging.backup_count`).
    pub keep: u32,
}

/// `logging.max_size`: a number of MiB, or text with a unit (`"100MB"`, `"512KB"`, `"1GB"`).
fn size_bytes(v: &serde_json::Value) -> Option<u64> {
    if let Some(n) = v.as_u64() {
        return n.checked_mul(1 << 20);
    }
    let t = v.as_str()?.trim().to_ascii_uppercase();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(split);
    let n: u64 = n.parse().ok()?;
    let mult: u64 = match unit.trim() {
        "" | "M" | "MB" | "MIB" => 1 << 20,
        "K" | "KB" | "KIB" => 1 << 10,
        "G" | "GB" | "GIB" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(mult)
}

/// Where a guest's code comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuestSource {
    /// Built into the binary (`builtin:onprem`).
    Builtin(&'static str),
    /// A `.wasm` file (relative paths are relative to the conf dir).
    File(PathBuf),
}

/// One configured guest: code, grants and limits.
#[derive(Debug, Clone)]
pub struct GuestSpec {
    /// Name used in logs and errors.
    pub name: String,
    /// Where its code comes from.
    pub source: GuestSource,
    /// Capabilities it may import.
    pub grants: Vec<Capability>,
    /// Limits on its calls.
    pub limits: GuestLimits,
    /// Settings of its capabilities (`guests.<name>.ec2`: what it may do with EC2).
    pub settings: Settings,
    /// Where core dumps of its traps are written (`coredump_dir`, relative to the work
    /// dir); none = no dumps.
    pub coredump_dir: Option<PathBuf>,
}

impl GuestSpec {
    /// Built-in guest `source` under the name `name`, with the grants it is built for
    /// (its WIT imports), default limits and no capability settings.
    pub fn builtin(name: &str, source: &'static str) -> Self {
        let grants: &[&str] = match source {
            BUILTIN_ONPREM => &["log", "kv", "inventory", "power"],
            BUILTIN_AWS => &["log", "kv", "ec2"],
            _ => &[],
        };
        Self {
            name: name.to_string(),
            source: GuestSource::Builtin(source),
            grants: grants.iter().map(|g| Capability::named(g)).collect(),
            limits: GuestLimits::default(),
            settings: Settings::new(),
            coredump_dir: None,
        }
    }

    /// The same guest with `grant` as its EC2 grant.
    pub fn with_ec2(mut self, grant: &Ec2Grant) -> Self {
        self.settings.insert("ec2".into(), grant.to_settings());
        self
    }
}

/// Where a policy's decisions come from.
#[derive(Debug, Clone)]
pub enum PolicySource {
    /// A Wasm guest of the template-selector world (granted nothing: it imports only
    /// sandboxed WASI).
    Guest(Box<GuestSpec>),
    /// A Rhai script (`policy.script`, relative to the conf dir) under `policy.limits`.
    Script {
        /// The script file.
        file: PathBuf,
        /// Its limits.
        limits: crate::policy::rhai::ScriptLimits,
    },
}

/// The site's template policy (`policy`): what decides what HostFactory is offered.
#[derive(Debug, Clone)]
pub struct PolicySpec {
    /// A Wasm guest or a Rhai script.
    pub source: PolicySource,
    /// Settings handed to the policy (a JSON object).
    pub settings: serde_json::Value,
    /// What a policy failure does to the call.
    pub on_error: crate::policy::OnError,
    /// A candidate policy run beside this one on every call (`policy.shadow`): its
    /// decisions and the differences are logged and stored, never acted on.
    pub shadow: Option<Box<PolicySpec>>,
}

impl PolicySpec {
    /// The policy's name in logs and errors: the guest's, or the script's file name.
    pub fn name(&self) -> String {
        match &self.source {
            PolicySource::Guest(g) => g.name.clone(),
            PolicySource::Script { file, .. } => file
                .file_name()
                .map_or_else(|| "script".into(), |n| n.to_string_lossy().into_owned()),
        }
    }

    /// The policy guest, when the policy is one.
    pub fn guest(&self) -> Option<&GuestSpec> {
        match &self.source {
            PolicySource::Guest(g) => Some(g.as_ref()),
            PolicySource::Script { .. } => None,
        }
    }
}

/// The validated configuration of one provider instance.
#[derive(Debug, Clone)]
pub struct Config {
    /// File it came from, or None for the embedded defaults.
    pub file: Option<PathBuf>,
    /// The provider guest.
    pub provider: GuestSpec,
    /// Settings handed to the provider guest (a JSON object).
    pub settings: serde_json::Value,
    /// The template policy, when one is configured.
    pub policy: Option<PolicySpec>,
    /// The provider's circuit breaker (`provider.circuit_breaker`), when enabled.
    pub breaker: Option<crate::service::breaker::BreakerPolicy>,
    /// Machines still pending after this many seconds are failed by the host.
    pub pending_timeout_secs: u64,
    /// Requests recorded but never answered (a crashed call) are abandoned after this many
    /// seconds and their machines released (IBM/LSF `INSTANCE_CREATION_TIMEOUT`).
    pub abandon_after_secs: u64,
    /// How often the sweep looks for machines no record accounts for (`provider.orphan_scan_secs`,
    /// default 600; 0 = never).
    pub orphan_scan_secs: u64,
    /// Inventory file for the on-prem guest.
    pub inventory_file: PathBuf,
    /// Where state lives (`storage`).
    pub store: StoreSpec,
    /// Finished requests older than this are pruned (`storage.retention_hours`).
    pub retention: std::time::Duration,
    /// Log level (`error`..`trace`).
    pub log_level: String,
    /// Log file and rotation.
    pub log: LogSpec,
    /// EC2 client settings, when an AWS provider is configured.
    pub ec2: Option<Ec2Settings>,
    /// Where the AWS settings came from (IBM's config and templates files).
    pub aws_files: Option<(PathBuf, PathBuf)>,
    /// Several providers behind this instance (the seed's `providers[]` with more than one
    /// enabled), in config order; empty when `provider` alone serves.
    pub members: Vec<MemberSpec>,
    /// With several providers: what decides which serves a request (`placement`, default
    /// the built-in selection policies).
    pub placement: Option<PolicySpec>,
    /// Calls and policy decisions (placement, template offers) kept for `hfwasm replay`
    /// (`recording.keep` of each kind), when recording.
    pub recording: Option<usize>,
    /// Problems that leave something out rather than stop the call (a bad template among
    /// good ones): logged on every call, listed by `hfwasm config check`.
    pub problems: Vec<ConfigError>,
}

/// One of several providers behind one provider instance.
#[derive(Debug, Clone)]
pub struct MemberSpec {
    /// `providers[].name`.
    pub name: String,
    /// `providers[].type`.
    pub kind: String,
    /// Lower first (`active_provider` counts as 0).
    pub priority: u32,
    /// Share under WEIGHTED.
    pub weight: u32,
    /// Most per host-hour, for COST_OPTIMIZED.
    pub cost_threshold: Option<f64>,
    /// Its guest instance (named after it: its own kv namespace and logs).
    pub guest: GuestSpec,
    /// Settings handed to its guest.
    pub settings: serde_json::Value,
    /// Its EC2 client settings (aws).
    pub ec2: Option<Ec2Settings>,
    /// IBM's files it was read from (aws).
    pub aws_files: Option<(PathBuf, PathBuf)>,
}

/// Default for `provider.circuit_breaker.failure_threshold`.
pub const DEFAULT_BREAKER_THRESHOLD: u32 = 5;
/// Default for `provider.circuit_breaker.recovery_timeout`, seconds.
pub const DEFAULT_BREAKER_RECOVERY_SECS: u64 = 60;

/// Default for `provider.pending_timeout_secs`: 30 minutes, generous for power-on scripts.
pub const DEFAULT_PENDING_TIMEOUT_SECS: u64 = 1800;

const LOG_LEVELS: [&str; 5] = ["error", "warn", "info", "debug", "trace"];

impl Config {
    /// Loads the config file ([`CONFIG_FILES`], or `CONFIG_PATH`); without one, IBM's `<instance>prov_config.json` and
    /// `<instance>prov_templates.json` (or LSF's `awsprov_*`) select the built-in AWS guest,
    /// and without those the embedded defaults (the on-prem pool) apply.
    pub fn load(conf_dir: &Path, work_dir: &Path, instance: &str) -> Result<Self, ConfigError> {
        let found = find_file(conf_dir, |k| std::env::var(k).ok())?;
        let file = found.clone().unwrap_or_else(|| conf_dir.join(CONFIG_FILE));
        let raw = match &found {
            Some(f) => Some(parse_file(f)?),
            None => None,
        };
        let from_file = raw.is_some();
        let mut raw = raw.unwrap_or_default();
        seed_single(&mut raw, &file, conf_dir, instance)?;
        if !from_file && let Some((config_file, templates_file)) = ibm_aws::find(conf_dir, instance) {
            raw.aws = Some(RawAws {
                config_file,
                templates_file,
            });
        }
        if !from_file && raw.aws.is_none() && raw.inline_aws.is_none() && !conf_dir.join("inventory.txt").exists() {
            unread_files(conf_dir, instance)?;
        }
        if let Some(v) = raw.version.as_deref()
            && !v.starts_with("2.")
        {
            return Err(ConfigError {
                file: file.clone(),
                setting: Some("version".into()),
                message: format!("`version`: `{v}`: this reader knows the seed's 2.x format"),
            });
        }
        let seed: Vec<seed::SeedProvider> = match &raw.provider.providers {
            None => Vec::new(),
            Some(list) => {
                let err = |setting: &str, message: String| ConfigError {
                    file: file.clone(),
                    setting: Some(setting.to_string()),
                    message: format!("`{setting}`: {message}"),
                };
                let chosen = seed::select(
                    raw.provider.active_provider.as_deref(),
                    raw.provider.selection_policy.as_deref(),
                    raw.provider.health_check_interval,
                    list,
                    err,
                )?;
                if raw.provider.guest.is_some() {
                    return Err(ConfigError {
                        file: file.clone(),
                        setting: Some("provider.guest".into()),
                        message: "`provider.guest` and `provider.providers` both choose the provider; keep one".into(),
                    });
                }
                // The first by priority is the base: its IBM files give the lifecycle
                // timeouts and the log level.
                let mut by_priority: Vec<&seed::SeedProvider> = chosen.iter().collect();
                by_priority.sort_by_key(|p| p.priority);
                let first = by_priority[0];
                match &first.kind {
                    seed::SeedKind::Aws { files, region, .. } => {
                        if raw.aws.is_none() && raw.inline_aws.is_none() {
                            let defaults = orb_defaults(&raw.provider);
                            match seed_aws_source(conf_dir, instance, &first.name, files, region.as_deref(), defaults, &file)? {
                                AwsSource::Ibm(config_file, templates_file) => {
                                    raw.aws = Some(RawAws {
                                        config_file,
                                        templates_file,
                                    })
                                }
                                AwsSource::Inline(i) => raw.inline_aws = Some(i),
                            }
                        }
                        raw.provider.guest = Some("aws".into());
                    }
                    seed::SeedKind::Onprem => raw.provider.guest = Some("onprem".into()),
                }
                chosen
            }
        };
        if seed.is_empty()
            && let Some(k) = [
                ("provider.active_provider", raw.provider.active_provider.is_some()),
                ("provider.selection_policy", raw.provider.selection_policy.is_some()),
                ("provider.health_check_interval", raw.provider.health_check_interval.is_some()),
            ]
            .into_iter()
            .find_map(|(k, set)| set.then_some(k))
        {
            return Err(ConfigError {
                file: file.clone(),
                setting: Some(k.into()),
                message: format!("`{k}` needs `provider.providers` (the seed's provider list)"),
            });
        }
        if raw.placement.is_some() && seed.len() < 2 {
            return Err(ConfigError {
                file: file.clone(),
                setting: Some("placement".into()),
                message: "`placement` chooses among several providers: it needs two or more enabled in `provider.providers`".into(),
            });
        }
        let recording = match &raw.recording {
            Some(r) if r.enabled.unwrap_or(true) => match r.keep.unwrap_or(DEFAULT_RECORDING_KEEP) {
                0 => {
                    return Err(ConfigError {
                        file: file.clone(),
                        setting: Some("recording.keep".into()),
                        message: "`recording.keep`: must be at least 1 (or set `enabled: false`)".into(),
                    });
                }
                n => Some(n),
            },
            _ => None,
        };
        let selection_policy = raw.provider.selection_policy.clone();
        let member_defaults = orb_defaults(&raw.provider);
        let mut config = Self::build(raw, from_file.then_some(file.clone()), conf_dir, work_dir)?;
        if let [one] = seed.as_slice() {
            if let (seed::SeedKind::Aws { .. }, Some(ec2)) = (&one.kind, config.ec2.as_mut()) {
                let mut grant = Ec2Grant::from_settings(config.provider.settings.get("ec2")).unwrap_or_default();
                apply_seed_aws(&one.kind, ec2, &mut grant);
                config.provider = config.provider.clone().with_ec2(&grant);
            }
        } else if seed.len() > 1 {
            let (members, problems) = seed_members(&config, &seed, conf_dir, instance, &file, member_defaults)?;
            config.members = members;
            config.problems.extend(problems);
            for m in &mut config.members {
                if let Some(ec2) = &mut m.ec2 {
                    ec2.credential_cache_dir = Some(work_dir.to_path_buf());
                }
            }
            let mut placement = config.placement.take().unwrap_or_else(default_placement);
            if let (Some(sp), Some(obj)) = (selection_policy, placement.settings.as_object_mut()) {
                obj.entry("selection_policy").or_insert(serde_json::Value::String(sp));
            }
            config.placement = Some(placement);
        }
        config.recording = recording;
        Ok(config)
    }

    fn build(mut raw: RawConfig, file: Option<PathBuf>, conf_dir: &Path, work_dir: &Path) -> Result<Self, ConfigError> {
        let where_ = file.clone().unwrap_or_else(|| conf_dir.to_path_buf());
        let err = |setting: &str, message: String| ConfigError {
            file: where_.clone(),
            setting: Some(setting.to_string()),
            message: format!("`{setting}`: {message}"),
        };
        let mut guests = BTreeMap::new();
        guests.insert("onprem".to_string(), GuestSpec::builtin("onprem", BUILTIN_ONPREM));
        let aws = match (&raw.aws, raw.inline_aws.take()) {
            (Some(a), _) => Some(ibm_aws::load(
                &conf_dir.join(&a.config_file),
                &conf_dir.join(&a.templates_file),
                |k| std::env::var(k).ok(),
            )?),
            // Seed 001's YAML or ORB's templates file: its region and templates; the endpoint
            // from the environment, credentials from the standard chain (the profile is
            // applied later).
            (None, Some(inline)) => Some(load_aws_source(AwsSource::Inline(inline), conf_dir, &where_)?),
            (None, None) => None,
        };
        if let Some(a) = &aws {
            guests.insert("aws".to_string(), GuestSpec::builtin("aws", BUILTIN_AWS).with_ec2(&a.grant));
        }
        for (name, g) in raw.guests {
            let at = format!("guests.{name}");
            let builtin = [BUILTIN_ONPREM, BUILTIN_AWS, BUILTIN_DEFAULT_POLICY]
                .into_iter()
                .find(|b| *b == g.wasm);
            let source = if let Some(b) = builtin {
                GuestSource::Builtin(b)
            } else if let Some(other) = g.wasm.strip_prefix("builtin:") {
                return Err(err(
                    &format!("{at}.wasm"),
                    format!("unknown built-in guest `{other}`; built in: {BUILTIN_ONPREM}, {BUILTIN_AWS}, {BUILTIN_DEFAULT_POLICY}"),
                ));
            } else {
                GuestSource::File(conf_dir.join(&g.wasm))
            };
            let mut grants = Vec::new();
            for (i, gname) in g.grants.iter().enumerate() {
                let cap = Capability::parse(gname).ok_or_else(|| {
                    err(
                        &format!("{at}.grants[{i}]"),
                        format!("unknown capability `{gname}`; known: {}", Capability::known()),
                    )
                })?;
                if !grants.contains(&cap) {
                    grants.push(cap);
                }
            }
            let limits = GuestLimits::from_overrides(&g.limits).map_err(|m| err(&format!("{at}.limits"), m))?;
            let mut settings = Settings::new();
            for (key, value) in g.settings {
                let check = Capability::parse(&key).and_then(|c| c.unit().check_settings);
                let Some(check) = check else {
                    return Err(err(
                        &format!("{at}.{key}"),
                        format!(
                            "unknown key; a guest has wasm, grants, limits, coredump_dir and the settings of a capability that takes them ({})",
                            Capability::all()
                                .filter(|c| c.unit().check_settings.is_some())
                                .map(|c| c.short_name())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    ));
                };
                check(&value).map_err(|m| err(&format!("{at}.{key}"), m))?;
                settings.insert(key, value);
            }
            if let (false, Some(a)) = (settings.contains_key("ec2"), &aws) {
                // Without its own grant a guest gets the one IBM's templates imply.
                settings.insert("ec2".into(), a.grant.to_settings());
            }
            guests.insert(
                name.clone(),
                GuestSpec {
                    name,
                    source,
                    grants,
                    limits,
                    settings,
                    coredump_dir: g.coredump_dir.map(|d| work_dir.join(d)),
                },
            );
        }
        let guest_name = raw
            .provider
            .guest
            .unwrap_or_else(|| if aws.is_some() { "aws".into() } else { "onprem".into() });
        let provider = guests.get(&guest_name).cloned().ok_or_else(|| {
            err(
                "provider.guest",
                format!(
                    "no guest named `{guest_name}`; define it under `guests` (known: {})",
                    guests.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            )
        })?;
        let policy = match raw.policy {
            None => None,
            Some(p) => Some(policy_spec("policy", p, &mut guests, &guest_name, conf_dir, &err)?),
        };
        let placement = match raw.placement {
            None => None,
            Some(p) => Some(policy_spec("placement", p, &mut guests, &guest_name, conf_dir, &err)?),
        };
        let breaker = match raw.provider.circuit_breaker {
            Some(b) if b.enabled.unwrap_or(true) => {
                let failure_threshold = b.failure_threshold.unwrap_or(DEFAULT_BREAKER_THRESHOLD);
                if failure_threshold == 0 {
                    return Err(err("provider.circuit_breaker.failure_threshold", "must be at least 1".into()));
                }
                let recovery_secs = b.recovery_timeout.unwrap_or(DEFAULT_BREAKER_RECOVERY_SECS);
                if recovery_secs == 0 {
                    return Err(err(
                        "provider.circuit_breaker.recovery_timeout",
                        "must be at least 1 (seconds the circuit stays open)".into(),
                    ));
                }
                Some(crate::service::breaker::BreakerPolicy {
                    failure_threshold,
                    recovery_secs,
                })
            }
            _ => None,
        };
        let mut settings = raw.provider.settings.unwrap_or_else(|| serde_json::json!({}));
        if let (Some(a), Some(obj)) = (&aws, settings.as_object_mut()) {
            // The AWS guest's inputs: IBM's templates and the reclaim policy.
            obj.entry("templates").or_insert_with(|| a.templates.clone());
            obj.entry("spot_terminate_on_reclaim")
                .or_insert(serde_json::Value::Bool(a.spot_terminate_on_reclaim));
        }
        if !settings.is_object() {
            return Err(err("provider.settings", "must be a JSON object".into()));
        }
        let pending_timeout_secs = raw
            .provider
            .pending_timeout_secs
            .or(aws.as_ref().map(|a| a.pending_timeout_secs))
            .unwrap_or(DEFAULT_PENDING_TIMEOUT_SECS);
        let abandon_after_secs = raw
            .provider
            .abandon_after_secs
            .or(aws.as_ref().map(|a| a.creation_timeout_secs))
            .unwrap_or(600);
        if abandon_after_secs == 0 {
            return Err(err("provider.abandon_after_secs", "must be at least 1".into()));
        }
        if pending_timeout_secs == 0 {
            return Err(err("provider.pending_timeout_secs", "must be at least 1".into()));
        }
        let storage = storage::build(
            raw.storage,
            work_dir,
            conf_dir,
            |k| std::env::var(k).ok(),
            |setting, message| err(setting, message),
        )?;
        let log_level = match raw.logging.level {
            Some(l) => ibm_aws::level(&l).map(str::to_string).ok_or_else(|| {
                err(
                    "logging.level",
                    format!(
                        "`{l}` is not a level; use one of {} (any case; WARNING and CRITICAL too)",
                        LOG_LEVELS.join(", ")
                    ),
                )
            })?,
            None => aws.as_ref().and_then(|a| a.log_level.clone()).unwrap_or_else(|| "info".into()),
        };
        let max_bytes = match &raw.logging.max_size {
            None => crate::logging::DEFAULT_MAX_BYTES,
            Some(v) => match size_bytes(v) {
                Some(b) if b > 0 && b <= crate::logging::MAX_LOG_BYTES => b,
                _ => {
                    return Err(err(
                        "logging.max_size",
                        format!(
                            "`{v}` is not a size up to {} MiB; give MiB as a number (100) or text with a unit (\"100MB\", \"512KB\")",
                            crate::logging::MAX_LOG_BYTES >> 20
                        ),
                    ));
                }
            },
        };
        let keep = raw.logging.backup_count.unwrap_or(crate::logging::DEFAULT_KEEP);
        if keep > crate::logging::MAX_KEEP {
            // Rotation renames every kept file: millions of them made each call take seconds.
            return Err(err(
                "logging.backup_count",
                format!("{keep} rotated files: at most {} are kept", crate::logging::MAX_KEEP),
            ));
        }
        let log = LogSpec {
            file: raw.logging.file_path.map(|f| work_dir.join(f)),
            max_bytes,
            keep,
        };
        Ok(Self {
            file,
            provider,
            settings,
            policy,
            breaker,
            pending_timeout_secs,
            abandon_after_secs,
            orphan_scan_secs: raw.provider.orphan_scan_secs.unwrap_or(600),
            inventory_file: conf_dir.join(raw.inventory.file.unwrap_or_else(|| PathBuf::from("inventory.txt"))),
            store: storage.spec,
            retention: storage.retention,
            log_level,
            log,
            ec2: aws.as_ref().map(|a| {
                let mut s = a.settings.clone();
                s.credential_cache_dir = Some(work_dir.to_path_buf());
                s
            }),
            problems: aws.as_ref().map(|a| a.problems.clone()).unwrap_or_default(),
            aws_files: aws.map(|a| (a.config_file, a.templates_file)),
            members: Vec::new(),
            placement,
            recording: None,
        })
    }
}

/// A live policy (`at`: `policy` or `placement`) with its settings, fallback and shadow.
fn policy_spec(
    at: &str,
    p: RawPolicy,
    guests: &mut BTreeMap<String, GuestSpec>,
    provider_guest: &str,
    conf_dir: &Path,
    err: &dyn Fn(&str, String) -> ConfigError,
) -> Result<PolicySpec, ConfigError> {
    let source = policy_source(at, p.guest, p.script, p.limits, guests, provider_guest, conf_dir, err)?;
    let shadow = match p.shadow {
        None => None,
        Some(sh) => {
            let sh = RawPolicy {
                guest: sh.guest,
                script: sh.script,
                settings: sh.settings,
                on_error: None,
                limits: sh.limits,
                shadow: None,
            };
            Some(Box::new(policy_spec(
                &format!("{at}.shadow"),
                sh,
                guests,
                provider_guest,
                conf_dir,
                err,
            )?))
        }
    };
    let settings = p.settings.unwrap_or_else(|| serde_json::json!({}));
    if !settings.is_object() {
        return Err(err(&format!("{at}.settings"), "must be a JSON object".into()));
    }
    Ok(PolicySpec {
        source,
        settings,
        // A shadow is never acted on, so it has no fallback of its own.
        on_error: on_error(&format!("{at}.on_error"), p.on_error.as_deref(), err)?,
        shadow,
    })
}

/// `on_error` at `at`: `fail_open` (the default) or `fail_closed`.
fn on_error(at: &str, v: Option<&str>, err: &dyn Fn(&str, String) -> ConfigError) -> Result<crate::policy::OnError, ConfigError> {
    match v {
        None => Ok(crate::policy::OnError::FailOpen),
        Some(v) => crate::policy::OnError::parse(v)
            .ok_or_else(|| err(at, format!("`{v}` is not a choice; use `fail_open` (the default) or `fail_closed`"))),
    }
}

/// Where a policy (`at`: `policy`, `policy.shadow` or `placement`) comes from: a Wasm guest named in
/// `guests` (or `builtin:default-policy`), or a Rhai script.
#[allow(clippy::too_many_arguments)]
fn policy_source(
    at: &str,
    guest: Option<String>,
    script: Option<PathBuf>,
    limits: Option<crate::policy::rhai::ScriptLimits>,
    guests: &mut BTreeMap<String, GuestSpec>,
    provider_guest: &str,
    conf_dir: &Path,
    err: &dyn Fn(&str, String) -> ConfigError,
) -> Result<PolicySource, ConfigError> {
    Ok(match (guest, script) {
        (Some(_), Some(_)) => {
            return Err(err(at, "give `guest` (a Wasm policy) or `script` (a Rhai policy), not both".into()));
        }
        (None, None) => {
            return Err(err(
                at,
                "needs `guest` (a Wasm policy, e.g. builtin:default-policy) or `script` (a Rhai file)".into(),
            ));
        }
        (None, Some(script)) => {
            let limits = limits.unwrap_or_default();
            if let Err((key, m)) = limits.check() {
                return Err(err(&format!("{at}.limits.{key}"), m));
            }
            PolicySource::Script {
                file: conf_dir.join(script),
                limits,
            }
        }
        (Some(pguest), None) => {
            if limits.is_some() {
                return Err(err(
                    &format!("{at}.limits"),
                    format!("limits a Rhai script; a Wasm policy's limits are guests.{pguest}.limits"),
                ));
            }
            if pguest == BUILTIN_DEFAULT_POLICY && !guests.contains_key(&pguest) {
                // `"policy": {"guest": "builtin:default-policy"}` needs no `guests` entry.
                guests.insert(pguest.clone(), GuestSpec::builtin("default-policy", BUILTIN_DEFAULT_POLICY));
            }
            let guest = guests.get(&pguest).cloned().ok_or_else(|| {
                err(
                    &format!("{at}.guest"),
                    format!(
                        "no guest named `{}`; define it under `guests` (known: {})",
                        pguest,
                        guests.keys().cloned().collect::<Vec<_>>().join(", ")
                    ),
                )
            })?;
            let builtin_provider = matches!(guest.source, GuestSource::Builtin(b) if b != BUILTIN_DEFAULT_POLICY);
            if builtin_provider || guest.name == provider_guest {
                return Err(err(
                    &format!("{at}.guest"),
                    format!(
                        "`{}` is a provider guest; a policy is a guest of the template-selector world (wit/policy)",
                        pguest
                    ),
                ));
            }
            if !guest.grants.is_empty() {
                return Err(err(
                    &format!("guests.{}.grants", pguest),
                    "a policy guest is granted nothing (it imports only sandboxed WASI, so its decisions replay); remove its grants".into(),
                ));
            }
            PolicySource::Guest(Box::new(guest))
        }
    })
}

/// The config file: `CONFIG_PATH` when set (it must exist), else the one of
/// [`CONFIG_FILES`] in `conf_dir` (two are an error), else none.
fn find_file(conf_dir: &Path, env: impl Fn(&str) -> Option<String>) -> Result<Option<PathBuf>, ConfigError> {
    if let Some(p) = env("CONFIG_PATH").filter(|p| !p.trim().is_empty()) {
        let p = PathBuf::from(p);
        if !p.is_file() {
            return Err(ConfigError {
                file: p,
                setting: None,
                message: "CONFIG_PATH names this file, which does not exist".into(),
            });
        }
        return Ok(Some(p));
    }
    let found: Vec<PathBuf> = CONFIG_FILES.iter().map(|n| conf_dir.join(n)).filter(|p| p.is_file()).collect();
    match found.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some(one.clone())),
        [first, second, ..] => Err(ConfigError {
            file: first.clone(),
            setting: None,
            message: format!("{} is also there; keep one config file", second.display()),
        }),
    }
}

/// With nothing hfwasm reads in `conf_dir` (no config file, no IBM AWS files, no
/// inventory), the embedded defaults would serve the on-prem pool and fail on a missing
/// `inventory.txt`. When the directory holds config files of another name, say which and
/// what hfwasm reads instead, rather than fall through to that error.
fn unread_files(conf_dir: &Path, instance: &str) -> Result<(), ConfigError> {
    let Ok(entries) = std::fs::read_dir(conf_dir) else {
        return Ok(());
    };
    let mut found: Vec<String> = entries
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| [".json", ".yml", ".yaml"].iter().any(|x| n.ends_with(x)))
        .collect();
    if found.is_empty() {
        return Ok(());
    }
    found.sort();
    // IBM files of another instance name are the likeliest slip.
    let other = found.iter().find_map(|n| n.strip_suffix("prov_config.json")).map(str::to_string);
    let azure = found.iter().any(|n| {
        n.ends_with("prov_config.json")
            && crate::limits::read_capped(&conf_dir.join(n), crate::limits::MAX_CONFIG_BYTES).is_ok_and(|t| t.contains("AZURE_"))
    });
    let hint = match other {
        Some(_) if azure => {
            "these are IBM's Azure plugin files; hfwasm has no Azure provider yet (its built-in providers are AWS and the on-prem pool)"
                .to_string()
        }
        Some(other) => format!(
            "IBM's files here are named for provider instance `{other}` but this is `{instance}` (HF_PROVIDER_NAME): rename them to {instance}prov_config.json and {instance}prov_templates.json, or set HF_PROVIDER_NAME={other}"
        ),
        None => format!(
            "hfwasm reads {}, or IBM's {instance}prov_config.json with {instance}prov_templates.json (LSF: awsprov_*), or inventory.txt for the on-prem pool",
            CONFIG_FILES.join(", ")
        ),
    };
    Err(ConfigError {
        file: conf_dir.to_path_buf(),
        setting: None,
        message: format!("nothing here configures hfwasm: found {}; {hint}", found.join(", ")),
    })
}

/// Parses `file` as YAML (`.yml`, `.yaml`) or JSON, naming the key of any error.
fn parse_file(file: &Path) -> Result<RawConfig, ConfigError> {
    let text = crate::limits::read_capped(file, crate::limits::MAX_CONFIG_BYTES).map_err(|e| ConfigError {
        file: file.to_path_buf(),
        setting: None,
        message: format!("cannot read: {e}"),
    })?;
    let yaml = file.extension().is_some_and(|e| e == "yml" || e == "yaml");
    let located = |path: String, inner: String| ConfigError {
        file: file.to_path_buf(),
        message: format!("{inner} (at `{path}`)"),
        setting: (path != ".").then_some(path),
    };
    if yaml {
        serde_path_to_error::deserialize(serde_yaml::Deserializer::from_str(&text))
            .map_err(|e| located(e.path().to_string(), e.inner().to_string()))
    } else {
        let de = &mut serde_json::Deserializer::from_str(&text);
        serde_path_to_error::deserialize(de).map_err(|e| located(e.path().to_string(), e.inner().to_string()))
    }
}

/// ORB's own top-level keys: `scheduler` must say HostFactory and point at this conf dir;
/// `server` (ORB's REST API) has nothing behind it in hfwasm; `default_provider_type`
/// must match the providers.
fn orb_keys(raw: &RawConfig, conf_dir: &Path, err: &dyn Fn(&str, String) -> ConfigError) -> Result<(), ConfigError> {
    if let Some(s) = &raw.scheduler {
        if let Some(k) = s.kind.as_deref().filter(|k| !matches!(*k, "hostfactory" | "hf" | "default")) {
            return Err(err(
                "scheduler.type",
                format!("`{k}`: hfwasm speaks HostFactory's (and LSF's) script contract; write `hostfactory`"),
            ));
        }
        if let Some(root) = &s.config_root {
            // `$HF_PROVIDER_CONFDIR` (ORB's example) or a path: it must be this conf dir.
            let expanded = match root.trim_start_matches('$').trim_matches(|c| c == '{' || c == '}') {
                var if root.starts_with('$') => std::env::var(var).unwrap_or_default(),
                _ => root.clone(),
            };
            let same = std::path::absolute(&expanded).is_ok_and(|p| p == conf_dir);
            if !same {
                return Err(err(
                    "scheduler.config_root",
                    format!(
                        "`{root}` is not this provider's conf dir {}; hfwasm reads the conf dir HostFactory passes (HF_PROVIDER_CONFDIR). Remove the key or make it `$HF_PROVIDER_CONFDIR`",
                        conf_dir.display()
                    ),
                ));
            }
        }
    }
    if raw.server.is_some() {
        return Err(err(
            "server",
            "ORB's REST server: hfwasm serves HostFactory through its scripts and has no server mode yet; remove `server`".into(),
        ));
    }
    if let Some(t) = &raw.provider.default_provider_type {
        let types: Vec<&str> = raw.provider.providers.iter().flatten().map(|p| p.kind()).collect();
        if !types.iter().all(|k| k == t) {
            return Err(err(
                "provider.default_provider_type",
                format!(
                    "`{t}` but the providers are of type {}; remove it or make it match",
                    types.join(", ")
                ),
            ));
        }
    }
    if let Some(d) = &raw.provider.provider_defaults
        && let Some(k) = d.as_object().and_then(|o| o.keys().find(|k| *k != "aws"))
    {
        return Err(err(
            &format!("provider.provider_defaults.{k}"),
            "only `aws.template_defaults` has an effect (it fills ORB's templates); remove it".into(),
        ));
    }
    if let Some(k) = raw
        .provider
        .provider_defaults
        .as_ref()
        .and_then(|d| d.get("aws"))
        .and_then(|a| a.as_object())
        .and_then(|o| o.keys().find(|k| *k != "template_defaults"))
    {
        return Err(err(
            &format!("provider.provider_defaults.aws.{k}"),
            "only `template_defaults` has an effect here; remove it".into(),
        ));
    }
    Ok(())
}

/// Seed 001's single-provider form (`provider.type` with `provider.aws`, YAML `templates`,
/// and its `monitoring`, `caching`, `logging.console_enabled`), mapped onto the seed's
/// provider list with one entry named after the instance; what has no effect is refused.
fn seed_single(raw: &mut RawConfig, file: &Path, conf_dir: &Path, instance: &str) -> Result<(), ConfigError> {
    let err = |setting: &str, message: String| ConfigError {
        file: file.to_path_buf(),
        setting: Some(setting.to_string()),
        message: format!("`{setting}`: {message}"),
    };
    if raw.monitoring.is_some() {
        return Err(err(
            "monitoring",
            "hfwasm serves no metrics endpoint (every HostFactory call is a short process); its log has each call's timing. Remove it"
                .into(),
        ));
    }
    if raw.caching.is_some() {
        return Err(err(
            "caching",
            "hfwasm caches compiled guests (`guest precompile`) and EC2 instance types in its store, and reads config and templates on every call so an edit applies at once; there is nothing to tune. Remove it".into(),
        ));
    }
    orb_keys(raw, conf_dir, &err)?;
    if raw.logging.console_enabled.is_some() {
        return Err(err(
            "logging.console_enabled",
            "hfwasm logs to its log file (`logging.file_path`, or the HostFactory log dir), else to stderr; stdout belongs to HostFactory. Remove it".into(),
        ));
    }
    let aws = raw.provider.aws.take();
    let Some(kind) = raw.provider.kind.take() else {
        if aws.is_some() {
            return Err(err("provider.aws", "goes with `provider.type: aws`".into()));
        }
        if raw.templates.is_some() {
            return Err(err("templates", "YAML templates go with `provider.type: aws`".into()));
        }
        return Ok(());
    };
    if raw.provider.providers.is_some() || raw.provider.guest.is_some() {
        return Err(err(
            "provider.type",
            "`provider.type` (one provider) and `provider.providers` or `provider.guest` both choose the provider; keep one".into(),
        ));
    }
    let mut config = serde_json::Map::new();
    for (k, v) in aws.unwrap_or_default() {
        match k.as_str() {
            "region" | "profile" | "max_retries" | "timeout" => {
                config.insert(k, v);
            }
            "connection_pool_size" => {
                return Err(err(
                    "provider.aws.connection_pool_size",
                    "each HostFactory call is a new process with one EC2 client; there is no pool to size. Remove it".into(),
                ));
            }
            other => {
                return Err(err(
                    &format!("provider.aws.{other}"),
                    "unknown key (known: region, profile, max_retries, timeout)".into(),
                ));
            }
        }
    }
    if let Some(list) = raw.templates.take() {
        if raw.aws.is_some() || ibm_aws::find(conf_dir, instance).is_some() {
            return Err(err(
                "templates",
                "IBM's templates file is in the conf dir too; keep one source of templates".into(),
            ));
        }
        let Some(region) = config.get("region").and_then(|r| r.as_str()).map(str::to_string) else {
            return Err(err(
                "provider.aws.region",
                "is required with YAML templates (there is no IBM config file)".into(),
            ));
        };
        let templates = seed::yaml_templates(&list).map_err(|(setting, m)| err(&setting, m))?;
        raw.inline_aws = Some(InlineAws {
            region,
            templates,
            from: None,
        });
    }
    let entry = serde_json::json!({"name": instance, "type": kind, "config": config});
    let provider: seed::RawSeedProvider = serde_json::from_value(entry).map_err(|e| err("provider.type", e.to_string()))?;
    raw.provider.providers = Some(vec![provider]);
    Ok(())
}

/// IBM's files for seed aws provider `name`: its own `config.config_file` / `templates_file`
/// (relative to the conf dir), else the instance's (`<instance>prov_*` or `awsprov_*`).
/// Where a seed aws provider's templates and connection settings come from.
enum AwsSource {
    /// IBM's config and templates files.
    Ibm(PathBuf, PathBuf),
    /// ORB's templates file with the seed provider's region (endpoint from the environment,
    /// credentials from the standard chain and the seed's `profile`).
    Inline(InlineAws),
}

/// ORB's `provider.provider_defaults.aws.template_defaults`, when given.
fn orb_defaults(p: &RawProvider) -> Option<serde_json::Value> {
    p.provider_defaults.as_ref()?.get("aws")?.get("template_defaults").cloned()
}

/// The seed aws provider `name`'s source: its own IBM files, the conf dir's IBM files, or
/// (a site coming from ORB) ORB's templates file with the seed's `config.region`.
fn seed_aws_source(
    conf_dir: &Path,
    instance: &str,
    name: &str,
    own: &(Option<PathBuf>, Option<PathBuf>),
    region: Option<&str>,
    orb_defaults: Option<serde_json::Value>,
    file: &Path,
) -> Result<AwsSource, ConfigError> {
    let shared = ibm_aws::find(conf_dir, instance);
    let config_file = own.0.clone().or_else(|| shared.as_ref().map(|s| s.0.clone()));
    let templates_file = own.1.clone().or_else(|| shared.as_ref().map(|s| s.1.clone()));
    match (config_file, templates_file) {
        (Some(c), Some(t)) => Ok(AwsSource::Ibm(c, t)),
        (None, None) if let Some(t) = orb::find_templates(conf_dir, name) => {
            let region = region.ok_or_else(|| ConfigError {
                file: file.to_path_buf(),
                setting: Some("provider.providers[].config.region".into()),
                message: format!(
                    "aws provider `{name}`: `config.region` is required with ORB's templates file {} (there is no IBM config file)",
                    t.display()
                ),
            })?;
            Ok(AwsSource::Inline(InlineAws {
                region: region.to_string(),
                templates: orb::templates(&t, orb_defaults.as_ref(), file)?,
                from: Some(t),
            }))
        }
        _ => Err(ConfigError {
            file: file.to_path_buf(),
            setting: Some("provider.providers".into()),
            message: format!(
                "aws provider `{name}` needs IBM's {instance}prov_config.json (or awsprov_config.json) and its _templates.json in {}, or its own `config.config_file` and `config.templates_file`, or ORB's {name}_templates.json (or aws_templates.json) with `config.region`",
                conf_dir.display()
            ),
        }),
    }
}

/// The AWS settings and templates of an [`AwsSource`]: IBM's files as they are, or the
/// inline templates with only a region (the endpoint from `AWS_ENDPOINT_URL`).
fn load_aws_source(src: AwsSource, conf_dir: &Path, config_file: &Path) -> Result<ibm_aws::IbmAws, ConfigError> {
    match src {
        AwsSource::Ibm(c, t) => ibm_aws::load(&conf_dir.join(&c), &conf_dir.join(&t), |k| std::env::var(k).ok()),
        AwsSource::Inline(InlineAws { region, templates, from }) => {
            let mut cfg = serde_json::Map::new();
            cfg.insert("AWS_REGION".into(), serde_json::Value::String(region));
            if let Some(url) = std::env::var("AWS_ENDPOINT_URL").ok().filter(|u| !u.is_empty()) {
                cfg.insert("AWS_ENDPOINT_URL".into(), serde_json::Value::String(url));
            }
            let mut t = serde_json::Map::new();
            t.insert("templates".into(), templates);
            let templates_file = from.unwrap_or_else(|| config_file.to_path_buf());
            ibm_aws::from_values(cfg, t, config_file, &templates_file, |k| std::env::var(k).ok())
        }
    }
}

/// The seed's per-provider AWS keys (region, profile, max_retries, timeout) over IBM's.
fn apply_seed_aws(kind: &seed::SeedKind, ec2: &mut Ec2Settings, grant: &mut Ec2Grant) {
    if let seed::SeedKind::Aws {
        region,
        profile,
        max_retries,
        timeout_secs,
        ..
    } = kind
    {
        if let Some(r) = region {
            ec2.region = r.clone();
            grant.regions = vec![r.clone()];
        }
        ec2.profile = profile.clone().or(ec2.profile.take());
        if let Some(n) = max_retries {
            ec2.retry_attempts = *n;
            ec2.describe_retry_attempts = *n;
        }
        if let Some(t) = timeout_secs {
            ec2.connect_timeout = std::time::Duration::from_secs((*t).max(1));
        }
    }
}

/// The built-in placement: the seed's selection policies in `builtin:default-policy`.
fn default_placement() -> PolicySpec {
    PolicySpec {
        source: PolicySource::Guest(Box::new(GuestSpec::builtin("default-policy", BUILTIN_DEFAULT_POLICY))),
        settings: serde_json::json!({}),
        on_error: crate::policy::OnError::FailOpen,
        shadow: None,
    }
}

/// The members of a seed list with several enabled providers, each with its own guest
/// instance (named after it), settings and EC2 client settings.
fn seed_members(
    config: &Config,
    seed: &[seed::SeedProvider],
    conf_dir: &Path,
    instance: &str,
    file: &Path,
    orb_defaults: Option<serde_json::Value>,
) -> Result<(Vec<MemberSpec>, Vec<ConfigError>), ConfigError> {
    let mut base = config.settings.clone();
    if let Some(obj) = base.as_object_mut() {
        obj.remove("templates");
        obj.remove("spot_terminate_on_reclaim");
    }
    let mut members = Vec::new();
    let mut problems = Vec::new();
    for p in seed {
        let (guest, settings, ec2, aws_files) = match &p.kind {
            seed::SeedKind::Aws { files, region, .. } => {
                let src = seed_aws_source(conf_dir, instance, &p.name, files, region.as_deref(), orb_defaults.clone(), file)?;
                let a = load_aws_source(src, conf_dir, file)?;
                let mut grant = a.grant.clone();
                let mut ec2 = a.settings.clone();
                apply_seed_aws(&p.kind, &mut ec2, &mut grant);
                problems.extend(a.problems.iter().cloned());
                let mut settings = base.clone();
                if let Some(obj) = settings.as_object_mut() {
                    obj.insert("templates".into(), a.templates.clone());
                    obj.insert(
                        "spot_terminate_on_reclaim".into(),
                        serde_json::Value::Bool(a.spot_terminate_on_reclaim),
                    );
                }
                let same_builtin = config.provider.source == GuestSource::Builtin(BUILTIN_AWS);
                let mut guest = GuestSpec::builtin(&p.name, BUILTIN_AWS).with_ec2(&grant);
                if same_builtin {
                    guest.limits = config.provider.limits;
                    guest.coredump_dir = config.provider.coredump_dir.clone();
                }
                (guest, settings, Some(ec2), Some((a.config_file, a.templates_file)))
            }
            seed::SeedKind::Onprem => {
                let guest = GuestSpec::builtin(&p.name, BUILTIN_ONPREM);
                (guest, base.clone(), None, None)
            }
        };
        members.push(MemberSpec {
            name: p.name.clone(),
            kind: match p.kind {
                seed::SeedKind::Aws { .. } => "aws".into(),
                seed::SeedKind::Onprem => "onprem".into(),
            },
            priority: p.priority,
            weight: p.weight,
            cost_threshold: p.cost_threshold,
            guest,
            settings,
            ec2,
            aws_files,
        });
    }
    Ok((members, problems))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(json: &str) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(CONFIG_FILE), json).expect("write");
        Config::load(dir.path(), Path::new("/work"), "test")
    }

    #[test]
    fn defaults_without_a_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = Config::load(dir.path(), Path::new("/w"), "test").expect("defaults");
        assert!(c.file.is_none());
        assert_eq!(c.provider.source, GuestSource::Builtin(BUILTIN_ONPREM));
        assert_eq!(c.inventory_file, dir.path().join("inventory.txt"));
        assert!(matches!(c.store, StoreSpec::Sqlite { ref path, .. } if path == Path::new("/w/hfwasm.sqlite")));
    }

    #[test]
    fn unknown_keys_name_the_setting_and_file() {
        let e = load(r#"{"provider": {"guest": "onprem", "colour": "red"}}"#).expect_err("unknown key");
        assert_eq!(e.setting.as_deref(), Some("provider.colour"));
        assert!(e.to_string().contains("hfwasm.json") && e.to_string().contains("colour"), "{e}");
        let e = load(r#"{"guests": {"x": {"wasm": "x.wasm", "grants": ["ec9"]}}}"#).expect_err("unknown grant");
        assert_eq!(e.setting.as_deref(), Some("guests.x.grants[0]"));
        let e = load(r#"{"provider": {"guest": "missing"}}"#).expect_err("unknown guest");
        assert!(e.to_string().contains("no guest named `missing`"), "{e}");
        let e = load(r#"{"storage": {"strategy": "mongodb"}}"#).expect_err("strategy");
        assert_eq!(e.setting.as_deref(), Some("storage.strategy"));
        assert!(e.to_string().contains("hfwasm.json"), "{e}");
        let e = load(r#"{"storage": {"sql_strategy": {"colour": "red"}}}"#).expect_err("unknown key");
        assert_eq!(e.setting.as_deref(), Some("storage.sql_strategy.colour"));
    }

    #[test]
    fn the_seed_provider_section() {
        // Scenario 1's shape with the on-prem type: one enabled provider, as is.
        let c = load(
            r#"{"version": "2.0.0", "provider": {"active_provider": "pool", "selection_policy": "PRIORITY_FAILOVER",
            "providers": [{"name": "pool", "type": "onprem", "enabled": true, "priority": 1, "weight": 100}]}}"#,
        )
        .expect("valid");
        assert_eq!(c.provider.source, GuestSource::Builtin(BUILTIN_ONPREM));
        let bad = |json: &str, setting: &str, words: &str| {
            let e = load(json).expect_err(json);
            assert_eq!(e.setting.as_deref(), Some(setting), "{e}");
            assert!(e.to_string().contains(words), "{e}");
        };
        bad(r#"{"version": "1.0", "provider": {}}"#, "version", "2.x");
        bad(
            r#"{"provider": {"providers": [{"name": "a", "type": "onprem"}, {"name": "b", "type": "onprem"}]}}"#,
            "provider.providers[1].type",
            "one inventory file",
        );
        bad(
            r#"{"provider": {"providers": [{"name": "a", "type": "onprem"}, {"name": "a", "type": "aws"}]}}"#,
            "provider.providers[1].name",
            "names two providers",
        );
        bad(
            r#"{"placement": {"guest": "builtin:default-policy"}, "provider": {"providers": [{"name": "a", "type": "onprem"}]}}"#,
            "placement",
            "two or more",
        );
        bad(
            r#"{"provider": {"providers": [{"name": "a", "type": "onprem"}, {"name": "b", "type": "aws", "config": {"cost_threshold": -1}}]}}"#,
            "provider.providers[1].config.cost_threshold",
            "price per host-hour",
        );
        bad(
            r#"{"provider": {"providers": [{"name": "a", "type": "onprem"}, {"name": "b", "type": "aws"}]}}"#,
            "provider.providers",
            "`b` needs IBM's",
        );
        bad(
            r#"{"provider": {"providers": [{"name": "a", "type": "onprem", "enabled": false}]}}"#,
            "provider.providers",
            "no provider",
        );
        bad(
            r#"{"provider": {"active_provider": "b", "providers": [{"name": "a", "type": "onprem"}]}}"#,
            "provider.active_provider",
            "`b` is not an enabled provider",
        );
        bad(
            r#"{"provider": {"selection_policy": "ROUND_ROBIN", "providers": [{"name": "a", "type": "onprem"}]}}"#,
            "provider.selection_policy",
            "PRIORITY_FAILOVER",
        );
        bad(
            r#"{"provider": {"health_check_interval": 30, "providers": [{"name": "a", "type": "onprem"}]}}"#,
            "provider.health_check_interval",
            "recovery_timeout",
        );
        bad(
            r#"{"provider": {"providers": [{"name": "v", "type": "vmware"}]}}"#,
            "provider.providers[0].type",
            "aws, onprem",
        );
        bad(
            r#"{"provider": {"providers": [{"name": "a", "type": "aws", "config": {"handlers": {"types": {"asg": "ASG"}}}}]}}"#,
            "provider.providers[0].config.handlers.types.asg",
            "Auto Scaling groups",
        );
        bad(
            r#"{"provider": {"providers": [{"name": "a", "type": "aws", "config": {"cost_threshold": 0.1}}]}}"#,
            "provider.providers[0].config.cost_threshold",
            "COST_OPTIMIZED",
        );
        bad(
            r#"{"provider": {"providers": [{"name": "a", "type": "aws"}]}}"#,
            "provider.providers",
            "prov_config.json",
        );
        bad(
            r#"{"provider": {"selection_policy": "COST_OPTIMIZED"}}"#,
            "provider.selection_policy",
            "provider.providers",
        );
        bad(
            r#"{"provider": {"providers": [{"name": "a", "type": "onprem", "colour": "red"}]}}"#,
            "provider.providers[0].colour",
            "colour",
        );
    }

    #[test]
    fn yaml_files_and_the_seed_single_provider_form() {
        let dir = tempfile::tempdir().expect("tempdir");
        let load_yaml = |name: &str, yaml: &str| {
            for n in CONFIG_FILES {
                let _ = std::fs::remove_file(dir.path().join(n));
            }
            std::fs::write(dir.path().join(name), yaml).expect("write");
            Config::load(dir.path(), Path::new("/work"), "test")
        };
        // The seed's v2 shape, in YAML.
        let c = load_yaml(
            "hfwasm.yml",
            "version: \"2.0.0\"\nprovider:\n  providers:\n    - name: pool\n      type: onprem\nlogging:\n  level: WARNING\n",
        )
        .expect("v2 in yaml");
        assert_eq!(
            (c.provider.source.clone(), c.log_level.as_str()),
            (GuestSource::Builtin(BUILTIN_ONPREM), "warn")
        );
        // Seed 001's single-provider form.
        let c = load_yaml(
            "config.yml",
            "provider:\n  type: aws\n  aws:\n    region: eu-west-1\n    profile: prod\ntemplates:\n  - template_id: t\n    max_number: 4\n    attributes: {vm_type: t3.micro, image_id: ami-1, subnet_id: subnet-1}\n",
        )
        .expect("seed 001");
        let ec2 = c.ec2.as_ref().expect("aws");
        assert_eq!((ec2.region.as_str(), ec2.profile.as_deref()), ("eu-west-1", Some("prod")));
        assert_eq!(
            c.settings["templates"],
            serde_json::json!([{"templateId": "t", "maxNumber": 4, "vmType": "t3.micro", "imageId": "ami-1", "subnetId": "subnet-1"}])
        );
        let bad = |yaml: &str, setting: &str, words: &str| {
            let e = load_yaml("config.yml", yaml).expect_err(yaml);
            assert_eq!(e.setting.as_deref(), Some(setting), "{e}");
            assert!(e.to_string().contains(words), "{e}");
        };
        bad(
            "provider:\n  type: aws\n  aws:\n    connection_pool_size: 10\n",
            "provider.aws.connection_pool_size",
            "no pool",
        );
        bad("provider:\n  type: aws\n  aws:\n    zone: a\n", "provider.aws.zone", "unknown key");
        bad(
            "logging:\n  console_enabled: true\n",
            "logging.console_enabled",
            "stdout belongs to HostFactory",
        );
        bad(
            "provider:\n  type: aws\ntemplates:\n  - max_number: 1\n",
            "provider.aws.region",
            "required",
        );
        bad(
            "provider:\n  type: aws\n  aws: {region: us-east-1}\ntemplates:\n  - template_id: t\n    colour: red\n",
            "templates[0].colour",
            "unknown key",
        );
        bad("storage:\n  type: dynamodb\n", "storage.type", "DynamoDB");
        // Two config files: which one is meant is not guessed.
        std::fs::write(dir.path().join("hfwasm.json"), "{}").expect("write");
        std::fs::write(dir.path().join("config.yml"), "{}").expect("write");
        let e = Config::load(dir.path(), Path::new("/work"), "test").expect_err("two files");
        assert!(e.to_string().contains("keep one config file"), "{e}");
        // CONFIG_PATH (the seed's HostProvider parameter) names the file.
        let found = find_file(dir.path(), |k| {
            (k == "CONFIG_PATH").then(|| dir.path().join("config.yml").display().to_string())
        });
        assert_eq!(found.expect("found"), Some(dir.path().join("config.yml")));
        assert!(find_file(dir.path(), |k| (k == "CONFIG_PATH").then(|| "/nonexistent.yml".to_string())).is_err());
    }

    #[test]
    fn the_seed_logging_keys() {
        let c = load(r#"{"logging": {"level": "WARNING", "file_path": "/var/log/hf/app.log", "max_size": 100, "backup_count": 10}}"#)
            .expect("valid");
        assert_eq!(c.log_level, "warn");
        assert_eq!(
            c.log,
            LogSpec {
                file: Some(PathBuf::from("/var/log/hf/app.log")),
                max_bytes: 100 << 20,
                keep: 10
            }
        );
        let c = load(r#"{"logging": {"level": "INFO", "file_path": "app.log", "max_size": "512KB"}}"#).expect("valid");
        assert_eq!((c.log.file, c.log.max_bytes), (Some(PathBuf::from("/work/app.log")), 512 << 10));
        let e = load(r#"{"logging": {"max_size": "huge"}}"#).expect_err("size");
        assert_eq!(e.setting.as_deref(), Some("logging.max_size"));
        let e = load(r#"{"logging": {"level": "LOUD"}}"#).expect_err("level");
        assert_eq!(e.setting.as_deref(), Some("logging.level"));
    }

    #[test]
    fn the_seed_circuit_breaker_keys() {
        let c = load(r#"{"provider": {"circuit_breaker": {"enabled": true, "failure_threshold": 3, "recovery_timeout": 180}}}"#)
            .expect("valid");
        let b = c.breaker.expect("enabled");
        assert_eq!((b.failure_threshold, b.recovery_secs), (3, 180));
        let c = load(r#"{"provider": {"circuit_breaker": {"failure_threshold": 4}}}"#).expect("valid");
        assert_eq!(
            c.breaker.map(|b| (b.failure_threshold, b.recovery_secs)),
            Some((4, DEFAULT_BREAKER_RECOVERY_SECS))
        );
        assert!(
            load(r#"{"provider": {"circuit_breaker": {"enabled": false}}}"#)
                .expect("valid")
                .breaker
                .is_none()
        );
        assert!(load("{}").expect("valid").breaker.is_none());
        let e = load(r#"{"provider": {"circuit_breaker": {"failure_threshold": 0}}}"#).expect_err("zero");
        assert_eq!(e.setting.as_deref(), Some("provider.circuit_breaker.failure_threshold"));
        let e = load(r#"{"provider": {"circuit_breaker": {"half_open_calls": 2}}}"#).expect_err("unknown");
        assert_eq!(e.setting.as_deref(), Some("provider.circuit_breaker.half_open_calls"));
    }

    #[test]
    fn policy_guests_are_granted_nothing() {
        let ok = load(r#"{"guests": {"sel": {"wasm": "sel.wasm", "limits": {"random_seed": 7}}}, "policy": {"guest": "sel", "settings": {"max_price": 1}, "on_error": "fail_closed"}}"#)
            .expect("valid");
        let p = ok.policy.expect("policy");
        assert_eq!((p.name().as_str(), p.on_error), ("sel", crate::policy::OnError::FailClosed));
        assert_eq!(p.guest().and_then(|g| g.limits.random_seed), Some(7));
        let r = load(r#"{"policy": {"script": "p/sel.rhai", "limits": {"max_operations": 5000}}}"#).expect("valid");
        let r = r.policy.expect("policy");
        assert_eq!(r.name(), "sel.rhai");
        assert!(
            matches!(r.source, PolicySource::Script { ref limits, .. } if limits.max_operations == 5000 && limits.max_call_levels == 32)
        );
        let e = load(r#"{"policy": {"script": "a.rhai", "guest": "builtin:default-policy"}}"#).expect_err("both");
        assert_eq!(e.setting.as_deref(), Some("policy"));
        let e = load(r#"{"policy": {"script": "a.rhai", "limits": {"max_ops": 1}}}"#).expect_err("unknown limit");
        assert_eq!(e.setting.as_deref(), Some("policy.limits.max_ops"));
        let e = load(r#"{"policy": {"guest": "builtin:default-policy", "limits": {"max_operations": 1}}}"#).expect_err("guest limits");
        assert_eq!(e.setting.as_deref(), Some("policy.limits"));
        let e = load(r#"{"guests": {"sel": {"wasm": "sel.wasm", "grants": ["kv"]}}, "policy": {"guest": "sel"}}"#).expect_err("grants");
        assert_eq!(e.setting.as_deref(), Some("guests.sel.grants"));
        let e = load(r#"{"policy": {"guest": "onprem"}}"#).expect_err("a provider");
        assert!(e.to_string().contains("provider guest"), "{e}");
        let e =
            load(r#"{"guests": {"sel": {"wasm": "sel.wasm"}}, "policy": {"guest": "sel", "on_error": "shrug"}}"#).expect_err("on_error");
        assert_eq!(e.setting.as_deref(), Some("policy.on_error"));
        let e = load(r#"{"policy": {"guest": "nope"}}"#).expect_err("unknown");
        assert_eq!(e.setting.as_deref(), Some("policy.guest"));
    }

    #[test]
    fn guests_with_grants_and_limits() {
        let c = load(r#"{"provider": {"guest": "mine", "settings": {"a": 1}}, "guests": {"mine": {"wasm": "g/mine.wasm", "grants": ["log", "hostfactory:capabilities/kv@0.2.0"], "limits": {"timeout_ms": 500}}}}"#)
            .expect("valid");
        assert_eq!(c.provider.grants, vec![Capability::named("log"), Capability::named("kv")]);
        assert_eq!(c.provider.limits.timeout.as_millis(), 500);
        assert!(matches!(c.provider.source, GuestSource::File(ref p) if p.ends_with("g/mine.wasm")));
    }
}

#[cfg(test)]
mod sample_tests {
    use super::*;

    /// The samples in `config/` are what users copy: they must load as they are.
    #[test]
    fn shipped_samples_are_valid() {
        let samples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config");
        let c = Config::load(&samples, Path::new("/w"), "test").expect("config/hfwasm.json loads");
        assert!(c.file.is_some());
        let inv = crate::capabilities::inventory::Inventory::load(&c.inventory_file).expect("config/inventory.txt parses");
        assert_eq!(inv.hosts.len(), 4);
        assert_eq!(
            inv.hosts[0].power_on.as_deref(),
            Some("ssh -o BatchMode=yes 192.168.1.20 sudo systemctl start lsfd")
        );
    }
}
