//! `hfwasm guest new` / `hfwasm guest build`: a working guest to start from (a Rust Cargo
//! project with this host's WIT and a "null cloud" provider, or a Python or JavaScript
//! template policy: the tested examples in `examples/`), and building it into a component.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::capabilities;

const LIB: &str = include_str!("guest_lib.rs.txt");
const CARGO: &str = include_str!("guest_cargo.toml.txt");
/// The guest workspace's lock file: pins wit-bindgen to the version this host's guests use,
/// so a new guest builds offline from the same crates.
const LOCK: &str = include_str!("../../../guests/Cargo.lock");
// WIT: every `.wit` file under wit/capabilities and wit/hostfactory, listed by build.rs.
include!(concat!(env!("OUT_DIR"), "/scaffold_wit.rs"));

/// The policy WIT that Python and JavaScript guests build against (written into their
/// `wit/` by `new` and refreshed by every `build`, so they always match this host).
const POLICY_WIT: &str = include_str!("../../../wit/policy/templates.wit");
/// The world Python and JavaScript guests implement.
const POLICY_WORLD: &str = "template-selector";
/// The Python and JavaScript scaffolds are the tested examples themselves.
const PY_APP: &str = include_str!("../../../examples/python-selector/app.py");
const JS_MAIN: &str = include_str!("../../../examples/js-selector/selector.js");
const JS_PACKAGE: &str = include_str!("../../../examples/js-selector/package.json");
const JS_LOCK: &str = include_str!("../../../examples/js-selector/package-lock.json");
const EXAMPLE_IGNORE: &str = include_str!("../../../examples/js-selector/.gitignore");
/// The componentize-py release the Python scaffold is tested with.
pub const COMPONENTIZE_PY: &str = "componentize-py==0.25.1";

/// Languages `guest new` can scaffold: a Rust provider, or a template policy (the tested
/// examples' cheapest-CPU-first selector) in Python or JavaScript.
pub const LANGUAGES: [&str; 3] = ["rust", "python", "js"];

/// Writes a new guest named `name` into `dir` (which must not exist or be empty); returns
/// the files written.
pub fn new_guest(dir: &Path, name: &str, lang: &str) -> Result<Vec<PathBuf>, String> {
    if !LANGUAGES.contains(&lang) {
        return Err(format!("--lang {lang}: choose one of {}", LANGUAGES.join(", ")));
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
    let npm_name = |t: &str| t.replace("\"hfwasm-js-selector\"", &format!("\"{name}\""));
    let mut files: Vec<(String, String)> = match lang {
        "python" => vec![
            ("app.py".into(), PY_APP.to_string()),
            (".gitignore".into(), EXAMPLE_IGNORE.to_string()),
            ("wit/templates.wit".into(), POLICY_WIT.to_string()),
        ],
        "js" => vec![
            ("selector.js".into(), JS_MAIN.to_string()),
            ("package.json".into(), npm_name(JS_PACKAGE)),
            ("package-lock.json".into(), npm_name(JS_LOCK)),
            (".gitignore".into(), EXAMPLE_IGNORE.to_string()),
            ("wit/templates.wit".into(), POLICY_WIT.to_string()),
        ],
        _ => {
            let mut f = vec![
                ("Cargo.toml".into(), fill(CARGO)),
                ("Cargo.lock".into(), LOCK.to_string()),
                ("src/lib.rs".into(), fill(LIB)),
                (".gitignore".into(), "/target\n".into()),
            ];
            f.extend(WIT.iter().map(|(p, t)| (p.to_string(), t.to_string())));
            f
        }
    };
    files.sort();
    let mut written = Vec::new();
    for (rel, text) in files {
        written.push(write(&dir.join(&rel), &text)?);
    }
    Ok(written)
}

fn write(path: &Path, text: &str) -> Result<PathBuf, String> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    }
    std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(path.to_path_buf())
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

/// The language of the guest project in `dir`, by the file that marks it.
fn language_of(dir: &Path) -> Result<&'static str, String> {
    if dir.join("Cargo.toml").is_file() {
        Ok("rust")
    } else if dir.join("app.py").is_file() {
        Ok("python")
    } else if dir.join("package.json").is_file() {
        Ok("js")
    } else {
        Err(format!(
            "{} is not a guest project: no Cargo.toml (Rust), app.py (Python) or package.json (JavaScript); start one with `hfwasm guest new NAME --lang rust|python|js`",
            dir.display()
        ))
    }
}

/// Runs `cmd` (its output to stderr); `what` names it in errors, `hint` says how to get it.
fn run(mut cmd: Command, what: &str, hint: &str) -> Result<(), String> {
    // Progress on stderr: componentize-py and componentize-js work silently for 10-30 s.
    eprintln!("guest build: running {what}...");
    let t0 = std::time::Instant::now();
    let mut child = cmd
        .stdout(std::process::Stdio::from(std::io::stderr()))
        .spawn()
        .map_err(|e| format!("cannot run {what}: {e} ({hint})"))?;
    let mut next = 5;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st,
            Ok(None) => {
                std::thread::sleep(std::time::Duration::from_millis(100));
                if t0.elapsed().as_secs() >= next {
                    eprintln!("guest build: {what} still running ({next} s)");
                    next += 5;
                }
            }
            Err(e) => return Err(format!("waiting for {what}: {e}")),
        }
    };
    if status.success() {
        eprintln!("guest build: {what} done in {:.1} s", t0.elapsed().as_secs_f64());
        Ok(())
    } else {
        Err(format!("{what} failed ({status}); its messages are above"))
    }
}

/// Builds the guest project in `dir` into a component and returns its path: `out` when
/// given, else where the language's build leaves it (`<dir>/<dir name>.wasm` for Python and
/// JavaScript). Rust builds with cargo for wasm32-wasip2; Python with componentize-py
/// (`HFWASM_COMPONENTIZE_PY`, else on PATH); JavaScript with componentize-js from the
/// project's `node_modules` (installed with npm first when missing).
pub fn build_guest(dir: &Path, out: Option<&Path>) -> Result<PathBuf, String> {
    let lang = language_of(dir)?;
    if lang == "rust" {
        let built = build_rust(dir)?;
        return match out {
            Some(o) => std::fs::copy(&built, o)
                .map(|_| o.to_path_buf())
                .map_err(|e| format!("cannot copy {} to {}: {e}", built.display(), o.display())),
            None => Ok(built),
        };
    }
    // The tools run inside `dir`, so every path they get is absolute.
    let dir = &dir.canonicalize().map_err(|e| format!("cannot open {}: {e}", dir.display()))?;
    let stem = dir.file_name().map_or_else(|| "guest".into(), |n| n.to_string_lossy().into_owned());
    let out = match out {
        Some(o) if o.is_absolute() => o.to_path_buf(),
        Some(o) => std::env::current_dir().map_err(|e| format!("no current dir: {e}"))?.join(o),
        None => dir.join(format!("{stem}.wasm")),
    };
    write(&dir.join("wit/templates.wit"), POLICY_WIT)?;
    if lang == "python" {
        let tool = std::env::var_os("HFWASM_COMPONENTIZE_PY").unwrap_or_else(|| "componentize-py".into());
        let mut cmd = Command::new(tool);
        cmd.args(["-d", "wit", "-w", POLICY_WORLD, "componentize", "app", "-o"])
            .arg(&out)
            .current_dir(dir);
        run(
            cmd,
            "componentize-py",
            &format!("install it with `pip install {COMPONENTIZE_PY}`, or set HFWASM_COMPONENTIZE_PY to its path"),
        )?;
    } else {
        let tool = dir.join("node_modules/.bin/componentize-js");
        if !tool.exists() {
            let mut npm = Command::new("npm");
            // `install` keeps the versions package-lock.json pins; `ci` would refuse this lock
            // over optional packages of other platforms that npm leaves out of it.
            npm.args(["install", "--no-audit", "--no-fund"]).current_dir(dir);
            run(npm, "npm", "install Node.js and npm")?;
        }
        let main = std::fs::read_to_string(dir.join("package.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v.get("main").and_then(|m| m.as_str()).map(str::to_string))
            .unwrap_or_else(|| "selector.js".into());
        let mut cmd = Command::new(&tool);
        cmd.arg(&main)
            .args([
                "--wit",
                "wit",
                "--world-name",
                POLICY_WORLD,
                "--disable",
                "http",
                "fetch-event",
                "-o",
            ])
            .arg(&out)
            .current_dir(dir);
        run(cmd, "componentize-js", "run `npm install` in the project")?;
    }
    if out.is_file() {
        Ok(out)
    } else {
        Err(format!("the build ran, but {} is not there", out.display()))
    }
}

/// Builds the Cargo project in `dir` for wasm32-wasip2 (cargo's output goes to stderr);
/// returns the component's path.
fn build_rust(dir: &Path) -> Result<PathBuf, String> {
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
