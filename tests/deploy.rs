//! `deploy/` checked with the tools that judge such files, against what the binary offers:
//! the systemd unit with `systemd-analyze verify`, the Kubernetes manifests with Kubernetes'
//! own schemas (`kubernetes-validate`, offline, in the test venv), their config with
//! `hfwasm config check`, and every flag and route they name with the built binary. The
//! container image is not built here: this machine has the docker client but no daemon.

mod common;

use std::process::Command;

use common::*;
use serde_json::Value;

fn deploy(rel: &str) -> String {
    std::fs::read_to_string(repo().join("deploy").join(rel)).expect("deploy file")
}

/// The flags `hfwasm serve --help` documents.
fn serve_help() -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_hfwasm"))
        .args(["serve", "--help"])
        .output()
        .expect("run");
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[test]
fn the_systemd_unit_verifies_and_runs_flags_serve_has() {
    let unit = deploy("systemd/hfwasm.service");
    let dir = tempfile::tempdir().expect("dir");
    // verify checks that ExecStart's program exists: point it at the built binary.
    let local = unit.replace("/usr/local/bin/hfwasm", env!("CARGO_BIN_EXE_hfwasm"));
    let path = dir.path().join("hfwasm.service");
    std::fs::write(&path, local).expect("unit");
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !err.contains("hfwasm.service"),
        "systemd-analyze verify: {err}"
    );
    let exec = unit.lines().find_map(|l| l.strip_prefix("ExecStart=")).expect("ExecStart");
    let help = serve_help();
    for flag in exec.split_whitespace().filter(|w| w.starts_with("--")) {
        assert!(
            help.contains(flag) || ["--confdir", "--workdir", "--logdir"].contains(&flag),
            "{flag} is not a serve flag"
        );
    }
    assert!(unit.contains("NoNewPrivileges=yes") && unit.contains("ProtectSystem=strict") && unit.contains("DynamicUser=yes"));
}

#[test]
fn the_kubernetes_manifests_pass_kubernetes_schemas_and_match_serve() {
    let validate = repo().join(".venv/bin/kubernetes-validate");
    let files: Vec<String> = ["deployment.yaml", "service.yaml", "configmap.yaml", "secret.yaml"]
        .iter()
        .map(|f| repo().join("deploy/k8s").join(f).display().to_string())
        .collect();
    let out = Command::new(&validate)
        .arg("--strict")
        .args(&files)
        .output()
        .unwrap_or_else(|e| panic!("{}: {e} (dev/setup.sh installs it)", validate.display()));
    assert!(
        out.status.success(),
        "kubernetes-validate: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let kustomization = deploy("k8s/kustomization.yaml");
    for f in ["deployment.yaml", "service.yaml", "configmap.yaml", "secret.yaml"] {
        assert!(kustomization.contains(f), "kustomization lists {f}");
    }

    // The seed's scenario 4: 3 replicas, port 8000, config through CONFIG_PATH; the probes
    // are serve's health routes (its OpenAPI document lists them) and its args serve flags.
    let d = deploy("k8s/deployment.yaml");
    assert!(d.contains("replicas: 3") && d.contains("containerPort: 8000") && d.contains("name: CONFIG_PATH"));
    let openapi: Value =
        serde_json::from_str(&std::fs::read_to_string(repo().join("host/src/commands/serve_openapi.json")).expect("openapi"))
            .expect("json");
    for path in ["/health/ready", "/health/live"] {
        assert!(d.contains(&format!("path: {path}")), "probe on {path}");
        assert!(openapi["paths"][path]["get"].is_object(), "{path} is a route of serve");
    }
    let help = serve_help();
    assert!(help.contains("--reconcile-secs") && d.contains("\"--reconcile-secs\""));
    let container = deploy("Containerfile");
    let entry = container.lines().find(|l| l.starts_with("ENTRYPOINT")).expect("ENTRYPOINT");
    for flag in ["--listen", "--token-file"] {
        assert!(entry.contains(flag) && help.contains(flag), "{flag}");
    }
    assert!(
        d.contains("mountPath: /app/secrets") && entry.contains("/app/secrets/token"),
        "the token file is the mounted secret"
    );
    assert!(deploy("k8s/service.yaml").contains("port: 8000"));
}

#[test]
fn the_configmaps_config_is_one_hfwasm_reads() {
    // The ConfigMap's files in a conf dir, as the pod mounts them, with what is not here
    // replaced: the cluster's PostgreSQL by a local server, EC2 by moto. `config check`
    // accepts them and offers the template.
    let cm = deploy("k8s/configmap.yaml");
    let tree = HfTree::new("");
    std::fs::remove_file(tree.conf.join("inventory.txt")).expect("no pool");
    let mut files: Vec<(String, String)> = Vec::new();
    let mut current: Option<(String, String)> = None;
    for line in cm.lines() {
        if let Some(name) = line.strip_prefix("  ").and_then(|l| l.strip_suffix(": |")) {
            files.extend(current.take());
            current = Some((name.to_string(), String::new()));
        } else if let Some((_, body)) = current.as_mut() {
            if let Some(l) = line.strip_prefix("    ") {
                body.push_str(l);
                body.push('\n');
            } else if !line.trim().is_empty() && !line.starts_with("    ") {
                files.extend(current.take());
            }
        }
    }
    files.extend(current.take());
    assert_eq!(files.len(), 3, "config.json and IBM's two files: {files:?}");
    let moto = common::moto::Moto::start();
    let pg = common::pg::Postgres::start();
    pg.create_database("hostfactory");
    let local = pg.storage_config("hostfactory");
    for (name, body) in &files {
        let mut v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{name}: {e}"));
        if name == "config.json" {
            v["storage"] = local.clone();
        }
        if name == "awsprov_config.json" {
            v["AWS_ENDPOINT_URL"] = Value::from(moto.endpoint.clone());
        }
        std::fs::write(tree.conf.join(name), v.to_string()).expect("write");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_hfwasm"))
        .args(["config", "check", "--json"])
        .env("HF_PROVIDER_NAME", "hfwasm")
        .env("HF_PROVIDER_CONFDIR", &tree.conf)
        .env("HF_PROVIDER_WORKDIR", &tree.work)
        .env("CONFIG_PATH", tree.conf.join("config.json"))
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("HFWASM_CACHE_DIR", test_cache())
        .output()
        .expect("config check");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    assert!(
        report["ok"] == true && report["templates"].to_string().contains("OnDemand-Template-VM"),
        "{report:#}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
