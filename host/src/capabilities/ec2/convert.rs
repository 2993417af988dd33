//! Conversions between the EC2 SDK's types and the capability's WIT types.

use aws_sdk_ec2 as sdk;

use crate::engine::bindings::hostfactory::capabilities::ec2::*;

/// User data as EC2 wants it.
pub fn base64(text: &str) -> String {
    aws_smithy_types::base64::encode(text.as_bytes())
}

/// `tags` as SDK tags.
pub fn sdk_tags(tags: &[Tag]) -> Vec<sdk::types::Tag> {
    tags.iter()
        .map(|t| sdk::types::Tag::builder().key(&t.key).value(&t.value).build())
        .collect()
}

/// A tag specification for `resource` carrying `tags`.
pub fn tag_spec(resource: sdk::types::ResourceType, tags: &[Tag]) -> sdk::types::TagSpecification {
    sdk::types::TagSpecification::builder()
        .resource_type(resource)
        .set_tags(Some(sdk_tags(tags)))
        .build()
}

fn ebs(v: &RootVolume) -> sdk::types::EbsBlockDevice {
    sdk::types::EbsBlockDevice::builder()
        .set_volume_size(v.size_gib.and_then(|s| i32::try_from(s).ok()))
        .set_volume_type(v.volume_type.as_deref().map(sdk::types::VolumeType::from))
        .set_iops(v.iops.and_then(|s| i32::try_from(s).ok()))
        .delete_on_termination(true)
        .build()
}

/// The root-volume mapping for an AMI whose root device is `device`.
pub fn root_mapping(v: &RootVolume, device: &str) -> sdk::types::BlockDeviceMapping {
    sdk::types::BlockDeviceMapping::builder().device_name(device).ebs(ebs(v)).build()
}

/// The root-volume mapping of `spec`, when it sets one and the AMI's root device is known.
pub fn root_mappings(spec: &LaunchSpec, root_device: Option<&str>) -> Option<Vec<sdk::types::BlockDeviceMapping>> {
    spec.root_volume.as_ref().zip(root_device).map(|(v, d)| vec![root_mapping(v, d)])
}

/// The placement of `spec` (group and tenancy), when it sets one.
pub fn placement(spec: &LaunchSpec) -> Option<sdk::types::Placement> {
    let p = spec.placement.as_ref()?;
    Some(
        sdk::types::Placement::builder()
            .set_group_name(p.group_name.clone())
            .set_tenancy(p.tenancy.as_deref().map(sdk::types::Tenancy::from))
            .build(),
    )
}

/// One interface per network card of the type `spec` asks for (IBM's `interfaceType` and
/// `efaCount`): the first at device index 0, the others at 1, each in the first subnet with
/// the security groups, deleted with the instance (as IBM's plugin builds them).
pub fn network_interfaces(spec: &LaunchSpec) -> Option<Vec<sdk::types::InstanceNetworkInterfaceSpecification>> {
    let n = spec.network_interfaces.as_ref()?;
    Some(
        (0..n.count.max(1))
            .map(|card| {
                sdk::types::InstanceNetworkInterfaceSpecification::builder()
                    .interface_type(&n.interface_type)
                    .device_index(if card == 0 { 0 } else { 1 })
                    .network_card_index(i32::try_from(card).unwrap_or(0))
                    .set_subnet_id(spec.subnet_ids.first().cloned())
                    .set_groups((!spec.security_group_ids.is_empty()).then(|| spec.security_group_ids.clone()))
                    .delete_on_termination(true)
                    .build()
            })
            .collect(),
    )
}

/// Launch-template data equivalent to `spec` (for EC2 Fleet).
pub fn launch_template_data(
    spec: &LaunchSpec,
    tags: &[Tag],
    root_device: Option<&str>,
    instance_type: Option<&str>,
) -> sdk::types::RequestLaunchTemplateData {
    let mut d = sdk::types::RequestLaunchTemplateData::builder()
        .image_id(&spec.image_id)
        .set_instance_type(instance_type.map(sdk::types::InstanceType::from))
        .set_key_name(spec.key_name.clone())
        .set_user_data(spec.user_data.as_deref().map(base64))
        .tag_specifications(
            sdk::types::LaunchTemplateTagSpecificationRequest::builder()
                .resource_type(sdk::types::ResourceType::Instance)
                .set_tags(Some(
                    tags.iter()
                        .map(|t| sdk::types::Tag::builder().key(&t.key).value(&t.value).build())
                        .collect(),
                ))
                .build(),
        );
    match &spec.network_interfaces {
        Some(n) => {
            // Fleet overrides choose the subnet; the interfaces carry type and groups.
            d = d.set_network_interfaces(Some(
                (0..n.count.max(1))
                    .map(|card| {
                        sdk::types::LaunchTemplateInstanceNetworkInterfaceSpecificationRequest::builder()
                            .interface_type(&n.interface_type)
                            .device_index(if card == 0 { 0 } else { 1 })
                            .network_card_index(i32::try_from(card).unwrap_or(0))
                            .set_groups((!spec.security_group_ids.is_empty()).then(|| spec.security_group_ids.clone()))
                            .delete_on_termination(true)
                            .build()
                    })
                    .collect(),
            ));
        }
        None if !spec.security_group_ids.is_empty() => {
            d = d.set_security_group_ids(Some(spec.security_group_ids.clone()));
        }
        None => {}
    }
    if let Some(on) = spec.ebs_optimized {
        d = d.ebs_optimized(on);
    }
    if let Some(p) = &spec.placement {
        d = d.placement(
            sdk::types::LaunchTemplatePlacementRequest::builder()
                .set_group_name(p.group_name.clone())
                .set_tenancy(p.tenancy.as_deref().map(sdk::types::Tenancy::from))
                .build(),
        );
    }
    if let Some(arn) = &spec.instance_profile_arn {
        d = d.iam_instance_profile(
            sdk::types::LaunchTemplateIamInstanceProfileSpecificationRequest::builder()
                .arn(arn)
                .build(),
        );
    }
    if let (Some(v), Some(device)) = (&spec.root_volume, root_device) {
        d = d.block_device_mappings(
            sdk::types::LaunchTemplateBlockDeviceMappingRequest::builder()
                .device_name(device)
                .ebs(
                    sdk::types::LaunchTemplateEbsBlockDeviceRequest::builder()
                        .set_volume_size(v.size_gib.and_then(|s| i32::try_from(s).ok()))
                        .set_volume_type(v.volume_type.as_deref().map(sdk::types::VolumeType::from))
                        .set_iops(v.iops.and_then(|s| i32::try_from(s).ok()))
                        .delete_on_termination(true)
                        .build(),
                )
                .build(),
        );
    }
    d.build()
}

/// One fleet override.
pub fn fleet_override(o: &FleetOverride, default_subnet: Option<&String>) -> sdk::types::FleetLaunchTemplateOverridesRequest {
    sdk::types::FleetLaunchTemplateOverridesRequest::builder()
        .instance_type(sdk::types::InstanceType::from(o.instance_type.as_str()))
        .set_subnet_id(o.subnet_id.clone().or_else(|| default_subnet.cloned()))
        .set_weighted_capacity(o.weight)
        .set_priority(o.priority)
        .set_max_price(o.max_price.clone())
        .build()
}

/// An SDK instance as the capability reports it.
pub fn instance(i: &sdk::types::Instance) -> Instance {
    let nonempty = |s: Option<&str>| s.filter(|v| !v.is_empty()).map(str::to_string);
    Instance {
        instance_id: i.instance_id().unwrap_or_default().to_string(),
        instance_type: i.instance_type().map(|t| t.as_str().to_string()).unwrap_or_default(),
        state: i
            .state()
            .and_then(|s| s.name())
            .map(|n| n.as_str().to_string())
            .unwrap_or_else(|| "pending".into()),
        state_reason: i
            .state_reason()
            .and_then(|r| r.message())
            .map(str::to_string)
            .or_else(|| nonempty(i.state_transition_reason())),
        private_dns_name: nonempty(i.private_dns_name()),
        private_ip: nonempty(i.private_ip_address()),
        public_ip: nonempty(i.public_ip_address()),
        public_dns_name: nonempty(i.public_dns_name()),
        launch_time: i.launch_time().map(|t| u64::try_from(t.secs()).unwrap_or(0)).unwrap_or(0),
        lifecycle: i.instance_lifecycle().map(|l| l.as_str().to_string()),
        spot_request_id: nonempty(i.spot_instance_request_id()),
        tags: i
            .tags()
            .iter()
            .map(|t| Tag {
                key: t.key().unwrap_or_default().to_string(),
                value: t.value().unwrap_or_default().to_string(),
            })
            .collect(),
    }
}

/// vCPUs, cores and memory of an instance type.
pub fn instance_type(t: &sdk::types::InstanceTypeInfo) -> InstanceTypeInfo {
    let vcpu = t.v_cpu_info();
    let vcpus = vcpu.and_then(|v| v.default_v_cpus()).unwrap_or(0);
    let threads = vcpu.and_then(|v| v.default_threads_per_core()).unwrap_or(1).max(1);
    let cores = vcpu.and_then(|v| v.default_cores()).unwrap_or(vcpus / threads);
    InstanceTypeInfo {
        name: t.instance_type().map(|n| n.as_str().to_string()).unwrap_or_default(),
        vcpus: u32::try_from(vcpus).unwrap_or(0),
        cores: u32::try_from(cores).unwrap_or(0),
        memory_mib: t
            .memory_info()
            .and_then(|m| m.size_in_mib())
            .and_then(|m| u64::try_from(m).ok())
            .unwrap_or(0),
    }
}

/// A spot request's state.
pub fn spot_request(r: &sdk::types::SpotInstanceRequest) -> SpotRequest {
    SpotRequest {
        id: r.spot_instance_request_id().unwrap_or_default().to_string(),
        state: r.state().map(|s| s.as_str().to_string()).unwrap_or_default(),
        status_code: r.status().and_then(|s| s.code()).map(str::to_string),
        instance_id: r.instance_id().map(str::to_string),
    }
}
