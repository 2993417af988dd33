//! IBM `awsprov_templates.json` templates (contract §3.1), parsed strictly: every key has
//! an effect here, or is refused with a message naming it.

use hfwasm_guest_sdk::ProviderError;
use serde_json::{Map, Value};

use crate::keys::nearest;

/// How a template buys capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PriceType {
    /// On-demand instances.
    OnDemand,
    /// Spot instances.
    Spot,
    /// Spot first, topped up with on-demand (`percentOnDemand` on-demand from the start).
    Heterogeneous,
}

/// One IBM template.
#[derive(Debug, Clone)]
pub struct AwsTemplate {
    pub id: String,
    pub max_number: i32,
    /// Attributes given in the file other than the computed `ncpus`/`nram`/`ncores`.
    pub attributes: Vec<(String, Value)>,
    pub image_id: String,
    pub subnet_ids: Vec<String>,
    /// Instance type -> weight (units per instance). One entry for `vmType`.
    pub vm_types: Vec<(String, u32)>,
    /// Whether the types came from the weighted `vmTypes` map.
    pub weighted: bool,
    pub vm_types_on_demand: Vec<(String, u32)>,
    pub vm_types_priority: Vec<(String, f64)>,
    pub price_type: PriceType,
    pub max_spot_price: Option<String>,
    pub allocation_strategy: Option<String>,
    pub allocation_strategy_on_demand: Option<String>,
    pub percent_on_demand: u32,
    pub key_name: Option<String>,
    pub security_group_ids: Vec<String>,
    pub instance_tags: Vec<(String, String)>,
    pub instance_profile: Option<String>,
    pub user_data: Option<String>,
    pub root_volume_size: Option<u32>,
    pub volume_type: Option<String>,
    pub iops: Option<u32>,
    pub launch_template_id: Option<String>,
    /// IAM role for Spot Fleet (`fleetRole`): spot and heterogeneous templates that name
    /// one launch through RequestSpotFleet instead of EC2 Fleet `instant`.
    pub fleet_role: Option<String>,
    /// Minutes a Spot Fleet or an Auto Scaling group keeps trying to launch
    /// (`spotFleetRequestExpiry`, default 30).
    pub fleet_expiry_mins: u32,
    /// LSF's `userData`, `k=v;k2=v2`: exported to the instance's user-data script (in
    /// place of `%EXPORT_USER_DATA%` in `userDataScript`, or as a script of its own).
    pub user_data_exports: Option<String>,
    /// `ebsOptimized`.
    pub ebs_optimized: Option<bool>,
    /// `placementGroupName`.
    pub placement_group: Option<String>,
    /// `tenancy`: `default`, `dedicated` or `host`.
    pub tenancy: Option<String>,
    /// `launchTemplateVersion` of `launchTemplateId`.
    pub launch_template_version: Option<String>,
    /// `interfaceType` (`efa`, `efa-only`, `interface`) and `efaCount` (default 1).
    pub interfaces: Option<(String, u32)>,
    /// ORB's `providerApi`: the EC2 API this template launches with, when it says.
    pub provider_api: Option<ProviderApi>,
    /// ORB's bookkeeping keys (`name`, `createdAt`, `updatedAt`), passed to HostFactory.
    pub extra: Vec<(String, Value)>,
}

/// ORB's `providerApi` values hfwasm launches with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderApi {
    /// RunInstances: one instance type, counted in instances.
    RunInstances,
    /// EC2 Fleet `instant`.
    Ec2Fleet,
    /// Spot Fleet `request` (needs `fleetRole`).
    SpotFleet,
    /// An EC2 Auto Scaling group per request (the seed's `handlers.types.asg`).
    Asg,
}

fn bad(id: &str, key: &str, why: &str) -> ProviderError {
    ProviderError::InvalidTemplate(format!("template '{id}': `{key}` {why}"))
}

fn string(id: &str, key: &str, v: &Value) -> Result<String, ProviderError> {
    match v {
        Value::String(s) if !s.trim().is_empty() => Ok(s.trim().to_string()),
        Value::Number(n) => Ok(n.to_string()),
        _ => Err(bad(id, key, "must be a non-empty string")),
    }
}

/// IBM's files write "" for an optional key that is not set.
fn unset(v: &Value) -> bool {
    v.is_null() || v.as_str().is_some_and(|s| s.trim().is_empty())
}

fn number(id: &str, key: &str, v: &Value, min: u64, max: u64) -> Result<u32, ProviderError> {
    let n = match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    };
    match n {
        Some(n) if (min..=max).contains(&n) => Ok(u32::try_from(n).unwrap_or(u32::MAX)),
        _ => Err(bad(id, key, &format!("must be a whole number in {min}..={max}"))),
    }
}

fn boolean(id: &str, key: &str, v: &Value) -> Result<bool, ProviderError> {
    match v {
        Value::Bool(b) => Ok(*b),
        Value::String(s) if s.trim().eq_ignore_ascii_case("true") => Ok(true),
        Value::String(s) if s.trim().eq_ignore_ascii_case("false") => Ok(false),
        _ => Err(bad(id, key, "must be true or false")),
    }
}

/// A list as a JSON list or a comma-separated string; empty entries (IBM's sample writes
/// `"securityGroupIds": [""]`) are not set.
fn list(id: &str, key: &str, v: &Value) -> Result<Vec<String>, ProviderError> {
    let items: Vec<String> = match v {
        Value::String(s) => s.split(',').map(|x| x.trim().to_string()).filter(|x| !x.is_empty()).collect(),
        Value::Array(a) => a
            .iter()
            .filter(|x| !unset(x))
            .map(|x| string(id, key, x))
            .collect::<Result<_, _>>()?,
        _ => return Err(bad(id, key, "must be a string, a comma-separated string or a list")),
    };
    Ok(items)
}

fn weights(id: &str, key: &str, v: &Value) -> Result<Vec<(String, u32)>, ProviderError> {
    let m = v
        .as_object()
        .ok_or_else(|| bad(id, key, "must be an object of instance type -> weight"))?;
    if m.is_empty() {
        return Err(bad(id, key, "is empty"));
    }
    m.iter()
        .map(|(t, w)| Ok((t.clone(), number(id, &format!("{key}.{t}"), w, 1, 1000)?)))
        .collect()
}

/// IBM's allocation strategy names mapped to EC2 Fleet's.
fn strategy(id: &str, key: &str, v: &Value, on_demand: bool) -> Result<String, ProviderError> {
    let s = string(id, key, v)?;
    let mapped = match (s.as_str(), on_demand) {
        ("lowestPrice", _) => "lowest-price",
        ("prioritized", true) => "prioritized",
        ("capacityOptimized", false) => "capacity-optimized",
        ("capacityOptimizedPrioritized", false) => "capacity-optimized-prioritized",
        ("diversified", false) => "diversified",
        ("priceCapacityOptimized", false) => "price-capacity-optimized",
        _ => {
            let allowed = if on_demand {
                "lowestPrice, prioritized"
            } else {
                "capacityOptimized, capacityOptimizedPrioritized, diversified, lowestPrice, priceCapacityOptimized"
            };
            return Err(bad(id, key, &format!("= {s} is not one of {allowed}")));
        }
    };
    Ok(mapped.to_string())
}

/// `k=v;k2=v2` (IBM), or an object of tag -> value (ORB's templates).
fn tags(id: &str, v: &Value) -> Result<Vec<(String, String)>, ProviderError> {
    let s = match v {
        Value::String(s) => s.clone(),
        Value::Object(m) => {
            return m
                .iter()
                .map(|(k, v)| match v {
                    Value::String(s) => Ok((k.clone(), s.clone())),
                    Value::Number(_) | Value::Bool(_) => Ok((k.clone(), v.to_string())),
                    _ => Err(bad(id, &format!("instanceTags.{k}"), "must be a string")),
                })
                .collect();
        }
        _ => return Err(bad(id, "instanceTags", "must be a string like \"k=v;k2=v2\"")),
    };
    s.split(';')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.trim().to_string())),
            _ => Err(bad(id, "instanceTags", &format!("entry `{p}` is not key=value"))),
        })
        .collect()
}

impl AwsTemplate {
    /// Parses one template object.
    pub fn parse(v: &Value) -> Result<Self, ProviderError> {
        let o: &Map<String, Value> = v
            .as_object()
            .ok_or_else(|| ProviderError::InvalidTemplate("a template is not a JSON object".into()))?;
        let id = match o.get("templateId") {
            Some(v) => string("?", "templateId", v)?,
            None => return Err(ProviderError::InvalidTemplate("a template has no `templateId`".into())),
        };
        let mut t = AwsTemplate {
            id: id.clone(),
            max_number: 0,
            attributes: Vec::new(),
            image_id: String::new(),
            subnet_ids: Vec::new(),
            vm_types: Vec::new(),
            weighted: false,
            vm_types_on_demand: Vec::new(),
            vm_types_priority: Vec::new(),
            price_type: PriceType::OnDemand,
            max_spot_price: None,
            allocation_strategy: None,
            allocation_strategy_on_demand: None,
            fleet_role: None,
            fleet_expiry_mins: 30,
            user_data_exports: None,
            ebs_optimized: None,
            placement_group: None,
            tenancy: None,
            launch_template_version: None,
            interfaces: None,
            provider_api: None,
            extra: Vec::new(),
            percent_on_demand: 0,
            key_name: None,
            security_group_ids: Vec::new(),
            instance_tags: Vec::new(),
            instance_profile: None,
            user_data: None,
            root_volume_size: None,
            volume_type: None,
            iops: None,
            launch_template_id: None,
        };
        let mut max_seen = false;
        let mut efa_count = None;
        let mut fleet_type = None;
        for (key, v) in o {
            let k = key.as_str();
            if k != "templateId" && k != "maxNumber" && unset(v) {
                // IBM: an empty optional key is not set.
                continue;
            }
            match k {
                "templateId" => {}
                "maxNumber" => {
                    let n = v.as_i64().ok_or_else(|| bad(&id, k, "must be a whole number"))?;
                    if !(-1..=100_000).contains(&n) {
                        return Err(bad(&id, k, "must be -1 (unlimited) or 0..=100000"));
                    }
                    t.max_number = i32::try_from(n).unwrap_or(i32::MAX);
                    max_seen = true;
                }
                "attributes" => {
                    let m = v.as_object().ok_or_else(|| bad(&id, k, "must be an object"))?;
                    for (name, val) in m {
                        if !matches!(name.as_str(), "ncpus" | "nram" | "ncores") {
                            t.attributes.push((name.clone(), val.clone()));
                        }
                    }
                }
                "imageId" => t.image_id = string(&id, k, v)?,
                "subnetId" => t.subnet_ids = list(&id, k, v)?,
                "vmType" => {
                    let types = list(&id, k, v)?;
                    t.vm_types = types.into_iter().map(|x| (x, 1)).collect();
                }
                "vmTypes" => {
                    t.vm_types = weights(&id, k, v)?;
                    t.weighted = true;
                }
                "vmTypesOnDemand" => t.vm_types_on_demand = weights(&id, k, v)?,
                "vmTypesPriority" => {
                    let m = v
                        .as_object()
                        .ok_or_else(|| bad(&id, k, "must be an object of instance type -> priority"))?;
                    for (ty, p) in m {
                        let p = p.as_f64().ok_or_else(|| bad(&id, &format!("{k}.{ty}"), "must be a number"))?;
                        t.vm_types_priority.push((ty.clone(), p));
                    }
                }
                "priceType" => {
                    t.price_type = match string(&id, k, v)?.as_str() {
                        "ondemand" => PriceType::OnDemand,
                        "spot" => PriceType::Spot,
                        "heterogeneous" => PriceType::Heterogeneous,
                        other => return Err(bad(&id, k, &format!("= {other} is not one of ondemand, spot, heterogeneous"))),
                    }
                }
                "maxSpotPrice" => t.max_spot_price = Some(string(&id, k, v)?),
                "allocationStrategy" => t.allocation_strategy = Some(strategy(&id, k, v, false)?),
                "allocationStrategyOnDemand" => t.allocation_strategy_on_demand = Some(strategy(&id, k, v, true)?),
                "percentOnDemand" => t.percent_on_demand = number(&id, k, v, 0, 100)?,
                "keyName" => t.key_name = Some(string(&id, k, v)?),
                "securityGroupIds" => t.security_group_ids = list(&id, k, v)?,
                "instanceTags" => t.instance_tags = tags(&id, v)?,
                "instanceProfile" => t.instance_profile = Some(string(&id, k, v)?),
                // The host read the script file named by `userDataScript` into `userDataContent`.
                "userDataScript" => {}
                "userDataContent" => t.user_data = Some(v.as_str().unwrap_or_default().to_string()),
                "rootDeviceVolumeSize" => t.root_volume_size = Some(number(&id, k, v, 1, 16_384)?),
                "volumeType" => {
                    let s = string(&id, k, v)?;
                    if !matches!(s.as_str(), "gp2" | "gp3" | "io1" | "io2" | "standard" | "st1" | "sc1") {
                        return Err(bad(&id, k, &format!("= {s} is not one of gp2, gp3, io1, io2, standard, st1, sc1")));
                    }
                    t.volume_type = Some(s);
                }
                "iops" => t.iops = Some(number(&id, k, v, 100, 256_000)?),
                "launchTemplateId" => t.launch_template_id = Some(string(&id, k, v)?),
                "fleetRole" => t.fleet_role = Some(string(&id, k, v)?),
                "spotFleetRequestExpiry" => t.fleet_expiry_mins = number(&id, k, v, 1, 10_080)?,
                "userData" => {
                    let s = v.as_str().ok_or_else(|| bad(&id, k, "must be a string like \"k=v;k2=v2\""))?;
                    t.user_data_exports = Some(s.trim().to_string());
                }
                "ebsOptimized" => t.ebs_optimized = Some(boolean(&id, k, v)?),
                "placementGroupName" => t.placement_group = Some(string(&id, k, v)?),
                "tenancy" => {
                    let s = string(&id, k, v)?;
                    if !matches!(s.as_str(), "default" | "dedicated" | "host") {
                        return Err(bad(&id, k, &format!("= {s} is not one of default, dedicated, host")));
                    }
                    t.tenancy = Some(s);
                }
                "launchTemplateVersion" => t.launch_template_version = Some(string(&id, k, v)?),
                "interfaceType" => {
                    let s = string(&id, k, v)?.to_ascii_lowercase();
                    if !matches!(s.as_str(), "efa" | "efa-only" | "interface") {
                        return Err(bad(&id, k, &format!("= {s} is not one of efa, efa-only, interface")));
                    }
                    t.interfaces = Some((s, 1));
                }
                "efaCount" => efa_count = Some(number(&id, k, v, 1, 32)?),
                "providerApi" => {
                    t.provider_api = Some(match string(&id, k, v)?.as_str() {
                        "RunInstances" => ProviderApi::RunInstances,
                        "EC2Fleet" => ProviderApi::Ec2Fleet,
                        "SpotFleet" => ProviderApi::SpotFleet,
                        "ASG" => ProviderApi::Asg,
                        other => {
                            return Err(bad(
                                &id,
                                k,
                                &format!("= {other} is not one of RunInstances, EC2Fleet, SpotFleet, ASG"),
                            ));
                        }
                    })
                }
                "fleetType" => fleet_type = Some(string(&id, k, v)?),
                "providerType" => {
                    let p = string(&id, k, v)?;
                    if p != "aws" {
                        return Err(bad(&id, k, &format!("= {p}: this is the AWS provider")));
                    }
                }
                "name" | "createdAt" | "updatedAt" => t.extra.push((k.to_string(), v.clone())),
                "poolsCount"
                | "ec2FleetConfig"
                | "onDemandTargetCapacityRatio"
                | "durationInHours"
                | "requestValidity"
                | "spotPrice"
                | "priority"
                | "ttl" => {
                    return Err(bad(
                        &id,
                        k,
                        &format!("is not supported by hfwasm's AWS provider: {}", unsupported_why(k)),
                    ));
                }
                _ => {
                    return Err(bad(&id, k, &format!("is not a template key{}", nearest(k))));
                }
            }
        }
        if !max_seen {
            return Err(bad(&id, "maxNumber", "is required"));
        }
        match (&mut t.interfaces, efa_count) {
            (Some((_, n)), Some(c)) => *n = c,
            (None, Some(_)) => return Err(bad(&id, "efaCount", "needs interfaceType efa")),
            _ => {}
        }
        // ORB's launch API and fleet type, checked against what hfwasm launches with.
        match (t.provider_api, fleet_type.as_deref()) {
            (_, Some("maintain")) => {
                return Err(bad(
                    &id,
                    "fleetType",
                    "= maintain: a fleet that replaces instances behind HostFactory's back is not supported; use instant (EC2Fleet) or request (SpotFleet)",
                ));
            }
            (Some(ProviderApi::Ec2Fleet), Some("request")) | (None, Some("request"))
                if t.provider_api.is_some() || t.fleet_role.is_none() =>
            {
                return Err(bad(
                    &id,
                    "fleetType",
                    "= request: hfwasm's EC2 Fleets are instant; for a fleet that fills over time use providerApi SpotFleet with a fleetRole",
                ));
            }
            (_, Some(ft)) if !matches!(ft, "instant" | "request") => {
                return Err(bad(&id, "fleetType", &format!("= {ft} is not one of instant, request")));
            }
            _ => {}
        }
        match t.provider_api {
            Some(ProviderApi::SpotFleet) if t.fleet_role.is_none() => {
                return Err(bad(
                    &id,
                    "providerApi",
                    "= SpotFleet needs a fleetRole (IAM role ARN for Spot Fleet)",
                ));
            }
            Some(ProviderApi::SpotFleet) if t.price_type == PriceType::OnDemand => {
                return Err(bad(&id, "providerApi", "= SpotFleet needs priceType spot or heterogeneous"));
            }
            Some(ProviderApi::RunInstances)
                if t.vm_types.len() != 1 || !t.vm_types_on_demand.is_empty() || t.price_type == PriceType::Heterogeneous =>
            {
                return Err(bad(
                    &id,
                    "providerApi",
                    "= RunInstances launches one instance type, on-demand or spot: give one type, or use EC2Fleet",
                ));
            }
            Some(ProviderApi::Asg) if t.allocation_strategy.as_deref() == Some("diversified") => {
                return Err(bad(
                    &id,
                    "allocationStrategy",
                    "= diversified is not an Auto Scaling spot strategy (lowestPrice, capacityOptimized, capacityOptimizedPrioritized, priceCapacityOptimized)",
                ));
            }
            Some(ProviderApi::RunInstances | ProviderApi::Ec2Fleet | ProviderApi::Asg)
                if t.fleet_role.is_some() && t.price_type != PriceType::OnDemand =>
            {
                // A fleetRole would select Spot Fleet; the template asked for another API.
                t.fleet_role = None;
            }
            _ => {}
        }
        if t.launch_template_version.is_some() && t.launch_template_id.is_none() {
            return Err(bad(&id, "launchTemplateVersion", "needs launchTemplateId"));
        }
        if t.uses_spot_fleet() && t.interfaces.is_some() {
            return Err(bad(
                &id,
                "interfaceType",
                "is not supported with fleetRole (Spot Fleet); drop fleetRole to launch through EC2 Fleet",
            ));
        }
        if t.image_id.is_empty() && t.launch_template_id.is_none() {
            return Err(bad(&id, "imageId", "is required (or give launchTemplateId)"));
        }
        if t.vm_types.is_empty() {
            return Err(bad(&id, "vmType", "is required (or give vmTypes)"));
        }
        if t.iops.is_some() && !matches!(t.volume_type.as_deref(), Some("io1" | "io2" | "gp3")) {
            return Err(bad(&id, "iops", "needs volumeType io1, io2 or gp3"));
        }
        if t.uses_spot_fleet() && t.launch_template_id.is_some() {
            return Err(bad(
                &id,
                "launchTemplateId",
                "is not supported with fleetRole (Spot Fleet launch specifications are built from the template's own keys); drop one of them",
            ));
        }
        Ok(t)
    }

    /// Every instance type the template may launch.
    pub fn all_types(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .vm_types
            .iter()
            .chain(self.vm_types_on_demand.iter())
            .map(|(t, _)| t.clone())
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// Units one instance of `instance_type` counts for.
    pub fn weight(&self, instance_type: &str) -> u32 {
        self.vm_types
            .iter()
            .chain(self.vm_types_on_demand.iter())
            .find(|(t, _)| t == instance_type)
            .map_or(1, |(_, w)| *w)
    }

    /// Whether Spot Fleet launches this template: a `fleetRole` with spot or heterogeneous
    /// pricing (or ORB's `providerApi: SpotFleet`, which needs both).
    pub fn uses_spot_fleet(&self) -> bool {
        self.fleet_role.is_some() && self.price_type != PriceType::OnDemand
    }

    /// Whether an Auto Scaling group per request launches this template (ORB's
    /// `providerApi: ASG`).
    pub fn uses_asg(&self) -> bool {
        self.provider_api == Some(ProviderApi::Asg)
    }

    /// Whether RunInstances (one type, on-demand or plain spot) launches this template:
    /// ORB's `providerApi` when given, else one type, not weighted, no separate on-demand
    /// types.
    pub fn single_type(&self) -> bool {
        match self.provider_api {
            Some(ProviderApi::RunInstances) => true,
            Some(_) => false,
            None => {
                self.vm_types.len() == 1
                    && !self.weighted
                    && self.vm_types_on_demand.is_empty()
                    && self.price_type != PriceType::Heterogeneous
            }
        }
    }
}

/// Why an LSF-only key is refused.
fn unsupported_why(key: &str) -> &'static str {
    match key {
        "spotPrice" => "write maxSpotPrice",
        "durationInHours" => "EC2 no longer sells spot blocks (defined-duration spot instances)",
        "requestValidity" => "write spotFleetRequestExpiry (minutes) with a fleetRole",
        "ec2FleetConfig" => "EC2 Fleet requests are built from the template's own keys",
        "fleetType" => "EC2 Fleet is always `instant`; a fleetRole selects Spot Fleet",
        "poolsCount" | "onDemandTargetCapacityRatio" => "use allocationStrategy and percentOnDemand",
        _ => "it has no effect on how EC2 launches instances",
    }
}

/// The templates of the guest settings (`{"templates": [...]}`) that parse, and a message
/// for each that does not: one bad template must not take the others with it. Ids must be
/// unique (a repeat is a problem; the first stays).
pub fn parse_lenient(settings: &Value) -> Result<(Vec<AwsTemplate>, Vec<String>), ProviderError> {
    let list = settings
        .get("templates")
        .and_then(Value::as_array)
        .ok_or_else(|| ProviderError::InvalidInput("settings carry no `templates` list (IBM awsprov_templates.json)".into()))?;
    let mut out: Vec<AwsTemplate> = Vec::with_capacity(list.len());
    let mut problems = Vec::new();
    for (i, v) in list.iter().enumerate() {
        match AwsTemplate::parse(v) {
            Ok(t) if out.iter().any(|o| o.id == t.id) => problems.push(format!("templates[{i}]: template '{}' is defined twice", t.id)),
            Ok(t) => out.push(t),
            Err(ProviderError::InvalidTemplate(m) | ProviderError::InvalidInput(m)) => problems.push(format!("templates[{i}]: {m}")),
            Err(e) => return Err(e),
        }
    }
    Ok((out, problems))
}

/// The templates that parse; an error only when templates are given and none parses.
/// The others' problems go to the log.
pub fn parse_all(settings: &Value) -> Result<Vec<AwsTemplate>, ProviderError> {
    let (good, problems) = parse_lenient(settings)?;
    for p in &problems {
        hfwasm_guest_sdk::warn(&format!("template skipped: {p}"));
    }
    if good.is_empty() && !problems.is_empty() {
        return Err(ProviderError::InvalidTemplate(problems.join("; ")));
    }
    Ok(good)
}
