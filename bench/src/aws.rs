//! The five calls against moto's EC2 server with IBM-format config. A call's own overhead
//! is its wall time minus the time its EC2 round trips took, read from hfwasm's debug log
//! of each cloud call in the same run.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use aws_sdk_ec2 as sdk;
use serde_json::{Value, json};

use crate::{Sample, measure};

struct Moto(Child);

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn moto_binary(repo: &Path) -> Option<std::path::PathBuf> {
    std::env::var_os("HFWASM_MOTO_SERVER")
        .map(Into::into)
        .or_else(|| Some(repo.join(".venv/bin/moto_server")).filter(|p| p.is_file()))
}

/// Sum (in ms) of `elapsed_us=` of cloud calls in the log lines written since `from`.
fn cloud_ms(log: &Path, from: u64) -> (f64, usize) {
    let text = std::fs::read(log).unwrap_or_default();
    let tail = String::from_utf8_lossy(&text[usize::try_from(from).unwrap_or(0).min(text.len())..]).to_string();
    let mut total = 0.0;
    let mut n = 0;
    for line in tail.lines().filter(|l| l.contains("cloud call") && l.contains("service=\"ec2\"")) {
        if let Some(v) = line
            .split("elapsed_us=")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
        {
            total += v / 1000.0;
            n += 1;
        }
    }
    (total, n)
}

/// Runs the AWS part of the bench; prints its rows.
pub fn run(repo: &Path, bin: &Path, iterations: usize) -> Result<()> {
    let Some(moto_bin) = moto_binary(repo) else {
        println!("\nAWS (moto): skipped, moto_server not found (./dev/test.sh installs it into .venv)");
        return Ok(());
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let _moto = Moto(
        Command::new(moto_bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    );
    let t0 = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if t0.elapsed() > Duration::from_secs(30) {
            bail!("moto_server did not start");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let endpoint = format!("http://127.0.0.1:{port}");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let conf = sdk::Config::builder()
        .behavior_version(sdk::config::BehaviorVersion::latest())
        .region(sdk::config::Region::new("us-east-1"))
        .credentials_provider(aws_credential_types::Credentials::new("testing", "testing", None, None, "bench"))
        .endpoint_url(&endpoint)
        .http_client(aws_smithy_http_client::Builder::new().build_http())
        .build();
    let ec2 = sdk::Client::from_conf(conf);
    let (subnet, sg, ami) = rt.block_on(async {
        let vpc = ec2.create_vpc().cidr_block("10.0.0.0/16").send().await?;
        let vpc_id = vpc.vpc().and_then(|v| v.vpc_id()).unwrap_or_default().to_string();
        let s = ec2.create_subnet().vpc_id(&vpc_id).cidr_block("10.0.0.0/20").send().await?;
        let g = ec2
            .create_security_group()
            .group_name("b")
            .description("b")
            .vpc_id(&vpc_id)
            .send()
            .await?;
        let i = ec2.describe_images().owners("amazon").send().await?;
        anyhow::Ok((
            s.subnet().and_then(|s| s.subnet_id()).unwrap_or_default().to_string(),
            g.group_id().unwrap_or_default().to_string(),
            i.images().iter().find_map(|i| i.image_id()).unwrap_or_default().to_string(),
        ))
    })?;

    let dir = tempfile::tempdir()?;
    let conf_dir = dir.path().join("conf");
    std::fs::create_dir_all(&conf_dir)?;
    std::fs::write(
        conf_dir.join("credentials"),
        "[default]\naws_access_key_id=testing\naws_secret_access_key=testing\n",
    )?;
    std::fs::write(
        conf_dir.join("awsbenchprov_config.json"),
        json!({"AWS_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint, "AWS_CREDENTIAL_FILE": "credentials"}).to_string(),
    )?;
    std::fs::write(
        conf_dir.join("awsbenchprov_templates.json"),
        json!({"templates": [{"templateId": "od", "maxNumber": 1000, "imageId": ami, "subnetId": subnet, "vmType": "t3.micro", "securityGroupIds": [sg]}]}).to_string(),
    )?;
    let log = dir.path().join("log/hfwasm-awsbench.log");
    let mut n = 0u32;
    let mut run_call = |call: &str, input: &Value| -> Result<(Sample, f64, usize)> {
        n += 1;
        let file = dir.path().join(format!("in_{n}"));
        std::fs::write(&file, input.to_string())?;
        let from = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
        let mut cmd = Command::new(repo.join("scripts").join(format!("{call}.sh")));
        cmd.arg("-f")
            .arg(&file)
            .env("HFWASM_BIN", bin)
            .env("HF_PROVIDER_NAME", "awsbench")
            .env("HF_PROVIDER_CONFDIR", &conf_dir)
            .env("HF_PROVIDER_WORKDIR", dir.path().join("work"))
            .env("HF_PROVIDER_LOGDIR", dir.path().join("log"))
            .env("HFWASM_LOG", "info,hfwasm=debug")
            .env("AWS_EC2_METADATA_DISABLED", "true");
        let s = measure(&mut cmd)?;
        if !s.ok {
            bail!("{call} failed: {}", s.stdout);
        }
        let (cloud, calls) = cloud_ms(&log, from);
        Ok((s, cloud, calls))
    };
    // Warm: compile the guest, cache the instance types.
    run_call("getAvailableTemplates", &json!({}))?;

    println!("\nAWS provider against moto's EC2 server (IBM awsprov files), {iterations} runs per call");
    println!(
        "{:<40} {:>8} {:>9} {:>10} {:>9} {:>9}",
        "call", "median", "EC2 time", "own cost", "EC2", "peak RSS"
    );
    println!("{:<40} {:>8} {:>9} {:>10} {:>9} {:>9}", "", "ms", "ms", "ms", "calls", "MiB");
    let report = |name: &str, rows: Vec<(Sample, f64, usize)>| {
        let mut walls: Vec<f64> = rows.iter().map(|r| r.0.wall.as_secs_f64() * 1e3).collect();
        let mut own: Vec<f64> = rows.iter().map(|r| r.0.wall.as_secs_f64() * 1e3 - r.1).collect();
        let mut cloud: Vec<f64> = rows.iter().map(|r| r.1).collect();
        for v in [&mut walls, &mut own, &mut cloud] {
            v.sort_by(f64::total_cmp);
        }
        let med = |v: &Vec<f64>| v[v.len() / 2];
        let calls = rows.iter().map(|r| r.2).max().unwrap_or(0);
        let rss = rows.iter().map(|r| r.0.rss_kib).max().unwrap_or(0) as f64 / 1024.0;
        println!(
            "{name:<40} {:>8.2} {:>9.2} {:>10.2} {:>9} {:>9.1}",
            med(&walls),
            med(&cloud),
            med(&own),
            calls,
            rss
        );
    };

    let rows = (0..iterations)
        .map(|_| run_call("getAvailableTemplates", &json!({})))
        .collect::<Result<Vec<_>>>()?;
    report("getAvailableTemplates", rows);
    let mut ids = Vec::new();
    let mut rows = Vec::new();
    for _ in 0..iterations {
        let r = run_call("requestMachines", &json!({"template": {"templateId": "od", "machineCount": 1}}))?;
        let v: Value = serde_json::from_str(&r.0.stdout)?;
        ids.push(v["requestId"].as_str().context("requestId")?.to_string());
        rows.push(r);
    }
    report("requestMachines (1 instance)", rows);
    let mut machines = Vec::new();
    let mut rows = Vec::new();
    for id in &ids {
        let r = run_call("getRequestStatus", &json!({"requests": [{"requestId": id}]}))?;
        let v: Value = serde_json::from_str(&r.0.stdout)?;
        machines.push(v["requests"][0]["machines"][0].clone());
        rows.push(r);
    }
    report("getRequestStatus (first poll)", rows);
    let listed: Vec<Value> = machines
        .iter()
        .map(|m| json!({"name": m["name"], "machineId": m["machineId"]}))
        .collect();
    let rows = (0..iterations)
        .map(|_| run_call("getReturnRequests", &json!({"machines": listed})))
        .collect::<Result<Vec<_>>>()?;
    report(&format!("getReturnRequests ({} hosts listed)", listed.len()), rows);
    let rows = machines
        .iter()
        .map(|m| {
            run_call(
                "requestReturnMachines",
                &json!({"machines": [{"name": m["name"], "machineId": m["machineId"]}]}),
            )
        })
        .collect::<Result<Vec<_>>>()?;
    report("requestReturnMachines (1 instance)", rows);
    println!("targets (issue #4): own cost <= 5 ms per call, peak RSS <= 15 MiB");
    Ok(())
}
