//! Builds the guest workspace (`guests/`, target wasm32-wasip2) so the host can embed its
//! built-in guests and tests can find the adversarial ones. Cargo's own freshness checks
//! make this a no-op when nothing under `guests/` or `wit/` changed.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".into()));
    let root = manifest.join("..");
    let guests = root.join("guests");
    let target_root = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let target_dir = target_root.join("guests");
    // Every guest crate and the WIT (a new guest directory is picked up without editing a
    // list); guests/target, if someone built there by hand, is not a source.
    println!("cargo:rerun-if-changed={}", root.join("wit").display());
    println!("cargo:rerun-if-changed={}", guests.display());
    if let Ok(entries) = std::fs::read_dir(&guests) {
        for e in entries.flatten() {
            if e.file_name() != "target" {
                println!("cargo:rerun-if-changed={}", e.path().display());
            }
        }
    }
    println!("cargo:rerun-if-env-changed=CARGO_TARGET_DIR");

    // Start-up is the product (one process per HostFactory call): a non-PIE executable
    // needs no load-time relocation of its ~700 KB of relocatable data, which is most of
    // the binary's start-up cost. Linker-only, so no dependency is rebuilt.
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        println!("cargo:rustc-link-arg-bins=-no-pie");
    }
    // The functions HostFactory calls run, placed together (dev/link-order.sh writes the
    // list): a call then maps a few MiB of code, not pages scattered over the whole binary.
    // lld only (rustc's default linker on x86_64 Linux); HFWASM_LINK_ORDER=off skips it.
    let order = manifest.join("link-order.txt");
    println!("cargo:rerun-if-changed={}", order.display());
    println!("cargo:rerun-if-env-changed=HFWASM_LINK_ORDER");
    if std::env::var("TARGET").as_deref() == Ok("x86_64-unknown-linux-gnu")
        && std::env::var("HFWASM_LINK_ORDER").as_deref() != Ok("off")
        && order.is_file()
    {
        println!("cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={}", order.display());
        println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
    }

    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.arg("build")
        .arg("--release")
        .arg("--target")
        .arg("wasm32-wasip2")
        .arg("--manifest-path")
        .arg(guests.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir);
    // Flags meant for the host build must not leak into the wasm build.
    for var in [
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_PRIMARY_PACKAGE",
    ] {
        cmd.env_remove(var);
    }
    for (k, _) in std::env::vars() {
        if k.starts_with("CARGO_PROFILE_") || k.starts_with("CARGO_CFG_") || k.starts_with("CARGO_FEATURE_") {
            cmd.env_remove(k);
        }
    }
    let out = match cmd.output() {
        Ok(o) => o,
        Err(e) => {
            println!("cargo::error=could not run cargo to build the wasm guests: {e}");
            std::process::exit(1);
        }
    };
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        println!(
            "cargo::error=building the wasm guests in {} failed (is the target installed? `rustup target add wasm32-wasip2`)",
            guests.display()
        );
        for line in stderr
            .lines()
            .filter(|l| !l.trim().is_empty())
            .rev()
            .take(40)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
        {
            println!("cargo::error={line}");
        }
        std::process::exit(1);
    }
    let built = target_dir.join("wasm32-wasip2").join("release");
    println!("cargo:rustc-env=HFWASM_GUEST_DIR={}", built.display());
    write_digests(&built);
    write_wit_list(&root);
}

/// `$OUT_DIR/scaffold_wit.rs`: every `.wit` file a Rust guest builds against (the provider
/// package and the capabilities), embedded for `hfwasm guest new`, so a new capability's
/// WIT reaches the scaffold without editing a list.
fn write_wit_list(root: &std::path::Path) {
    let mut files = Vec::new();
    for dir in ["capabilities", "hostfactory"] {
        let Ok(entries) = std::fs::read_dir(root.join("wit").join(dir)) else {
            println!("cargo::error=cannot read wit/{dir}");
            std::process::exit(1);
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.ends_with(".wit") {
                files.push((format!("wit/{dir}/{name}"), e.path()));
            }
        }
    }
    files.sort();
    let mut out =
        String::from("/// Every `.wit` file of a Rust guest project, by its path in the project.\nconst WIT: &[(&str, &str)] = &[\n");
    for (rel, path) in files {
        let abs = path.canonicalize().unwrap_or(path);
        out.push_str(&format!("    ({rel:?}, include_str!({:?})),\n", abs.display().to_string()));
    }
    out.push_str("];\n");
    let dir = PathBuf::from(std::env::var("OUT_DIR").unwrap_or_else(|_| ".".into()));
    if let Err(e) = std::fs::write(dir.join("scaffold_wit.rs"), out) {
        println!("cargo::error=cannot write scaffold_wit.rs in {}: {e}", dir.display());
        std::process::exit(1);
    }
}

/// `$OUT_DIR/builtin_digests.rs`: the sha256 of each built-in guest, so loading one from the
/// precompiled cache does not hash its few hundred KB on every HostFactory call.
fn write_digests(built: &std::path::Path) {
    use sha2::{Digest, Sha256};
    let mut out = String::new();
    for (constant, file) in [
        ("ONPREM_SHA256", "hfwasm_guest_onprem.wasm"),
        ("AWS_SHA256", "hfwasm_guest_aws.wasm"),
        ("AZURE_SHA256", "hfwasm_guest_azure.wasm"),
        ("DEFAULT_POLICY_SHA256", "hfwasm_guest_default_policy.wasm"),
    ] {
        let bytes = match std::fs::read(built.join(file)) {
            Ok(b) => b,
            Err(e) => {
                println!("cargo::error=cannot read the built guest {}: {e}", built.join(file).display());
                std::process::exit(1);
            }
        };
        out.push_str(&format!("const {constant}: [u8; 32] = {:?};\n", Sha256::digest(&bytes).as_slice()));
    }
    let dir = PathBuf::from(std::env::var("OUT_DIR").unwrap_or_else(|_| ".".into()));
    if let Err(e) = std::fs::write(dir.join("builtin_digests.rs"), out) {
        println!("cargo::error=cannot write builtin_digests.rs in {}: {e}", dir.display());
        std::process::exit(1);
    }
}
