//! `hfwasm init` on a HostFactory tree whose registration files are IBM's as others keep
//! them (`tests/data/hostfactory/conf`), for an AWS instance against moto: the plugin laid
//! out, hfwasm's entries added beside the others (which stay as they were, in order and
//! indentation), each changed file backed up, starter IBM files written from what the
//! account has; then HostFactory's way of calling it (the installed scripts, the dirs as
//! hostProviders.json gives them) serves a request; a second run changes nothing; a name
//! another plugin owns is refused; a dry run writes nothing.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::moto::Moto;
use common::*;
use serde_json::{Value, json};

/// A HostFactory tree: HF_TOP with the 1.2 version dir (IBM's aws plugin present) and the
/// conf dir copied from the test data.
fn hf_tree() -> tempfile::TempDir {
    let top = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(top.path().join("1.2/providerplugins/aws/scripts")).expect("version dir");
    let from = repo().join("tests/data/hostfactory/conf");
    for sub in [
        "providerplugins/hostProviderPlugins.json",
        "providers/hostProviders.json",
        "requestors/hostRequestors.json",
    ] {
        let to = top.path().join("conf").join(sub);
        std::fs::create_dir_all(to.parent().expect("parent")).expect("conf dirs");
        std::fs::copy(from.join(sub), &to).expect("copy registration file");
    }
    top
}

fn init(top: &Path, moto: &Moto, extra: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_hfwasm"))
        .args(["init", "--hf-top"])
        .arg(top)
        .args(["--region", "us-east-1", "--endpoint-url", &moto.endpoint, "--yes"])
        .args(extra)
        .envs(common::moto::ENV)
        .env_remove("HF_TOP")
        .env_remove("HF_VERSION")
        .env_remove("HF_CONFDIR")
        .output()
        .expect("run hfwasm init");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

fn read_json(p: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))).expect("json")
}

fn backups(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = walk(dir)
        .into_iter()
        .filter(|p| p.to_string_lossy().contains(".hfwasm-backup-"))
        .collect();
    out.sort();
    out
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// `${HF_CONFDIR}` and the like in a hostProviders.json path, as HostFactory expands them.
fn expand(path: &str, top: &Path) -> PathBuf {
    PathBuf::from(
        path.replace("${HF_CONFDIR}", &top.join("conf").display().to_string())
            .replace("${HF_WORKDIR}", &top.join("work").display().to_string())
            .replace("${HF_LOGDIR}", &top.join("log").display().to_string()),
    )
}

/// Runs an installed script as HostFactory does for instance `entry` of hostProviders.json.
fn call(top: &Path, entry: &Value, call: &str, input: &Value, n: usize) -> Value {
    let scripts = top.join("1.2/providerplugins/hfwasm/scripts");
    let file = top.join(format!("hf_in_{n}"));
    std::fs::write(&file, tabbed(input)).expect("input");
    let out = Command::new(scripts.join(format!("{call}.sh")))
        .arg("-f")
        .arg(&file)
        .env("HF_PROVIDER_NAME", entry["name"].as_str().expect("name"))
        .env("HF_PROVIDER_CONFDIR", expand(entry["confPath"].as_str().expect("confPath"), top))
        .env("HF_PROVIDER_WORKDIR", expand(entry["workPath"].as_str().expect("workPath"), top))
        .env("HF_PROVIDER_LOGDIR", expand(entry["logPath"].as_str().expect("logPath"), top))
        .env("HFWASM_CACHE_DIR", test_cache())
        .env_remove("HFWASM_BIN")
        .envs(common::moto::ENV)
        .output()
        .expect("run installed script");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{call}: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{call}: not JSON ({e}): {stdout}"))
}

#[test]
fn init_installs_registers_and_serves_beside_ibms_entries() {
    let moto = Moto::start();
    let top = hf_tree();
    let conf = top.path().join("conf");
    let original: Vec<(PathBuf, String)> = walk(&conf)
        .into_iter()
        .map(|p| {
            let t = std::fs::read_to_string(&p).expect("read");
            (p, t)
        })
        .collect();
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0"))
        .unwrap_or(false);
    let owner: &[&str] = if is_root {
        &["--provider", "aws", "--owner", "nobody"]
    } else {
        &["--provider", "aws"]
    };

    let (code, out, err) = init(top.path(), &moto, owner);
    assert_eq!(code, 0, "{out}\n{err}");

    // The plugin, as HostFactory finds it through scriptPath.
    let plugin = top.path().join("1.2/providerplugins/hfwasm");
    for s in [
        "getAvailableTemplates.sh",
        "requestMachines.sh",
        "requestReturnMachines.sh",
        "getRequestStatus.sh",
        "getReturnRequests.sh",
        "hfwasm-invoke.sh",
    ] {
        let text = std::fs::read_to_string(plugin.join("scripts").join(s)).expect("script");
        assert_eq!(
            text,
            std::fs::read_to_string(repo().join("scripts").join(s)).expect("repo script"),
            "{s}"
        );
    }
    let installed = std::fs::read(plugin.join("bin/hfwasm")).expect("binary");
    assert_eq!(installed, std::fs::read(env!("CARGO_BIN_EXE_hfwasm")).expect("this binary"));

    // Registration: hfwasm's entries added last, every other entry as it was.
    let plugins = read_json(&conf.join("providerplugins/hostProviderPlugins.json"));
    let before = read_json(&repo().join("tests/data/hostfactory/conf/providerplugins/hostProviderPlugins.json"));
    let list = plugins["providerplugins"].as_array().expect("list");
    assert_eq!(list[..list.len() - 1], before["providerplugins"].as_array().expect("list")[..]);
    assert_eq!(
        list.last(),
        Some(&json!({"name": "hfwasm", "enabled": 1, "scriptPath": "${HF_TOP}/${HF_VERSION}/providerplugins/hfwasm/scripts/"}))
    );
    let providers_text = std::fs::read_to_string(conf.join("providers/hostProviders.json")).expect("providers");
    assert!(providers_text.contains("\n\t"), "cJSON's tab indentation kept");
    let providers = read_json(&conf.join("providers/hostProviders.json"));
    let before = read_json(&repo().join("tests/data/hostfactory/conf/providers/hostProviders.json"));
    let list = providers["providers"].as_array().expect("list");
    assert_eq!(list[..list.len() - 1], before["providers"].as_array().expect("list")[..]);
    let entry = list.last().expect("ours").clone();
    assert_eq!(entry["name"], "hfwasminst");
    assert_eq!(entry["plugin"], "hfwasm");
    assert_eq!(entry["confPath"], "${HF_CONFDIR}/providers/hfwasminst/");
    let requestors = read_json(&conf.join("requestors/hostRequestors.json"));
    assert_eq!(
        requestors["requestors"][0]["providers"],
        json!(["awsinst", "hfwasminst"]),
        "symAinst gets it"
    );
    assert_eq!(requestors["requestors"][1]["providers"], json!(["gcpgkeinst"]));
    assert_eq!(requestors["requestors"][2]["providers"], json!(["awsinst"]));
    // Each changed file was backed up as it was.
    let saved = backups(&conf);
    assert_eq!(saved.len(), 3, "{saved:?}");
    for (p, text) in &original {
        let backup = saved
            .iter()
            .find(|b| b.to_string_lossy().starts_with(&format!("{}.hfwasm-backup-", p.display())))
            .unwrap_or_else(|| panic!("no backup of {}", p.display()));
        assert_eq!(&std::fs::read_to_string(backup).expect("backup"), text);
    }

    // The instance's files: IBM's config and templates from the account's default VPC.
    let inst = conf.join("providers/hfwasminst");
    let cfg = read_json(&inst.join("hfwasminstprov_config.json"));
    assert_eq!(cfg["AWS_REGION"], "us-east-1");
    let templates = read_json(&inst.join("hfwasminstprov_templates.json"));
    let list = templates["templates"].as_array().expect("templates");
    let subnets: Vec<(String, String)> = moto.rt.block_on(async {
        let vpcs = moto.ec2.describe_vpcs().send().await.expect("vpcs");
        let default = vpcs
            .vpcs()
            .iter()
            .find(|v| v.is_default() == Some(true))
            .and_then(|v| v.vpc_id())
            .expect("default vpc")
            .to_string();
        let s = moto
            .ec2
            .describe_subnets()
            .filters(aws_sdk_ec2::types::Filter::builder().name("vpc-id").values(default).build())
            .send()
            .await
            .expect("subnets");
        s.subnets()
            .iter()
            .map(|s| {
                (
                    s.subnet_id().unwrap_or_default().to_string(),
                    s.availability_zone().unwrap_or_default().to_string(),
                )
            })
            .collect()
    });
    assert_eq!(list.len(), subnets.len(), "one template per zone of the default VPC: {templates:#}");
    for t in list {
        assert!(subnets.iter().any(|(id, _)| t["subnetId"] == id.as_str()), "{t}");
        assert!(t["imageId"].as_str().is_some_and(|i| i.starts_with("ami-")), "{t}");
        assert_eq!(t["vmType"], "t3.medium");
    }

    if is_root {
        use std::os::unix::fs::MetadataExt;
        for p in [
            plugin.join("bin/hfwasm"),
            conf.join("providers/hostProviders.json"),
            inst.join("hfwasminstprov_templates.json"),
            top.path().join("work/providers/hfwasminst"),
        ] {
            assert_eq!(
                std::fs::metadata(&p).expect("meta").uid(),
                65534,
                "{} is the HostFactory user's",
                p.display()
            );
        }
    }

    // HostFactory's way: the installed scripts with the dirs of its hostProviders.json entry.
    let offer = call(top.path(), &entry, "getAvailableTemplates", &json!({}), 1);
    let first = list[0]["templateId"].as_str().expect("id").to_string();
    assert_eq!(offer["templates"].as_array().map(Vec::len), Some(list.len()), "{offer}");
    let req = call(
        top.path(),
        &entry,
        "requestMachines",
        &json!({"template": {"templateId": first, "machineCount": 1}}),
        2,
    );
    let id = req["requestId"].as_str().expect("request id").to_string();
    let mut status = Value::Null;
    for n in 3..60 {
        status = call(top.path(), &entry, "getRequestStatus", &json!({"requests": [{"requestId": id}]}), n);
        if status["requests"][0]["status"] != "running" {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert_eq!(status["requests"][0]["status"], "complete", "{status}");
    assert_eq!(moto.instances_of(&id).len(), 1);

    // A second run: nothing to do, no new backup.
    let (code, out, err) = init(top.path(), &moto, owner);
    assert_eq!(code, 0, "{out}\n{err}");
    for line in out.lines().filter(|l| !l.contains("next") && !l.contains("owned by")) {
        assert!(
            line.starts_with("unchanged") || line.starts_with("kept"),
            "second run changed something: {line}\n{out}"
        );
    }
    assert_eq!(backups(&conf).len(), 3);

    // Another plugin's instance name is refused, and nothing changes.
    let snapshot = std::fs::read_to_string(conf.join("providers/hostProviders.json")).expect("read");
    let (code, _, err) = init(top.path(), &moto, &["--provider", "aws", "--instance", "awsinst"]);
    assert_eq!(code, 1);
    assert!(err.contains("belongs to plugin `aws`"), "{err}");
    assert_eq!(
        std::fs::read_to_string(conf.join("providers/hostProviders.json")).expect("read"),
        snapshot
    );
}

#[test]
fn a_dry_run_changes_nothing_and_an_unknown_tree_is_named() {
    let moto = Moto::start();
    let top = hf_tree();
    let before: Vec<(PathBuf, Vec<u8>)> = walk(top.path())
        .into_iter()
        .map(|p| (p.clone(), std::fs::read(&p).expect("read")))
        .collect();
    let (code, out, err) = init(top.path(), &moto, &["--dry-run", "--provider", "onprem"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("dry run"), "{out}");
    assert!(out.contains("hostProviders.json"), "the plan names the files: {out}");
    let after: Vec<(PathBuf, Vec<u8>)> = walk(top.path())
        .into_iter()
        .map(|p| (p.clone(), std::fs::read(&p).expect("read")))
        .collect();
    assert_eq!(before, after, "a dry run writes nothing");

    let nowhere = tempfile::tempdir().expect("tempdir");
    let (code, _, err) = init(nowhere.path(), &moto, &[]);
    assert_eq!(code, 1);
    assert!(err.contains("--hf-version"), "{err}");
}

/// At a terminal and without --yes, init asks for what the flags leave open (here the
/// instance name, the provider and the requestor, each with its default shown) and does
/// what the answers say. The terminal is util-linux's `script`, answering on its input.
#[test]
fn at_a_terminal_init_asks_and_takes_the_answers() {
    let top = hf_tree();
    let cmd = format!("{} init --hf-top {}", env!("CARGO_BIN_EXE_hfwasm"), top.path().display());
    let mut child = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .env_remove("HF_TOP")
        .env_remove("HF_VERSION")
        .env_remove("HF_CONFDIR")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run init under script(1)");
    {
        use std::io::Write;
        let mut input = child.stdin.take().expect("stdin");
        // Instance name, provider, requestor (an empty line takes the default: symAinst).
        input.write_all(b"labpool\nonprem\n\n").expect("answers");
    }
    let out = child.wait_with_output().expect("init ends");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    // The answers were typed ahead, so the terminal's echo of them may come before, between
    // or after the prompts; each prompt is one piece.
    for prompt in [
        "Provider instance name [hfwasminst]: ",
        "Provider (onprem or aws) [onprem]: ",
        "Requestor to use this instance [symAinst]: ",
    ] {
        assert!(text.contains(prompt), "`{prompt}` with its default: {text}");
    }
    let conf = top.path().join("conf");
    let providers = read_json(&conf.join("providers/hostProviders.json"));
    let list = providers["providers"].as_array().expect("list");
    assert_eq!(list.last().map(|e| e["name"].clone()), Some(json!("labpool")), "{providers:#}");
    assert!(
        conf.join("providers/labpool/inventory.txt").is_file(),
        "the on-prem starter inventory"
    );
    let requestors = read_json(&conf.join("requestors/hostRequestors.json"));
    assert_eq!(requestors["requestors"][0]["providers"], json!(["awsinst", "labpool"]));
}
