//! What `hfwasm templates generate` (and `hfwasm init` for AWS) reads from an account to
//! write starter templates: a VPC (the default one unless named), its subnets with their
//! zones, a security group (the VPC's `default` unless named) and an image (the newest
//! Amazon Linux 2023 for x86_64 unless named). Host-side admin code, never a guest's: it
//! runs on the same client, retries and counters as the capability.

use aws_sdk_ec2::types::Filter;

use super::client::Ec2Client;
use crate::engine::bindings::hostfactory::capabilities::ec2::Ec2Error;

/// What to look for; unset = the defaults above.
#[derive(Debug, Clone, Default)]
pub struct Wanted {
    /// `--vpc-id`.
    pub vpc_id: Option<String>,
    /// `--security-group-id` (several allowed).
    pub security_groups: Vec<String>,
    /// `--image-id`.
    pub image_id: Option<String>,
    /// `--image-name`: a DescribeImages name filter (`*` wildcards), owned by `image_owner`.
    pub image_name: Option<String>,
    /// `--image-owner` (default `amazon`).
    pub image_owner: Option<String>,
}

/// The default image: Amazon Linux 2023 for x86_64, owned by Amazon.
pub const DEFAULT_IMAGE_NAME: &str = "al2023-ami-2023.*-x86_64";

/// What was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Network {
    /// The VPC.
    pub vpc_id: String,
    /// Its available subnets as (id, availability zone), by zone then id.
    pub subnets: Vec<(String, String)>,
    /// Security groups for the templates.
    pub security_groups: Vec<String>,
    /// The image: (id, name).
    pub image: (String, String),
}

fn text(e: Ec2Error) -> String {
    match e {
        Ec2Error::Denied(m) | Ec2Error::Unavailable(m) => m,
        Ec2Error::Aws(f) => format!("{}: {}", f.code, f.message),
    }
}

impl Ec2Client {
    /// Looks up the network and image for starter templates; the error says what is
    /// missing and which flag chooses it.
    pub fn discover(&self, want: &Wanted) -> Result<Network, String> {
        let vpcs = self
            .call("DescribeVpcs", true, |c| {
                let mut req = c.describe_vpcs();
                req = match &want.vpc_id {
                    Some(id) => req.vpc_ids(id.clone()),
                    None => req,
                };
                req.send()
            })
            .map_err(text)?;
        let all: Vec<(String, bool)> = vpcs
            .vpcs()
            .iter()
            .filter_map(|v| Some((v.vpc_id()?.to_string(), v.is_default().unwrap_or(false))))
            .collect();
        let vpc_id = match (&want.vpc_id, all.iter().find(|(_, d)| *d), all.as_slice()) {
            (Some(id), _, _) => id.clone(),
            (None, Some((id, _)), _) => id.clone(),
            (None, None, [(only, _)]) => only.clone(),
            (None, None, []) => return Err("the account has no VPC in this region".into()),
            (None, None, many) => {
                let ids: Vec<&str> = many.iter().map(|(id, _)| id.as_str()).collect();
                return Err(format!(
                    "no default VPC and several others ({}); choose one with --vpc-id",
                    ids.join(", ")
                ));
            }
        };
        let vpc_filter = Filter::builder().name("vpc-id").values(vpc_id.clone()).build();
        let subnets = self
            .call("DescribeSubnets", true, |c| c.describe_subnets().filters(vpc_filter.clone()).send())
            .map_err(text)?;
        let mut subnets: Vec<(String, String)> = subnets
            .subnets()
            .iter()
            .filter(|s| s.state().is_none_or(|st| st.as_str() == "available"))
            .filter_map(|s| Some((s.subnet_id()?.to_string(), s.availability_zone().unwrap_or_default().to_string())))
            .collect();
        subnets.sort_by(|a, b| (&a.1, &a.0).cmp(&(&b.1, &b.0)));
        if subnets.is_empty() {
            return Err(format!("VPC {vpc_id} has no available subnet"));
        }
        let security_groups = if want.security_groups.is_empty() {
            let groups = self
                .call("DescribeSecurityGroups", true, |c| {
                    c.describe_security_groups()
                        .filters(vpc_filter.clone())
                        .filters(Filter::builder().name("group-name").values("default").build())
                        .send()
                })
                .map_err(text)?;
            let ids: Vec<String> = groups
                .security_groups()
                .iter()
                .filter_map(|g| g.group_id().map(str::to_string))
                .collect();
            if ids.is_empty() {
                return Err(format!("VPC {vpc_id} has no `default` security group; give --security-group-id"));
            }
            ids
        } else {
            want.security_groups.clone()
        };
        let image = match &want.image_id {
            Some(id) => {
                let found = self
                    .call("DescribeImages", true, |c| c.describe_images().image_ids(id.clone()).send())
                    .map_err(text)?;
                let name = found.images().first().and_then(|i| i.name()).unwrap_or_default().to_string();
                (id.clone(), name)
            }
            None => {
                let pattern = want.image_name.clone().unwrap_or_else(|| DEFAULT_IMAGE_NAME.to_string());
                let owner = want.image_owner.clone().unwrap_or_else(|| "amazon".into());
                let found = self
                    .call("DescribeImages", true, |c| {
                        c.describe_images()
                            .owners(owner.clone())
                            .filters(Filter::builder().name("name").values(pattern.clone()).build())
                            .filters(Filter::builder().name("state").values("available").build())
                            .send()
                    })
                    .map_err(text)?;
                found
                    .images()
                    .iter()
                    .filter_map(|i| Some((i.creation_date().unwrap_or_default(), i.image_id()?, i.name().unwrap_or_default())))
                    .max()
                    .map(|(_, id, name)| (id.to_string(), name.to_string()))
                    .ok_or_else(|| format!("no image named `{pattern}` owned by `{owner}`; give --image-id or --image-name"))?
            }
        };
        Ok(Network {
            vpc_id,
            subnets,
            security_groups,
            image,
        })
    }
}

/// IBM-format templates (`awsprov_templates.json`) for `vm_types` in each subnet of
/// `net`, `max_number` hosts each: one template per type and zone, so HostFactory can
/// choose where hosts go.
pub fn starter_templates(net: &Network, vm_types: &[String], max_number: u32) -> serde_json::Value {
    let mut templates = Vec::new();
    for ty in vm_types {
        for (subnet, zone) in &net.subnets {
            let id = format!(
                "hfwasm-{}-{}",
                ty.replace('.', "-"),
                if zone.is_empty() { subnet.as_str() } else { zone.as_str() }
            );
            templates.push(serde_json::json!({
                "templateId": id,
                "maxNumber": max_number,
                "attributes": {"type": ["String", "X86_64"]},
                "imageId": net.image.0,
                "subnetId": subnet,
                "vmType": ty,
                "securityGroupIds": net.security_groups,
            }));
        }
    }
    serde_json::json!({"templates": templates})
}
