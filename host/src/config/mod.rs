//! hfwasm's configuration: `hfwasm.json` in the provider conf dir, or the embedded defaults
//! (the on-prem pool guest over `inventory.txt`) when there is none. Strict: an unknown
//! key is an error naming the key's path and the file.

pub mod ibm_aws;
pub mod ibm_azure;
pub mod orb;
pub mod seed;
pub mod storage;

mod raw;
mod resolve;
#[cfg(test)]
mod tests;

// The siblings see one another through `use super::*`.
use {raw::*, translate::*};
mod translate;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::capabilities::ec2::{Ec2Grant, Ec2Settings};
use crate::capabilities::{Capability, Settings};
use crate::limits::{GuestLimits, LimitOverrides};
use crate::service::routing::Member;
use crate::store::StoreSpec;

/// File name of hfwasm's own config inside the provider conf dir.
/// Config file names hfwasm looks for in the conf dir (at most one may exist): its own
/// JSON, or the same keys in YAML, including the seed's `config.yml`. `CONFIG_PATH` (the
/// seed's HostProvider parameter) names one anywhere instead.
pub const CONFIG_FILES: [&str; 5] = ["hfwasm.json", "hfwasm.yaml", "hfwasm.yml", "config.yml", "config.json"];
pub const CONFIG_FILE: &str = "hfwasm.json";

use crate::builtin::{BUILTIN_AWS, BUILTIN_AZURE, BUILTIN_DEFAULT_POLICY, BUILTIN_ONPREM};

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

/// Default for `recording.keep`: decisions kept in the store.
pub const DEFAULT_RECORDING_KEEP: usize = 10_000;

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
            BUILTIN_AWS => &["log", "kv", "ec2", "autoscaling"],
            BUILTIN_AZURE => &["log", "kv", "http"],
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

    /// The same guest with `grant` as its `http` grant.
    pub fn with_http(mut self, grant: &crate::capabilities::http::HttpGrant) -> Self {
        self.settings.insert("http".into(), grant.to_settings());
        self
    }

    /// The same guest with `grant` as its EC2 grant.
    pub fn with_ec2(mut self, grant: &Ec2Grant) -> Self {
        self.settings.insert("ec2".into(), grant.to_settings());
        self.settings.insert("autoscaling".into(), grant.to_settings());
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
    /// Seconds between `hfwasm serve`'s reconciler passes (the seed's
    /// `provider.health_check_interval`; the scripts run nothing in the background).
    pub reconcile_secs: Option<u64>,
    /// `monitoring.metrics_endpoint` when `monitoring.enabled`: the Prometheus Pushgateway
    /// URL each script call pushes its metrics to.
    pub metrics_push: Option<String>,
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
    /// IBM's config and templates files, when they configure the provider.
    pub ibm_files: Option<IbmFiles>,
    /// Several providers behind this instance (the seed's `providers[]` with more than one
    /// enabled), in config order; empty when `provider` alone serves.
    pub members: Vec<MemberSpec>,
    /// With several providers: what decides which serves a request (`placement`, default
    /// the built-in selection policies).
    pub placement: Option<PolicySpec>,
    /// Calls and policy decisions (placement, template offers) kept for `hfwasm replay`
    /// (`recording.keep` of each kind), when recording.
    pub recording: Option<usize>,
    /// How the config is served where its words say otherwise (a seed `vmware` provider served
    /// by the on-prem pool): logged on every call, shown by `hfwasm config check`.
    pub notes: Vec<String>,
    /// Problems that leave something out rather than stop the call (a bad template among
    /// good ones): logged on every call, listed by `hfwasm config check`.
    pub problems: Vec<ConfigError>,
}

/// IBM's two provider files, and whose plugin they are for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IbmFiles {
    /// `AWS` or `Azure`.
    pub cloud: &'static str,
    /// `<instance>prov_config.json`.
    pub config: PathBuf,
    /// `<instance>prov_templates.json`.
    pub templates: PathBuf,
}

/// One of several providers behind one provider instance.
#[derive(Debug, Clone)]
pub struct MemberSpec {
    /// What the router needs of it (`providers[].name`, `type`, `priority`, `weight`,
    /// `cost_threshold`, and the settings handed to its guest).
    pub member: Member,
    /// Its guest instance (named after it: its own kv namespace and logs).
    pub guest: GuestSpec,
    /// Its EC2 client settings (aws).
    pub ec2: Option<Ec2Settings>,
    /// IBM's files it was read from (aws).
    pub ibm_files: Option<IbmFiles>,
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
        if !from_file && let Some((config_file, templates_file)) = ibm_azure::find(conf_dir, instance) {
            raw.ibm_azure = Some(RawAws {
                config_file,
                templates_file,
            });
        } else if !from_file && let Some((config_file, templates_file)) = ibm_aws::find(conf_dir, instance) {
            raw.aws = Some(RawAws {
                config_file,
                templates_file,
            });
        }
        if !from_file
            && raw.aws.is_none()
            && raw.inline_aws.is_none()
            && raw.ibm_azure.is_none()
            && !conf_dir.join("inventory.txt").exists()
        {
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
                    seed::SeedKind::Azure { files, region } => {
                        if raw.ibm_azure.is_none() {
                            let (config_file, templates_file) = seed_azure_files(conf_dir, instance, &first.name, files, &file)?;
                            raw.ibm_azure = Some(RawAws {
                                config_file,
                                templates_file,
                            });
                        }
                        raw.azure_region = region.clone();
                        raw.provider.guest = Some("azure".into());
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
        config.notes = seed.iter().filter_map(|p| p.note.clone()).collect();
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
}
