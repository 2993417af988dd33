//! The guest toolkit as a site admin uses it: `hfwasm guest new` writes a project,
//! `hfwasm guest build` compiles and checks it, and the result serves the HostFactory cycle
//! through the real scripts once granted in hfwasm.json.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use serde_json::json;

fn hfwasm(args: &[&str], target: &Path) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_hfwasm"))
        .args(args)
        // Its own target dir, kept across runs: the first build compiles wit-bindgen once.
        .env("CARGO_TARGET_DIR", target)
        .output()
        .expect("run hfwasm");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn a_new_guest_builds_checks_and_serves_the_cycle() {
    let target = test_cache().join("../guest-scaffold-target");
    let dir = tempfile::tempdir().expect("tempdir");
    let project = dir.path().join("my-sim");
    let p = project.to_str().expect("path");
    let (code, out, err) = hfwasm(&["guest", "new", "my-sim", "--dir", p], &target);
    assert_eq!(code, 0, "{out}{err}");
    assert!(project.join("wit/hostfactory/provider.wit").is_file() && project.join("src/lib.rs").is_file());

    let (code, out, err) = hfwasm(&["guest", "build", p], &target);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("grants it needs: [\"log\", \"kv\"]") && out.contains("this host can run it: yes"),
        "{out}"
    );
    let wasm = out.lines().find_map(|l| l.strip_prefix("built ")).expect("built path").to_string();

    let tree = HfTree::new(&plain_inventory(1));
    tree.config(&json!({
        "provider": {"guest": "sim", "settings": {"prefix": "sim"}},
        "guests": {"sim": {"wasm": wasm, "grants": ["log", "kv"]}}
    }));
    let t = tree.ok("getAvailableTemplates", &json!({}));
    assert_eq!(t["templates"][0]["templateId"], "sim");
    let id = tree.request("sim", 2);
    let done = tree.until_final(&id);
    assert_eq!(done["status"], "complete", "{done}");
    assert_eq!(machine_names(&done, "succeed"), ["sim-0", "sim-1"]);
    let ret = tree.ok(
        "requestReturnMachines",
        &json!({"machines": [{"name": "sim-0"}, {"name": "sim-1"}]}),
    );
    let r = tree.until_final(ret["requestId"].as_str().expect("id"));
    assert_eq!(r["status"], "complete", "{r}");
    // The next request gets new names (state in kv survives the process).
    let next = tree.until_final(&tree.request("sim", 1));
    assert_eq!(machine_names(&next, "succeed"), ["sim-2"]);
}

#[test]
fn guest_new_refuses_bad_names_languages_and_non_empty_dirs() {
    let target = test_cache().join("../guest-scaffold-target");
    let dir = tempfile::tempdir().expect("tempdir");
    let p = |n: &str| dir.path().join(n).display().to_string();
    let (code, _, err) = hfwasm(&["guest", "new", "My Guest", "--dir", &p("a")], &target);
    assert_eq!(code, 1);
    assert!(err.contains("guest name `My Guest`"), "{err}");
    let (code, _, err) = hfwasm(&["guest", "new", "pol", "--dir", &p("b"), "--lang", "cobol"], &target);
    assert_eq!(code, 2, "a usage error");
    assert!(err.contains("cobol") && err.contains("python") && err.contains("js"), "{err}");
    std::fs::create_dir_all(dir.path().join("c")).expect("dir");
    std::fs::write(dir.path().join("c/keep.txt"), "mine").expect("file");
    let (code, _, err) = hfwasm(&["guest", "new", "pol", "--dir", &p("c")], &target);
    assert_eq!(code, 1);
    assert!(err.contains("not empty"), "{err}");
    assert_eq!(std::fs::read_to_string(dir.path().join("c/keep.txt")).expect("kept"), "mine");
    let (code, _, err) = hfwasm(&["guest", "build", &p("nothing-here")], &target);
    assert_eq!(code, 1);
    assert!(
        err.contains("not a guest project") && err.contains("Cargo.toml") && err.contains("app.py"),
        "{err}"
    );
}
