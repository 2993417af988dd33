//! `ec2` capability: typed EC2 operations for cloud provider guests, signed with the host's
//! credentials. Each call is checked against the guest's grant (regions, instance types,
//! hosts per request); everything a guest launches gets the host's ownership tags, and
//! only instances carrying this provider instance's tag can be described or terminated.

mod client;
mod convert;
mod credentials;
pub mod discover;

use std::sync::Arc;

pub use client::{Ec2Client, Ec2Settings};

use crate::engine::bindings::hostfactory::capabilities::ec2::{self as wit, *};
use crate::engine::sandbox::HostWait;

/// The ec2 capability's row of [`super::TABLE`]. Its settings (`guests.<name>.ec2`) are
/// the guest's [`Ec2Grant`]; without them a guest gets the grant IBM's templates imply.
pub const UNIT: super::Unit = super::Unit {
    name: "ec2",
    wit: super::Wit::Own,
    about: "Amazon EC2, signed by the host, within the guest's grant",
    check_settings: Some(|v| Ec2Grant::from_settings(Some(v)).map(|_| ())),
    link: |l| wit::add_to_linker::<_, wasmtime::component::HasSelf<GuestEc2>>(l, |s| s.slot::<GuestEc2>()),
    build: |l| {
        let grant = Ec2Grant::from_settings(l.settings)?;
        let client = l.lent.get::<Arc<dyn Ec2Api>>().cloned();
        // Tagged on everything the guest launches; read only when there is a cloud to tag.
        let store_id = match &client {
            Some(_) => crate::store::store_id(l.store.as_ref()).map_err(|e| format!("cannot read the store's id: {e}"))?,
            None => String::new(),
        };
        Ok(Box::new(
            GuestEc2::new(client, grant, l.owner.to_string(), store_id, l.wait.clone()).with_requests(l.store.clone()),
        ))
    },
};

/// Tag naming the provider instance that owns a resource.
pub const TAG_PROVIDER: &str = "hfwasm:provider";
/// Tag naming the HostFactory request a resource was launched for.
pub const TAG_REQUEST: &str = "hfwasm:request";
/// Tag naming the template a resource was launched from.
pub const TAG_TEMPLATE: &str = "hfwasm:template";
/// Tag naming the store of the installation that launched a resource
/// ([`crate::store::store_id`]).
pub const TAG_STORE: &str = "hfwasm:store";

/// Instance ids per DescribeInstances call.
pub const DESCRIBE_BATCH: usize = 1000;

/// Values per DescribeInstances filter (AWS allows at most 200).
pub const FILTER_VALUES: usize = 200;

/// Instances per DescribeInstances page (AWS's maximum).
pub const DESCRIBE_PAGE: i32 = 1000;

/// What a guest may do with EC2.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Ec2Grant {
    /// Regions the guest may use; the client's region must be one of them.
    #[serde(default)]
    pub regions: Vec<String>,
    /// Instance types the guest may launch; empty = any.
    #[serde(default)]
    pub instance_types: Vec<String>,
    /// Most instances (or capacity units) one launch call may ask for.
    #[serde(default = "default_max_per_request")]
    pub max_per_request: u32,
    /// What launches may use; each list empty = any. From IBM's templates these are the
    /// templates' own values, so a guest cannot launch another image, into another subnet
    /// or with another role than the site wrote.
    #[serde(default)]
    pub launch: LaunchGrant,
}

impl Ec2Grant {
    /// The grant config holds under `guests.<name>.ec2`; none = the default grant.
    pub fn from_settings(v: Option<&serde_json::Value>) -> Result<Self, String> {
        match v {
            Some(v) => serde_json::from_value(v.clone()).map_err(|e| e.to_string()),
            None => Ok(Self::default()),
        }
    }

    /// The grant as capability settings (what `from_settings` reads back).
    pub fn to_settings(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }

    /// Ok when calls may go to `region`; else why not.
    pub fn check_region(&self, region: &str) -> Result<(), String> {
        if !self.regions.is_empty() && !self.regions.iter().any(|r| r == region) {
            return Err(format!("region {region} is not granted (granted: {})", self.regions.join(", ")));
        }
        Ok(())
    }

    /// Ok when instance type `t` may be launched; else why not.
    pub fn check_type(&self, t: &str) -> Result<(), String> {
        if self.instance_types.is_empty() || self.instance_types.iter().any(|g| g == t) {
            Ok(())
        } else {
            Err(format!(
                "instance type {t} is not granted (granted: {})",
                self.instance_types.join(", ")
            ))
        }
    }

    /// Ok when one launch of `n` `what` (instances, units) is within `max_per_request`.
    pub fn check_count(&self, n: u32, what: &str) -> Result<(), String> {
        if n == 0 || n > self.max_per_request {
            return Err(format!(
                "{n} {what} is outside the grant (1..={} per request)",
                self.max_per_request
            ));
        }
        Ok(())
    }
}

/// A launch of `asking` more instances or units for `request_id`: the request must be a
/// provision request the host recorded in `store`, and what provider instance `owner`
/// already runs for it plus what is asked must stay within what HostFactory asked for.
/// Each instance counts for at least one unit, so counting instances never refuses a fair
/// top-up. Shared by every capability that launches (ec2, autoscaling).
pub fn check_total(
    store: &dyn crate::store::StateStore,
    client: &dyn Ec2Api,
    wait: &HostWait,
    owner: &str,
    request_id: &str,
    asking: u32,
) -> Result<(), Ec2Error> {
    let rec = store
        .request(request_id)
        .map_err(|e| Ec2Error::Unavailable(format!("cannot read request {request_id}: {e}")))?
        .filter(|r| r.kind == crate::store::RequestKind::Provision)
        .ok_or_else(|| {
            denied(format!(
                "{request_id} is not a provision request the host recorded; launches are for HostFactory's requests only"
            ))
        })?;
    let held = wait
        .measure(|| client.describe_owned(owner, &InstanceFilter::Request(request_id.to_string())))?
        .iter()
        .filter(|i| matches!(i.state.as_str(), "pending" | "running" | "stopping" | "stopped"))
        .count() as u64;
    if held + u64::from(asking) > u64::from(rec.count) {
        return Err(denied(format!(
            "request {request_id} asked for {}; {held} are running for it and {asking} more would exceed that",
            rec.count
        )));
    }
    Ok(())
}

/// The launch parameters a guest may use (`guests.<name>.ec2.launch`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct LaunchGrant {
    /// AMI ids.
    #[serde(default)]
    pub image_ids: Vec<String>,
    /// Subnet ids.
    #[serde(default)]
    pub subnet_ids: Vec<String>,
    /// Security group ids.
    #[serde(default)]
    pub security_group_ids: Vec<String>,
    /// Key pair names.
    #[serde(default)]
    pub key_names: Vec<String>,
    /// Instance profile ARNs (or names).
    #[serde(default)]
    pub instance_profiles: Vec<String>,
    /// Launch template ids.
    #[serde(default)]
    pub launch_template_ids: Vec<String>,
    /// Whether user data may be passed (false: a launch with user data is refused). Set
    /// when any template carries `userData` or `userDataScript`.
    #[serde(default = "yes")]
    pub user_data: bool,
}

fn yes() -> bool {
    true
}

impl Default for LaunchGrant {
    /// Anything (a site's own guest configured in hfwasm.json, unless it narrows this).
    fn default() -> Self {
        Self {
            image_ids: Vec::new(),
            subnet_ids: Vec::new(),
            security_group_ids: Vec::new(),
            key_names: Vec::new(),
            instance_profiles: Vec::new(),
            launch_template_ids: Vec::new(),
            user_data: true,
        }
    }
}

impl LaunchGrant {
    /// Ok when every one of `used` is among `granted` (or nothing is granted by name);
    /// else which `what` is not.
    pub fn one<'a>(what: &str, granted: &[String], used: impl IntoIterator<Item = &'a String>) -> Result<(), String> {
        if granted.is_empty() {
            return Ok(());
        }
        match used.into_iter().find(|u| !granted.contains(u)) {
            Some(u) => Err(format!("{what} {u} is not granted (granted: {})", granted.join(", "))),
            None => Ok(()),
        }
    }

    /// Ok when `spec` uses only granted values; else the first one that is not.
    pub fn check(&self, spec: &LaunchSpec) -> Result<(), String> {
        if !spec.image_id.is_empty() {
            Self::one("image", &self.image_ids, [&spec.image_id])?;
        }
        Self::one("subnet", &self.subnet_ids, &spec.subnet_ids)?;
        Self::one("security group", &self.security_group_ids, &spec.security_group_ids)?;
        Self::one("key pair", &self.key_names, &spec.key_name)?;
        Self::one("instance profile", &self.instance_profiles, &spec.instance_profile_arn)?;
        Self::one("launch template", &self.launch_template_ids, &spec.launch_template_id)?;
        if spec.user_data.is_some() && !self.user_data {
            return Err("user data is not granted (no template of this provider carries userData or userDataScript)".into());
        }
        Ok(())
    }
}

fn default_max_per_request() -> u32 {
    1000
}

/// The EC2 operations behind the capability: the SDK client in production, recorded
/// responses in tests of the guest's decisions (what the emulator cannot show).
pub trait Ec2Api: Send + Sync {
    /// The region calls go to.
    fn region(&self) -> &str;
    /// RunInstances with ownership `tags`.
    fn run_instances(&self, req: &RunRequest, tags: &[Tag]) -> Result<Vec<Instance>, Ec2Error>;
    /// CreateFleet (instant) with ownership `tags`.
    fn create_fleet(&self, req: &FleetRequest, tags: &[Tag]) -> Result<FleetResult, Ec2Error>;
    /// Instances owned by `owner` matching `filter`.
    fn describe_owned(&self, owner: &str, filter: &InstanceFilter) -> Result<Vec<Instance>, Ec2Error>;
    /// TerminateInstances (ownership already checked).
    fn terminate(&self, ids: &[String]) -> Result<Vec<String>, Ec2Error>;
    /// DescribeInstanceTypes.
    fn describe_instance_types(&self, names: &[String]) -> Result<Vec<InstanceTypeInfo>, Ec2Error>;
    /// DescribeSpotInstanceRequests.
    fn describe_spot_requests(&self, ids: &[String]) -> Result<Vec<SpotRequest>, Ec2Error>;
    /// RequestSpotFleet with ownership `tags` on the fleet and its instances; the fleet id.
    fn request_spot_fleet(&self, req: &SpotFleetRequest, tags: &[Tag]) -> Result<String, Ec2Error>;
    /// The provider instance tag of Spot Fleet `fleet_id` (None: untagged or unknown).
    fn spot_fleet_owner(&self, fleet_id: &str) -> Result<Option<String>, Ec2Error>;
    /// DescribeSpotFleetInstances (ownership already checked).
    fn spot_fleet_instances(&self, fleet_id: &str) -> Result<Vec<String>, Ec2Error>;
    /// CancelSpotFleetRequests without terminating instances (ownership already checked).
    fn cancel_spot_fleets(&self, ids: &[String]) -> Result<(), Ec2Error>;
    /// CreateLaunchTemplate with ownership `tags`; the template's id.
    fn create_launch_template(&self, req: &LaunchTemplateRequest, tags: &[Tag]) -> Result<String, Ec2Error>;
    /// The provider instance tag of launch template `id` (None: untagged or unknown).
    fn launch_template_owner(&self, id: &str) -> Result<Option<String>, Ec2Error>;
    /// DeleteLaunchTemplate (ownership already checked).
    fn delete_launch_template(&self, id: &str) -> Result<(), Ec2Error>;
    /// DescribeFleets of one EC2 Fleet (None: unknown).
    fn describe_fleet(&self, fleet_id: &str) -> Result<Option<FleetInfo>, Ec2Error>;
    /// DescribeFleetInstances (ownership already checked).
    fn fleet_instances(&self, fleet_id: &str) -> Result<Vec<String>, Ec2Error>;
    /// DeleteFleets (ownership already checked).
    fn delete_fleets(&self, ids: &[String], terminate_instances: bool) -> Result<(), Ec2Error>;
}

/// What DescribeFleets says of an EC2 Fleet, for the ownership check and its instances.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetInfo {
    /// Its `hfwasm:provider` tag.
    pub owner: Option<String>,
    /// Type `instant` (whose instances only DescribeFleets lists).
    pub instant: bool,
    /// The instances it lists.
    pub instance_ids: Vec<String>,
}

/// Per-guest state of the ec2 capability.
pub struct GuestEc2 {
    client: Option<Arc<dyn Ec2Api>>,
    grant: Ec2Grant,
    owner: String,
    store_id: String,
    wait: HostWait,
    /// The host's request records: a launch must name a recorded provision request, and
    /// the request bounds what may be launched for it in all (None only in unit tests of
    /// the capability itself).
    requests: Option<Arc<dyn crate::store::StateStore>>,
}

/// A refusal of the grant.
pub fn denied(m: String) -> Ec2Error {
    Ec2Error::Denied(m)
}

impl GuestEc2 {
    /// The capability for the guest of provider instance `owner`, or one that refuses
    /// every call when no EC2 client is configured.
    pub fn new(client: Option<Arc<dyn Ec2Api>>, grant: Ec2Grant, owner: String, store_id: String, wait: HostWait) -> Self {
        Self {
            client,
            grant,
            owner,
            store_id,
            wait,
            requests: None,
        }
    }

    /// Bounds launches by the host's request records in `store` (see [`Self::check_total`]).
    pub fn with_requests(mut self, store: Arc<dyn crate::store::StateStore>) -> Self {
        self.requests = Some(store);
        self
    }

    /// A launch of `asking` more for `request_id` within what HostFactory asked ([`check_total`]).
    fn check_total(&self, request_id: &str, asking: u32) -> Result<(), Ec2Error> {
        let Some(store) = &self.requests else { return Ok(()) };
        check_total(store.as_ref(), self.client()?, &self.wait, &self.owner, request_id, asking)
    }

    fn client(&self) -> Result<&dyn Ec2Api, Ec2Error> {
        let c = self
            .client
            .as_deref()
            .ok_or_else(|| denied("no EC2 settings are configured for this provider instance".into()))?;
        self.grant.check_region(c.region()).map_err(denied)?;
        Ok(c)
    }

    fn check_type(&self, t: &str) -> Result<(), Ec2Error> {
        self.grant.check_type(t).map_err(denied)
    }

    fn check_count(&self, n: u32, what: &str) -> Result<(), Ec2Error> {
        self.grant.check_count(n, what).map_err(denied)
    }

    /// A fleet's launch settings and each override's subnet within the launch grant.
    fn check_fleet_launch(&self, spec: &LaunchSpec, overrides: &[FleetOverride]) -> Result<(), Ec2Error> {
        let launch = &self.grant.launch;
        launch.check(spec).map_err(denied)?;
        let subnets: Vec<String> = overrides.iter().filter_map(|o| o.subnet_id.clone()).collect();
        LaunchGrant::one("subnet", &launch.subnet_ids, &subnets).map_err(denied)
    }

    /// Refuses a Spot Fleet that does not carry this provider instance's tag.
    fn check_fleet_owner(&self, fleet_id: &str) -> Result<(), Ec2Error> {
        let client = self.client()?;
        match self.wait.measure(|| client.spot_fleet_owner(fleet_id))? {
            Some(o) if o == self.owner => Ok(()),
            _ => Err(denied(format!(
                "spot fleet {fleet_id} is not owned by provider instance '{}' (no {TAG_PROVIDER} tag) or gone",
                self.owner
            ))),
        }
    }

    /// DescribeFleets of `fleet_id`, refused unless this provider instance owns it.
    fn owned_fleet(&self, fleet_id: &str) -> Result<FleetInfo, Ec2Error> {
        let client = self.client()?;
        match self.wait.measure(|| client.describe_fleet(fleet_id))? {
            Some(f) if f.owner.as_deref() == Some(self.owner.as_str()) => Ok(f),
            _ => Err(denied(format!(
                "fleet {fleet_id} is not owned by provider instance '{}' (no {TAG_PROVIDER} tag) or gone",
                self.owner
            ))),
        }
    }

    fn ownership_tags(&self, request_id: &str, template_id: &str, extra: &[Tag]) -> Result<Vec<Tag>, Ec2Error> {
        ownership_tags(&self.owner, &self.store_id, request_id, template_id, extra)
    }
}

/// `extra` (a guest's own tags, none of them reserved) and the ownership tags of what
/// provider instance `owner` of store `store_id` launches for `request_id` of `template_id`.
pub fn ownership_tags(owner: &str, store_id: &str, request_id: &str, template_id: &str, extra: &[Tag]) -> Result<Vec<Tag>, Ec2Error> {
    let mut tags: Vec<Tag> = Vec::with_capacity(extra.len() + 4);
    for t in extra {
        if t.key.starts_with("hfwasm:") || t.key.starts_with("aws:") {
            return Err(denied(format!("tag key `{}` is reserved", t.key)));
        }
        tags.push(t.clone());
    }
    tags.push(Tag {
        key: TAG_PROVIDER.into(),
        value: owner.into(),
    });
    tags.push(Tag {
        key: TAG_REQUEST.into(),
        value: request_id.into(),
    });
    tags.push(Tag {
        key: TAG_TEMPLATE.into(),
        value: template_id.into(),
    });
    if !store_id.is_empty() {
        tags.push(Tag {
            key: TAG_STORE.into(),
            value: store_id.into(),
        });
    }
    Ok(tags)
}

impl Host for GuestEc2 {
    fn run_instances(&mut self, req: RunRequest) -> Result<Vec<Instance>, Ec2Error> {
        self.check_type(&req.instance_type)?;
        self.check_count(req.count, "instances")?;
        self.grant.launch.check(&req.spec).map_err(denied)?;
        self.check_total(&req.request_id, req.count)?;
        let tags = self.ownership_tags(&req.request_id, &req.template_id, &req.spec.tags)?;
        let client = self.client()?;
        self.wait.measure(|| client.run_instances(&req, &tags))
    }

    fn create_fleet(&mut self, req: FleetRequest) -> Result<FleetResult, Ec2Error> {
        for o in &req.overrides {
            self.check_type(&o.instance_type)?;
        }
        if req.overrides.is_empty() {
            return Err(denied("a fleet needs at least one instance type".into()));
        }
        self.check_count(req.total_units, "capacity units")?;
        self.check_fleet_launch(&req.spec, &req.overrides)?;
        self.check_total(&req.request_id, req.total_units)?;
        let tags = self.ownership_tags(&req.request_id, &req.template_id, &req.spec.tags)?;
        let client = self.client()?;
        self.wait.measure(|| client.create_fleet(&req, &tags))
    }

    fn describe_instances(&mut self, filter: InstanceFilter) -> Result<Vec<Instance>, Ec2Error> {
        let owner = self.owner.clone();
        let client = self.client()?;
        self.wait.measure(|| client.describe_owned(&owner, &filter))
    }

    fn terminate_instances(&mut self, ids: Vec<String>) -> Result<Vec<String>, Ec2Error> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let owner = self.owner.clone();
        let client = self.client()?;
        let owned = self
            .wait
            .measure(|| client.describe_owned(&owner, &InstanceFilter::Ids(ids.clone())))?;
        let foreign: Vec<&String> = ids.iter().filter(|id| !owned.iter().any(|i| &i.instance_id == *id)).collect();
        if !foreign.is_empty() {
            return Err(denied(format!(
                "not owned by provider instance '{owner}' (no {TAG_PROVIDER} tag) or gone: {}",
                foreign.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
            )));
        }
        self.wait.measure(|| client.terminate(&ids))
    }

    fn describe_instance_types(&mut self, names: Vec<String>) -> Result<Vec<InstanceTypeInfo>, Ec2Error> {
        let client = self.client()?;
        self.wait.measure(|| client.describe_instance_types(&names))
    }

    fn request_spot_fleet(&mut self, req: SpotFleetRequest) -> Result<String, Ec2Error> {
        for o in &req.overrides {
            self.check_type(&o.instance_type)?;
        }
        if req.overrides.is_empty() {
            return Err(denied("a spot fleet needs at least one instance type".into()));
        }
        if req.fleet_role.trim().is_empty() {
            return Err(denied("a spot fleet needs a fleet role (fleetRole)".into()));
        }
        self.check_count(req.total_units, "capacity units")?;
        self.check_fleet_launch(&req.spec, &req.overrides)?;
        self.check_total(&req.request_id, req.total_units)?;
        let tags = self.ownership_tags(&req.request_id, &req.template_id, &req.spec.tags)?;
        let client = self.client()?;
        self.wait.measure(|| client.request_spot_fleet(&req, &tags))
    }

    fn describe_spot_fleet_instances(&mut self, fleet_id: String) -> Result<Vec<String>, Ec2Error> {
        self.check_fleet_owner(&fleet_id)?;
        let client = self.client()?;
        self.wait.measure(|| client.spot_fleet_instances(&fleet_id))
    }

    fn cancel_spot_fleet_requests(&mut self, fleet_ids: Vec<String>) -> Result<(), Ec2Error> {
        for id in &fleet_ids {
            self.check_fleet_owner(id)?;
        }
        if fleet_ids.is_empty() {
            return Ok(());
        }
        let client = self.client()?;
        self.wait.measure(|| client.cancel_spot_fleets(&fleet_ids))
    }

    fn describe_fleet_instances(&mut self, fleet_id: String) -> Result<Vec<String>, Ec2Error> {
        let fleet = self.owned_fleet(&fleet_id)?;
        if fleet.instant {
            return Ok(fleet.instance_ids);
        }
        let client = self.client()?;
        self.wait.measure(|| client.fleet_instances(&fleet_id))
    }

    fn delete_fleets(&mut self, fleet_ids: Vec<String>, terminate_instances: bool) -> Result<(), Ec2Error> {
        for id in &fleet_ids {
            self.owned_fleet(id)?;
        }
        if fleet_ids.is_empty() {
            return Ok(());
        }
        let client = self.client()?;
        self.wait.measure(|| client.delete_fleets(&fleet_ids, terminate_instances))
    }

    fn create_launch_template(&mut self, req: LaunchTemplateRequest) -> Result<String, Ec2Error> {
        if req.spec.launch_template_id.is_some() {
            return Err(denied(
                "a launch template cannot start from another (launch-template-id is set)".into(),
            ));
        }
        self.grant.launch.check(&req.spec).map_err(denied)?;
        let tags = self.ownership_tags(&req.request_id, &req.template_id, &req.spec.tags)?;
        let client = self.client()?;
        self.wait.measure(|| client.create_launch_template(&req, &tags))
    }

    fn delete_launch_template(&mut self, id: String) -> Result<(), Ec2Error> {
        let client = self.client()?;
        match self.wait.measure(|| client.launch_template_owner(&id))? {
            Some(o) if o == self.owner => self.wait.measure(|| client.delete_launch_template(&id)),
            _ => Err(denied(format!(
                "launch template {id} is not owned by provider instance '{}' (no {TAG_PROVIDER} tag) or gone",
                self.owner
            ))),
        }
    }

    fn describe_spot_instance_requests(&mut self, ids: Vec<String>) -> Result<Vec<SpotRequest>, Ec2Error> {
        let client = self.client()?;
        let answer = self.wait.measure(|| client.describe_spot_requests(&ids))?;
        // Only spot requests behind instances this provider instance owns, like every other
        // describe: a guest must not learn of another cluster's spot requests.
        let instance_ids: Vec<String> = answer.iter().filter_map(|r| r.instance_id.clone()).collect();
        let owner = self.owner.clone();
        let owned: std::collections::HashSet<String> = if instance_ids.is_empty() {
            Default::default()
        } else {
            self.wait
                .measure(|| client.describe_owned(&owner, &InstanceFilter::Ids(instance_ids)))?
                .into_iter()
                .map(|i| i.instance_id)
                .collect()
        };
        // Others' are left out of the answer, as unknown ids are.
        Ok(answer
            .into_iter()
            .filter(|r| r.instance_id.as_ref().is_some_and(|i| owned.contains(i)))
            .collect())
    }
}
