//! hfwasm benchmark harness: drives the real HostFactory scripts against the release
//! binary with a warm precompiled cache and prints, per call, the median and p90 wall time
//! and the peak RSS of the process, beside baselines measured in the same run (a shell
//! script that execs `/bin/true`, and a bare Python start-up, the floor of any Python
//! plugin). Figures, not assertions: the machines are shared and noisy, so compare ratios.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod aws;
mod azure;
mod replay;
mod sandbox;
mod scale;
mod serve;
mod stores;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

/// One measured process run.
pub(crate) struct Sample {
    wall: Duration,
    rss_kib: u64,
    stdout: String,
    ok: bool,
}

/// Sum (in ms) of the `elapsed_us=` fields of the log lines written since byte `from` that
/// `is_cloud` picks, and how many there were: the time a call spent waiting on its cloud.
pub(crate) fn logged_ms(log: &Path, from: u64, is_cloud: impl Fn(&str) -> bool) -> (f64, usize) {
    let text = std::fs::read(log).unwrap_or_default();
    let tail = String::from_utf8_lossy(&text[usize::try_from(from).unwrap_or(0).min(text.len())..]).to_string();
    let mut total = 0.0;
    let mut n = 0;
    for line in tail.lines().filter(|l| is_cloud(l)) {
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

/// One row of a cloud section: median wall, cloud and own time, most cloud calls, peak RSS,
/// and (with `bare_own`) the own cost beyond a bare SDK process's.
pub(crate) fn cloud_row(name: &str, rows: &[CloudSample], bare_own: Option<f64>) {
    let mut walls: Vec<f64> = rows.iter().map(|r| r.0.wall.as_secs_f64() * 1e3).collect();
    let mut own: Vec<f64> = rows.iter().map(|r| r.0.wall.as_secs_f64() * 1e3 - r.1).collect();
    let mut cloud: Vec<f64> = rows.iter().map(|r| r.1).collect();
    for v in [&mut walls, &mut own, &mut cloud] {
        v.sort_by(f64::total_cmp);
    }
    let med = |v: &Vec<f64>| v[v.len() / 2];
    let calls = rows.iter().map(|r| r.2).max().unwrap_or(0);
    let rss = rows.iter().map(|r| r.0.rss_kib).max().unwrap_or(0) as f64 / 1024.0;
    let vs_bare = bare_own.map(|b| format!("{:+.2}", med(&own) - b)).unwrap_or_default();
    println!(
        "{name:<40} {:>8.2} {:>9.2} {:>10.2} {:>9} {:>9.1} {vs_bare:>9}",
        med(&walls),
        med(&cloud),
        med(&own),
        calls,
        rss
    );
}

/// A provider instance of a cloud section: its dirs, and how to tell its cloud time in its log.
pub(crate) struct CloudTree<'a> {
    pub(crate) repo: &'a Path,
    pub(crate) bin: &'a Path,
    pub(crate) dir: &'a Path,
    /// `HF_PROVIDER_NAME` (the conf dir is `<dir>/conf`).
    pub(crate) name: &'a str,
    /// Extra environment of every call.
    pub(crate) env: Vec<(&'a str, &'a str)>,
    /// (cloud ms, cloud calls) of the log written since a byte offset.
    pub(crate) cloud: fn(&Path, u64) -> (f64, usize),
    pub(crate) n: u32,
}

impl CloudTree<'_> {
    /// Runs `call` through its script with `input`; the sample and the cloud's share.
    pub(crate) fn call(&mut self, call: &str, input: &Value) -> Result<CloudSample> {
        self.n += 1;
        let file = self.dir.join(format!("in_{}", self.n));
        std::fs::write(&file, input.to_string())?;
        let log = self.dir.join(format!("log/hfwasm-{}.log", self.name));
        let from = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
        let mut cmd = Command::new(self.repo.join("scripts").join(format!("{call}.sh")));
        cmd.arg("-f")
            .arg(&file)
            .env("HFWASM_BIN", self.bin)
            .env("HF_PROVIDER_NAME", self.name)
            .env("HF_PROVIDER_CONFDIR", self.dir.join("conf"))
            .env("HF_PROVIDER_WORKDIR", self.dir.join("work"))
            .env("HF_PROVIDER_LOGDIR", self.dir.join("log"))
            .envs(self.env.iter().copied());
        let s = measure(&mut cmd)?;
        if !s.ok {
            bail!("{call} failed: {}", s.stdout);
        }
        let (cloud, calls) = (self.cloud)(&log, from);
        Ok((s, cloud, calls))
    }
}

/// A call as a cloud section runs it: (the process, its cloud time in ms, its cloud calls).
pub(crate) type CloudSample = (Sample, f64, usize);

/// The five calls of a cloud section, `iterations` of each (requests of one `what` of
/// `template`), each call's rows given to `report`.
pub(crate) fn five_calls(
    run_call: &mut dyn FnMut(&str, &Value) -> Result<CloudSample>,
    iterations: usize,
    template: &str,
    what: &str,
    report: &dyn Fn(&str, &[CloudSample]),
) -> Result<()> {
    let rows = (0..iterations)
        .map(|_| run_call("getAvailableTemplates", &json!({})))
        .collect::<Result<Vec<_>>>()?;
    report("getAvailableTemplates", &rows);
    let mut ids = Vec::new();
    let mut rows = Vec::new();
    for _ in 0..iterations {
        let r = run_call("requestMachines", &json!({"template": {"templateId": template, "machineCount": 1}}))?;
        let v: Value = serde_json::from_str(&r.0.stdout)?;
        ids.push(v["requestId"].as_str().context("requestId")?.to_string());
        rows.push(r);
    }
    report(&format!("requestMachines (1 {what})"), &rows);
    let mut machines = Vec::new();
    let mut rows = Vec::new();
    for id in &ids {
        let r = run_call("getRequestStatus", &json!({"requests": [{"requestId": id}]}))?;
        let v: Value = serde_json::from_str(&r.0.stdout)?;
        let m = &v["requests"][0]["machines"][0];
        machines.push(json!({"name": m["name"], "machineId": m["machineId"]}));
        rows.push(r);
    }
    report("getRequestStatus (first poll)", &rows);
    let rows = (0..iterations)
        .map(|_| run_call("getReturnRequests", &json!({"machines": machines})))
        .collect::<Result<Vec<_>>>()?;
    report(&format!("getReturnRequests ({} hosts listed)", machines.len()), &rows);
    let rows = machines
        .iter()
        .map(|m| run_call("requestReturnMachines", &json!({"machines": [m]})))
        .collect::<Result<Vec<_>>>()?;
    report(&format!("requestReturnMachines (1 {what})"), &rows);
    Ok(())
}

/// Runs `cmd` to completion, measuring wall time and the child's peak RSS (`wait4`).
///
/// The child is started by a fresh copy of this program (`--measure`), not by this
/// process: Linux carries the high-water RSS of the memory a child was spawned from across
/// its exec, so a child of this bench (tens of MiB once it has seeded an emulator) would
/// report at least the bench's own peak. The helper starts at about 3 MiB, which is then
/// the floor of the RSS figures (the `sh` baseline is really ~1.5 MiB).
pub(crate) fn measure(cmd: &mut Command) -> Result<Sample> {
    let mut outer = Command::new(std::env::current_exe().context("bench binary")?);
    outer.arg("--measure").arg(cmd.get_program()).args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => outer.env(k, v),
            None => outer.env_remove(k),
        };
    }
    if let Some(d) = cmd.get_current_dir() {
        outer.current_dir(d);
    }
    let out = outer.stdin(Stdio::null()).output().context("spawn the measuring helper")?;
    let report = String::from_utf8_lossy(&out.stderr);
    let line = report
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("hfwasm-bench-measure "))
        .with_context(|| format!("the measuring helper reported nothing: {report}"))?;
    let fields: Vec<u64> = line.split_whitespace().filter_map(|f| f.parse().ok()).collect();
    let [wall_ns, rss_kib, ok] = fields[..] else {
        bail!("bad report from the measuring helper: {line}");
    };
    Ok(Sample {
        wall: Duration::from_nanos(wall_ns),
        rss_kib,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        ok: ok == 1,
    })
}

/// `hfwasm-bench --measure PROGRAM ARGS...`: runs the program (stdout passed through,
/// stderr dropped) and reports its wall time in ns, peak RSS in KiB and success on stderr.
fn measure_child(program: &std::ffi::OsStr, args: &[std::ffi::OsString]) -> Result<()> {
    let t0 = Instant::now();
    let child = Command::new(program).args(args).stderr(Stdio::null()).spawn().context("spawn")?;
    let pid = libc::pid_t::try_from(child.id()).context("pid")?;
    let mut status: libc::c_int = 0;
    // SAFETY: an all-zero rusage is a valid value of this plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `pid` is our own un-reaped child; `status` and `usage` are valid out-pointers.
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let wall = t0.elapsed();
    if rc != pid {
        bail!("wait4 failed: {}", std::io::Error::last_os_error());
    }
    let ok = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
    eprintln!(
        "hfwasm-bench-measure {} {} {}",
        wall.as_nanos(),
        u64::try_from(usage.ru_maxrss).unwrap_or(0),
        u8::from(ok)
    );
    Ok(())
}

/// How much of `host/link-order.txt` names functions of `bin`: a list gone stale (after a
/// dependency or toolchain change) costs RSS and CPU, so every run says how current it is.
pub(crate) fn link_order_coverage(repo: &Path, bin: &Path) -> String {
    let Ok(list) = std::fs::read_to_string(repo.join("host/link-order.txt")) else {
        return "link order: host/link-order.txt missing (dev/link-order.sh writes it)".into();
    };
    let Ok(nm) = Command::new("nm").arg("--defined-only").arg(bin).output() else {
        return "link order: coverage unknown (nm not found)".into();
    };
    let symbols: std::collections::HashSet<&str> = std::str::from_utf8(&nm.stdout)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2))
        .collect();
    let listed: Vec<&str> = list.lines().filter(|l| !l.is_empty()).collect();
    let found = listed.iter().filter(|n| symbols.contains(*n)).count();
    format!(
        "link order: {found} of {} listed functions are in the binary{}",
        listed.len(),
        if found * 10 < listed.len() * 9 {
            "; either `cargo test` linked this binary last (its symbol names differ: run `cargo build \
             --release --workspace` first) or the list is stale (rerun dev/link-order.sh)"
        } else {
            ""
        }
    )
}

/// `iterations` runs of a shell script that execs `/bin/true` (written into `dir`): the
/// floor of any plugin HostFactory runs through a script.
pub(crate) fn sh_baseline(dir: &Path, iterations: usize) -> Result<Vec<Sample>> {
    let noop = dir.join("noop.sh");
    std::fs::write(&noop, "#!/bin/sh\nexec /bin/true \"$@\"\n")?;
    (0..iterations).map(|_| measure(Command::new("/bin/sh").arg(&noop))).collect()
}

/// Median, p90 and peak RSS of a series.
struct Figures {
    median: Duration,
    p90: Duration,
    rss_mib: f64,
}

fn figures(samples: &[Sample]) -> Figures {
    let mut walls: Vec<Duration> = samples.iter().map(|s| s.wall).collect();
    walls.sort();
    let at = |q: f64| walls[((walls.len() as f64 - 1.0) * q).round() as usize];
    let rss = samples.iter().map(|s| s.rss_kib).max().unwrap_or(0);
    Figures {
        median: at(0.5),
        p90: at(0.9),
        rss_mib: rss as f64 / 1024.0,
    }
}

struct Tree {
    dir: tempfile::TempDir,
    conf: PathBuf,
    work: PathBuf,
    bin: PathBuf,
    n: u32,
}

impl Tree {
    /// Provider instance `bench` with `hosts` plain inventory hosts of template `pool`.
    fn new_onprem(bin: &Path, hosts: usize) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let conf = dir.path().join("conf");
        let work = dir.path().join("work");
        std::fs::create_dir_all(&conf)?;
        let mut inv = String::from("defaults ncpus=4 nram=8192\n");
        for i in 0..hosts {
            inv.push_str(&format!(
                "pool-{i:05} 10.{}.{}.{} template=pool\n",
                30 + i / 62500,
                (i / 250) % 250,
                i % 250 + 1
            ));
        }
        std::fs::write(conf.join("inventory.txt"), inv)?;
        Ok(Tree {
            dir,
            conf,
            work,
            bin: bin.to_path_buf(),
            n: 0,
        })
    }

    fn script(&mut self, call: &str, input: &Value) -> Result<Command> {
        self.n += 1;
        let file = self.dir.path().join(format!("hf_in_{}", self.n));
        std::fs::write(&file, serde_json::to_string_pretty(input)?)?;
        let mut cmd = Command::new(Path::new(REPO).join("scripts").join(format!("{call}.sh")));
        cmd.arg("-f")
            .arg(file)
            .env("HFWASM_BIN", &self.bin)
            .env("HF_PROVIDER_NAME", "bench")
            .env("HF_PROVIDER_CONFDIR", &self.conf)
            .env("HF_PROVIDER_WORKDIR", &self.work)
            .env("HF_PROVIDER_LOGDIR", self.dir.path().join("log"));
        Ok(cmd)
    }

    fn call(&mut self, call: &str, input: &Value) -> Result<Sample> {
        let s = measure(&mut self.script(call, input)?)?;
        if !s.ok {
            bail!("{call} failed: {}", s.stdout);
        }
        Ok(s)
    }

    fn json(&mut self, call: &str, input: &Value) -> Result<Value> {
        Ok(serde_json::from_str(&self.call(call, input)?.stdout)?)
    }
}

fn binary() -> PathBuf {
    if let Some(b) = std::env::var_os("HFWASM_BIN") {
        return PathBuf::from(b);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(REPO).join("target"));
    target.join("release/hfwasm")
}

fn row(name: &str, f: &Figures, base: Duration) {
    println!(
        "{name:<44} {:>8.2} {:>8.2} {:>9.1} {:>8.1}x",
        f.median.as_secs_f64() * 1e3,
        f.p90.as_secs_f64() * 1e3,
        f.rss_mib,
        f.median.as_secs_f64() / base.as_secs_f64().max(1e-9)
    );
}

fn main() -> Result<()> {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == "--measure") {
        let program = args.get(2).context("--measure PROGRAM [ARGS...]")?;
        return measure_child(program, &args[3..]);
    }
    if std::env::args().nth(1).as_deref() == Some("--bare-describe") {
        return aws::bare_describe(&std::env::args().nth(2).context("--bare-describe ENDPOINT")?);
    }
    let iterations: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()
        .context("iterations")?
        .unwrap_or(30);
    let bin = binary();
    // An optional second argument runs one section only: `stores`, `aws`, `azure`, `sandbox`,
    // `replay` or `scale` (10,000 instances; not part of the full run, it takes minutes).
    match std::env::args().nth(2).as_deref() {
        Some("stores") => return stores::run(&bin, iterations),
        Some("aws") => return aws::run(Path::new(REPO), &bin, iterations),
        Some("azure") => return azure::run(Path::new(REPO), &bin, iterations),
        Some("sandbox") => return sandbox::run(Path::new(REPO), &bin, iterations),
        Some("replay") => return replay::run(iterations),
        Some("scale") => return scale::run(Path::new(REPO), &bin, iterations),
        Some("serve") => return serve::run(&bin, iterations),
        Some(other) => {
            bail!(
                "unknown section '{other}'; expected `stores`, `aws`, `azure`, `sandbox`, `replay`, `serve` or `scale` (or none for all but `scale`)"
            )
        }
        None => {}
    }
    if !bin.is_file() {
        bail!("{} not found: build it first with `cargo build --release -p hfwasm`", bin.display());
    }
    let dir = tempfile::tempdir()?;
    let conf = dir.path().join("conf");
    let work = dir.path().join("work");
    std::fs::create_dir_all(&conf)?;
    let hosts = iterations * 2 + 10;
    let mut inv = String::from("defaults ncpus=4 nram=8192\n");
    for i in 0..hosts {
        inv.push_str(&format!("pool-{i:04} 10.20.{}.{} template=pool\n", i / 250, i % 250 + 1));
        inv.push_str(&format!(
            "boot-{i:04} 10.21.{}.{} template=boot power_on=\"exit 0\"\n",
            i / 250,
            i % 250 + 1
        ));
    }
    std::fs::write(conf.join("inventory.txt"), inv)?;
    let mut t = Tree {
        dir,
        conf,
        work,
        bin,
        n: 0,
    };

    println!("hfwasm bench: {iterations} runs per call through the real scripts, release build, warm cache");
    println!("{}", link_order_coverage(Path::new(REPO), &t.bin));
    println!("{:<44} {:>8} {:>8} {:>9} {:>9}", "call", "median", "p90", "peak RSS", "vs sh");
    println!("{:<44} {:>8} {:>8} {:>9} {:>9}", "", "ms", "ms", "MiB", "");

    // Baselines, same run.
    let sh = sh_baseline(t.dir.path(), iterations)?;
    let base = figures(&sh);
    row("baseline: sh script exec /bin/true", &base, base.median);
    if let Ok(py) = (0..iterations)
        .map(|_| measure(Command::new("python3").args(["-c", "import json, sys"])))
        .collect::<Result<Vec<_>>>()
    {
        row("baseline: python3 start-up + import json", &figures(&py), base.median);
    }

    // Warm the cache as an install would.
    let pre = Command::new(&t.bin)
        .args(["guest", "precompile", "--confdir"])
        .arg(&t.conf)
        .arg("--workdir")
        .arg(&t.work)
        .output()?;
    if !pre.status.success() {
        bail!("precompile failed: {}", String::from_utf8_lossy(&pre.stderr));
    }
    for _ in 0..3 {
        t.call("getAvailableTemplates", &json!({}))?;
    }

    let s: Vec<Sample> = (0..iterations)
        .map(|_| t.call("getAvailableTemplates", &json!({})))
        .collect::<Result<_>>()?;
    row("getAvailableTemplates", &figures(&s), base.median);

    let mut pool_ids = Vec::new();
    let mut s = Vec::new();
    for _ in 0..iterations {
        let sample = t.call("requestMachines", &json!({"template": {"templateId": "pool", "machineCount": 1}}))?;
        let v: Value = serde_json::from_str(&sample.stdout)?;
        pool_ids.push(v["requestId"].as_str().context("requestId")?.to_string());
        s.push(sample);
    }
    row("requestMachines (1 host)", &figures(&s), base.median);

    // Open requests whose hosts are powering on: the status call runs the guest.
    let mut boot_ids = Vec::new();
    for _ in 0..iterations {
        let v = t.json("requestMachines", &json!({"template": {"templateId": "boot", "machineCount": 1}}))?;
        boot_ids.push(v["requestId"].as_str().context("requestId")?.to_string());
    }
    std::thread::sleep(Duration::from_millis(300));
    let s: Vec<Sample> = boot_ids
        .iter()
        .map(|id| t.call("getRequestStatus", &json!({"requests": [{"requestId": id}]})))
        .collect::<Result<_>>()?;
    row("getRequestStatus (open request: guest runs)", &figures(&s), base.median);
    let s: Vec<Sample> = pool_ids
        .iter()
        .map(|id| t.call("getRequestStatus", &json!({"requests": [{"requestId": id}]})))
        .collect::<Result<_>>()?;
    row("getRequestStatus (finished: store only)", &figures(&s), base.median);

    let mut s = Vec::new();
    for id in &pool_ids {
        let status = t.json("getRequestStatus", &json!({"requests": [{"requestId": id}]}))?;
        let m = &status["requests"][0]["machines"][0];
        s.push(t.call(
            "requestReturnMachines",
            &json!({"machines": [{"name": m["name"], "machineId": m["machineId"]}]}),
        )?);
    }
    row("requestReturnMachines (1 host)", &figures(&s), base.median);

    let listed: Vec<Value> = (0..hosts)
        .map(|i| json!({"name": format!("pool-{i:04}"), "machineId": format!("pool-{i:04}")}))
        .collect();
    let input = json!({"machines": listed});
    let s: Vec<Sample> = (0..iterations)
        .map(|_| t.call("getReturnRequests", &input))
        .collect::<Result<_>>()?;
    row(&format!("getReturnRequests ({hosts} hosts listed)"), &figures(&s), base.median);

    // Cold: a guest file that changed since the last call (new content = new cache key).
    let onprem =
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/guests/wasm32-wasip2/release/hfwasm_guest_onprem.wasm"))
            .or_else(|_| {
                let target = std::env::var_os("CARGO_TARGET_DIR")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| Path::new(REPO).join("target"));
                std::fs::read(target.join("guests/wasm32-wasip2/release/hfwasm_guest_onprem.wasm"))
            })
            .context("built on-prem guest not found")?;
    let guest = t.conf.join("site.wasm");
    std::fs::write(
        t.conf.join("hfwasm.json"),
        serde_json::to_string(
            &json!({"provider": {"guest": "site"}, "guests": {"site": {"wasm": "site.wasm", "grants": ["log", "kv", "inventory", "power"]}}}),
        )?,
    )?;
    let cold_runs = 5.min(iterations).max(1);
    let mut s = Vec::new();
    for i in 0..cold_runs {
        // Append a custom section (id 0) so the component is valid but its hash is new.
        let mut bytes = onprem.clone();
        let name = b"bench";
        let payload = format!("{i}-{}", std::process::id());
        bytes.push(0);
        bytes.push(u8::try_from(1 + name.len() + payload.len()).context("section size")?);
        bytes.push(u8::try_from(name.len()).context("name size")?);
        bytes.extend_from_slice(name);
        bytes.extend_from_slice(payload.as_bytes());
        std::fs::write(&guest, bytes)?;
        s.push(t.call("getAvailableTemplates", &json!({}))?);
    }
    row("cold: first call after the guest changed", &figures(&s), base.median);
    println!("\ntargets (issue #3): each warm call <= 10 ms median and <= 15 MiB peak RSS");
    aws::run(Path::new(REPO), &t.bin, iterations)?;
    azure::run(Path::new(REPO), &t.bin, iterations)?;
    stores::run(&t.bin, iterations)?;
    sandbox::run(Path::new(REPO), &t.bin, iterations)?;
    serve::run(&t.bin, iterations)?;
    replay::run(iterations)
}
