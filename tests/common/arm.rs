//! The Azure Resource Manager fake for the Azure tests (`tests/fakes/arm_fake.py`): a fake
//! written from Azure's REST API specification, not an emulator (its header says what it
//! cannot show). Started on a free 127.0.0.1 port with the world of `arm_world.json` (a
//! resource group, a VNet with two subnets, an NSG, a custom image, a VM size catalogue, a
//! core quota, IBM's sample names) and stopped on drop.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// The fake's world (`tests/fakes/arm_world.json`: IBM's sample names).
fn world() -> Value {
    serde_json::from_str(&std::fs::read_to_string(super::repo().join("tests/fakes/arm_world.json")).expect("world")).expect("world json")
}

/// The subscription of the fake's world.
pub const SUBSCRIPTION: &str = "5a1e0000-0000-4000-8000-00000000a2e0";
/// Its service principal's secret: a test asserts it never reaches a guest or HostFactory.
pub const SECRET: &str = "S3cr3t-never-in-a-guest";

/// A running fake.
pub struct Arm {
    child: Child,
    /// `http://127.0.0.1:<port>`.
    pub endpoint: String,
}

impl Arm {
    /// Starts the fake with IBM's sample names (resource group `lsf_hostfactory`, VNet
    /// `lsfnet` with `subnet1` and `subnet2`, NSG `lsfsecuritygrp`, image `lsfimage`),
    /// region southeastasia and a quota of `core_quota` cores.
    pub fn start(core_quota: u32) -> Self {
        Self::start_in("southeastasia", core_quota)
    }

    /// [`Arm::start`] in region `location`.
    pub fn start_in(location: &str, core_quota: u32) -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let log = std::fs::File::create(std::env::temp_dir().join(format!("hfwasm-arm-{port}.log"))).expect("log");
        let child = Command::new("python3")
            .arg(super::repo().join("tests/fakes/arm_fake.py"))
            .args([
                "--port",
                &port.to_string(),
                "--location",
                location,
                "--core-quota",
                &core_quota.to_string(),
            ])
            .args(["--vm-ready-secs", "0.6", "--delete-secs", "0.6"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start the ARM fake (python3)");
        let w = world();
        assert_eq!(
            (w["subscription"].as_str(), w["principal"]["secret"].as_str()),
            (Some(SUBSCRIPTION), Some(SECRET)),
            "arm_world.json changed"
        );
        let t0 = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(t0.elapsed() < Duration::from_secs(20), "the ARM fake did not start on port {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        }
    }

    /// One request to the fake's controls; returns the JSON body.
    pub fn control(&self, method: &str, path: &str, body: &Value) -> Value {
        let addr = self.endpoint.trim_start_matches("http://");
        let mut s = TcpStream::connect(addr).expect("connect to the fake");
        let b = body.to_string();
        write!(
            s,
            "{method} /_fake/{path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{b}",
            b.len()
        )
        .expect("request");
        let mut out = String::new();
        s.read_to_string(&mut out).expect("response");
        let body = out.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or_default();
        serde_json::from_str(body).unwrap_or(Value::Null)
    }

    /// Everything the fake holds: `vms`, `nics`, `disks`, `custom_data`, `token_requests`.
    pub fn state(&self) -> Value {
        self.control("GET", "state", &json!({}))
    }

    /// Every call the fake served: `method`, `path`, `status`.
    pub fn requests(&self) -> Vec<Value> {
        self.control("GET", "requests", &json!({})).as_array().cloned().unwrap_or_default()
    }

    /// The Java SDK auth file IBM's plugin reads, pointing at this fake.
    pub fn credentials_file(&self) -> String {
        let w = world();
        let e = self.endpoint.replace(':', "\\:");
        format!(
            "subscription={}\nclient={}\nkey={}\ntenant={}\nmanagementURI={e}/\nbaseURL={e}/\nauthURL={e}/\ngraphURL={e}/\n",
            w["subscription"].as_str().expect("subscription"),
            w["principal"]["client"].as_str().expect("client"),
            w["principal"]["secret"].as_str().expect("secret"),
            w["principal"]["tenant"].as_str().expect("tenant"),
        )
    }
}

impl Drop for Arm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One of IBM's Azure sample files (`tests/data/ibm/azure`), as IBM ships it.
pub fn ibm_file(rel: &str) -> String {
    std::fs::read_to_string(super::repo().join("tests/data/ibm/azure").join(rel)).expect("IBM sample")
}

/// A tree with IBM's Azure files pointed at `fake`. IBM's samples name files this machine
/// lacks (`/home/lsfadmin/credentials`, `/home/lsfadmin/lsf.pub`) and offer nothing
/// (`maxNumber: 0`): exactly those three values are changed, `adjust` may change more.
pub fn azure_tree(fake: &Arm, adjust: impl Fn(&mut Value)) -> super::HfTree {
    let tree = super::HfTree::new("");
    std::fs::remove_file(tree.conf.join("inventory.txt")).expect("no pool");
    std::fs::write(tree.conf.join("credentials"), fake.credentials_file()).expect("credentials");
    std::fs::write(
        tree.conf.join("lsf.pub"),
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHfwasmTestKey lsfadmin@hf\n",
    )
    .expect("key");
    let mut cfg: Value = serde_json::from_str(&ibm_file("azureprov_config.json")).expect("json");
    cfg["AZURE_CREDENTIAL_FILE"] = json!("credentials");
    std::fs::write(tree.conf.join("azureprov_config.json"), cfg.to_string()).expect("config");
    let mut t: Value = serde_json::from_str(&ibm_file("azureprov_templates.json")).expect("json");
    for tpl in t["templates"].as_array_mut().expect("templates") {
        tpl["sshPubKeyFile"] = json!("lsf.pub");
        tpl["maxNumber"] = json!(4);
    }
    adjust(&mut t);
    std::fs::write(tree.conf.join("azureprov_templates.json"), t.to_string()).expect("templates");
    tree
}
