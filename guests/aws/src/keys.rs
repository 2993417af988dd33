//! The template keys of IBM's `awsprov_templates.json` that the AWS guest reads, and the
//! nearest-key hint for a misspelt one. Plain Rust with no dependencies: the host includes
//! this file too (`config::ibm_aws`), so the file's reader on both sides of the sandbox
//! knows one list.

/// Every template key this provider reads (IBM's, and the ones ORB's HostFactory-format
/// templates add), for the host's key check and the nearest-key hint.
pub const KEYS: [&str; 43] = [
    "templateId",
    "maxNumber",
    "attributes",
    "imageId",
    "subnetId",
    "vmType",
    "vmTypes",
    "vmTypesOnDemand",
    "vmTypesPriority",
    "priceType",
    "maxSpotPrice",
    "fleetRole",
    "allocationStrategy",
    "allocationStrategyOnDemand",
    "percentOnDemand",
    "keyName",
    "securityGroupIds",
    "instanceTags",
    "instanceProfile",
    "userDataScript",
    "userData",
    "rootDeviceVolumeSize",
    "volumeType",
    "iops",
    "launchTemplateId",
    "launchTemplateVersion",
    "spotFleetRequestExpiry",
    "ebsOptimized",
    "placementGroupName",
    "tenancy",
    "interfaceType",
    "efaCount",
    "poolsCount",
    "spotPrice",
    "durationInHours",
    "requestValidity",
    "ec2FleetConfig",
    "fleetType",
    "providerApi",
    "providerType",
    "name",
    "createdAt",
    "updatedAt",
];

/// ` (did you mean `X`?)` for the template key nearest to `key`, when one is close.
pub fn nearest(key: &str) -> String {
    nearest_in(key, &KEYS)
}

/// ` (did you mean `X`?)` for the entry of `known` nearest to `key` (ignoring case), when
/// one is within a few edits; empty otherwise.
pub fn nearest_in(key: &str, known: &[&str]) -> String {
    let lower = key.to_ascii_lowercase();
    let best = known
        .iter()
        .map(|k| (distance(&lower, &k.to_ascii_lowercase()), *k))
        .min_by_key(|(d, _)| *d);
    match best {
        Some((d, k)) if d <= 3.max(key.len() / 4) => format!(" (did you mean `{k}`?)"),
        _ => String::new(),
    }
}

/// Edit distance (Levenshtein) of two short strings.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}
