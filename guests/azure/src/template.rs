//! IBM's `azureprov_templates.json` templates, read as written: every key has an effect
//! or a refusal that names it and says why.

use hfwasm_guest_sdk::ProviderError;
use serde_json::Value;

use crate::keys::{KEYS, SSH_KEY_CONTENT};

/// How a template names its OS image.
#[derive(Debug, Clone, PartialEq)]
pub enum Image {
    /// `imageId`: a custom image's name in the template's resource group (IBM's reading),
    /// or a full resource id.
    Custom(String),
    /// `imageName`: a full resource id (custom image, compute gallery image or version).
    ResourceId(String),
    /// `imageName`: a community gallery image (`/CommunityGalleries/...`).
    Community(String),
}

/// A Spot VM's terms (`vmPriority: Spot`).
#[derive(Debug, Clone, PartialEq)]
pub struct Spot {
    /// `Deallocate` (IBM's default in Azure) or `Delete`.
    pub eviction_policy: String,
    /// Highest price per hour in US dollars; -1 = up to the on-demand price.
    pub max_price: f64,
}

/// One template.
#[derive(Debug, Clone, PartialEq)]
pub struct AzureTemplate {
    /// `templateId`.
    pub id: String,
    /// `maxNumber`: most VMs; -1 = unlimited.
    pub max_number: i32,
    /// HostFactory attributes other than the ones the VM size decides.
    pub attributes: Vec<(String, Value)>,
    /// `vmType`: the VM size (`Standard_A4_v2`).
    pub vm_size: String,
    /// The OS image.
    pub image: Image,
    /// `storageAccountType`, in Azure's spelling (`Standard_LRS`).
    pub disk_type: Option<String>,
    /// `resourceGroup`: where the VNet, NSG and image are, and where VMs and NICs go.
    pub resource_group: String,
    /// `virtualNetwork`.
    pub vnet: String,
    /// `subnet`.
    pub subnet: String,
    /// `securityGroup`: an NSG for the NIC (none = the subnet's applies).
    pub nsg: Option<String>,
    /// `placementGroup`: a proximity placement group.
    pub placement_group: Option<String>,
    /// `availabilitySet`.
    pub availability_set: Option<String>,
    /// `rootUserName` (IBM's default `lsfuser`).
    pub admin_user: String,
    /// The public key from `sshPubKeyFile` (read by the host).
    pub ssh_key: String,
    /// `instanceTags`: `key=value;key=value`.
    pub tags: Vec<(String, String)>,
    /// `userData`: `key=value;...`, exported (key upper-cased) before the custom script.
    pub user_data: Vec<(String, String)>,
    /// `customScriptUri`: downloaded and run at first boot.
    pub script_uri: Option<String>,
    /// Spot terms when `vmPriority` is `Spot`.
    pub spot: Option<Spot>,
    /// `priority`: HostFactory's template priority, passed through.
    pub priority: Option<i64>,
}

fn bad(id: &str, key: &str, why: &str) -> ProviderError {
    ProviderError::InvalidTemplate(format!("template '{id}': `{key}` {why}"))
}

/// IBM writes an unset optional key as `""`.
fn unset(v: &Value) -> bool {
    v.is_null() || v.as_str().is_some_and(|s| s.trim().is_empty())
}

fn string(id: &str, key: &str, v: &Value) -> Result<String, ProviderError> {
    v.as_str()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .ok_or_else(|| bad(id, key, &format!("must be a non-empty string, found {v}")))
}

/// `k=v;k=v` as pairs.
fn pairs(id: &str, key: &str, v: &Value) -> Result<Vec<(String, String)>, ProviderError> {
    let s = string(id, key, v)?;
    s.split(';')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.split_once('=')
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .filter(|(k, _)| !k.is_empty())
                .ok_or_else(|| bad(id, key, &format!("must be `key=value;key=value`, found `{p}`")))
        })
        .collect()
}

/// Azure's spelling of a managed disk type, from IBM's (`STANDARD_LRS`).
fn disk_type(id: &str, v: &str) -> Result<String, ProviderError> {
    const TYPES: [&str; 6] = [
        "Standard_LRS",
        "Premium_LRS",
        "StandardSSD_LRS",
        "UltraSSD_LRS",
        "Premium_ZRS",
        "StandardSSD_ZRS",
    ];
    TYPES
        .iter()
        .find(|t| t.eq_ignore_ascii_case(v))
        .map(|t| t.to_string())
        .ok_or_else(|| {
            bad(
                id,
                "storageAccountType",
                &format!("`{v}` is not a managed disk type ({})", TYPES.join(", ")),
            )
        })
}

/// Reads one template.
pub fn parse(v: &Value) -> Result<AzureTemplate, ProviderError> {
    let o = v
        .as_object()
        .ok_or_else(|| ProviderError::InvalidTemplate(format!("a template must be a JSON object, found {v}")))?;
    let id = o
        .get("templateId")
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| ProviderError::InvalidTemplate("a template has no `templateId`".into()))?
        .to_string();
    let mut t = AzureTemplate {
        id: id.clone(),
        max_number: 0,
        attributes: Vec::new(),
        vm_size: String::new(),
        image: Image::Custom(String::new()),
        disk_type: None,
        resource_group: String::new(),
        vnet: String::new(),
        subnet: String::new(),
        nsg: None,
        placement_group: None,
        availability_set: None,
        admin_user: "lsfuser".into(),
        ssh_key: String::new(),
        tags: Vec::new(),
        user_data: Vec::new(),
        script_uri: None,
        spot: None,
        priority: None,
    };
    let (mut image_id, mut image_name) = (None, None);
    let (mut vm_priority, mut eviction, mut max_price) = (None, None, None);
    let mut max_seen = false;
    for (key, v) in o {
        let k = key.as_str();
        if k != "maxNumber" && unset(v) {
            continue;
        }
        match k {
            "templateId" => {}
            "maxNumber" => {
                let n = v.as_i64().filter(|n| (-1..=100_000).contains(n));
                t.max_number = n
                    .and_then(|n| i32::try_from(n).ok())
                    .ok_or_else(|| bad(&id, k, "must be -1 (unlimited) or 0..=100000"))?;
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
            "imageId" => image_id = Some(string(&id, k, v)?),
            "imageName" => image_name = Some(string(&id, k, v)?),
            "storageAccountType" => t.disk_type = Some(disk_type(&id, &string(&id, k, v)?)?),
            "vmType" => t.vm_size = string(&id, k, v)?,
            "resourceGroup" => t.resource_group = string(&id, k, v)?,
            "virtualNetwork" => t.vnet = string(&id, k, v)?,
            "subnet" => t.subnet = string(&id, k, v)?,
            "securityGroup" => t.nsg = Some(string(&id, k, v)?),
            "placementGroup" => t.placement_group = Some(string(&id, k, v)?),
            "availabilitySet" => t.availability_set = Some(string(&id, k, v)?),
            "rootUserName" => t.admin_user = string(&id, k, v)?,
            "instanceTags" => t.tags = pairs(&id, k, v)?,
            "userData" => t.user_data = pairs(&id, k, v)?,
            "customScriptUri" => {
                let u = string(&id, k, v)?;
                if !(u.starts_with("http://") || u.starts_with("https://")) {
                    return Err(bad(&id, k, &format!("must be an http(s) URL, found `{u}`")));
                }
                t.script_uri = Some(u);
            }
            // Read by the host, which puts the key's text in SSH_KEY_CONTENT.
            "sshPubKeyFile" => {}
            k if k == SSH_KEY_CONTENT => t.ssh_key = string(&id, k, v)?,
            "priority" => t.priority = Some(v.as_i64().ok_or_else(|| bad(&id, k, "must be a whole number"))?),
            "withPublicIP" => match v {
                Value::Bool(false) => {}
                Value::String(s) if s.eq_ignore_ascii_case("false") => {}
                _ => {
                    return Err(bad(
                        &id,
                        k,
                        "true is not supported: hfwasm gives VMs private addresses only (HostFactory and the cluster reach them inside the VNet); remove the key",
                    ));
                }
            },
            "vmPriority" => vm_priority = Some(string(&id, k, v)?),
            "evictionPolicy" => eviction = Some(string(&id, k, v)?),
            "maxPrice" => {
                max_price = Some(
                    v.as_f64()
                        .ok_or_else(|| bad(&id, k, "must be a number (US dollars per hour, -1 = on-demand price)"))?,
                )
            }
            "machineCount" => {
                return Err(bad(
                    &id,
                    k,
                    "is HostFactory's request field, not a template key; HostFactory sends the count with each request",
                ));
            }
            "ttl" => {
                return Err(bad(
                    &id,
                    k,
                    "is not supported: HostFactory returns hosts itself (requestReturnMachines); remove the key",
                ));
            }
            "keyName" => {
                return Err(bad(
                    &id,
                    k,
                    "names an EC2 key pair; Azure VMs take the key text from `sshPubKeyFile`",
                ));
            }
            "userDataExecCmd" => {
                return Err(bad(
                    &id,
                    k,
                    "is not supported: `customScriptUri` is run with bash; put the command in that script",
                ));
            }
            "storageAccount" => {
                return Err(bad(
                    &id,
                    k,
                    "(unmanaged disks in a storage account) is not supported: VMs get managed disks of `storageAccountType`",
                ));
            }
            other => {
                return Err(bad(&id, other, &format!("is not a template key (keys: {})", KEYS.join(", "))));
            }
        }
    }
    if !max_seen {
        return Err(bad(&id, "maxNumber", "is required (-1 for unlimited)"));
    }
    for (key, val) in [
        ("vmType", &t.vm_size),
        ("resourceGroup", &t.resource_group),
        ("virtualNetwork", &t.vnet),
        ("subnet", &t.subnet),
    ] {
        if val.is_empty() {
            return Err(bad(&id, key, "is required"));
        }
    }
    if t.ssh_key.is_empty() {
        return Err(bad(
            &id,
            "sshPubKeyFile",
            "is required: the VM's administrator logs in with this public key",
        ));
    }
    t.image = match (image_id, image_name) {
        (Some(i), _) => Image::Custom(i),
        (None, Some(n)) if n.to_ascii_lowercase().starts_with("/communitygalleries/") => Image::Community(n),
        (None, Some(n)) if n.to_ascii_lowercase().starts_with("/subscriptions/") => Image::ResourceId(n),
        (None, Some(n)) => {
            return Err(bad(
                &id,
                "imageName",
                &format!(
                    "`{n}` is not an image resource id (/subscriptions/.../images/<name>, a gallery image or version, or /CommunityGalleries/...)"
                ),
            ));
        }
        (None, None) => return Err(bad(&id, "imageId", "or `imageName` is required")),
    };
    t.spot = match vm_priority.as_deref() {
        None | Some("Regular") => {
            if eviction.is_some() || max_price.is_some() {
                return Err(bad(&id, "evictionPolicy", "and `maxPrice` apply only with `vmPriority`: `Spot`"));
            }
            None
        }
        Some("Spot") | Some("Low") => {
            let eviction_policy = eviction.unwrap_or_else(|| "Deallocate".into());
            if !matches!(eviction_policy.as_str(), "Deallocate" | "Delete") {
                return Err(bad(
                    &id,
                    "evictionPolicy",
                    &format!("`{eviction_policy}` must be Deallocate or Delete"),
                ));
            }
            let max_price = max_price.unwrap_or(-1.0);
            if max_price != -1.0 && max_price <= 0.0 {
                return Err(bad(&id, "maxPrice", "must be -1 (up to the on-demand price) or a price above 0"));
            }
            Some(Spot {
                eviction_policy,
                max_price,
            })
        }
        Some(other) => return Err(bad(&id, "vmPriority", &format!("`{other}` must be Regular or Spot"))),
    };
    Ok(t)
}

/// A template's id and the template, or why it was refused.
pub type Read = (String, Result<AzureTemplate, ProviderError>);

/// Every template of the guest's settings (`{"templates": [...]}`), each read or refused on
/// its own (by id), so one bad template does not take the others down.
pub fn parse_all(settings: &Value) -> Result<Vec<Read>, ProviderError> {
    Ok(settings["templates"]
        .as_array()
        .ok_or_else(|| ProviderError::InvalidInput("guest settings have no `templates` array".into()))?
        .iter()
        .map(|t| (t["templateId"].as_str().unwrap_or_default().trim().to_string(), parse(t)))
        .collect())
}
