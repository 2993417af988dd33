//! The Auto Scaling calls behind the capability, on the EC2 client's connection (same
//! credentials, endpoint, proxy, timeouts and throttling retries).

use aws_sdk_autoscaling::types as asg;

use super::{AutoscalingApi, DESCRIBE_INSTANCES_BATCH, DETACH_BATCH, GroupInfo, LAUNCH_TEMPLATE_TOKEN};
use crate::capabilities::ec2::{Ec2Client, TAG_PROVIDER, TAG_STORE};
use crate::engine::bindings::hostfactory::capabilities::autoscaling::{Group, GroupInstance, GroupRequest};
use crate::engine::bindings::hostfactory::capabilities::ec2::{AwsFault, Ec2Error, LaunchSpec, Tag};

fn int(n: u32) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// Whether an Auto Scaling fault says the group does not exist.
fn no_such_group(e: &Ec2Error) -> bool {
    matches!(e, Ec2Error::Aws(f) if f.code == "ValidationError" && f.message.to_ascii_lowercase().contains("not found"))
}

fn instance(i: &asg::Instance) -> GroupInstance {
    GroupInstance {
        instance_id: i.instance_id().unwrap_or_default().to_string(),
        instance_type: i.instance_type().unwrap_or_default().to_string(),
        lifecycle_state: i.lifecycle_state().map(|s| s.as_str().to_string()).unwrap_or_default(),
        healthy: !i.health_status().is_some_and(|h| h.eq_ignore_ascii_case("unhealthy")),
    }
}

impl Ec2Client {
    /// The default VPC's default subnets (one per zone), for a group whose template names none.
    fn default_subnets(&self) -> Result<Vec<String>, Ec2Error> {
        let out = self.call("DescribeSubnets", true, |c| {
            c.describe_subnets()
                .filters(aws_sdk_ec2::types::Filter::builder().name("default-for-az").values("true").build())
                .send()
        })?;
        let subnets: Vec<String> = out.subnets().iter().filter_map(|s| s.subnet_id().map(str::to_string)).collect();
        if subnets.is_empty() {
            return Err(Ec2Error::Aws(AwsFault {
                code: "InvalidSubnetID.NotFound".into(),
                message: "the region has no default subnet; give the template a subnetId".into(),
            }));
        }
        Ok(subnets)
    }
}

impl AutoscalingApi for Ec2Client {
    fn region(&self) -> &str {
        &self.settings().region
    }

    fn create_group(&self, name: &str, req: &GroupRequest, launch_template: (&str, &str), tags: &[Tag]) -> Result<(), Ec2Error> {
        let subnets = if req.spec.subnet_ids.is_empty() {
            self.default_subnets()?
        } else {
            req.spec.subnet_ids.clone()
        };
        let spec = asg::LaunchTemplateSpecification::builder()
            .launch_template_id(launch_template.0)
            .version(launch_template.1)
            .build();
        let overrides: Vec<asg::LaunchTemplateOverrides> = req
            .overrides
            .iter()
            .map(|o| {
                asg::LaunchTemplateOverrides::builder()
                    .instance_type(&o.instance_type)
                    .set_weighted_capacity(o.weight.map(|w| w.to_string()))
                    .build()
            })
            .collect();
        let mut distribution = asg::InstancesDistribution::builder()
            .on_demand_base_capacity(int(req.on_demand_base))
            .on_demand_percentage_above_base_capacity(int(req.on_demand_percent))
            .set_spot_max_price(req.spot_max_price.clone());
        if req.on_demand_percent < 100 {
            distribution =
                distribution.spot_allocation_strategy(req.spot_allocation_strategy.clone().unwrap_or_else(|| "lowest-price".into()));
        }
        let policy = asg::MixedInstancesPolicy::builder()
            .launch_template(
                asg::LaunchTemplate::builder()
                    .launch_template_specification(spec)
                    .set_overrides(Some(overrides))
                    .build(),
            )
            .instances_distribution(distribution.build())
            .build();
        let sdk_tags: Vec<asg::Tag> = tags
            .iter()
            .map(|t| {
                asg::Tag::builder()
                    .key(&t.key)
                    .value(&t.value)
                    .propagate_at_launch(true)
                    .resource_id(name)
                    .resource_type("auto-scaling-group")
                    .build()
            })
            .collect();
        let out = self.call_autoscaling("CreateAutoScalingGroup", false, |c| {
            c.create_auto_scaling_group()
                .auto_scaling_group_name(name)
                .min_size(0)
                .max_size(int(req.capacity))
                .desired_capacity(int(req.capacity))
                .vpc_zone_identifier(subnets.join(","))
                .mixed_instances_policy(policy.clone())
                // A scale-in (a lowered desired capacity) never takes HostFactory's hosts.
                .new_instances_protected_from_scale_in(true)
                .set_tags(Some(sdk_tags.clone()))
                .send()
        });
        match out {
            Ok(_) => Ok(()),
            // Made by a call that was killed before it answered: the caller checks the tags.
            Err(Ec2Error::Aws(f)) if f.code == "AlreadyExists" => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn group_launch_template(&self, token: &str, spec: &LaunchSpec, instance_type: &str, tags: &[Tag]) -> Result<String, Ec2Error> {
        self.launch_template(token, spec, tags, Some(instance_type))
    }

    fn describe_group(&self, name: &str) -> Result<Option<GroupInfo>, Ec2Error> {
        let out = match self.call_autoscaling("DescribeAutoScalingGroups", true, |c| {
            c.describe_auto_scaling_groups().auto_scaling_group_names(name).send()
        }) {
            Ok(o) => o,
            Err(e) if no_such_group(&e) => return Ok(None),
            Err(e) => return Err(e),
        };
        let Some(g) = out.auto_scaling_groups().iter().find(|g| g.auto_scaling_group_name() == Some(name)) else {
            return Ok(None);
        };
        let tag = |key: &str| {
            g.tags()
                .iter()
                .find(|t| t.key() == Some(key))
                .and_then(|t| t.value().map(str::to_string))
        };
        let template = g
            .mixed_instances_policy()
            .and_then(|p| p.launch_template())
            .and_then(|t| t.launch_template_specification())
            .or(g.launch_template());
        let host_launch_template = template
            .filter(|t| {
                t.launch_template_name()
                    .is_some_and(|n| n.starts_with(&format!("hfwasm-{LAUNCH_TEMPLATE_TOKEN}")))
            })
            .and_then(|t| t.launch_template_id().map(str::to_string));
        Ok(Some(GroupInfo {
            group: Group {
                name: name.to_string(),
                desired_capacity: g.desired_capacity().and_then(|d| u32::try_from(d).ok()).unwrap_or(0),
                instances: g.instances().iter().map(instance).collect(),
                deleting: g.status().is_some_and(|s| s.to_ascii_lowercase().contains("delete")),
            },
            owner: tag(TAG_PROVIDER),
            store: tag(TAG_STORE),
            host_launch_template,
        }))
    }

    fn set_desired(&self, name: &str, capacity: u32) -> Result<(), Ec2Error> {
        self.call_autoscaling("SetDesiredCapacity", false, |c| {
            c.set_desired_capacity()
                .auto_scaling_group_name(name)
                .desired_capacity(int(capacity))
                .send()
        })
        .map(drop)
    }

    fn suspend(&self, name: &str, processes: &[&str]) -> Result<(), Ec2Error> {
        let processes: Vec<String> = processes.iter().map(|p| p.to_string()).collect();
        self.call_autoscaling("SuspendProcesses", false, |c| {
            c.suspend_processes()
                .auto_scaling_group_name(name)
                .set_scaling_processes(Some(processes.clone()))
                .send()
        })
        .map(drop)
    }

    fn detach(&self, name: &str, ids: &[String]) -> Result<(), Ec2Error> {
        for batch in ids.chunks(DETACH_BATCH) {
            self.call_autoscaling("DetachInstances", false, |c| {
                c.detach_instances()
                    .auto_scaling_group_name(name)
                    .set_instance_ids(Some(batch.to_vec()))
                    .should_decrement_desired_capacity(true)
                    .send()
            })?;
        }
        Ok(())
    }

    fn delete_group(&self, name: &str) -> Result<(), Ec2Error> {
        match self.call_autoscaling("DeleteAutoScalingGroup", false, |c| {
            c.delete_auto_scaling_group()
                .auto_scaling_group_name(name)
                .force_delete(false)
                .send()
        }) {
            Ok(_) => Ok(()),
            Err(e) if no_such_group(&e) => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn describe_instances(&self, ids: &[String]) -> Result<Vec<(String, GroupInstance)>, Ec2Error> {
        let mut out = Vec::new();
        for batch in ids.chunks(DESCRIBE_INSTANCES_BATCH) {
            let page = self.call_autoscaling("DescribeAutoScalingInstances", true, |c| {
                c.describe_auto_scaling_instances().set_instance_ids(Some(batch.to_vec())).send()
            })?;
            out.extend(page.auto_scaling_instances().iter().filter_map(|d| {
                let group = d.auto_scaling_group_name()?.to_string();
                Some((
                    group,
                    GroupInstance {
                        instance_id: d.instance_id()?.to_string(),
                        instance_type: d.instance_type().unwrap_or_default().to_string(),
                        lifecycle_state: d.lifecycle_state().unwrap_or_default().to_string(),
                        healthy: !d.health_status().is_some_and(|h| h.eq_ignore_ascii_case("unhealthy")),
                    },
                ))
            }));
        }
        Ok(out)
    }
}
