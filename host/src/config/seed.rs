//! The seed's v2 provider section, read as it is: `version`, `provider.active_provider`,
//! `provider.selection_policy`, `provider.health_check_interval` and `provider.providers[]`
//! (`name`, `type`, `enabled`, `priority`, `weight`, `config` {`region`, `profile`,
//! `max_retries`, `timeout`, `cost_threshold`, `handlers`}). Every key either has its effect
//! or is refused with the reason. Several enabled providers are served behind one
//! HostFactory provider by the router (`service::routing`); hfwasm adds `config.config_file`
//! and `config.templates_file` (IBM's files for that provider, when it needs its own, e.g.
//! another region's subnets and images).

use serde::Deserialize;

/// One entry of `provider.providers`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSeedProvider {
    name: String,
    #[serde(rename = "type")]
    kind: String,
    enabled: Option<bool>,
    priority: Option<u32>,
    weight: Option<u32>,
    #[serde(default)]
    config: RawSeedProviderConfig,
}

impl RawSeedProvider {
    /// `type`, as written.
    pub fn kind(&self) -> &str {
        &self.kind
    }
}

/// `provider.providers[].config`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSeedProviderConfig {
    region: Option<String>,
    profile: Option<String>,
    max_retries: Option<u32>,
    timeout: Option<u64>,
    cost_threshold: Option<f64>,
    handlers: Option<serde_json::Value>,
    /// hfwasm's: this provider's own IBM config file (relative to the conf dir).
    config_file: Option<std::path::PathBuf>,
    /// hfwasm's: this provider's own IBM templates file (relative to the conf dir).
    templates_file: Option<std::path::PathBuf>,
    /// A `vmware` provider's vCenter (scenario 5): not contacted, see [`SeedKind::Onprem`].
    vcenter_host: Option<String>,
    /// A `vmware` provider's datacenter: not contacted either.
    datacenter: Option<String>,
}

/// Selection policies of the seed (the incumbent names ten and implements three).
pub const SELECTION_POLICIES: [&str; 3] = ["PRIORITY_FAILOVER", "COST_OPTIMIZED", "WEIGHTED"];

/// The EC2 APIs the AWS guest chooses among per template; `handlers.types` values must be
/// among them.
const HANDLERS: [&str; 4] = ["RunInstances", "EC2Fleet", "SpotFleet", "ASG"];

/// One enabled provider of the seed section.
#[derive(Debug, Clone, PartialEq)]
pub struct SeedProvider {
    /// `name`.
    pub name: String,
    /// `type`: `aws` or `onprem`.
    pub kind: SeedKind,
    /// `priority` (lower first; default: its position, from 1); the `active_provider`
    /// counts as 0, so it is tried first.
    pub priority: u32,
    /// `weight` (default 100).
    pub weight: u32,
    /// `config.cost_threshold`.
    pub cost_threshold: Option<f64>,
    /// How it is served, when that is not what its type says (a `vmware` entry).
    pub note: Option<String>,
}

/// What a seed provider runs on.
#[derive(Debug, Clone, PartialEq)]
pub enum SeedKind {
    /// The built-in AWS guest; the overrides apply on top of IBM's config file.
    Aws {
        /// `config.region` (AWS_REGION).
        region: Option<String>,
        /// `config.profile`: the AWS profile for credentials.
        profile: Option<String>,
        /// `config.max_retries`: retries of throttled calls.
        max_retries: Option<u32>,
        /// `config.timeout`: connection timeout, seconds.
        timeout_secs: Option<u64>,
        /// `config.config_file` and `config.templates_file`: its own IBM files, when set.
        files: (Option<std::path::PathBuf>, Option<std::path::PathBuf>),
    },
    /// The built-in Azure guest with IBM's Azure files; `config.region` overrides AZURE_REGION.
    Azure {
        /// `config.region` (AZURE_REGION).
        region: Option<String>,
        /// `config.config_file` and `config.templates_file`: its own IBM files, when set.
        files: (Option<std::path::PathBuf>, Option<std::path::PathBuf>),
    },
    /// The built-in on-prem pool guest (`onprem`; also `vmware` until a vSphere guest
    /// exists: its hosts come from the inventory file, vCenter is not contacted).
    Onprem,
}

/// The enabled providers of the seed's section, in config order; `err(setting, message)`
/// names the key.
pub fn select<E>(
    active: Option<&str>,
    selection_policy: Option<&str>,
    health_check_interval: Option<u64>,
    providers: &[RawSeedProvider],
    err: impl Fn(&str, String) -> E,
) -> Result<Vec<SeedProvider>, E> {
    if let Some(p) = selection_policy
        && !SELECTION_POLICIES.contains(&p)
    {
        return Err(err(
            "provider.selection_policy",
            format!("`{p}` is not implemented; use one of {}", SELECTION_POLICIES.join(", ")),
        ));
    }
    if health_check_interval == Some(0) {
        return Err(err(
            "provider.health_check_interval",
            "0 seconds: give the seconds between `hfwasm serve`'s reconciler passes, or leave the key out (30)".into(),
        ));
    }
    let enabled: Vec<(usize, &RawSeedProvider)> = providers.iter().enumerate().filter(|(_, p)| p.enabled.unwrap_or(true)).collect();
    let names = || enabled.iter().map(|(_, p)| p.name.as_str()).collect::<Vec<_>>().join(", ");
    if enabled.is_empty() {
        return Err(err("provider.providers", "no provider is enabled".into()));
    }
    if let Some(a) = active
        && !enabled.iter().any(|(_, p)| p.name == a)
    {
        return Err(err(
            "provider.active_provider",
            format!("`{a}` is not an enabled provider (enabled: {})", names()),
        ));
    }
    let several = enabled.len() > 1;
    let mut out: Vec<SeedProvider> = Vec::new();
    for (i, p) in enabled.iter().copied() {
        let at = |k: &str| format!("provider.providers[{i}].{k}");
        if out.iter().any(|o| o.name == p.name) {
            return Err(err(&at("name"), format!("`{}` names two providers; names must be unique", p.name)));
        }
        if p.name.is_empty() || p.name.contains('/') {
            return Err(err(&at("name"), "must be a non-empty name without `/`".into()));
        }
        let c = &p.config;
        if c.cost_threshold.is_some() && !several {
            return Err(err(
                &at("config.cost_threshold"),
                "only placement among several enabled providers (COST_OPTIMIZED) reads it, and this is the only one: remove it".into(),
            ));
        }
        if let Some(t) = c.cost_threshold
            && !(t.is_finite() && t >= 0.0)
        {
            return Err(err(&at("config.cost_threshold"), format!("{t} is not a price per host-hour")));
        }
        if let Some(h) = &c.handlers {
            let types = h.get("types").and_then(|t| t.as_object());
            let Some(types) = types.filter(|_| h.as_object().is_some_and(|o| o.len() == 1)) else {
                return Err(err(&at("config.handlers"), "expected {\"types\": {\"<key>\": \"<API>\"}}".into()));
            };
            for (k, v) in types {
                match v.as_str() {
                    Some(api) if HANDLERS.contains(&api) => {}
                    _ => {
                        return Err(err(
                            &at(&format!("config.handlers.types.{k}")),
                            format!("{v} is not an EC2 API hfwasm uses ({})", HANDLERS.join(", ")),
                        ));
                    }
                }
            }
        }
        let kind = match p.kind.as_str() {
            "aws" | "azure" if c.vcenter_host.is_some() || c.datacenter.is_some() => {
                return Err(err(
                    &at("config"),
                    format!("vcenter_host and datacenter belong to a `vmware` provider, not `{}`", p.kind),
                ));
            }
            "azure" => {
                if let Some((k, _)) = [
                    ("profile", c.profile.is_some()),
                    ("max_retries", c.max_retries.is_some()),
                    ("timeout", c.timeout.is_some()),
                    ("handlers", c.handlers.is_some()),
                ]
                .into_iter()
                .find(|(_, set)| *set)
                {
                    return Err(err(
                        &at(&format!("config.{k}")),
                        "is an AWS setting; an azure provider takes region, cost_threshold, config_file and templates_file (IBM's azureprov files)".into(),
                    ));
                }
                SeedKind::Azure {
                    region: c.region.clone(),
                    files: (c.config_file.clone(), c.templates_file.clone()),
                }
            }
            "aws" => SeedKind::Aws {
                region: c.region.clone(),
                profile: c.profile.clone(),
                max_retries: c.max_retries,
                timeout_secs: c.timeout,
                files: (c.config_file.clone(), c.templates_file.clone()),
            },
            // vmware is the on-prem pool until a vSphere guest exists (its `note` says so).
            kind @ ("onprem" | "vmware") => {
                let cloud_keys = c.region.is_some()
                    || c.profile.is_some()
                    || c.max_retries.is_some()
                    || c.timeout.is_some()
                    || c.handlers.is_some()
                    || c.config_file.is_some()
                    || c.templates_file.is_some();
                if cloud_keys {
                    return Err(err(
                        &at("config"),
                        format!(
                            "a {kind} provider takes no cloud settings (region, profile, max_retries, timeout, handlers, config_file, templates_file)"
                        ),
                    ));
                }
                if kind == "onprem" && (c.vcenter_host.is_some() || c.datacenter.is_some()) {
                    return Err(err(
                        &at("config"),
                        "vcenter_host and datacenter belong to a `vmware` provider".into(),
                    ));
                }
                if out.iter().any(|o| o.kind == SeedKind::Onprem) {
                    return Err(err(
                        &at("type"),
                        format!(
                            "a {kind} provider is served by the on-prem pool and one is already enabled: there is one inventory file (`inventory.file`), so one pool provider"
                        ),
                    ));
                }
                SeedKind::Onprem
            }
            other => {
                return Err(err(
                    &at("type"),
                    format!(
                        "`{other}` is not a provider type hfwasm has built in (aws, azure, onprem; vmware is served by onprem); a site's own provider is a guest (`guests`, `provider.guest`)"
                    ),
                ));
            }
        };
        let position = u32::try_from(out.len() + 1).unwrap_or(u32::MAX);
        out.push(SeedProvider {
            priority: if active == Some(p.name.as_str()) {
                0
            } else {
                p.priority.unwrap_or(position)
            },
            weight: p.weight.unwrap_or(100),
            cost_threshold: c.cost_threshold,
            note: (p.kind == "vmware").then(|| {
                format!(
                    "provider `{}` (provider.providers[{i}], type vmware, vCenter {}, datacenter {}) is served by the on-prem pool guest from the inventory file until a vSphere guest exists; vCenter is not contacted",
                    p.name,
                    c.vcenter_host.as_deref().unwrap_or("(none)"),
                    c.datacenter.as_deref().unwrap_or("(none)")
                )
            }),
            name: p.name.clone(),
            kind,
        });
    }
    Ok(out)
}

/// Seed 001's YAML templates (`template_id`, `max_number`, `attributes` holding the
/// provider's keys in snake_case: `vm_type`, `image_id`, `subnet_id`, ...) in IBM's template
/// format (`templateId`, `maxNumber`, `vmType`, `imageId`, `subnetId`, ...), which the AWS
/// guest reads and checks key by key. Errors are (setting, message).
pub fn yaml_templates(list: &[serde_json::Value]) -> Result<serde_json::Value, (String, String)> {
    let camel = |k: &str| {
        let mut out = String::new();
        let mut up = false;
        for ch in k.chars() {
            if ch == '_' {
                up = true;
            } else if up {
                out.extend(ch.to_uppercase());
                up = false;
            } else {
                out.push(ch);
            }
        }
        out
    };
    let mut out = Vec::new();
    for (i, t) in list.iter().enumerate() {
        let at = |k: &str| format!("templates[{i}].{k}");
        let Some(obj) = t.as_object() else {
            return Err((format!("templates[{i}]"), "must be a mapping".into()));
        };
        let mut ibm = serde_json::Map::new();
        for (k, v) in obj {
            match k.as_str() {
                "template_id" => {
                    ibm.insert("templateId".into(), v.clone());
                }
                "max_number" => {
                    ibm.insert("maxNumber".into(), v.clone());
                }
                "attributes" => {
                    let Some(attrs) = v.as_object() else {
                        return Err((
                            at("attributes"),
                            "must be a mapping of provider keys (vm_type, image_id, subnet_id, ...)".into(),
                        ));
                    };
                    for (ak, av) in attrs {
                        ibm.insert(camel(ak), av.clone());
                    }
                }
                other => return Err((at(other), "unknown key (known: template_id, max_number, attributes)".into())),
            }
        }
        if !ibm.contains_key("templateId") {
            return Err((at("template_id"), "is required".into()));
        }
        out.push(serde_json::Value::Object(ibm));
    }
    Ok(serde_json::Value::Array(out))
}
