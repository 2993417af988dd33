//! `autoscaling` capability: EC2 Auto Scaling groups for cloud provider guests, one per
//! HostFactory request. The host names each group after the request, so a guest reaches
//! only groups made for its own requests; it tags the group (propagated to its instances)
//! with the ownership tags, refuses groups without this provider instance's tag, bounds a
//! group by the request's count and the guest's EC2 grant, and never lets one grow.

mod client;

use std::sync::Arc;

use crate::capabilities::ec2::{self, Ec2Api, Ec2Grant, LaunchGrant, TAG_PROVIDER, TAG_STORE, denied};
use crate::engine::bindings::hostfactory::capabilities::autoscaling::{self as wit, *};
use crate::engine::bindings::hostfactory::capabilities::ec2::{Ec2Error, Tag};
use crate::engine::sandbox::HostWait;

/// The autoscaling capability's row of [`super::TABLE`]. Its settings
/// (`guests.<name>.autoscaling`) are an [`Ec2Grant`], as for `ec2`; without them a guest
/// gets the grant IBM's templates imply.
pub const UNIT: super::Unit = super::Unit {
    name: "autoscaling",
    wit: super::Wit::Own,
    about: "EC2 Auto Scaling groups, one per request, within the guest's EC2 grant",
    check_settings: Some(|v| Ec2Grant::from_settings(Some(v)).map(|_| ())),
    link: |l| wit::add_to_linker::<_, wasmtime::component::HasSelf<GuestAutoscaling>>(l, |s| s.slot::<GuestAutoscaling>()),
    build: |l| {
        let grant = Ec2Grant::from_settings(l.settings)?;
        let api = l.lent.get::<Arc<dyn AutoscalingApi>>().cloned();
        let ec2 = l.lent.get::<Arc<dyn Ec2Api>>().cloned();
        let store_id = match &api {
            Some(_) => crate::store::store_id(l.store.as_ref()).map_err(|e| format!("cannot read the store's id: {e}"))?,
            None => String::new(),
        };
        Ok(Box::new(GuestAutoscaling {
            api,
            ec2,
            grant,
            owner: l.owner.to_string(),
            store_id,
            wait: l.wait.clone(),
            requests: Some(l.store.clone()),
        }))
    },
};

/// Instance ids per DetachInstances call (Auto Scaling's limit).
pub const DETACH_BATCH: usize = 20;

/// Instance ids per DescribeAutoScalingInstances call (Auto Scaling's limit).
pub const DESCRIBE_INSTANCES_BATCH: usize = 50;

/// The processes suspended once a group is full: the ones that launch or replace instances.
pub const REPLACING_PROCESSES: [&str; 3] = ["Launch", "ReplaceUnhealthy", "AZRebalance"];

/// Prefix of the launch templates the host makes for groups (deleted with them).
pub const LAUNCH_TEMPLATE_TOKEN: &str = "asg-";

/// The name of provider instance `owner`'s group for `request_id`.
pub fn group_name(owner: &str, request_id: &str) -> String {
    format!("hfwasm-{owner}-{request_id}")
}

/// A group as DescribeAutoScalingGroups reports it, with what the ownership check reads.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupInfo {
    /// What the guest sees.
    pub group: Group,
    /// Its `hfwasm:provider` tag.
    pub owner: Option<String>,
    /// Its `hfwasm:store` tag.
    pub store: Option<String>,
    /// The launch template the host made for it ([`LAUNCH_TEMPLATE_TOKEN`]), deleted with
    /// it; none when it launches from a site's own template.
    pub host_launch_template: Option<String>,
}

/// The Auto Scaling operations behind the capability (the SDK client in production).
pub trait AutoscalingApi: Send + Sync {
    /// The region calls go to.
    fn region(&self) -> &str;
    /// CreateAutoScalingGroup `name` from launch template (`id`, `version`) with `tags`
    /// propagated to its instances; subnets none = the default VPC's default subnets.
    fn create_group(&self, name: &str, req: &GroupRequest, launch_template: (&str, &str), tags: &[Tag]) -> Result<(), Ec2Error>;
    /// A launch template for a group from `spec` (the first override's instance type in it),
    /// with ownership `tags`; its id.
    fn group_launch_template(&self, token: &str, spec: &LaunchSpec, instance_type: &str, tags: &[Tag]) -> Result<String, Ec2Error>;
    /// DescribeAutoScalingGroups of one group (None: unknown).
    fn describe_group(&self, name: &str) -> Result<Option<GroupInfo>, Ec2Error>;
    /// SetDesiredCapacity (checks done).
    fn set_desired(&self, name: &str, capacity: u32) -> Result<(), Ec2Error>;
    /// SuspendProcesses `processes`.
    fn suspend(&self, name: &str, processes: &[&str]) -> Result<(), Ec2Error>;
    /// DetachInstances with decrement, batched.
    fn detach(&self, name: &str, ids: &[String]) -> Result<(), Ec2Error>;
    /// DeleteAutoScalingGroup without force.
    fn delete_group(&self, name: &str) -> Result<(), Ec2Error>;
    /// DescribeAutoScalingInstances, batched: (group name, instance) of each one in a group.
    fn describe_instances(&self, ids: &[String]) -> Result<Vec<(String, GroupInstance)>, Ec2Error>;
}

/// Per-guest state of the autoscaling capability.
pub struct GuestAutoscaling {
    api: Option<Arc<dyn AutoscalingApi>>,
    ec2: Option<Arc<dyn Ec2Api>>,
    grant: Ec2Grant,
    owner: String,
    store_id: String,
    wait: HostWait,
    /// The host's request records, bounding a group by its request (None only in unit tests).
    requests: Option<Arc<dyn crate::store::StateStore>>,
}

impl GuestAutoscaling {
    fn api(&self) -> Result<&dyn AutoscalingApi, Ec2Error> {
        let a = self
            .api
            .as_deref()
            .ok_or_else(|| denied("no EC2 settings are configured for this provider instance".into()))?;
        self.grant.check_region(a.region()).map_err(denied)?;
        Ok(a)
    }

    fn ec2(&self) -> Result<&dyn Ec2Api, Ec2Error> {
        self.ec2
            .as_deref()
            .ok_or_else(|| denied("no EC2 settings are configured for this provider instance".into()))
    }

    /// The group of `request_id` when this provider instance owns it; None when there is
    /// none; `denied` when one of that name belongs to someone else.
    fn owned(&self, request_id: &str) -> Result<Option<GroupInfo>, Ec2Error> {
        let name = group_name(&self.owner, request_id);
        let api = self.api()?;
        match self.wait.measure(|| api.describe_group(&name))? {
            None => Ok(None),
            Some(g)
                if g.owner.as_deref() == Some(self.owner.as_str())
                    && (self.store_id.is_empty() || g.store.as_deref() == Some(self.store_id.as_str())) =>
            {
                Ok(Some(g))
            }
            Some(_) => Err(denied(format!(
                "Auto Scaling group {name} is not this installation's (its {TAG_PROVIDER}/{TAG_STORE} tags differ)"
            ))),
        }
    }

    /// The owned group of `request_id`, or `denied` naming it.
    fn existing(&self, request_id: &str) -> Result<GroupInfo, Ec2Error> {
        self.owned(request_id)?.ok_or_else(|| {
            denied(format!(
                "there is no Auto Scaling group {} of provider instance '{}'",
                group_name(&self.owner, request_id),
                self.owner
            ))
        })
    }

    /// The launch template a group may use: one the grant names, or one this provider
    /// instance made (its settings were checked against the grant when it was made).
    fn check_launch_template(&self, id: &str) -> Result<(), Ec2Error> {
        let granted = &self.grant.launch.launch_template_ids;
        if granted.is_empty() || granted.iter().any(|g| g == id) {
            return Ok(());
        }
        let ec2 = self.ec2()?;
        match self.wait.measure(|| ec2.launch_template_owner(id))? {
            Some(o) if o == self.owner => Ok(()),
            _ => Err(denied(format!(
                "launch template {id} is not granted (granted: {}) nor made by provider instance '{}'",
                granted.join(", "),
                self.owner
            ))),
        }
    }
}

impl Host for GuestAutoscaling {
    fn create_group(&mut self, req: GroupRequest) -> Result<String, Ec2Error> {
        let name = group_name(&self.owner, &req.request_id);
        // A retry of the same request (crash repair) finds its group.
        if self.owned(&req.request_id)?.is_some() {
            return Ok(name);
        }
        if req.overrides.is_empty() {
            return Err(denied("a group needs at least one instance type".into()));
        }
        for o in &req.overrides {
            self.grant.check_type(&o.instance_type).map_err(denied)?;
        }
        self.grant.check_count(req.capacity, "capacity units").map_err(denied)?;
        if req.on_demand_percent > 100 {
            return Err(denied(format!("on-demand-percent {} is not a percentage", req.on_demand_percent)));
        }
        let launch: &LaunchGrant = &self.grant.launch;
        if req.spec.launch_template_id.is_none() {
            launch.check(&req.spec).map_err(denied)?;
        } else {
            LaunchGrant::one("subnet", &launch.subnet_ids, &req.spec.subnet_ids).map_err(denied)?;
        }
        if let Some(store) = &self.requests {
            ec2::check_total(store.as_ref(), self.ec2()?, &self.wait, &self.owner, &req.request_id, req.capacity)?;
        }
        let tags = ec2::ownership_tags(&self.owner, &self.store_id, &req.request_id, &req.template_id, &req.spec.tags)?;
        let api = self.api()?;
        let (lt, version) = match &req.spec.launch_template_id {
            Some(id) => {
                self.check_launch_template(id)?;
                (
                    id.clone(),
                    req.spec.launch_template_version.clone().unwrap_or_else(|| "$Default".into()),
                )
            }
            None => {
                let token = format!("{LAUNCH_TEMPLATE_TOKEN}{}", req.request_id);
                let first = &req.overrides[0].instance_type;
                let id = self.wait.measure(|| api.group_launch_template(&token, &req.spec, first, &tags))?;
                (id, "$Latest".to_string())
            }
        };
        self.wait.measure(|| api.create_group(&name, &req, (&lt, &version), &tags))?;
        Ok(name)
    }

    fn describe_group(&mut self, request_id: String) -> Result<Option<Group>, Ec2Error> {
        Ok(self.owned(&request_id)?.map(|g| g.group))
    }

    fn lower_desired_capacity(&mut self, request_id: String, capacity: u32) -> Result<(), Ec2Error> {
        let g = self.existing(&request_id)?;
        if capacity > g.group.desired_capacity {
            return Err(denied(format!(
                "group {} wants {}; a group never grows after creation (asked for {capacity})",
                g.group.name, g.group.desired_capacity
            )));
        }
        let api = self.api()?;
        self.wait.measure(|| api.set_desired(&g.group.name, capacity))
    }

    fn suspend_replacement(&mut self, request_id: String) -> Result<(), Ec2Error> {
        let g = self.existing(&request_id)?;
        let api = self.api()?;
        self.wait.measure(|| api.suspend(&g.group.name, &REPLACING_PROCESSES))
    }

    fn detach_instances(&mut self, request_id: String, instance_ids: Vec<String>) -> Result<(), Ec2Error> {
        if instance_ids.is_empty() {
            return Ok(());
        }
        let g = self.existing(&request_id)?;
        let api = self.api()?;
        // Only the group's own instances: AWS would refuse the whole call for one stranger.
        let ids: Vec<String> = instance_ids
            .into_iter()
            .filter(|id| g.group.instances.iter().any(|i| &i.instance_id == id))
            .collect();
        if ids.is_empty() {
            return Ok(());
        }
        self.wait.measure(|| api.detach(&g.group.name, &ids))
    }

    fn delete_group(&mut self, request_id: String) -> Result<(), Ec2Error> {
        let Some(g) = self.owned(&request_id)? else { return Ok(()) };
        let api = self.api()?;
        self.wait.measure(|| api.delete_group(&g.group.name))?;
        // The launch template the host made for it goes with it (a site's own stays).
        if let Some(lt) = &g.host_launch_template {
            let ec2 = self.ec2()?;
            let ours = self.wait.measure(|| ec2.launch_template_owner(lt))?.as_deref() == Some(self.owner.as_str());
            if ours && let Err(e) = self.wait.measure(|| ec2.delete_launch_template(lt)) {
                tracing::warn!(launch_template = %lt, group = %g.group.name, error = ?e, "could not delete the group's launch template");
            }
        }
        Ok(())
    }

    fn describe_group_instances(&mut self, instance_ids: Vec<String>) -> Result<Vec<(String, GroupInstance)>, Ec2Error> {
        if instance_ids.is_empty() {
            return Ok(Vec::new());
        }
        let api = self.api()?;
        let prefix = group_name(&self.owner, "");
        let found = self.wait.measure(|| api.describe_instances(&instance_ids))?;
        // Only instances in this provider instance's groups, named by their request.
        Ok(found
            .into_iter()
            .filter_map(|(group, i)| Some((group.strip_prefix(&prefix)?.to_string(), i)))
            .collect())
    }
}
