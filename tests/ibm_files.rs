//! IBM's own files, exactly as IBM ships and documents them (`tests/data/ibm/`, never
//! edited), driving the real scripts against moto's EC2 server; and the IBM keys hfwasm
//! once refused, each checked for its effect in the emulator (placement, tenancy,
//! EBS optimisation, user data, launch-template versions, InstanceID tags, credentials from
//! a site's script).
//!
//! moto cannot show placement groups, tenancy or EFA interfaces (it keeps none of them):
//! there the test reads what hfwasm sent, from moto's request recorder. Nor real STS expiry:
//! the script's renewal is driven by its age instead.

mod common;

use std::path::Path;

use common::moto::{Moto, aws_tree};
use common::*;
use serde_json::{Value, json};

fn ibm_file(rel: &str) -> String {
    std::fs::read_to_string(repo().join("tests/data/ibm").join(rel)).expect("IBM sample")
}

#[test]
fn ibm_open_source_samples_serve_hostfactory_as_they_are() {
    let moto = Moto::start();
    let tree = HfTree::new("");
    tree.set_env("AWS_EC2_METADATA_DISABLED", "true");
    // LSF's names, IBM's bytes.
    std::fs::write(tree.conf.join("awsprov_config.json"), ibm_file("aws/awsprov_config.json")).expect("config");
    std::fs::write(tree.conf.join("awsprov_templates.json"), ibm_file("aws/awsprov_templates.json")).expect("templates");

    // As shipped, the config names /home/aws/credentials, which this machine lacks: one line
    // that names the setting and the file, never the SDK's debug dump.
    let e = tree.err("getAvailableTemplates", &json!({}), "PROVIDER_UNAVAILABLE");
    let msg = e["error"]["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("AWS_CREDENTIAL_FILE") && msg.contains("/home/aws/credentials"),
        "{msg}"
    );
    assert!(
        !msg.contains('\n') && !msg.contains("DispatchFailure") && !msg.contains("source:"),
        "{msg}"
    );

    // The same files with the emulator's endpoint and a credentials file added: both of
    // IBM's templates are offered, with the true shape of t2.micro.
    std::fs::write(
        tree.conf.join("credentials"),
        "[default]\naws_access_key_id = testing\naws_secret_access_key = testing\n",
    )
    .expect("creds");
    let mut cfg: Value = serde_json::from_str(&ibm_file("aws/awsprov_config.json")).expect("json");
    cfg["AWS_CREDENTIAL_FILE"] = json!("credentials");
    cfg["AWS_ENDPOINT_URL"] = json!(moto.endpoint);
    std::fs::write(tree.conf.join("awsprov_config.json"), cfg.to_string()).expect("config");
    let t = tree.ok("getAvailableTemplates", &json!({}));
    let (_, cores, mib) = moto.type_info("t2.micro");
    for id in ["Template-VM-1", "Template-VM-2"] {
        let tpl = template(&t, id);
        assert_eq!(tpl["attributes"]["ncpus"], json!(["Numeric", cores.to_string()]), "{tpl}");
        assert_eq!(tpl["attributes"]["nram"], json!(["Numeric", mib.to_string()]), "{tpl}");
        assert_eq!(
            tpl["attributes"]["mem"],
            json!(["Numeric", mib.to_string()]),
            "LSF's mem is the real memory: {tpl}"
        );
        assert_eq!(tpl["attributes"]["awshost"], json!(["Boolean", "1"]), "{tpl}");
        assert_eq!(
            (tpl["maxNumber"].clone(), tpl["availableNumber"].clone()),
            (json!(0), json!(0)),
            "{tpl}"
        );
    }
    // maxNumber 0 offers nothing: a request is refused before anything launches.
    tree.err(
        "requestMachines",
        &json!({"template": {"templateId": "Template-VM-1", "machineCount": 1}}),
        "INVALID_MACHINE_COUNT",
    );
    assert!(moto.instances().is_empty());

    // IBM's documented Symphony config (empty proxy host, port 80) is no proxy: calls work.
    let mut doc: Value = serde_json::from_str(&ibm_file("symphony-doc/awsinstprov_config.json")).expect("json");
    doc["AWS_CREDENTIAL_FILE"] = json!("credentials");
    doc["AWS_ENDPOINT_URL"] = json!(moto.endpoint);
    std::fs::write(tree.conf.join("awsprov_config.json"), doc.to_string()).expect("config");
    let t = tree.ok("getAvailableTemplates", &json!({}));
    assert_eq!(t["templates"].as_array().map(Vec::len), Some(2), "{t}");
}

/// `hfwasm config check` for the tree: (exit code, stdout, stderr).
fn config_check(tree: &HfTree) -> (i32, String, String) {
    admin(tree, &["config", "check"])
}

#[test]
fn one_bad_template_leaves_the_others_offered_and_config_check_lists_every_problem() {
    let moto = Moto::start();
    let (subnet, sg, ami) = moto.network();
    let good = |id: &str| json!({"templateId": id, "maxNumber": 4, "imageId": ami, "subnetId": subnet, "vmType": "t3.micro", "securityGroupIds": [sg]});
    let mut quoted = good("Quoted");
    quoted["maxNumber"] = json!("10");
    let mut typo = good("Typo");
    typo["vmTyp"] = json!("t3.micro");
    let mut semantic = good("NoVolumeType");
    semantic["iops"] = json!(3000);
    let tree = aws_tree(&moto, json!([good("Good-A"), quoted, typo, semantic, good("Good-B")]));

    let t = tree.ok("getAvailableTemplates", &json!({}));
    let ids: Vec<&str> = t["templates"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|t| t["templateId"].as_str())
        .collect();
    assert_eq!(ids, ["Good-A", "Good-B"], "the good ones are offered");
    let log = std::fs::read_to_string(tree.logs.join("hfwasm-pool.log")).expect("log");
    assert!(
        log.contains("templates[1].maxNumber") && log.contains("iops"),
        "bad ones are logged: {log}"
    );

    // A request for a left-out template names it as not offered.
    let e = tree.err(
        "requestMachines",
        &json!({"template": {"templateId": "Quoted", "machineCount": 1}}),
        "TEMPLATE_NOT_FOUND",
    );
    assert_eq!(e["error"]["details"]["available_templates"], json!(["Good-A", "Good-B"]), "{e}");

    let (code, out, err) = config_check(&tree);
    assert_eq!(code, 1, "problems fail the check: {out}\n{err}");
    for needle in [
        "[templates[1].maxNumber]",
        "got the string \"10\"; write 10",
        "[templates[2].vmTyp]",
        "did you mean `vmType`?",
        "template:  Good-A",
        "template:  Good-B",
    ] {
        assert!(out.contains(needle), "{needle}:\n{out}");
    }
    assert!(
        out.contains("PROBLEM:   guest aws: template skipped: templates[") && out.contains("iops"),
        "the guest's own finding is listed too: {out}"
    );
    assert!(err.contains("3 problems listed above"), "{err}");
    // The same as one JSON document: each problem with its file and setting, the templates
    // in getAvailableTemplates' format.
    let (code, out, _) = admin(&tree, &["config", "check", "--json"]);
    assert_eq!(code, 1, "{out}");
    let doc: Value = serde_json::from_str(&out).expect("one JSON document");
    assert_eq!(doc["ok"], false, "{doc:#}");
    let settings = strings(&doc["problems"], "setting");
    assert!(
        settings.contains(&"templates[1].maxNumber") && settings.contains(&"templates[2].vmTyp"),
        "{doc:#}"
    );
    assert_eq!(
        doc["problems"].as_array().map(Vec::len),
        Some(3),
        "the guest's finding too: {doc:#}"
    );
    assert_eq!(strings(&doc["templates"], "templateId"), ["Good-A", "Good-B"], "{doc:#}");

    // Nothing usable: CONFIG_ERROR with the file and the setting.
    let tree = aws_tree(
        &moto,
        json!([{"templateId": "Only", "maxNumber": "3", "imageId": ami, "subnetId": subnet, "vmType": "t3.micro"}]),
    );
    let e = tree.err("getAvailableTemplates", &json!({}), "CONFIG_ERROR");
    assert_eq!(e["error"]["details"]["setting"], "templates[0].maxNumber", "{e}");
    assert!(
        e["error"]["details"]["file"]
            .as_str()
            .is_some_and(|f| f.ends_with("poolprov_templates.json")),
        "{e}"
    );
}

#[test]
fn placement_tenancy_ebs_and_user_data_reach_the_instances() {
    let moto = Moto::start();
    let (subnet, sg, ami) = moto.network();
    let tree = aws_tree(&moto, json!([]));
    std::fs::write(
        tree.conf.join("user_data.sh"),
        "#!/bin/sh\n%EXPORT_USER_DATA%\necho started >> /tmp/user_data.log\n",
    )
    .expect("script");
    let templates = json!([
        {
            "templateId": "Placed",
            "maxNumber": 4,
            "imageId": ami,
            "subnetId": subnet,
            "vmType": "c5.large",
            "securityGroupIds": [sg],
            "placementGroupName": "hpc-cluster",
            "tenancy": "dedicated",
            "ebsOptimized": true,
            "userData": "zone=us_west_2a;rack=7",
            "userDataScript": "user_data.sh"
        },
        {
            "templateId": "Exports-Only",
            "maxNumber": 4,
            "imageId": ami,
            "subnetId": subnet,
            "vmType": "t3.micro",
            "securityGroupIds": [sg],
            "userData": "zone=us_west_2b",
            "interfaceType": "efa",
            "efaCount": 1
        }
    ]);
    std::fs::write(
        tree.conf.join("poolprov_templates.json"),
        json!({"templates": templates}).to_string(),
    )
    .expect("templates");

    moto.start_recording();
    let id = tree.request("Placed", 2);
    assert_eq!(tree.until_final(&id)["status"], "complete");
    let ids: Vec<String> = moto.instances_of(&id).into_iter().map(|x| x.0).collect();
    assert_eq!(ids.len(), 2);
    let described = moto
        .rt
        .block_on(moto.ec2.describe_instances().set_instance_ids(Some(ids.clone())).send())
        .expect("describe");
    for i in described.reservations().iter().flat_map(|r| r.instances()) {
        assert_eq!(i.ebs_optimized(), Some(true), "{i:?}");
    }
    // moto keeps neither placement group nor tenancy: what hfwasm sent is checked instead.
    let sent = moto.recorded("RunInstances");
    assert_eq!(sent.len(), 1, "one RunInstances for the request: {sent:?}");
    for part in [
        "Placement.GroupName=hpc-cluster",
        "Placement.Tenancy=dedicated",
        "EbsOptimized=true",
    ] {
        assert!(sent[0].contains(part), "{part} in {}", sent[0]);
    }
    let user_data = |iid: &str| -> String {
        let attr = moto
            .rt
            .block_on(
                moto.ec2
                    .describe_instance_attribute()
                    .instance_id(iid)
                    .attribute(aws_sdk_ec2::types::InstanceAttributeName::UserData)
                    .send(),
            )
            .expect("user data");
        let b64 = attr.user_data().and_then(|u| u.value()).unwrap_or_default().to_string();
        String::from_utf8(aws_smithy_types::base64::decode(&b64).expect("base64")).expect("utf8")
    };
    let ud = user_data(&ids[0]);
    assert!(
        ud.starts_with("#!/bin/sh\nexport zone=us_west_2a rack=7;export template_id=Placed;export providerName=pool;\necho started"),
        "IBM's %EXPORT_USER_DATA% substitution: {ud}"
    );

    // userData without a script: the exports are the script. EFA: one interface per card,
    // in the template's subnet and groups (moto keeps no interface type; see the header).
    moto.start_recording();
    let id = tree.request("Exports-Only", 1);
    assert_eq!(tree.until_final(&id)["status"], "complete");
    let iid = moto.instances_of(&id)[0].0.clone();
    assert_eq!(
        user_data(&iid),
        "#!/bin/sh\nexport zone=us_west_2b;export template_id=Exports-Only;export providerName=pool;\n"
    );
    let described = moto
        .rt
        .block_on(moto.ec2.describe_instances().instance_ids(&iid).send())
        .expect("describe");
    let i = &described.reservations()[0].instances()[0];
    assert_eq!(i.network_interfaces().len(), 1, "{i:?}");
    assert_eq!(i.network_interfaces()[0].subnet_id(), Some(subnet.as_str()));
    assert_eq!(i.subnet_id(), Some(subnet.as_str()));
    let sent = moto.recorded("RunInstances");
    let last = sent.last().expect("a RunInstances");
    for part in [
        "NetworkInterface.1.InterfaceType=efa",
        "NetworkInterface.1.DeviceIndex=0",
        "NetworkInterface.1.NetworkCardIndex=0",
        &format!("NetworkInterface.1.SubnetId={subnet}"),
    ] {
        assert!(last.contains(part), "{part} in {last}");
    }
    assert!(!last.contains("&SubnetId="), "the subnet is on the interface only: {last}");
}

#[test]
fn launch_template_versions_and_instance_id_tags() {
    let moto = Moto::start();
    let (subnet, sg, ami) = moto.network();
    // A launch template with two versions that differ in key pair.
    let lt = moto.rt.block_on(async {
        let lt = moto
            .ec2
            .create_launch_template()
            .launch_template_name("site-lt")
            .launch_template_data(
                aws_sdk_ec2::types::RequestLaunchTemplateData::builder()
                    .image_id(&ami)
                    .key_name("key-v1")
                    .build(),
            )
            .send()
            .await
            .expect("lt");
        let id = lt.launch_template().and_then(|t| t.launch_template_id()).expect("id").to_string();
        moto.ec2
            .create_launch_template_version()
            .launch_template_id(&id)
            .launch_template_data(
                aws_sdk_ec2::types::RequestLaunchTemplateData::builder()
                    .image_id(&ami)
                    .key_name("key-v2")
                    .build(),
            )
            .send()
            .await
            .expect("v2");
        id
    });
    let tree = aws_tree(
        &moto,
        json!([
            {"templateId": "LT-v1", "maxNumber": 2, "imageId": ami, "subnetId": subnet, "vmType": "t3.micro", "securityGroupIds": [sg],
             "launchTemplateId": lt, "launchTemplateVersion": "1"},
            {"templateId": "LT-v2", "maxNumber": 2, "imageId": ami, "subnetId": subnet, "vmType": "t3.micro", "securityGroupIds": [sg],
             "launchTemplateId": lt, "launchTemplateVersion": "2"}
        ]),
    );
    // IBM's spelling in its code, beside LSF's AWS_TAG_InstanceID.
    let cfg_path = tree.conf.join("poolprov_config.json");
    let mut cfg: Value = serde_json::from_str(&std::fs::read_to_string(&cfg_path).expect("cfg")).expect("json");
    cfg["TAG_INSTANCEID"] = json!(true);
    std::fs::write(&cfg_path, cfg.to_string()).expect("cfg");

    let key_of = |request: &str| -> Vec<String> {
        let ids: Vec<String> = moto.instances_of(request).into_iter().map(|x| x.0).collect();
        let d = moto
            .rt
            .block_on(moto.ec2.describe_instances().set_instance_ids(Some(ids)).send())
            .expect("describe");
        d.reservations()
            .iter()
            .flat_map(|r| r.instances())
            .map(|i| i.key_name().unwrap_or("").to_string())
            .collect()
    };
    let v1 = tree.request("LT-v1", 1);
    let done = tree.until_final(&v1);
    assert_eq!(done["status"], "complete");
    let v2 = tree.request("LT-v2", 1);
    tree.until_final(&v2);
    assert_eq!(key_of(&v1), ["key-v1"]);
    assert_eq!(key_of(&v2), ["key-v2"]);

    // InstanceID on the instance and its volumes once a describe saw it running.
    let (iid, _, _, tags) = moto.instances_of(&v1).remove(0);
    assert!(tags.contains(&("InstanceID".to_string(), iid.clone())), "{tags:?}");
    let vols = moto
        .rt
        .block_on(
            moto.ec2
                .describe_volumes()
                .filters(
                    aws_sdk_ec2::types::Filter::builder()
                        .name("attachment.instance-id")
                        .values(&iid)
                        .build(),
                )
                .send(),
        )
        .expect("volumes");
    assert!(!vols.volumes().is_empty(), "moto attaches a root volume");
    for v in vols.volumes() {
        assert!(
            v.tags()
                .iter()
                .any(|t| t.key() == Some("InstanceID") && t.value() == Some(iid.as_str())),
            "{v:?}"
        );
    }
}

/// A credential script that counts its runs in `count` and prints `body`.
fn credential_script(dir: &Path, body: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let script = dir.join("creds.sh");
    std::fs::write(&script, format!("#!/bin/sh\necho run >> {}\n{body}\n", dir.join("count").display())).expect("script");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    script
}

#[test]
fn credentials_come_from_the_sites_script_and_are_renewed() {
    let moto = Moto::start();
    let (subnet, sg, ami) = moto.network();
    let tree = aws_tree(&moto, common::moto::templates(&subnet, &sg, &ami));
    let scripts = tempfile::tempdir().expect("dir");
    let script = credential_script(
        scripts.path(),
        "printf '[default]\\naws_access_key_id = testing\\naws_secret_access_key = testing\\naws_session_token = token\\n'",
    );
    let cfg_path = tree.conf.join("poolprov_config.json");
    let mut cfg: Value = serde_json::from_str(&std::fs::read_to_string(&cfg_path).expect("cfg")).expect("json");
    cfg.as_object_mut().expect("object").remove("AWS_CREDENTIAL_FILE");
    cfg["AWS_CREDENTIAL_SCRIPT"] = json!(script.display().to_string());
    cfg["AWS_CREDENTIAL_RENEW_MARGIN"] = json!("2");
    std::fs::write(&cfg_path, cfg.to_string()).expect("cfg");
    let runs = || {
        std::fs::read_to_string(scripts.path().join("count"))
            .unwrap_or_default()
            .lines()
            .count()
    };

    // Two calls that reach EC2 (the first poll describes instance types and builds the
    // ledger; a request launches); later template polls make no EC2 call and fetch nothing.
    tree.ok("getAvailableTemplates", &json!({}));
    let id = tree.request("OnDemand-Template-VM", 1);
    assert_eq!(runs(), 1, "credentials are reused while younger than the margin");
    let cached: Vec<_> = std::fs::read_dir(&tree.work)
        .expect("work dir")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with(".hfwasm-aws-credentials-"))
        .collect();
    assert_eq!(cached.len(), 1, "one cache file, no temp files left");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(cached[0].metadata().expect("meta").permissions().mode() & 0o777, 0o600);
    std::thread::sleep(std::time::Duration::from_millis(2100));
    tree.ok("getAvailableTemplates", &json!({}));
    assert_eq!(runs(), 1, "a template poll needs no credentials");
    tree.ok("getRequestStatus", &json!({"requests": [{"requestId": id}]}));
    assert_eq!(runs(), 2, "renewed once older than AWS_CREDENTIAL_RENEW_MARGIN");

    // A failing script: one line naming the script and its first line of stderr.
    let bad = credential_script(scripts.path(), "echo 'sts: access denied for role hpc' >&2; exit 3");
    cfg["AWS_CREDENTIAL_SCRIPT"] = json!(bad.display().to_string());
    std::fs::write(&cfg_path, cfg.to_string()).expect("cfg");
    for f in cached {
        let _ = std::fs::remove_file(f.path());
    }
    let e = tree.err(
        "requestMachines",
        &json!({"template": {"templateId": "OnDemand-Template-VM", "machineCount": 1}}),
        "PROVIDER_UNAVAILABLE",
    );
    let msg = e["error"]["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("AWS_CREDENTIAL_SCRIPT") && msg.contains("access denied for role hpc") && !msg.contains('\n'),
        "{msg}"
    );
}

#[test]
fn a_conf_dir_hfwasm_cannot_read_is_named_not_mistaken_for_the_pool() {
    let tree = HfTree::new("");
    std::fs::remove_file(tree.conf.join("inventory.txt")).expect("no inventory");
    let templates = ibm_file("aws/awsprov_templates.json");
    // IBM's files named for another provider instance.
    std::fs::write(tree.conf.join("awsinstprov_config.json"), ibm_file("aws/awsprov_config.json")).expect("cfg");
    std::fs::write(tree.conf.join("awsinstprov_templates.json"), &templates).expect("tpl");
    let e = tree.err("getAvailableTemplates", &json!({}), "CONFIG_ERROR");
    let m = e["error"]["message"].as_str().unwrap_or_default();
    assert!(
        m.contains("`awsinst`") && m.contains("HF_PROVIDER_NAME") && !m.contains("inventory.txt not"),
        "{m}"
    );
    // IBM's Azure plugin files select the Azure guest (tests/azure.rs): as shipped, the
    // credentials file they name is what is missing, not a provider.
    for f in ["awsinstprov_config.json", "awsinstprov_templates.json"] {
        std::fs::remove_file(tree.conf.join(f)).expect("rm");
    }
    std::fs::write(tree.conf.join("azureprov_config.json"), ibm_file("azure/azureprov_config.json")).expect("cfg");
    std::fs::write(
        tree.conf.join("azureprov_templates.json"),
        ibm_file("azure/azureprov_templates.json"),
    )
    .expect("tpl");
    let e = tree.err("getAvailableTemplates", &json!({}), "CONFIG_ERROR");
    let m = e["error"]["message"].as_str().unwrap_or_default();
    assert!(
        m.contains("AZURE_CREDENTIAL_FILE") && m.contains("/home/lsfadmin/credentials"),
        "{m}"
    );
    assert!(
        e["error"]["details"]["file"]
            .as_str()
            .is_some_and(|f| f.ends_with("azureprov_config.json")),
        "{e}"
    );
    // A templates file of another tool alone.
    for f in ["azureprov_config.json", "azureprov_templates.json"] {
        std::fs::remove_file(tree.conf.join(f)).expect("rm");
    }
    std::fs::write(tree.conf.join("aws_templates.json"), &templates).expect("tpl");
    let e = tree.err("getAvailableTemplates", &json!({}), "CONFIG_ERROR");
    let m = e["error"]["message"].as_str().unwrap_or_default();
    assert!(m.contains("found aws_templates.json") && m.contains("hfwasm.json"), "{m}");
    assert_eq!(e["error"]["details"]["file"], tree.conf.display().to_string());
}

#[test]
fn a_relative_confdir_as_in_the_help_finds_ibm_files_once() {
    let moto = Moto::start();
    let (subnet, sg, ami) = moto.network();
    let tree = aws_tree(&moto, common::moto::templates(&subnet, &sg, &ami));
    let input = tree.dir.path().join("in.json");
    std::fs::write(&input, "{}").expect("input");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hfwasm"))
        .current_dir(tree.dir.path())
        .args([
            "getAvailableTemplates",
            "--confdir",
            "conf/providers/pool",
            "--workdir",
            "work",
            "-f",
            "in.json",
        ])
        .env("HF_PROVIDER_NAME", "pool")
        .env("HFWASM_CACHE_DIR", test_cache())
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env_remove("HF_PROVIDER_CONFDIR")
        .env_remove("HF_PROVIDER_WORKDIR")
        .output()
        .expect("run");
    let json: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(out.status.code(), Some(0), "{json}\n{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(json["templates"].as_array().map(Vec::len), Some(3), "{json}");
}

/// A conf dir as a site leaving Open Resource Broker has it: ORB's `config.json` and
/// `aws_templates.json` (`tests/data/orb/`, as ORB ships them).
#[test]
fn orb_config_and_templates_are_read_or_refused_by_name() {
    let moto = Moto::start();
    let (subnet, sg, ami) = moto.network();
    let tree = HfTree::new("");
    std::fs::remove_file(tree.conf.join("inventory.txt")).expect("no inventory");
    let orb = |f: &str| std::fs::read_to_string(repo().join("tests/data/orb").join(f)).expect("ORB file");
    std::fs::write(tree.conf.join("config.json"), orb("config.json")).expect("config");
    std::fs::write(tree.conf.join("aws_templates.json"), orb("aws_templates.json")).expect("templates");
    for (k, v) in common::moto::ENV {
        tree.set_env(k, v);
    }
    tree.set_env("AWS_ENDPOINT_URL", &moto.endpoint);

    // As shipped: ORB's REST server section is refused by name, with the reason.
    let e = tree.err("getAvailableTemplates", &json!({}), "CONFIG_ERROR");
    assert_eq!(e["error"]["details"]["setting"], "server", "{e}");
    assert!(e["error"]["message"].as_str().is_some_and(|m| m.contains("hfwasm serve")), "{e}");

    // Without it, the example's SSM image path is next, named with the command to resolve it.
    let mut cfg: Value = serde_json::from_str(&orb("config.json")).expect("json");
    cfg.as_object_mut().expect("object").remove("server");
    std::fs::write(tree.conf.join("config.json"), cfg.to_string()).expect("config");
    let e = tree.err("getAvailableTemplates", &json!({}), "CONFIG_ERROR");
    assert_eq!(
        e["error"]["details"]["setting"], "provider.provider_defaults.aws.template_defaults.image_id",
        "{e}"
    );
    assert!(
        e["error"]["message"].as_str().is_some_and(|m| m.contains("aws ssm get-parameters")),
        "{e}"
    );

    // The site's own values in ORB's places (its AMI, subnet, group; no profile of its own):
    // ORB's 20 templates file is read as it is. What hfwasm launches is offered; the rest is
    // listed by config check, each with its reason.
    let d = &mut cfg["provider"]["provider_defaults"]["aws"]["template_defaults"];
    d["image_id"] = json!(ami);
    d["subnet_ids"] = json!([subnet]);
    d["security_group_ids"] = json!([sg]);
    cfg["provider"]["providers"][0]["config"]
        .as_object_mut()
        .expect("config")
        .remove("profile");
    std::fs::write(tree.conf.join("config.json"), cfg.to_string()).expect("config");
    let t = tree.ok("getAvailableTemplates", &json!({}));
    let mut ids: Vec<&str> = t["templates"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|t| t["templateId"].as_str())
        .collect();
    ids.sort();
    assert_eq!(
        ids,
        [
            "ASG-Mixed",
            "ASG-OnDemand",
            "ASG-Spot",
            "EC2Fleet-Instant-Mixed",
            "EC2Fleet-Instant-OnDemand",
            "EC2Fleet-Instant-Spot",
            "RunInstances-OnDemand",
            "RunInstances-Spot",
            "SpotFleet-Request-CapacityOptimized",
            "SpotFleet-Request-Diversified",
            "SpotFleet-Request-LowestPrice"
        ]
    );
    assert_eq!(
        template(&t, "EC2Fleet-Instant-OnDemand")["name"],
        "EC2 Fleet Instant On-Demand",
        "ORB's name rides along"
    );
    let (code, out, _) = admin(&tree, &["config", "check"]);
    assert_eq!(code, 1);
    assert_eq!(out.lines().filter(|l| l.starts_with("PROBLEM:")).count(), 9, "{out}");
    for reason in ["fleetType` = maintain", "fleetType` = request"] {
        assert!(out.contains(reason), "{reason}:\n{out}");
    }

    // Launch through ORB's templates: 4 units of t3.medium (2) / t3.xlarge (4) in one instant
    // fleet, and RunInstances with t3.medium weighing 2: 2 units are one instance.
    let id = tree.request("EC2Fleet-Instant-OnDemand", 4);
    assert_eq!(tree.until_final(&id)["status"], "complete");
    let types = moto.running_types_of(&id);
    let units: u32 = types.iter().map(|t| if t == "t3.xlarge" { 4 } else { 2 }).sum();
    assert_eq!(units, 4, "{types:?}");
    let id = tree.request("RunInstances-OnDemand", 2);
    let done = tree.until_final(&id);
    assert_eq!(done["status"], "complete", "{done}");
    assert_eq!(moto.running_types_of(&id), ["t3.medium"]);
    assert!(
        moto.instances_of(&id)[0]
            .3
            .contains(&("Environment".to_string(), "dev".to_string())),
        "the template's own tags are on the instance"
    );

    // ORB's weighted Auto Scaling template: 4 units of t3.medium (2) / t3.xlarge (4) from a
    // group made for the request (tests/asg.rs follows a group through its whole life).
    let id = tree.request("ASG-OnDemand", 4);
    let done = tree.until_final(&id);
    assert_eq!(done["status"], "complete", "{done}");
    let types = moto.running_types_of(&id);
    let units: u32 = types.iter().map(|t| if t == "t3.xlarge" { 4 } else { 2 }).sum();
    assert!(units >= 4, "{types:?}");
    assert_eq!(done["machines"].as_array().map(Vec::len), Some(types.len()), "{done}");
    let group = moto.groups().into_iter().find(|g| g.name.ends_with(&format!("-{id}")));
    assert_eq!(group.map(|g| g.desired), Some(4), "{:?}", moto.groups());
}

/// An EC2 endpoint that accepts connections and never answers (a black-holed proxy, a hung
/// load balancer): the call answers in time with a named error, and the next call works.
#[test]
fn a_cloud_that_never_answers_cannot_hold_a_call_past_its_deadline() {
    let moto = Moto::start();
    let (subnet, sg, ami) = moto.network();
    let tree = aws_tree(&moto, common::moto::templates(&subnet, &sg, &ami));
    let hole = std::net::TcpListener::bind("127.0.0.1:0").expect("listener");
    let port = hole.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in hole.incoming() {
            held.push(s);
        }
    });
    let cfg_path = tree.conf.join("poolprov_config.json");
    let mut cfg: Value = serde_json::from_str(&std::fs::read_to_string(&cfg_path).expect("cfg")).expect("json");
    cfg["AWS_ENDPOINT_URL"] = json!(format!("http://127.0.0.1:{port}"));
    std::fs::write(&cfg_path, cfg.to_string()).expect("cfg");
    tree.config(&json!({
        "aws": {"config_file": "poolprov_config.json", "templates_file": "poolprov_templates.json"},
        "guests": {"aws": {"wasm": "builtin:aws", "grants": ["log", "kv", "ec2"], "limits": {"call_timeout_ms": 3000}}}
    }));
    let t0 = std::time::Instant::now();
    let e = tree.err("getAvailableTemplates", &json!({}), "CALL_TIMEOUT");
    let took = t0.elapsed();
    // 3 s of call_timeout_ms, then the watchdog's margin (5 s at least): well inside
    // HostFactory's action timeout, where nothing bounded the call before.
    assert!(took < std::time::Duration::from_secs(15), "answered after {took:?}");
    assert_eq!(e["error"]["details"]["limit"], "call_timeout_ms", "{e}");
    // The endpoint back: the next call works.
    cfg["AWS_ENDPOINT_URL"] = json!(moto.endpoint);
    std::fs::write(&cfg_path, cfg.to_string()).expect("cfg");
    tree.ok("getAvailableTemplates", &json!({}));
}
