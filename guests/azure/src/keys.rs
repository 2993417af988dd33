//! The template keys of IBM's `azureprov_templates.json` that the Azure guest reads. Plain
//! Rust with no dependencies: the host includes this file too (`config::ibm_azure`), so the
//! file's reader on both sides of the sandbox knows one list.

/// Every template key a site may write: IBM's (each has an effect or a named refusal in
/// the guest) and hfwasm's Spot keys.
pub const KEYS: [&str; 28] = [
    "templateId",
    "maxNumber",
    "attributes",
    "imageId",
    "imageName",
    "storageAccountType",
    "vmType",
    "machineCount",
    "ttl",
    "keyName",
    "userData",
    "customScriptUri",
    "userDataExecCmd",
    "securityGroup",
    "placementGroup",
    "instanceTags",
    "resourceGroup",
    "virtualNetwork",
    "subnet",
    "rootUserName",
    "sshPubKeyFile",
    "withPublicIP",
    "availabilitySet",
    "priority",
    "storageAccount",
    "vmPriority",
    "evictionPolicy",
    "maxPrice",
];

/// The key the host adds to a template: the text of its `sshPubKeyFile` (guests read no files).
pub const SSH_KEY_CONTENT: &str = "sshPublicKeyContent";
