//! `hfwasm guest new` / `hfwasm guest build`: a working Rust guest to start from (a Cargo
//! project with this host's WIT and a "null cloud" provider), and building it into a
//! component checked against this host.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::capabilities;

const LIB: &str = include_str!("guest_lib.rs.txt");
const CARGO: &str = include_str!("guest_cargo.toml.txt");
/// The guest workspace's lock file: pins wit-bindgen to the version this host's guests use,
/// so a new guest builds offline from the same crates.
const LOCK: &str = include_str!("../../../guests/Cargo.lock");
const WIT: [(&str, &str); 8] = [
    ("wit/capabilities/ec2.wit", include_str!("../../../wit/capabilities/ec2.wit")),
    (
        "wit/capabilities/inventory.wit",
        include_str!("../../../wit/capabilities/inventory.wit"),
    ),
    ("wit/capabilities/kv.wit", include_str!("../../../wit/capabilities/kv.wit")),
    ("wit/capabilities/log.wit", include_str!("../../../wit/capabilities/log.wit")),
    ("wit/capabilities/power.wit", include_str!("../../../wit/capabilities/power.wit")),
    (
        "wit/hostfactory/provider.wit",
        include_str!("../../../wit/hostfactory/provider.wit"),
    ),
    ("wit/hostfactory/types.wit", include_str!("../../../wit/hostfactory/types.wit")),
    ("wit/hostfactory/worlds.wit", include_str!("../../../wit/hostfactory/worlds.wit")),
];

/// Languages `guest new` can scaffold.
pub const LANGUAGES: [&str; 1] = ["rust"];

/// Writes a new Rust guest named `name` into `dir` (which must not exist or be empty);
/// returns the files written.
pub fn new_guest(dir: &Path, name: &str, lang: &str) -> Result<Vec<PathBuf>, String> {
    if !LANGUAGES.contains(&lang) {
        return Err(format!(
            "--lang {lang}: only {} guests can be scaffolded so far (Python and JavaScript guests are planned; see docs/guests.md)",
            LANGUAGES.join(", ")
        ));
    }
    let valid = name.chars().next().is_some_and(|c| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if !valid {
        return Err(format!(
            "guest name `{name}`: use lowercase letters, digits, `-` and `_`, starting with a letter"
        ));
    }
    if dir.read_dir().is_ok_and(|mut d| d.next().is_some()) {
        return Err(format!("{} exists and is not empty; choose a new directory", dir.display()));
    }
    let fill = |t: &str| {
        t.replace("{{name}}", name)
            .replace("{{crate}}", &name.replace('-', "_"))
            .replace("{{version}}", capabilities::VERSION)
    };
    let mut files: Vec<(String, String)> = vec![
        ("Cargo.toml".into(), fill(CARGO)),
        ("Cargo.lock".into(), LOCK.to_string()),
        ("src/lib.rs".into(), fill(LIB)),
        (".gitignore".into(), "/target\n".into()),
    ];
    files.extend(WIT.iter().map(|(p, t)| (p.to_string(), t.to_string())));
    let mut written = Vec::new();
    for (rel, text) in files {
        let path = dir.join(&rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
        }
        std::fs::write(&path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

/// The `[package] name` of the Cargo project in `dir`.
fn package_name(dir: &Path) -> Result<String, String> {
    let manifest = dir.join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest).map_err(|e| format!("cannot read {}: {e}", manifest.display()))?;
    let mut in_package = false;
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            in_package = line == "[package]";
        } else if in_package && let Some(v) = line.strip_prefix("name").and_then(|v| v.trim_start().strip_prefix('=')) {
            return Ok(v.trim().trim_matches('"').to_string());
        }
    }
    Err(format!("{} has no [package] name", manifest.display()))
}

/// Builds the guest project in `dir` for wasm32-wasip2 (cargo's output goes to stderr);
/// returns the component's path.
pub fn build_guest(dir: &Path) -> Result<PathBuf, String> {
    let name = package_name(dir)?;
    let status = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args(["build", "--release", "--target", "wasm32-wasip2"])
        .current_dir(dir)
        .stdout(std::process::Stdio::null())
        .status()
        .map_err(|e| format!("cannot run cargo (is Rust installed?): {e}"))?;
    if !status.success() {
        return Err(format!(
            "cargo build failed in {} (is the target installed? `rustup target add wasm32-wasip2`)",
            dir.display()
        ));
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|t| if t.is_absolute() { t } else { dir.join(t) })
        .unwrap_or_else(|| dir.join("target"));
    let wasm = target
        .join("wasm32-wasip2/release")
        .join(format!("{}.wasm", name.replace('-', "_")));
    if wasm.is_file() {
        Ok(wasm)
    } else {
        Err(format!("cargo built, but {} is not there", wasm.display()))
    }
}
