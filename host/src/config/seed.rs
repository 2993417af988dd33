//! The seed's v2 provider section, read as it is: `version`, `provider.active_provider`,
//! `provider.selection_policy`, `provider.health_check_interval` and `provider.providers[]`
//! (`name`, `type`, `enabled`, `priority`, `weight`, `config` {`region`, `profile`,
//! `max_retries`, `timeout`, `cost_threshold`, `handlers`}). One enabled provider is served
//! today; every key either has its effect or is refused with the reason.

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
}

/// Selection policies of the seed (the incumbent names ten and implements three).
pub const SELECTION_POLICIES: [&str; 3] = ["PRIORITY_FAILOVER", "COST_OPTIMIZED", "WEIGHTED"];

/// The EC2 APIs the AWS guest chooses among per template; `handlers.types` values must be
/// among them.
const HANDLERS: [&str; 3] = ["RunInstances", "EC2Fleet", "SpotFleet"];

/// The provider the seed section selects.
#[derive(Debug, Clone, PartialEq)]
pub struct SeedProvider {
    /// `name`.
    pub name: String,
    /// `type`: `aws` or `onprem`.
    pub kind: SeedKind,
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
    },
    /// The built-in on-prem pool guest.
    Onprem,
}

/// Picks the provider from the seed's section; `err(setting, message)` names the key.
pub fn select<E>(
    active: Option<&str>,
    selection_policy: Option<&str>,
    health_check_interval: Option<u64>,
    providers: &[RawSeedProvider],
    err: impl Fn(&str, String) -> E,
) -> Result<SeedProvider, E> {
    if let Some(p) = selection_policy
        && !SELECTION_POLICIES.contains(&p)
    {
        return Err(err(
            "provider.selection_policy",
            format!("`{p}` is not implemented; use one of {}", SELECTION_POLICIES.join(", ")),
        ));
    }
    if health_check_interval.is_some() {
        return Err(err(
            "provider.health_check_interval",
            "hfwasm probes no provider in the background (every HostFactory call is a new process); the circuit breaker's recovery_timeout decides when a failed provider is tried again. Remove this key".into(),
        ));
    }
    let enabled: Vec<(usize, &RawSeedProvider)> = providers.iter().enumerate().filter(|(_, p)| p.enabled.unwrap_or(true)).collect();
    let names = || enabled.iter().map(|(_, p)| p.name.as_str()).collect::<Vec<_>>().join(", ");
    let (i, p) = match enabled.as_slice() {
        [] => return Err(err("provider.providers", "no provider is enabled".into())),
        [one] => *one,
        _ => {
            return Err(err(
                "provider.providers",
                format!(
                    "{} providers are enabled ({}); serving several behind one HostFactory provider (selection_policy, failover) is not implemented yet: enable one",
                    enabled.len(),
                    names()
                ),
            ));
        }
    };
    if let Some(a) = active
        && a != p.name
    {
        return Err(err(
            "provider.active_provider",
            format!("`{a}` is not an enabled provider (enabled: {})", names()),
        ));
    }
    let at = |k: &str| format!("provider.providers[{i}].{k}");
    // With one provider there is nothing to order or weigh; the keys are read for when
    // there are several, and checked now.
    let _ = (p.priority, p.weight);
    let c = &p.config;
    if c.cost_threshold.is_some() {
        return Err(err(
            &at("config.cost_threshold"),
            "only COST_OPTIMIZED selection among several providers uses it, which is not implemented yet: remove it".into(),
        ));
    }
    if let Some(h) = &c.handlers {
        let types = h.get("types").and_then(|t| t.as_object());
        let Some(types) = types.filter(|_| h.as_object().is_some_and(|o| o.len() == 1)) else {
            return Err(err(&at("config.handlers"), "expected {\"types\": {\"<key>\": \"<API>\"}}".into()));
        };
        for (k, v) in types {
            match v.as_str() {
                Some(api) if HANDLERS.contains(&api) => {}
                Some("ASG") => {
                    return Err(err(
                        &at(&format!("config.handlers.types.{k}")),
                        "Auto Scaling groups are not supported; the AWS guest launches with RunInstances, EC2 Fleet or Spot Fleet, chosen per template".into(),
                    ));
                }
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
        "aws" => SeedKind::Aws {
            region: c.region.clone(),
            profile: c.profile.clone(),
            max_retries: c.max_retries,
            timeout_secs: c.timeout,
        },
        "onprem" => {
            if c.region.is_some() || c.profile.is_some() || c.max_retries.is_some() || c.timeout.is_some() || c.handlers.is_some() {
                return Err(err(&at("config"), "an onprem provider takes no AWS settings".into()));
            }
            SeedKind::Onprem
        }
        other => {
            return Err(err(
                &at("type"),
                format!(
                    "`{other}` is not a provider type hfwasm has built in (aws, onprem); a site's own provider is a guest (`guests`, `provider.guest`)"
                ),
            ));
        }
    };
    Ok(SeedProvider {
        name: p.name.clone(),
        kind,
    })
}
