//! A real EC2 emulator for the AWS tests: moto's server, started on a free 127.0.0.1 port
//! and stopped on drop, plus the SDK calls that lay out a VPC, subnet, security group and
//! AMI in it the way a site's AWS account has them.
#![allow(dead_code)]

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_ec2 as sdk;
use serde_json::{Value, json};

/// One instance as the emulator reports it: (id, state, private DNS name, tags).
/// SDK tags as (key, value) pairs.
fn pairs(tags: &[sdk::types::Tag]) -> Vec<(String, String)> {
    tags.iter()
        .map(|t| (t.key().unwrap_or_default().to_string(), t.value().unwrap_or_default().to_string()))
        .collect()
}

/// A Spot Fleet request in the emulator: (id, state, tags).
pub type SpotFleet = (String, String, Vec<(String, String)>);

pub type EmulatedInstance = (String, String, String, Vec<(String, String)>);

/// A running moto server.
pub struct Moto {
    child: Child,
    /// `http://127.0.0.1:<port>`.
    pub endpoint: String,
    /// Tokio runtime for the test's own SDK calls.
    pub rt: tokio::runtime::Runtime,
    /// SDK client against the emulator.
    pub ec2: sdk::Client,
    /// Auto Scaling client against the emulator.
    pub asg: aws_sdk_autoscaling::Client,
}

/// An Auto Scaling group in the emulator.
#[derive(Debug, Clone)]
pub struct EmulatedGroup {
    /// Its name.
    pub name: String,
    /// Desired capacity.
    pub desired: i32,
    /// Its instances: (id, lifecycle state, health).
    pub instances: Vec<(String, String, String)>,
    /// Its tags.
    pub tags: Vec<(String, String)>,
    /// Suspended processes.
    pub suspended: Vec<String>,
    /// The launch template id it launches from.
    pub launch_template: Option<String>,
}

fn moto_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("HFWASM_MOTO_SERVER") {
        return PathBuf::from(p);
    }
    let venv = super::repo().join(".venv/bin/moto_server");
    assert!(
        venv.is_file(),
        "moto_server not found: run ./dev/test.sh (it installs moto[server] into .venv), or `python3 -m venv .venv && .venv/bin/pip install 'moto[server]'`, or set HFWASM_MOTO_SERVER"
    );
    venv
}

/// Static test credentials (moto accepts any) and no instance-metadata lookups.
pub const ENV: [(&str, &str); 4] = [
    ("AWS_ACCESS_KEY_ID", "testing"),
    ("AWS_SECRET_ACCESS_KEY", "testing"),
    ("AWS_EC2_METADATA_DISABLED", "true"),
    ("AWS_DEFAULT_REGION", "us-east-1"),
];

impl Moto {
    /// Starts moto on a free loopback port and waits until it answers.
    pub fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let log = std::fs::File::create(std::env::temp_dir().join(format!("hfwasm-moto-{port}.log"))).expect("moto log");
        // A recording left by an earlier server on this port is not this server's.
        let recording = std::env::temp_dir().join(format!("hfwasm-moto-{port}.recording"));
        let _ = std::fs::remove_file(&recording);
        let child = Command::new(moto_binary())
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            // The recorder stays off until a test starts it (`start_recording`).
            .env("MOTO_ENABLE_RECORDING", "True")
            .env(
                "MOTO_RECORDER_FILEPATH",
                std::env::temp_dir().join(format!("hfwasm-moto-{port}.recording")),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start moto_server");
        let t0 = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "moto_server did not start on port {port} within 30 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let endpoint = format!("http://127.0.0.1:{port}");
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let creds = aws_credential_types::Credentials::new("testing", "testing", None, None, "test");
        let http = aws_smithy_http_client::Builder::new().build_http();
        let conf = aws_config::SdkConfig::builder()
            .behavior_version(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new("us-east-1"))
            .credentials_provider(aws_credential_types::provider::SharedCredentialsProvider::new(creds))
            .endpoint_url(&endpoint)
            .http_client(http)
            .build();
        Self {
            child,
            endpoint,
            rt,
            ec2: sdk::Client::new(&conf),
            asg: aws_sdk_autoscaling::Client::new(&conf),
        }
    }

    /// One HTTP/1.1 request to moto's own API (`/moto-api/...`); returns the body.
    fn moto_api(&self, method: &str, path: &str) -> String {
        use std::io::{Read, Write};
        let addr = self.endpoint.trim_start_matches("http://");
        let mut s = TcpStream::connect(addr).expect("connect to moto");
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .expect("request");
        let mut out = String::new();
        s.read_to_string(&mut out).expect("response");
        out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default()
    }

    /// Starts moto's request recorder: from now on every request it gets is kept.
    pub fn start_recording(&self) {
        self.moto_api("POST", "/moto-api/recorder/start-recording");
    }

    /// Forgets what the recorder kept so far (it keeps recording if it was).
    pub fn reset_recording(&self) {
        self.moto_api("POST", "/moto-api/recorder/reset-recording");
    }

    /// The action of every recorded request, in order (`DescribeInstances`, ...).
    pub fn recorded_actions(&self) -> Vec<String> {
        self.recorded_bodies()
            .iter()
            .filter_map(|b| b.split('&').find_map(|kv| kv.strip_prefix("Action=")).map(str::to_string))
            .collect()
    }

    /// The form bodies (`Action=RunInstances&...`, decoded) of recorded requests for
    /// `action`, in order: what hfwasm really sent, for what moto does not model.
    pub fn recorded(&self, action: &str) -> Vec<String> {
        let action = format!("Action={action}&");
        self.recorded_bodies().into_iter().filter(|b| b.contains(&action)).collect()
    }

    /// Every recorded request's form body, decoded, in order.
    fn recorded_bodies(&self) -> Vec<String> {
        let text = self.moto_api("GET", "/moto-api/recorder/download-recording");
        text.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|r| {
                let body = r["body"].as_str()?.to_string();
                if r["body_encoded"] == true {
                    String::from_utf8(aws_smithy_types::base64::decode(&body).ok()?).ok()
                } else {
                    Some(body)
                }
            })
            .collect()
    }

    /// A VPC, a subnet and a security group; returns (subnet id, security group id, AMI id).
    pub fn network(&self) -> (String, String, String) {
        self.network_in(0)
    }

    /// [`Moto::network`] in VPC 10.`n`.0.0/16 (hosts of two clouds get different addresses
    /// and so different names).
    pub fn network_in(&self, n: u8) -> (String, String, String) {
        self.rt.block_on(async {
            let vpc = self
                .ec2
                .create_vpc()
                .cidr_block(format!("10.{n}.0.0/16"))
                .send()
                .await
                .expect("vpc");
            let vpc_id = vpc.vpc().and_then(|v| v.vpc_id()).expect("vpc id").to_string();
            let subnet = self
                .ec2
                .create_subnet()
                .vpc_id(&vpc_id)
                .cidr_block(format!("10.{n}.1.0/24"))
                .send()
                .await
                .expect("subnet");
            let subnet_id = subnet.subnet().and_then(|s| s.subnet_id()).expect("subnet id").to_string();
            let sg = self
                .ec2
                .create_security_group()
                .group_name("hf-workers")
                .description("HostFactory workers")
                .vpc_id(&vpc_id)
                .send()
                .await
                .expect("sg");
            let sg_id = sg.group_id().expect("sg id").to_string();
            let images = self.ec2.describe_images().owners("amazon").send().await.expect("images");
            let ami = images
                .images()
                .iter()
                .find_map(|i| i.image_id())
                .expect("moto ships AMIs")
                .to_string();
            (subnet_id, sg_id, ami)
        })
    }

    /// Every instance in the emulator: (id, state, private DNS name, tags).
    pub fn instances(&self) -> Vec<EmulatedInstance> {
        self.rt.block_on(async {
            let out = self.ec2.describe_instances().send().await.expect("describe");
            out.reservations()
                .iter()
                .flat_map(|r| r.instances())
                .map(|i| {
                    (
                        i.instance_id().unwrap_or_default().to_string(),
                        i.state().and_then(|s| s.name()).map(|n| n.as_str().to_string()).unwrap_or_default(),
                        i.private_dns_name().unwrap_or_default().to_string(),
                        pairs(i.tags()),
                    )
                })
                .collect()
        })
    }

    /// hfwasm's own EC2 client against this emulator, with a credentials file written in
    /// `dir` (the way IBM's `AWS_CREDENTIAL_FILE` gives them), for tests that call the
    /// capability exactly as a guest does.
    pub fn hfwasm_client(&self, dir: &std::path::Path) -> std::sync::Arc<dyn hfwasm::capabilities::ec2::Ec2Api> {
        use hfwasm::capabilities::ec2::{Ec2Client, Ec2Settings};
        let creds = dir.join("credentials");
        std::fs::write(&creds, "[default]\naws_access_key_id = testing\naws_secret_access_key = testing\n").expect("creds");
        std::sync::Arc::new(Ec2Client::new(Ec2Settings {
            endpoint_url: Some(self.endpoint.clone()),
            credential_file: Some(creds),
            ..Ec2Settings::default()
        }))
    }

    /// Ids of instances still pending or running.
    pub fn live(&self) -> Vec<String> {
        self.instances()
            .into_iter()
            .filter(|x| x.1 == "running" || x.1 == "pending")
            .map(|x| x.0)
            .collect()
    }

    /// Instances tagged with HostFactory request `request_id`.
    pub fn instances_of(&self, request_id: &str) -> Vec<EmulatedInstance> {
        self.instances()
            .into_iter()
            .filter(|(_, _, _, tags)| tags.iter().any(|(k, v)| k == "hfwasm:request" && v == request_id))
            .collect()
    }

    /// Instance types of the running instances tagged with HostFactory request `id`.
    pub fn running_types_of(&self, request_id: &str) -> Vec<String> {
        self.rt.block_on(async {
            let f = sdk::types::Filter::builder().name("tag:hfwasm:request").values(request_id).build();
            let out = self.ec2.describe_instances().filters(f).send().await.expect("describe");
            out.reservations()
                .iter()
                .flat_map(|r| r.instances())
                .filter(|i| i.state().and_then(|s| s.name()).is_some_and(|n| n.as_str() == "running"))
                .map(|i| i.instance_type().map(|t| t.as_str().to_string()).unwrap_or_default())
                .collect()
        })
    }

    /// Launches one instance behind hfwasm's back carrying `tags` (say, hfwasm's ownership
    /// tags for a request its store never recorded); returns its id.
    pub fn launch_tagged(&self, ami: &str, subnet: &str, tags: &[(&str, &str)]) -> String {
        self.rt.block_on(async {
            let mut spec = sdk::types::TagSpecification::builder().resource_type(sdk::types::ResourceType::Instance);
            for (k, v) in tags {
                spec = spec.tags(sdk::types::Tag::builder().key(*k).value(*v).build());
            }
            let out = self
                .ec2
                .run_instances()
                .image_id(ami)
                .subnet_id(subnet)
                .instance_type(sdk::types::InstanceType::T3Micro)
                .min_count(1)
                .max_count(1)
                .tag_specifications(spec.build())
                .send()
                .await
                .expect("run instances");
            out.instances()
                .first()
                .and_then(|i| i.instance_id())
                .expect("instance id")
                .to_string()
        })
    }

    /// Every Spot Fleet request: (id, state, tags).
    pub fn spot_fleets(&self) -> Vec<SpotFleet> {
        self.rt.block_on(async {
            let out = self.ec2.describe_spot_fleet_requests().send().await.expect("describe spot fleets");
            out.spot_fleet_request_configs()
                .iter()
                .map(|c| {
                    (
                        c.spot_fleet_request_id().unwrap_or_default().to_string(),
                        c.spot_fleet_request_state().map(|s| s.as_str().to_string()).unwrap_or_default(),
                        pairs(c.tags()),
                    )
                })
                .collect()
        })
    }

    /// Every Auto Scaling group.
    pub fn groups(&self) -> Vec<EmulatedGroup> {
        self.rt.block_on(async {
            let out = self.asg.describe_auto_scaling_groups().send().await.expect("describe groups");
            out.auto_scaling_groups()
                .iter()
                .map(|g| EmulatedGroup {
                    name: g.auto_scaling_group_name().unwrap_or_default().to_string(),
                    desired: g.desired_capacity().unwrap_or(-1),
                    instances: g
                        .instances()
                        .iter()
                        .map(|i| {
                            (
                                i.instance_id().unwrap_or_default().to_string(),
                                i.lifecycle_state().map(|s| s.as_str().to_string()).unwrap_or_default(),
                                i.health_status().unwrap_or_default().to_string(),
                            )
                        })
                        .collect(),
                    tags: g
                        .tags()
                        .iter()
                        .map(|t| (t.key().unwrap_or_default().to_string(), t.value().unwrap_or_default().to_string()))
                        .collect(),
                    suspended: g
                        .suspended_processes()
                        .iter()
                        .filter_map(|p| p.process_name().map(str::to_string))
                        .collect(),
                    launch_template: g
                        .mixed_instances_policy()
                        .and_then(|p| p.launch_template())
                        .and_then(|t| t.launch_template_specification())
                        .or(g.launch_template())
                        .and_then(|t| t.launch_template_id().map(str::to_string)),
                })
                .collect()
        })
    }

    /// Ids of every launch template.
    pub fn launch_templates(&self) -> Vec<String> {
        self.rt.block_on(async {
            let out = self
                .ec2
                .describe_launch_templates()
                .send()
                .await
                .expect("describe launch templates");
            out.launch_templates()
                .iter()
                .filter_map(|t| t.launch_template_id().map(str::to_string))
                .collect()
        })
    }

    /// The group replaces `id` behind HostFactory's back: terminated in the group without
    /// lowering its capacity, so it launches another (what Auto Scaling does to an unhealthy
    /// instance).
    pub fn replace_in_group(&self, id: &str) {
        self.rt.block_on(async {
            self.asg
                .terminate_instance_in_auto_scaling_group()
                .instance_id(id)
                .should_decrement_desired_capacity(false)
                .send()
                .await
                .expect("terminate in group")
        });
    }

    /// Auto Scaling marks `id` unhealthy (it will replace it).
    pub fn mark_unhealthy(&self, id: &str) {
        self.rt.block_on(async {
            self.asg
                .set_instance_health()
                .instance_id(id)
                .health_status("Unhealthy")
                .send()
                .await
                .expect("set instance health")
        });
    }

    /// Terminates `id` behind hfwasm's back (a console user, a spot reclaim).
    pub fn terminate(&self, id: &str) {
        self.rt
            .block_on(async { self.ec2.terminate_instances().instance_ids(id).send().await.expect("terminate") });
    }

    /// (vCPUs, cores, MiB) that EC2 reports for `instance_type`.
    pub fn type_info(&self, instance_type: &str) -> (i32, i32, i64) {
        self.rt.block_on(async {
            let out = self
                .ec2
                .describe_instance_types()
                .instance_types(sdk::types::InstanceType::from(instance_type))
                .send()
                .await
                .expect("types");
            let t = &out.instance_types()[0];
            let v = t.v_cpu_info().expect("vcpu");
            (
                v.default_v_cpus().unwrap_or(0),
                v.default_cores().unwrap_or(0),
                t.memory_info().and_then(|m| m.size_in_mib()).unwrap_or(0),
            )
        })
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The cloud goes away for `tree` (an [`aws_tree`]): its IBM config points at a closed
/// loopback port, without retries. Returns the config file and its good content, to write
/// back when the cloud returns.
pub fn cloud_goes_away(tree: &super::HfTree) -> (PathBuf, Value) {
    let config_file = tree.conf.join("poolprov_config.json");
    let good: Value = serde_json::from_str(&std::fs::read_to_string(&config_file).expect("config")).expect("json");
    let dead_port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("port").port();
    let mut bad = good.clone();
    bad["AWS_ENDPOINT_URL"] = json!(format!("http://127.0.0.1:{dead_port}"));
    bad["AWS_REQUEST_RETRY_ATTEMPTS"] = json!(0);
    std::fs::write(&config_file, bad.to_string()).expect("write");
    (config_file, good)
}

/// A provider instance `pool` configured with IBM's files against `moto`.
pub fn aws_tree(moto: &Moto, templates: Value) -> super::HfTree {
    let tree = super::HfTree::new("");
    // Credentials only through IBM's AWS_CREDENTIAL_FILE, never the environment.
    tree.set_env("AWS_EC2_METADATA_DISABLED", "true");
    std::fs::write(
        tree.conf.join("credentials"),
        "[default]\naws_access_key_id = testing\naws_secret_access_key = testing\n",
    )
    .expect("creds");
    let config = json!({
        "AWS_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": moto.endpoint,
        "AWS_CREDENTIAL_FILE": "credentials",
        "AWS_CONNECTION_TIMEOUT_MS": "5000",
        "AWS_REQUEST_RETRY_ATTEMPTS": 2,
        "AWS_INSTANCE_PENDING_TIMEOUT_SEC": 180,
        "AWS_KEY_FILE": "/opt/keys",
    });
    std::fs::write(
        tree.conf.join("poolprov_config.json"),
        serde_json::to_string_pretty(&config).expect("json"),
    )
    .expect("config");
    std::fs::write(
        tree.conf.join("poolprov_templates.json"),
        serde_json::to_string_pretty(&json!({"templates": templates})).expect("json"),
    )
    .expect("templates");
    tree
}

/// Three IBM templates: on-demand `t3.micro` (RunInstances), weighted spot with a
/// `fleetRole` (Spot Fleet) and weighted spot without one (EC2 Fleet `instant`).
pub fn templates(subnet: &str, sg: &str, ami: &str) -> Value {
    json!([
        {
            "templateId": "OnDemand-Template-VM",
            "maxNumber": 10,
            "attributes": {"type": ["String", "X86_64"], "ncpus": ["Numeric", "1"], "nram": ["Numeric", "1024"]},
            "imageId": ami,
            "subnetId": subnet,
            "vmType": "t3.micro",
            "priceType": "ondemand",
            "keyName": "hf-key",
            "securityGroupIds": [sg],
            "instanceTags": "team=hpc;env=test",
            "rootDeviceVolumeSize": 20,
            "volumeType": "gp3"
        },
        {
            "templateId": "Weighted-Spot-VM",
            "maxNumber": 20,
            "attributes": {"type": ["String", "X86_64"]},
            "imageId": ami,
            "subnetId": [subnet],
            "vmTypes": {"m5.large": 1, "m5.xlarge": 2},
            "priceType": "spot",
            "allocationStrategy": "capacityOptimized",
            "fleetRole": "arn:aws:iam::123456789012:role/aws-ec2-spot-fleet-tagging-role",
            "securityGroupIds": [sg]
        },
        {
            "templateId": "Weighted-Fleet-VM",
            "maxNumber": 20,
            "attributes": {"type": ["String", "X86_64"]},
            "imageId": ami,
            "subnetId": [subnet],
            "vmTypes": {"m5.large": 1, "m5.xlarge": 2},
            "priceType": "spot",
            "allocationStrategy": "capacityOptimized",
            "securityGroupIds": [sg]
        }
    ])
}
