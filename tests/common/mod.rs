//! Test harness: a HostFactory tree in a temp dir, and the real scripts run the way
//! HostFactory runs them (a tab-indented input file, `-f`, one JSON document on stdout).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

pub mod arm;
pub mod moto;
pub mod pg;

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The HostFactory conformance corpus the repo owns (`tests/conformance/`): captured inputs,
/// IBM's outputs and the JSON Schemas of valid answers.
pub fn conformance() -> PathBuf {
    let dir = repo().join("tests/conformance");
    assert!(dir.join("schemas").is_dir(), "conformance corpus missing at {}", dir.display());
    dir
}

/// A built test guest (`guests/testing/*`, built by host/build.rs).
pub fn guest_wasm(file: &str) -> PathBuf {
    let p = Path::new(env!("HFWASM_GUEST_DIR")).join(file);
    assert!(p.is_file(), "test guest {} was not built", p.display());
    p
}

/// A precompiled-guest cache shared by all tests of a run (next to the built guests, so it
/// follows `CARGO_TARGET_DIR`); concurrent writers are safe (atomic rename).
pub fn test_cache() -> PathBuf {
    Path::new(env!("HFWASM_GUEST_DIR")).join("../../../test-cache")
}

/// Pretty-prints with tabs, as HostFactory's cJSON does.
pub fn tabbed(v: &Value) -> String {
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut out, serde_json::ser::PrettyFormatter::with_indent(b"\t"));
    serde::Serialize::serialize(v, &mut ser).expect("serialise");
    String::from_utf8(out).expect("utf8")
}

/// What one script run produced.
#[derive(Debug)]
pub struct Outcome {
    /// Exit code.
    pub code: i32,
    /// The one JSON document on stdout.
    pub json: Value,
    /// stderr, for failure messages.
    pub stderr: String,
}

/// A HostFactory tree: conf dir (inventory, config), work dir, log dir.
pub struct HfTree {
    pub dir: tempfile::TempDir,
    pub conf: PathBuf,
    pub work: PathBuf,
    pub logs: PathBuf,
    step: std::sync::atomic::AtomicU32,
    /// Extra environment for every script run (credentials for the emulator, fault points).
    pub env: std::sync::Mutex<Vec<(String, String)>>,
}

impl HfTree {
    /// A tree whose inventory is `inventory` (no hfwasm.json: embedded defaults).
    pub fn new(inventory: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let conf = dir.path().join("conf/providers/pool");
        let work = dir.path().join("work/providers/pool");
        let logs = dir.path().join("log");
        std::fs::create_dir_all(&conf).expect("conf");
        std::fs::write(conf.join("inventory.txt"), inventory).expect("inventory");
        Self {
            dir,
            conf,
            work,
            logs,
            step: 0.into(),
            env: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// Sets an environment variable for later script runs.
    pub fn set_env(&self, key: &str, value: &str) {
        let mut env = self.env.lock().expect("env");
        env.retain(|(k, _)| k != key);
        env.push((key.to_string(), value.to_string()));
    }

    /// Removes an environment variable set with [`HfTree::set_env`].
    pub fn unset_env(&self, key: &str) {
        self.env.lock().expect("env").retain(|(k, _)| k != key);
    }

    /// Writes `hfwasm.json`.
    pub fn config(&self, json: &Value) {
        std::fs::write(self.conf.join("hfwasm.json"), serde_json::to_string_pretty(json).expect("json")).expect("write config");
    }

    /// Removes `hfwasm.json` (back to the embedded defaults).
    pub fn default_config(&self) {
        let _ = std::fs::remove_file(self.conf.join("hfwasm.json"));
    }

    /// Runs `scripts/<call>.sh -f <file holding text>`.
    pub fn run_text(&self, call: &str, text: &str) -> Outcome {
        let n = self.step.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let file = self.dir.path().join(format!("hf_in_{n:04}_{call}"));
        std::fs::write(&file, text).expect("input");
        self.run_file(call, &file)
    }

    /// `scripts/<call>.sh -f <file>` with HostFactory's environment for this tree.
    fn script(&self, call: &str, file: &Path) -> Command {
        let mut c = Command::new(repo().join("scripts").join(format!("{call}.sh")));
        c.arg("-f")
            .arg(file)
            .env("HFWASM_BIN", env!("CARGO_BIN_EXE_hfwasm"))
            .env("HF_PROVIDER_NAME", "pool")
            .env("HF_PROVIDER_CONFDIR", &self.conf)
            .env("HF_PROVIDER_WORKDIR", &self.work)
            .env("HF_PROVIDER_LOGDIR", &self.logs)
            .env("HFWASM_CACHE_DIR", test_cache())
            .env_remove("HFWASM_FAULT")
            .envs(self.env.lock().expect("env").clone());
        c
    }

    /// Runs `scripts/<call>.sh -f <file>` on an existing (or missing) file.
    pub fn run_file(&self, call: &str, file: &Path) -> Outcome {
        let out = self.script(call, file).output().expect("run script");
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        let json: Value = if stdout.trim().is_empty() && out.status.code().is_none() {
            // A process killed mid-call (fault injection) prints nothing.
            Value::Null
        } else {
            serde_json::from_str(&stdout)
                .unwrap_or_else(|e| panic!("{call}: stdout is not exactly one JSON document ({e}):\n{stdout}\nstderr:\n{stderr}"))
        };
        Outcome {
            code: out.status.code().unwrap_or(-1),
            json,
            stderr,
        }
    }

    /// Runs `call` with `input` and kills it (SIGKILL, as a power cut or `kill -9` would)
    /// if it has not finished after `after`. None when it was killed before it answered.
    pub fn run_killed(&self, call: &str, input: &Value, after: std::time::Duration) -> Option<Outcome> {
        let n = self.step.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let file = self.dir.path().join(format!("hf_in_{n:04}_{call}"));
        std::fs::write(&file, tabbed(input)).expect("input");
        let mut child = self
            .script(call, &file)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run script");
        let t0 = std::time::Instant::now();
        while t0.elapsed() < after {
            if child.try_wait().expect("wait").is_some() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_micros(200));
        }
        // The script execs hfwasm, so this is the hfwasm process itself.
        let _ = child.kill();
        let out = child.wait_with_output().expect("output");
        // Killed by the signal: no exit code, nothing answered.
        let code = out.status.code()?;
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        let json = serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("{call}: stdout is not exactly one JSON document ({e}):\n{stdout}\nstderr:\n{stderr}"));
        Some(Outcome { code, json, stderr })
    }

    /// Runs `call` with `input` written tab-indented.
    pub fn run(&self, call: &str, input: &Value) -> Outcome {
        self.run_text(call, &tabbed(input))
    }

    /// Runs `call`, expects exit 0 and a schema-valid answer.
    pub fn ok(&self, call: &str, input: &Value) -> Value {
        let o = self.run(call, input);
        assert_eq!(o.code, 0, "{call} failed: {}\nstderr: {}", o.json, o.stderr);
        assert_valid(call, &o.json);
        o.json
    }

    /// Runs `call`, expects exit 1 and a schema-valid error envelope with `code`.
    pub fn err(&self, call: &str, input: &Value, code: &str) -> Value {
        let o = self.run(call, input);
        expect_error(call, &o, code)
    }

    /// Polls getRequestStatus until `id` is final (bounded), returning that request.
    pub fn until_final(&self, id: &str) -> Value {
        let t0 = std::time::Instant::now();
        loop {
            let r = self.ok("getRequestStatus", &serde_json::json!({"requests": [{"requestId": id}]}));
            let req = r["requests"][0].clone();
            if req["status"] != "running" {
                return req;
            }
            assert!(t0.elapsed().as_secs() < 30, "request {id} still running after 30 s: {req}");
            std::thread::sleep(std::time::Duration::from_millis(150));
        }
    }

    /// A request for `count` hosts of `template`; returns the request id.
    pub fn request(&self, template: &str, count: u32) -> String {
        let r = self.ok(
            "requestMachines",
            &serde_json::json!({"template": {"templateId": template, "machineCount": count}}),
        );
        r["requestId"].as_str().expect("requestId").to_string()
    }
}

/// xorshift64*: enough randomness to place kills and mutate inputs, and replayable from
/// its seed (`seeded` reads it from `var`, else takes the clock's nanoseconds).
pub struct Rng(pub u64);

impl Rng {
    /// Seeded from environment variable `var` when set; returns the seed too.
    pub fn seeded(var: &str) -> (Self, u64) {
        let seed = std::env::var(var).ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
                | 1
        });
        (Self(seed), seed)
    }

    /// The next number.
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Checks an error outcome: exit 1, schema-valid envelope, the expected code.
pub fn expect_error(call: &str, o: &Outcome, code: &str) -> Value {
    assert_eq!(o.code, 1, "{call} should fail with exit 1: {}", o.json);
    assert_valid("error", &o.json);
    assert_eq!(o.json["error"]["code"], code, "{call}: {}", o.json);
    o.json.clone()
}

/// Validates `doc` against `tests/conformance/schemas/<name>.schema.json`.
pub fn assert_valid(name: &str, doc: &Value) {
    let path = conformance().join("schemas").join(format!("{name}.schema.json"));
    let schema: Value = serde_json::from_str(&std::fs::read_to_string(&path).expect("schema")).expect("schema json");
    let validator = jsonschema::validator_for(&schema).expect("compile schema");
    let errors: Vec<String> = validator
        .iter_errors(doc)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "{name} answer breaks {}:\n{}\n{doc:#}",
        path.display(),
        errors.join("\n")
    );
}

/// The template named `id` in a getAvailableTemplates answer.
pub fn template(answer: &Value, id: &str) -> Value {
    answer["templates"]
        .as_array()
        .expect("templates")
        .iter()
        .find(|t| t["templateId"] == id)
        .cloned()
        .unwrap_or_else(|| panic!("no template {id}: {answer}"))
}

/// `field` of each object of array `list` that has it as a string (template ids, settings).
pub fn strings<'a>(list: &'a Value, field: &str) -> Vec<&'a str> {
    list.as_array().into_iter().flatten().filter_map(|x| x[field].as_str()).collect()
}

/// (name, machine id) of each machine of a status entry.
pub fn names_and_ids(req: &Value) -> Vec<(String, String)> {
    req["machines"]
        .as_array()
        .expect("machines")
        .iter()
        .map(|m| {
            (
                m["name"].as_str().expect("name").to_string(),
                m["machineId"].as_str().expect("id").to_string(),
            )
        })
        .collect()
}

/// Names of the machines of a status entry with the given result.
pub fn machine_names(req: &Value, result: &str) -> Vec<String> {
    req["machines"]
        .as_array()
        .expect("machines")
        .iter()
        .filter(|m| m["result"] == result)
        .map(|m| m["name"].as_str().expect("name").to_string())
        .collect()
}

/// An inventory of `n` plain hosts `node-NN` at 10.1.0.NN, 4 cpus / 8 GiB.
pub fn plain_inventory(n: usize) -> String {
    (1..=n).map(|i| format!("node-{i:02} 10.1.0.{i} ncpus=4 nram=8192\n")).collect()
}

/// The template id the on-prem guest derives for [`plain_inventory`] hosts.
pub const PLAIN_TEMPLATE: &str = "pool-4cpu-8192mb";

/// Runs `hfwasm <args>` for the tree's provider instance (admin commands such as
/// `store check`); returns (exit code, stdout, stderr).
pub fn admin(tree: &HfTree, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_hfwasm"))
        .args(args)
        .env("HF_PROVIDER_NAME", "pool")
        .env("HF_PROVIDER_CONFDIR", &tree.conf)
        .env("HF_PROVIDER_WORKDIR", &tree.work)
        .env("HFWASM_CACHE_DIR", test_cache())
        .envs(tree.env.lock().expect("env").clone())
        .output()
        .expect("run hfwasm");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// `hfwasm store check --json` for the tree; asserts it ran and found no problem.
pub fn store_check(tree: &HfTree) -> Value {
    let (code, out, err) = admin(tree, &["store", "check", "--json"]);
    let report: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("store check: not JSON ({e}): {out}\n{err}"));
    assert_eq!(code, 0, "store check found problems: {report:#}\n{err}");
    report
}
