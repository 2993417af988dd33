//! Launching capacity: RunInstances for single-type templates, EC2 Fleet `instant` for
//! weighted, spot and heterogeneous ones, Spot Fleet for templates with a `fleetRole`, an
//! Auto Scaling group for `providerApi: ASG`, and the launch settings they share.

use hfwasm_guest_sdk::*;
use hfwasm_guest_sdk::{autoscaling, ec2};

use crate::ec2_err;
use crate::template::{AwsTemplate, PriceType};

/// The instance's user data: `userDataScript`'s content with `%EXPORT_USER_DATA%` replaced
/// by the exports IBM's plugin writes there (LSF's `userData` pairs, `rc_account`,
/// `template_id`, `providerName`), or those exports as a script of their own when the
/// template gives `userData` without a script.
pub fn user_data(t: &AwsTemplate, req: &ProvisionRequest, provider: &str) -> Option<String> {
    let mut exports = String::new();
    if let Some(pairs) = t.user_data_exports.as_deref().filter(|p| !p.is_empty()) {
        exports.push_str(&format!("export {};", pairs.replace(';', " ")));
    }
    if let Some(acct) = req.rc_account.as_deref().filter(|a| !a.is_empty()) {
        exports.push_str(&format!("export rc_account={acct};"));
    }
    exports.push_str(&format!("export template_id={};export providerName={provider};", t.id));
    match (&t.user_data, &t.user_data_exports) {
        (Some(script), _) => Some(script.replace("%EXPORT_USER_DATA%", &exports)),
        (None, Some(_)) => Some(format!("#!/bin/sh\n{exports}\n")),
        (None, None) => None,
    }
}

/// The launch settings of template `t` for request `req` of provider instance `provider`.
pub fn spec(t: &AwsTemplate, req: &ProvisionRequest, provider: &str) -> ec2::LaunchSpec {
    ec2::LaunchSpec {
        image_id: t.image_id.clone(),
        subnet_ids: t.subnet_ids.clone(),
        security_group_ids: t.security_group_ids.clone(),
        key_name: t.key_name.clone(),
        instance_profile_arn: t.instance_profile.clone(),
        user_data: user_data(t, req, provider),
        tags: t
            .instance_tags
            .iter()
            .map(|(k, v)| ec2::Tag {
                key: k.clone(),
                value: v.clone(),
            })
            .collect(),
        root_volume: (t.root_volume_size.is_some() || t.volume_type.is_some()).then(|| ec2::RootVolume {
            size_gib: t.root_volume_size,
            volume_type: t.volume_type.clone(),
            iops: t.iops,
        }),
        launch_template_id: t.launch_template_id.clone(),
        launch_template_version: t.launch_template_version.clone(),
        ebs_optimized: t.ebs_optimized,
        placement: (t.placement_group.is_some() || t.tenancy.is_some()).then(|| ec2::Placement {
            group_name: t.placement_group.clone(),
            tenancy: t.tenancy.clone(),
        }),
        network_interfaces: t.interfaces.as_ref().map(|(kind, count)| ec2::NetworkInterfaces {
            interface_type: kind.clone(),
            count: *count,
        }),
    }
}

fn overrides(t: &AwsTemplate, types: &[(String, u32)]) -> Vec<ec2::FleetOverride> {
    let mut out = Vec::new();
    for (ty, w) in types {
        let priority = t.vm_types_priority.iter().find(|(p, _)| p == ty).map(|(_, p)| *p);
        // No subnet given: one override per type, in the default VPC's default subnet.
        let subnets: Vec<Option<String>> = if t.subnet_ids.is_empty() {
            vec![None]
        } else {
            t.subnet_ids.iter().cloned().map(Some).collect()
        };
        for subnet in subnets {
            out.push(ec2::FleetOverride {
                instance_type: ty.clone(),
                subnet_id: subnet,
                weight: Some(f64::from(*w)),
                priority,
                max_price: None,
            });
        }
    }
    out
}

/// What one launch produced.
#[derive(Default)]
pub struct Launched {
    /// Instances as RunInstances described them (no describe needed).
    pub instances: Vec<ec2::Instance>,
    /// Ids a fleet launched (to be described).
    pub ids: Vec<String>,
    /// Capacity errors for units that could not be had.
    pub errors: Vec<String>,
    /// The Spot Fleet still filling, if one was requested.
    pub fleet: Option<String>,
    /// The Auto Scaling group made for the request, if one was (it fills over time).
    pub group: Option<autoscaling::Group>,
}

/// Launches `want` units for `req`.
pub fn launch(t: &AwsTemplate, req: &ProvisionRequest, want: u32, now: u64, provider: &str) -> Result<Launched, ProviderError> {
    if t.uses_spot_fleet() {
        return spot_fleet(t, req, want, now, provider);
    }
    if t.uses_asg() {
        return group(t, req, want, now, provider);
    }
    if t.single_type() {
        // `want` is in units; one instance of a weighted type (ORB's `{"t3.medium": 2}`)
        // counts for its weight.
        let (instance_type, weight) = t.vm_types[0].clone();
        let run = ec2::RunRequest {
            request_id: req.request_id.clone(),
            template_id: t.id.clone(),
            instance_type,
            count: want.div_ceil(weight.max(1)),
            spec: spec(t, req, provider),
            spot_max_price: (t.price_type == PriceType::Spot).then(|| t.max_spot_price.clone().unwrap_or_default()),
        };
        return match ec2::run_instances(&run) {
            Ok(instances) => Ok(Launched {
                instances,
                ..Launched::default()
            }),
            Err(e) => Err(ec2_err("RunInstances", e)),
        };
    }
    let on_demand = match t.price_type {
        PriceType::OnDemand => want,
        PriceType::Spot | PriceType::Heterogeneous => want * t.percent_on_demand / 100,
    };
    let mut out = Launched::default();
    // Spot (and, without separate on-demand types, the on-demand share) in one fleet.
    let first_od = if t.vm_types_on_demand.is_empty() { on_demand } else { 0 };
    let first_total = if t.vm_types_on_demand.is_empty() { want } else { want - on_demand };
    if first_total > 0 {
        let r = fleet(t, req, &t.vm_types, first_total, first_od, provider)?;
        out.ids.extend(r.instance_ids);
        out.errors
            .extend(r.errors.into_iter().map(|f| format!("{}: {}", f.code, f.message)));
    }
    if !t.vm_types_on_demand.is_empty() && on_demand > 0 {
        let r = fleet(t, req, &t.vm_types_on_demand, on_demand, on_demand, provider)?;
        out.ids.extend(r.instance_ids);
        out.errors
            .extend(r.errors.into_iter().map(|f| format!("{}: {}", f.code, f.message)));
    }
    Ok(out)
}

pub fn fleet(
    t: &AwsTemplate,
    req: &ProvisionRequest,
    types: &[(String, u32)],
    total: u32,
    on_demand: u32,
    provider: &str,
) -> Result<ec2::FleetResult, ProviderError> {
    let f = ec2::FleetRequest {
        request_id: req.request_id.clone(),
        template_id: t.id.clone(),
        spec: spec(t, req, provider),
        overrides: overrides(t, types),
        total_units: total,
        on_demand_units: on_demand,
        spot_allocation_strategy: Some(t.allocation_strategy.clone().unwrap_or_else(|| "lowest-price".into())),
        on_demand_allocation_strategy: t.allocation_strategy_on_demand.clone(),
        spot_max_price: t.max_spot_price.clone(),
    };
    ec2::create_fleet(&f).map_err(|e| ec2_err("CreateFleet", e))
}

/// kv key of the Spot Fleet launched for request `request_id` (value `sfr-id,valid-until`).
pub fn fleet_key(request_id: &str) -> String {
    format!("sfr/{request_id}")
}

/// Every type of `t` with its weight in one list (spot types first, then the on-demand
/// ones not among them), for launch methods with one list of types (Spot Fleet, groups).
fn one_list(t: &AwsTemplate) -> Vec<(String, u32)> {
    let mut types = t.vm_types.clone();
    types.extend(
        t.vm_types_on_demand
            .iter()
            .filter(|(ty, _)| !t.vm_types.iter().any(|(x, _)| x == ty))
            .cloned(),
    );
    types
}

/// Spot Fleet spells allocation strategies in camel case; templates are parsed to EC2
/// Fleet's kebab case.
fn spot_fleet_strategy(kebab: Option<&str>) -> String {
    match kebab.unwrap_or("lowest-price") {
        "diversified" => "diversified",
        "capacity-optimized" => "capacityOptimized",
        "capacity-optimized-prioritized" => "capacityOptimizedPrioritized",
        "price-capacity-optimized" => "priceCapacityOptimized",
        _ => "lowestPrice",
    }
    .to_string()
}

/// Requests a Spot Fleet for `want` units (the heterogeneous on-demand share inside it) and
/// records it in kv; instances arrive over time and are picked up by status calls.
fn spot_fleet(t: &AwsTemplate, req: &ProvisionRequest, want: u32, now: u64, provider: &str) -> Result<Launched, ProviderError> {
    let on_demand = match t.price_type {
        PriceType::Heterogeneous => want * t.percent_on_demand / 100,
        PriceType::OnDemand | PriceType::Spot => 0,
    };
    let types = one_list(t);
    let valid_until = now + u64::from(t.fleet_expiry_mins) * 60;
    let r = ec2::SpotFleetRequest {
        request_id: req.request_id.clone(),
        template_id: t.id.clone(),
        spec: spec(t, req, provider),
        overrides: overrides(t, &types),
        total_units: want,
        on_demand_units: on_demand,
        fleet_role: t.fleet_role.clone().unwrap_or_default(),
        allocation_strategy: spot_fleet_strategy(t.allocation_strategy.as_deref()),
        spot_max_price: t.max_spot_price.clone(),
        valid_until: Some(valid_until),
    };
    let fleet = ec2::request_spot_fleet(&r).map_err(|e| ec2_err("RequestSpotFleet", e))?;
    kv::set(&fleet_key(&req.request_id), &format!("{fleet},{valid_until}"))?;
    let ids = ec2::describe_spot_fleet_instances(&fleet).map_err(|e| ec2_err("DescribeSpotFleetInstances", e))?;
    Ok(Launched {
        ids,
        fleet: Some(fleet),
        ..Launched::default()
    })
}

/// kv key of the Auto Scaling group of request `request_id` while it fills (value: the
/// epoch second it stops trying, `spotFleetRequestExpiry` after the request).
pub fn group_key(request_id: &str) -> String {
    format!("asg/{request_id}")
}

/// kv key of a group whose instances were all returned but which could not be deleted
/// yet (instances still detaching): deleted by a later return-status call.
pub fn group_delete_key(request_id: &str) -> String {
    format!("asg-delete/{request_id}")
}

/// Makes (or, on a retry, finds) the Auto Scaling group of `req` for `want` units: every
/// type of the template with its weight, the on-demand share by price type; recorded in
/// kv before it is made, so a call killed in between still follows it.
fn group(t: &AwsTemplate, req: &ProvisionRequest, want: u32, now: u64, provider: &str) -> Result<Launched, ProviderError> {
    if kv::get(&group_key(&req.request_id))?.is_none() {
        kv::set(
            &group_key(&req.request_id),
            &(now + u64::from(t.fleet_expiry_mins) * 60).to_string(),
        )?;
    }
    let types = one_list(t);
    let r = autoscaling::GroupRequest {
        request_id: req.request_id.clone(),
        template_id: t.id.clone(),
        spec: spec(t, req, provider),
        overrides: types
            .iter()
            .map(|(ty, w)| autoscaling::GroupOverride {
                instance_type: ty.clone(),
                weight: t.weighted.then_some(*w),
            })
            .collect(),
        capacity: want,
        on_demand_base: 0,
        on_demand_percent: match t.price_type {
            PriceType::OnDemand => 100,
            PriceType::Spot => 0,
            PriceType::Heterogeneous => t.percent_on_demand,
        },
        spot_allocation_strategy: t.allocation_strategy.clone(),
        spot_max_price: t.max_spot_price.clone(),
    };
    autoscaling::create_group(&r).map_err(|e| ec2_err("CreateAutoScalingGroup", e))?;
    let group = autoscaling::describe_group(&req.request_id).map_err(|e| ec2_err("DescribeAutoScalingGroups", e))?;
    Ok(Launched {
        ids: group
            .iter()
            .flat_map(|g| g.instances.iter().map(|i| i.instance_id.clone()))
            .collect(),
        group,
        ..Launched::default()
    })
}
