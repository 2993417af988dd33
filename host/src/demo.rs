//! `hfwasm demo`: lays out a HostFactory tree (plugin scripts, conf, work and log dirs) and
//! drives the full cycle through the real scripts, the way HostFactory does: write a
//! tab-indented input file, run `scripts/<call>.sh -f <file>`, read one JSON answer.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

/// The real scripts, embedded so the demo installs exactly what ships in `scripts/`.
const SCRIPTS: [(&str, &str); 6] = [
    ("hfwasm-invoke.sh", include_str!("../../scripts/hfwasm-invoke.sh")),
    ("getAvailableTemplates.sh", include_str!("../../scripts/getAvailableTemplates.sh")),
    ("requestMachines.sh", include_str!("../../scripts/requestMachines.sh")),
    ("requestReturnMachines.sh", include_str!("../../scripts/requestReturnMachines.sh")),
    ("getRequestStatus.sh", include_str!("../../scripts/getRequestStatus.sh")),
    ("getReturnRequests.sh", include_str!("../../scripts/getReturnRequests.sh")),
];

/// The demo pool: six hosts in two shapes; power commands that take a moment, so the
/// request is seen `running` before it completes.
const INVENTORY: &str = "\
# hfwasm demo inventory: NAME IP key=value ...
defaults ncpus=4 nram=16384 power_on=\"sleep 1; echo powered on {name}\" power_off=\"sleep 1; echo powered off {name}\"
compute-01 10.10.0.11
compute-02 10.10.0.12
compute-03 10.10.0.13
compute-04 10.10.0.14
bigmem-01 10.10.0.21 template=bigmem ncpus=16 nram=131072
bigmem-02 10.10.0.22 template=bigmem ncpus=16 nram=131072
";

/// A HostFactory tree in a directory.
struct Tree {
    root: PathBuf,
    scripts: PathBuf,
    conf: PathBuf,
    work: PathBuf,
    logs: PathBuf,
    step: u32,
    /// Where the transcript goes (stdout, handed over by `main`).
    out: Box<dyn Write>,
}

/// Pretty-prints with tabs, as HostFactory's cJSON writes its input files.
fn tabbed(v: &Value) -> Result<String> {
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut out, serde_json::ser::PrettyFormatter::with_indent(b"\t"));
    serde::Serialize::serialize(v, &mut ser)?;
    Ok(String::from_utf8(out)?)
}

impl Tree {
    fn create(root: PathBuf, out: Box<dyn Write>) -> Result<Self> {
        let plugin = root.join("providerplugins/hfwasm");
        let scripts = plugin.join("scripts");
        let conf = root.join("conf/providers/demo");
        let work = root.join("work/providers/demo");
        let logs = root.join("log");
        for d in [&scripts, &plugin.join("bin"), &conf, &work, &logs] {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        }
        for (name, text) in SCRIPTS {
            let p = scripts.join(name);
            std::fs::write(&p, text)?;
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755))?;
            }
        }
        let exe = std::env::current_exe().context("locating the hfwasm binary")?;
        let bin = plugin.join("bin/hfwasm");
        let _ = std::fs::remove_file(&bin);
        #[cfg(unix)]
        std::os::unix::fs::symlink(&exe, &bin).with_context(|| format!("linking {}", bin.display()))?;
        std::fs::write(conf.join("inventory.txt"), INVENTORY)?;
        Ok(Self {
            root,
            scripts,
            conf,
            work,
            logs,
            step: 0,
            out,
        })
    }

    /// Runs one script like HostFactory: input file, `-f`, one JSON answer on stdout.
    fn call(&mut self, call: &str, input: &Value) -> Result<Value> {
        self.step += 1;
        let file = self.root.join(format!("hf_in_{:02}_{call}", self.step));
        std::fs::write(&file, tabbed(input)? + "\n")?;
        let script = self.scripts.join(format!("{call}.sh"));
        writeln!(self.out, "\n── {}. {call} ───────────────────────────────────────", self.step)?;
        writeln!(self.out, "$ {} -f {}", rel(&script, &self.root), rel(&file, &self.root))?;
        writeln!(self.out, "{}", tabbed(input)?)?;
        let t0 = Instant::now();
        let out = Command::new(&script)
            .arg("-f")
            .arg(&file)
            .env("HF_PROVIDER_NAME", "demo")
            .env("HF_PROVIDER_CONFDIR", &self.conf)
            .env("HF_PROVIDER_WORKDIR", &self.work)
            .env("HF_PROVIDER_LOGDIR", &self.logs)
            .env_remove("HFWASM_BIN")
            .output()
            .with_context(|| format!("running {}", script.display()))?;
        let took = t0.elapsed();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let answer: Value =
            serde_json::from_str(&stdout).with_context(|| format!("{call} printed something that is not one JSON document:\n{stdout}"))?;
        writeln!(self.out, "→ exit {} in {} ms", out.status.code().unwrap_or(-1), took.as_millis())?;
        writeln!(self.out, "{}", serde_json::to_string_pretty(&answer)?)?;
        if !out.status.success() {
            bail!("{call} failed: {stdout}");
        }
        Ok(answer)
    }

    /// Polls getRequestStatus until the request is final, as HostFactory does every cycle.
    fn until_final(&mut self, id: &str) -> Result<Value> {
        let t0 = Instant::now();
        loop {
            let answer = self.call("getRequestStatus", &json!({"requests": [{"requestId": id}]}))?;
            let req = answer["requests"][0].clone();
            match req["status"].as_str() {
                Some("running") if t0.elapsed() < Duration::from_secs(60) => std::thread::sleep(Duration::from_millis(700)),
                Some("running") => bail!("request {id} still running after 60 s"),
                Some(_) => return Ok(req),
                None => bail!("no status for {id}"),
            }
        }
    }
}

fn rel(p: &Path, root: &Path) -> String {
    p.strip_prefix(root)
        .map_or_else(|_| p.display().to_string(), |r| r.display().to_string())
}

fn names(req: &Value) -> Vec<(String, String)> {
    req["machines"]
        .as_array()
        .map(|ms| {
            ms.iter()
                .filter(|m| m["result"] == "succeed")
                .map(|m| {
                    (
                        m["name"].as_str().unwrap_or_default().to_string(),
                        m["machineId"].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Runs the demo in `dir` (kept) or a temp dir (removed afterwards).
pub fn run(dir: Option<PathBuf>, out: Box<dyn Write>) -> Result<()> {
    let (root, temp) = match dir {
        Some(d) => (d, None),
        None => {
            let t = tempfile::Builder::new().prefix("hfwasm-demo-").tempdir()?;
            (t.path().to_path_buf(), Some(t))
        }
    };
    let mut tree = Tree::create(root, out)?;
    writeln!(tree.out, "HostFactory tree laid out in {}", tree.root.display())?;
    writeln!(tree.out, "  plugin scripts: {}", rel(&tree.scripts, &tree.root))?;
    writeln!(
        tree.out,
        "  provider conf:  {} (inventory.txt; no hfwasm.json: embedded defaults)",
        rel(&tree.conf, &tree.root)
    )?;

    let templates = tree.call("getAvailableTemplates", &json!({}))?;
    let template = templates["templates"]
        .as_array()
        .and_then(|ts| ts.iter().find(|t| t["templateId"] != "bigmem"))
        .and_then(|t| t["templateId"].as_str())
        .context("no template on offer")?
        .to_string();

    let req = tree.call("requestMachines", &json!({"template": {"templateId": template, "machineCount": 3}}))?;
    let req_id = req["requestId"].as_str().context("no requestId")?.to_string();
    let done = tree.until_final(&req_id)?;
    let hosts = names(&done);
    if done["status"] != "complete" || hosts.len() != 3 {
        bail!("expected 3 hosts and status complete, got {done}");
    }

    let ret_input: Vec<Value> = hosts[..2].iter().map(|(n, id)| json!({"name": n, "machineId": id})).collect();
    let ret = tree.call("requestReturnMachines", &json!({"machines": ret_input}))?;
    let ret_id = ret["requestId"].as_str().context("no requestId")?.to_string();
    let ret_done = tree.until_final(&ret_id)?;
    if ret_done["status"] != "complete" {
        bail!("return did not complete: {ret_done}");
    }

    // The admin decommissions the host HostFactory still holds: it must be given back.
    let kept = &hosts[2];
    let inventory = std::fs::read_to_string(tree.conf.join("inventory.txt"))?;
    let trimmed: String = inventory
        .lines()
        .filter(|l| !l.starts_with(&format!("{} ", kept.0)))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(tree.conf.join("inventory.txt"), trimmed)?;
    writeln!(tree.out, "\n(admin removes {} from inventory.txt)", kept.0)?;
    let reclaim = tree.call("getReturnRequests", &json!({"machines": [{"name": kept.0, "machineId": kept.1}]}))?;
    if reclaim["requests"][0]["machine"] != kept.0.as_str() {
        bail!("expected {} to be reported for return, got {reclaim}", kept.0);
    }
    writeln!(
        tree.out,
        "\nDemo complete: 3 hosts provisioned, 2 returned, 1 reclaimed after decommissioning."
    )?;
    if temp.is_some() {
        // The temp tree and its logs go when the demo ends: say so rather than name a
        // path that will not exist.
        writeln!(
            tree.out,
            "The tree and its logs were temporary and are removed now; `hfwasm demo --dir DIR` keeps them."
        )?;
    } else {
        writeln!(tree.out, "Logs: {}", tree.logs.display())?;
    }
    Ok(())
}
