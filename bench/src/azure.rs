//! The five calls against the ARM fake (`tests/fakes/arm_fake.py`) with IBM's Azure files,
//! beside the AWS figures: a call's own cost is its wall time minus the time its HTTP
//! exchanges took (the fake's answers and the token fetch), read from hfwasm's log of each
//! exchange in the same run. The fake answers at once (VMs are ready immediately), so what
//! is left is hfwasm's: start-up, config, the guest, the store.

use std::path::Path;
use std::process::{Child, Command, Stdio};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

struct Fake(Child);

impl Drop for Fake {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Sum (in ms) of `elapsed_us=` of the HTTP exchanges (and token fetches) logged since `from`.
fn http_ms(log: &Path, from: u64) -> (f64, usize) {
    crate::logged_ms(log, from, |l| l.contains("http request") || l.contains("http credentials"))
}

/// Runs the Azure part of the bench; prints its rows.
pub fn run(repo: &Path, bin: &Path, iterations: usize) -> Result<()> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let _fake = Fake(
        Command::new("python3")
            .arg(repo.join("tests/fakes/arm_fake.py"))
            .args([
                "--port",
                &port.to_string(),
                "--vm-ready-secs",
                "0",
                "--delete-secs",
                "0",
                "--core-quota",
                "100000",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start the ARM fake (python3)")?,
    );
    let t0 = std::time::Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if t0.elapsed().as_secs() > 20 {
            bail!("the ARM fake did not start");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let world: Value = serde_json::from_str(&std::fs::read_to_string(repo.join("tests/fakes/arm_world.json"))?)?;
    let endpoint = format!("http\\://127.0.0.1\\:{port}/");
    let dir = tempfile::tempdir()?;
    let conf_dir = dir.path().join("conf");
    std::fs::create_dir_all(&conf_dir)?;
    std::fs::write(
        conf_dir.join("credentials"),
        format!(
            "subscription={}\nclient={}\nkey={}\ntenant={}\nbaseURL={endpoint}\nauthURL={endpoint}\n",
            world["subscription"].as_str().context("subscription")?,
            world["principal"]["client"].as_str().context("client")?,
            world["principal"]["secret"].as_str().context("secret")?,
            world["principal"]["tenant"].as_str().context("tenant")?,
        ),
    )?;
    std::fs::write(
        conf_dir.join("lsf.pub"),
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHfwasmBenchKey bench\n",
    )?;
    let ibm = |f: &str| -> Result<Value> {
        Ok(serde_json::from_str(&std::fs::read_to_string(
            repo.join("tests/data/ibm/azure").join(f),
        )?)?)
    };
    let mut cfg = ibm("azureprov_config.json")?;
    cfg["AZURE_CREDENTIAL_FILE"] = json!("credentials");
    std::fs::write(conf_dir.join("azureprov_config.json"), cfg.to_string())?;
    let mut t = ibm("azureprov_templates.json")?;
    for tpl in t["templates"].as_array_mut().context("templates")? {
        tpl["sshPubKeyFile"] = json!("lsf.pub");
        tpl["maxNumber"] = json!(1000);
    }
    std::fs::write(conf_dir.join("azureprov_templates.json"), t.to_string())?;

    let mut tree = crate::CloudTree {
        repo,
        bin,
        dir: dir.path(),
        name: "azurebench",
        env: vec![],
        cloud: http_ms,
        n: 0,
    };
    let mut run_call = |call: &str, input: &Value| tree.call(call, input);
    // Warm: compile the guest, cache the VM size catalogue.
    run_call("getAvailableTemplates", &json!({}))?;

    println!("\nAzure provider against the ARM fake (IBM azureprov files, http capability), {iterations} runs per call");
    println!(
        "{:<40} {:>8} {:>9} {:>10} {:>9} {:>9}",
        "call", "median", "HTTP time", "own cost", "HTTP", "peak RSS"
    );
    println!("{:<40} {:>8} {:>9} {:>10} {:>9} {:>9}", "", "ms", "ms", "ms", "calls", "MiB");
    crate::five_calls(&mut run_call, iterations, "Template-VM-0", "VM", &|name, rows| {
        crate::cloud_row(name, rows, None)
    })?;
    println!("targets (issue #17): own cost <= 5 ms per call, peak RSS <= 15 MiB (the token is kept across processes in the work dir)");
    Ok(())
}
