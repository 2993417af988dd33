//! The captured HostFactory inputs of `tests/conformance/inputs/`, run unchanged
//! through the real scripts against an on-prem pool whose hosts carry the captured names,
//! checking every answer against the JSON Schemas and for meaning (names, counts, states).

mod common;

use common::*;
use serde_json::{Value, json};

/// The eight hosts HostFactory returns in the captured requestReturnMachines input, plus
/// the two it lists in the captured getReturnRequests input: ten Spot-Template-VM hosts.
const SPOT_HOSTS: [&str; 10] = [
    "ip-10-0-57-7.ec2.internal",
    "ip-10-0-57-154.ec2.internal",
    "ip-10-0-62-139.ec2.internal",
    "ip-10-0-58-203.ec2.internal",
    "ip-10-0-57-22.ec2.internal",
    "ip-10-0-55-65.ec2.internal",
    "ip-10-0-57-187.ec2.internal",
    "ip-10-0-51-28.ec2.internal",
    "ip-10-0-58-4.ec2.internal",
    "ip-10-0-50-105.ec2.internal",
];

fn inventory() -> String {
    let mut s = String::from("defaults ncpus=1 nram=1024\n");
    for name in SPOT_HOSTS {
        // ip-10-0-57-7.ec2.internal -> 10.0.57.7
        let ip = name.trim_start_matches("ip-").trim_end_matches(".ec2.internal").replace('-', ".");
        s.push_str(&format!("{name} {ip} template=Spot-Template-VM\n"));
    }
    s.push_str("lsf-1 10.2.0.1 template=aws-vm-1\nlsf-2 10.2.0.2 template=aws-vm-1\n");
    for i in 1..=5 {
        s.push_str(&format!("basic-{i} 10.3.0.{i} template=basic-template\n"));
    }
    s
}

fn input(name: &str) -> std::path::PathBuf {
    conformance().join("inputs").join(name)
}

fn status(tree: &HfTree, file: &str) -> Value {
    let o = tree.run_file("getRequestStatus", &input(file));
    assert_eq!(o.code, 0, "{}", o.json);
    assert_valid("getRequestStatus", &o.json);
    o.json
}

#[test]
fn captured_inputs_drive_a_full_cycle() {
    let tree = HfTree::new(&inventory());

    // getAvailableTemplates: the captured `{}`, and a missing file.
    let o = tree.run_file("getAvailableTemplates", &input("getAvailableTemplates.json"));
    assert_eq!(o.code, 0, "{}", o.json);
    assert_valid("getAvailableTemplates", &o.json);
    let spot = o.json["templates"]
        .as_array()
        .expect("templates")
        .iter()
        .find(|t| t["templateId"] == "Spot-Template-VM")
        .cloned()
        .expect("spot template");
    assert_eq!((spot["maxNumber"].as_i64(), spot["availableNumber"].as_i64()), (Some(10), Some(10)));
    assert_eq!(spot["attributes"]["nram"], json!(["Numeric", "1024"]));
    let o = tree.run_file("getAvailableTemplates", &tree.dir.path().join("no-such-file"));
    assert_eq!(o.code, 0);
    assert_valid("getAvailableTemplates", &o.json);

    // requestMachines: the captured 10 x Spot-Template-VM.
    let o = tree.run_file("requestMachines", &input("requestMachines.json"));
    assert_eq!(o.code, 0, "{}", o.json);
    assert_valid("requestMachines", &o.json);
    let req_id = o.json["requestId"].as_str().expect("id").to_string();
    let done = tree.until_final(&req_id);
    assert_eq!(done["status"], "complete", "{done}");
    let mut got = machine_names(&done, "succeed");
    got.sort();
    let mut want: Vec<String> = SPOT_HOSTS.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(got, want, "each inventory host exactly once");
    for m in done["machines"].as_array().expect("machines") {
        let name = m["name"].as_str().expect("name");
        let ip = name.trim_start_matches("ip-").trim_end_matches(".ec2.internal").replace('-', ".");
        assert_eq!(m["privateIpAddress"], ip.as_str());
        assert!(m["launchtime"].as_u64().is_some_and(|t| t > 1_600_000_000), "{m}");
    }

    // requestReturnMachines: the captured eight hosts.
    let o = tree.run_file("requestReturnMachines", &input("requestReturnMachines.json"));
    assert_eq!(o.code, 0, "{}", o.json);
    assert_valid("requestReturnMachines", &o.json);
    let ret_id = o.json["requestId"].as_str().expect("id").to_string();
    assert_ne!(ret_id, req_id);
    let ret = tree.until_final(&ret_id);
    assert_eq!(ret["status"], "complete", "{ret}");
    assert_eq!(machine_names(&ret, "succeed").len(), 8);
    assert!(
        ret["machines"]
            .as_array()
            .expect("machines")
            .iter()
            .all(|m| m["status"] == "terminated")
    );
    let t = tree.ok("getAvailableTemplates", &json!({}));
    let spot = t["templates"]
        .as_array()
        .expect("templates")
        .iter()
        .find(|t| t["templateId"] == "Spot-Template-VM")
        .cloned()
        .expect("spot");
    assert_eq!(spot["availableNumber"], 8, "the eight returned hosts are free again");

    // Both request kinds in one status call, then ids this instance never issued.
    let both = tree.ok(
        "getRequestStatus",
        &json!({"requests": [{"requestId": req_id}, {"requestId": ret_id}]}),
    );
    assert_eq!(both["requests"].as_array().map(Vec::len), Some(2));
    for file in [
        "getRequestStatus.json",
        "getRequestStatus.several-ids.json",
        "getRequestStatus.object-form.json",
        "aliases/getRequestStatus.single.json",
    ] {
        let s = status(&tree, file);
        for r in s["requests"].as_array().expect("requests") {
            assert_eq!(r["status"], "complete_with_error", "{file}: {r}");
            assert!(
                r["message"].as_str().is_some_and(|m| m.contains("unknown request id")),
                "{file}: {r}"
            );
        }
    }
    assert_eq!(
        status(&tree, "getRequestStatus.several-ids.json")["requests"]
            .as_array()
            .map(Vec::len),
        Some(3)
    );

    // getReturnRequests: both listed hosts are still in the inventory, so nothing to return.
    for file in ["getReturnRequests.json", "getReturnRequests.empty-object.json"] {
        let o = tree.run_file("getReturnRequests", &input(file));
        assert_eq!(o.code, 0, "{}", o.json);
        assert_valid("getReturnRequests", &o.json);
        assert_eq!(o.json["requests"], json!([]), "{file}");
    }
    // The admin removes one of them: it is reported, with grace period 0.
    let inv = inventory().replace("ip-10-0-58-4.ec2.internal 10.0.58.4 template=Spot-Template-VM\n", "");
    std::fs::write(tree.conf.join("inventory.txt"), inv).expect("inventory");
    let o = tree.run_file("getReturnRequests", &input("getReturnRequests.json"));
    assert_valid("getReturnRequests", &o.json);
    assert_eq!(
        o.json["requests"],
        json!([{"machine": "ip-10-0-58-4.ec2.internal", "machineId": "i-022161abf93cc2af9", "gracePeriod": 0}])
    );
}

#[test]
fn lsf_input_and_aliases() {
    let tree = HfTree::new(&inventory());
    // LSF: rc_account is echoed as rcAccount on the machines.
    let o = tree.run_file("requestMachines", &input("requestMachines.lsf.json"));
    assert_eq!(o.code, 0, "{}", o.json);
    let done = tree.until_final(o.json["requestId"].as_str().expect("id"));
    assert_eq!(done["status"], "complete");
    assert_eq!(machine_names(&done, "succeed").len(), 2);
    assert!(
        done["machines"]
            .as_array()
            .expect("machines")
            .iter()
            .all(|m| m["rcAccount"] == "default")
    );

    // The integration guide's flat shape: templateId + maxNumber.
    let o = tree.run_file("requestMachines", &input("aliases/requestMachines.flat.json"));
    assert_eq!(o.code, 0, "{}", o.json);
    assert_valid("requestMachines", &o.json);
    let flat_id = o.json["requestId"].as_str().expect("id").to_string();
    assert_eq!(machine_names(&tree.until_final(&flat_id), "succeed").len(), 5);

    // Return by request id (alias): the captured file names an id we never issued...
    let o = tree.run_file("requestReturnMachines", &input("aliases/requestReturnMachines.by-request.json"));
    let e = expect_error("requestReturnMachines", &o, "INVALID_INPUT");
    assert!(e["error"]["message"].as_str().is_some_and(|m| m.contains("req-12345")), "{e}");
    // ...and with a real id, every host of that request goes back.
    let r = tree.ok("requestReturnMachines", &json!({"requestId": flat_id}));
    let ret = tree.until_final(r["requestId"].as_str().expect("id"));
    assert_eq!(
        (ret["status"].as_str(), machine_names(&ret, "succeed").len()),
        (Some("complete"), 5)
    );
}
