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

/// Sum (in ms) of `elapsed_us=` of the EC2 calls logged since `from`.
pub(crate) fn cloud_ms(log: &Path, from: u64) -> (f64, usize) {
    crate::logged_ms(log, from, |l| l.contains("cloud call") && l.contains("service=\"ec2\""))
}

/// IBM's files for provider instance `instance` in `conf_dir`: a credentials file, the
/// config pointing at `endpoint`, and `templates`.
pub(crate) fn ibm_conf(conf_dir: &Path, instance: &str, endpoint: &str, templates: Value) -> Result<()> {
    std::fs::create_dir_all(conf_dir)?;
    std::fs::write(
        conf_dir.join("credentials"),
        "[default]\naws_access_key_id=testing\naws_secret_access_key=testing\n",
    )?;
    std::fs::write(
        conf_dir.join(format!("{instance}prov_config.json")),
        json!({"AWS_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint, "AWS_CREDENTIAL_FILE": "credentials"}).to_string(),
    )?;
    std::fs::write(
        conf_dir.join(format!("{instance}prov_templates.json")),
        json!({ "templates": templates }).to_string(),
    )?;
    Ok(())
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
    ibm_conf(
        &dir.path().join("conf"),
        "awsbench",
        &endpoint,
        json!([{"templateId": "od", "maxNumber": 1000, "imageId": ami, "subnetId": subnet, "vmType": "t3.micro", "securityGroupIds": [sg]}]),
    )?;
    let mut tree = crate::CloudTree {
        repo,
        bin,
        dir: dir.path(),
        name: "awsbench",
        env: vec![("HFWASM_LOG", "info,hfwasm=debug"), ("AWS_EC2_METADATA_DISABLED", "true")],
        cloud: cloud_ms,
        n: 0,
    };
    let mut run_call = |call: &str, input: &Value| tree.call(call, input);
    // Warm: compile the guest, cache the instance types.
    run_call("getAvailableTemplates", &json!({}))?;

    // Baselines in the same run: the floor of any scripted plugin (a shell script that execs
    // /bin/true), and a bare Rust process making the same DescribeInstances with the same SDK
    // client set-up as hfwasm's (this bench binary in `--bare-describe` mode).
    let sh = crate::sh_baseline(dir.path(), iterations)?;
    // Started the way HostFactory starts hfwasm: a shell script that execs it.
    let bare_sh = dir.path().join("bare.sh");
    std::fs::write(
        &bare_sh,
        format!(
            "#!/bin/sh\nexec '{}' --bare-describe {endpoint}\n",
            std::env::current_exe()?.display()
        ),
    )?;
    let bare = (0..iterations)
        .map(|_| measure(Command::new("/bin/sh").arg(&bare_sh)))
        .collect::<Result<Vec<_>>>()?;
    if let Some(failed) = bare.iter().find(|s| !s.ok) {
        bail!("the bare SDK process failed: {}", failed.stdout);
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let median_ms = |v: &[Sample]| median(v.iter().map(|s| s.wall.as_secs_f64() * 1e3).collect());
    // The bare process prints its describe's round trip (µs), timed as hfwasm times its own.
    let bare_ec2_ms = median(
        bare.iter()
            .filter_map(|s| s.stdout.split_whitespace().nth(1)?.parse::<f64>().ok())
            .map(|us| us / 1e3)
            .collect(),
    );
    let bare_ms = median_ms(&bare);
    let bare_own = median(
        bare.iter()
            .filter_map(|s| Some(s.wall.as_secs_f64() * 1e3 - s.stdout.split_whitespace().nth(1)?.parse::<f64>().ok()? / 1e3))
            .collect(),
    );

    println!("\nAWS provider against moto's EC2 server (IBM awsprov files), {iterations} runs per call");
    println!("{}", crate::link_order_coverage(repo, bin));
    println!(
        "{:<40} {:>8} {:>9} {:>10} {:>9} {:>9} {:>9}",
        "call", "median", "EC2 time", "own cost", "EC2", "peak RSS", "over bare"
    );
    println!(
        "{:<40} {:>8} {:>9} {:>10} {:>9} {:>9} {:>9}",
        "", "ms", "ms", "ms", "calls", "MiB", "ms"
    );
    let rss_mib = |v: &[Sample]| v.iter().map(|s| s.rss_kib).max().unwrap_or(0) as f64 / 1024.0;
    println!(
        "{:<40} {:>8.2} {:>9} {:>10} {:>9} {:>9.1}",
        "baseline: sh script exec /bin/true",
        median_ms(&sh),
        "",
        "",
        0,
        rss_mib(&sh)
    );
    println!(
        "{:<40} {:>8.2} {:>9.2} {:>10.2} {:>9} {:>9.1}",
        "baseline: bare SDK process, 1 describe",
        bare_ms,
        bare_ec2_ms,
        bare_own,
        1,
        rss_mib(&bare)
    );
    let report = |name: &str, rows: &[(Sample, f64, usize)]| crate::cloud_row(name, rows, Some(bare_own));

    crate::five_calls(&mut run_call, iterations, "od", "instance", &report)?;
    println!("targets (issue #4): own cost <= 5 ms per call, peak RSS <= 15 MiB");

    // One poll over many open requests: instances launched straight into the emulator
    // with this provider instance's tags, and the requests recorded as HostFactory's
    // requestMachines calls would have left them while the instances were still pending.
    let (requests, each) = big_poll_size()?;
    println!();
    println!(
        "one getRequestStatus over {requests} open requests holding {} instances (AWS guest, moto)",
        requests * each
    );
    let t0 = Instant::now();
    let instances = rt.block_on(launch_tagged(&ec2, &ami, requests * each))?;
    println!(
        "(seeded {} instances in moto in {:.1} s)",
        instances.len(),
        t0.elapsed().as_secs_f64()
    );
    let ids = seed_open_requests(&dir.path().join("work"), &instances, each)?;
    let input = json!({"requests": ids.iter().map(|id| json!({"requestId": id})).collect::<Vec<_>>()});
    let (s, cloud, calls) = run_call("getRequestStatus", &input)?;
    let v: Value = serde_json::from_str(&s.stdout)?;
    let statuses: Vec<&Value> = v["requests"].as_array().map(|rs| rs.iter().collect()).unwrap_or_default();
    let complete = statuses.iter().filter(|r| r["status"] == "complete").count();
    if complete != ids.len() {
        let other = statuses
            .iter()
            .find(|r| r["status"] != "complete")
            .map(|r| format!("{} {}: {}", r["requestId"], r["status"], r["message"]))
            .unwrap_or_default();
        bail!("big poll: {complete} of {} requests complete; e.g. {other}", ids.len());
    }
    println!(
        "{:<40} {:>8.0} ms wall, {cloud:.0} ms in {calls} EC2 calls, {:.1} MiB peak RSS; {complete} requests complete",
        format!("getRequestStatus ({requests} requests)"),
        s.wall.as_secs_f64() * 1e3,
        s.rss_kib as f64 / 1024.0
    );
    println!("target (issue #5): <= 10 DescribeInstances calls for 1,000 requests of 10 (HFWASM_BENCH_AWS_POLL=1000x10)");
    Ok(())
}

/// Requests x instances each of the AWS big poll: `HFWASM_BENCH_AWS_POLL`, by default
/// 1000x1. moto needs ~100 s per 1,000-id DescribeInstances over 10,000 instances, so
/// 1000x10 takes ~17 minutes inside the emulator, past the guest's ceiling wall time of
/// 600 s (`call_timeout_ms`): it cannot finish against moto, only against EC2.
fn big_poll_size() -> Result<(usize, usize)> {
    let spec = std::env::var("HFWASM_BENCH_AWS_POLL").unwrap_or_else(|_| "1000x1".into());
    spec.split_once('x')
        .and_then(|(r, e)| Some((r.trim().parse::<usize>().ok()?, e.trim().parse::<usize>().ok()?)))
        .filter(|&(r, e)| r > 0 && e > 0)
        .with_context(|| format!("HFWASM_BENCH_AWS_POLL={spec}: expected REQUESTSxINSTANCES, e.g. 1000x10"))
}

/// (instance id, private DNS name, private IP) of `n` t3.micro instances launched 1,000
/// per call into a fresh /18 subnet, tagged as provider instance `awsbench`'s.
async fn launch_tagged(ec2: &sdk::Client, ami: &str, n: usize) -> Result<Vec<(String, String, String)>> {
    let vpcs = ec2.describe_vpcs().send().await?;
    let vpc = vpcs
        .vpcs()
        .iter()
        .find(|v| v.cidr_block() == Some("10.0.0.0/16"))
        .and_then(|v| v.vpc_id())
        .context("bench VPC")?
        .to_string();
    let subnet = ec2.create_subnet().vpc_id(&vpc).cidr_block("10.0.64.0/18").send().await?;
    let subnet = subnet.subnet().and_then(|s| s.subnet_id()).context("subnet id")?.to_string();
    let tag = |k: &str, v: &str| sdk::types::Tag::builder().key(k).value(v).build();
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let batch = i32::try_from((n - out.len()).min(1000))?;
        let r = ec2
            .run_instances()
            .image_id(ami)
            .instance_type(sdk::types::InstanceType::T3Micro)
            .subnet_id(&subnet)
            .min_count(batch)
            .max_count(batch)
            .tag_specifications(
                sdk::types::TagSpecification::builder()
                    .resource_type(sdk::types::ResourceType::Instance)
                    .tags(tag("hfwasm:provider", "awsbench"))
                    .tags(tag("hfwasm:template", "od"))
                    .build(),
            )
            .send()
            .await?;
        for i in r.instances() {
            out.push((
                i.instance_id().unwrap_or_default().to_string(),
                i.private_dns_name().unwrap_or_default().to_string(),
                i.private_ip_address().unwrap_or_default().to_string(),
            ));
        }
    }
    Ok(out)
}

/// Records open requests of `each` pending instances each in the SQLite store under
/// `work`; returns their ids.
fn seed_open_requests(work: &Path, instances: &[(String, String, String)], each: usize) -> Result<Vec<String>> {
    use hfwasm::domain::lifecycle::RequestStatus;
    use hfwasm::domain::model::{Machine, MachineState};
    use hfwasm::store::{Phase, RequestKind, RequestRecord, StoreSpec, Synchronous};
    let store = hfwasm::store::open(&StoreSpec::Sqlite {
        path: work.join("hfwasm.sqlite"),
        synchronous: Synchronous::Normal,
    })?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
    let mut ids = Vec::new();
    for (r, chunk) in instances.chunks(each).enumerate() {
        let id = format!("req-bigpoll-{r:04}");
        let machines: Vec<Machine> = chunk
            .iter()
            .map(|(iid, dns, ip)| Machine {
                machine_id: iid.clone(),
                name: dns.clone(),
                private_ip: ip.clone(),
                public_ip: None,
                launch_time: now,
                state: MachineState::Pending,
                message: None,
            })
            .collect();
        let rec = RequestRecord {
            id: id.clone(),
            kind: RequestKind::Provision,
            template_id: Some("od".into()),
            count: u32::try_from(machines.len())?,
            rc_account: None,
            phase: Phase::Submitted,
            status: RequestStatus::Running,
            outstanding: 0,
            message: None,
            created_at: now,
            updated_at: now,
            claimed: true,
        };
        store.insert_request(&rec, &machines)?;
        ids.push(id);
    }
    Ok(ids)
}

/// `hfwasm-bench --bare-describe ENDPOINT`: one DescribeInstances (filtered by a tag, as
/// hfwasm's are) from a process that does nothing else, with the SDK client built the way
/// hfwasm builds it (static credentials, plain-HTTP connector, no SDK retries): the floor of
/// any Rust plugin making that call, to compare hfwasm's calls with in the same run. Prints
/// the instances found and the describe's round trip in µs, timed around the SDK call as
/// hfwasm times its own.
pub fn bare_describe(endpoint: &str) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let conf = sdk::Config::builder()
        .behavior_version(sdk::config::BehaviorVersion::latest())
        .region(sdk::config::Region::new("us-east-1"))
        .credentials_provider(aws_credential_types::Credentials::new("testing", "testing", None, None, "bench"))
        .endpoint_url(endpoint)
        .retry_config(sdk::config::retry::RetryConfig::standard().with_max_attempts(1))
        .http_client(aws_smithy_http_client::Builder::new().build_http())
        .build();
    let ec2 = sdk::Client::from_conf(conf);
    let t0 = Instant::now();
    let out = rt.block_on(
        ec2.describe_instances()
            .filters(sdk::types::Filter::builder().name("tag:hfwasm:provider").values("awsbench").build())
            .send(),
    )?;
    println!(
        "{} {}",
        out.reservations().iter().map(|r| r.instances().len()).sum::<usize>(),
        t0.elapsed().as_micros()
    );
    Ok(())
}
