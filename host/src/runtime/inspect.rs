//! `hfwasm guest check`: what a guest component imports and exports, which grants it
//! needs, and whether this host can run it, without any config or store.

use serde::Serialize;

use super::link;
use crate::capabilities::{self, Capability};
use crate::engine::GuestEngine;
use crate::engine::cache::PrecompiledCache;

/// One import and what the host does with it.
#[derive(Debug, Clone, Serialize)]
pub struct ImportLine {
    /// The import as the component names it (`hostfactory:capabilities/kv@0.2.0`).
    pub name: String,
    /// How the host provides it, or why it cannot.
    pub provided_as: String,
}

/// What `hfwasm guest check` reports about one `.wasm` file.
#[derive(Debug, Clone, Serialize)]
pub struct GuestReport {
    /// Size of the file in bytes.
    pub bytes: usize,
    /// Exports by name.
    pub exports: Vec<String>,
    /// Imports, each with how the host provides it.
    pub imports: Vec<ImportLine>,
    /// Capabilities config must grant it (`guests.<name>.grants`).
    pub grants: Vec<String>,
    /// What it is (`provider guest`, `template policy guest`), by its exports.
    pub role: Option<String>,
    /// Why this host cannot run it; empty when it can.
    pub problems: Vec<String>,
}

impl GuestReport {
    /// Whether this host can run the guest (with the grants listed).
    pub fn runnable(&self) -> bool {
        self.problems.is_empty()
    }

    /// The report as text for a terminal.
    pub fn lines(&self, file: &str) -> Vec<String> {
        let mut out = vec![format!(
            "guest {file}: {}, {} KiB",
            self.role.as_deref().unwrap_or("component"),
            self.bytes.div_ceil(1024)
        )];
        out.push("exports:".into());
        out.extend(self.exports.iter().map(|e| format!("  {e}")));
        out.push("imports:".into());
        out.extend(self.imports.iter().map(|i| format!("  {:<48} {}", i.name, i.provided_as)));
        out.push(format!(
            "grants it needs: [{}]",
            self.grants.iter().map(|g| format!("\"{g}\"")).collect::<Vec<_>>().join(", ")
        ));
        if self.runnable() {
            out.push("this host can run it: yes".into());
        } else {
            out.push("this host can run it: NO".into());
            out.extend(self.problems.iter().map(|p| format!("  {p}")));
        }
        out
    }
}

/// Compiles `wasm` (through `cache` when given, so a later run of the guest need not
/// compile it again) and reports on it; an error when it is not a component at all.
pub fn inspect(engine: &GuestEngine, wasm: &[u8], cache: Option<&PrecompiledCache>) -> Result<GuestReport, String> {
    if !wasm.starts_with(b"\0asm") {
        return Err("not a WebAssembly file (no \\0asm header)".into());
    }
    if wasm.get(4..8) == Some(&[1, 0, 0, 0]) {
        return Err(
            "a core WebAssembly module, not a component: build the guest for wasm32-wasip2 (or wrap it with `wasm-tools component new`)"
                .into(),
        );
    }
    let component = match cache {
        Some(c) => c.load(engine, wasm).map(|(component, _)| component),
        None => wasmtime::component::Component::from_binary(engine.engine(), wasm),
    }
    .map_err(|e| format!("not a WebAssembly component this host can compile: {e:#}"))?;
    let imports = link::imports(engine.engine(), &component);
    let exports = link::exports(engine.engine(), &component);
    let mut grants: Vec<Capability> = Vec::new();
    let lines = imports
        .iter()
        .map(|name| {
            let path = name.split_once('@').map_or(name.as_str(), |(p, _)| p);
            let provided_as = if let Some((cap, _)) = Capability::of_import(path) {
                if !grants.contains(&cap) {
                    grants.push(cap);
                }
                format!("capability: grant \"{}\"", cap.short_name())
            } else if path.starts_with(&format!("{}/", capabilities::PACKAGE)) {
                "a capability this host does not have".into()
            } else if path.starts_with("wasi:") {
                "WASI, sandboxed (no environment, files, network or stdin)".into()
            } else if path == "hostfactory:provider/types" {
                "provider types".into()
            } else {
                "not provided by this host".into()
            };
            ImportLine {
                name: name.clone(),
                provided_as,
            }
        })
        .collect();
    let mut problems = Vec::new();
    if let Err(e) = link::check_imports("checked", &imports, &grants) {
        problems.push(e.message);
    }
    // Every role it plays (the built-in policy has both policy hooks).
    let roles: Vec<link::GuestRole> = link::GuestRole::ALL
        .into_iter()
        .filter(|r| {
            exports
                .iter()
                .any(|e| e.split_once('@').map_or(e.as_str(), |(p, _)| p) == r.export().0)
        })
        .collect();
    for r in &roles {
        if let Err(e) = link::check_exports("checked", &exports, *r) {
            problems.push(e.message);
        }
    }
    if roles.is_empty() {
        problems.push(format!(
            "exports none of the interfaces this host calls ({}), so it is neither a provider nor a policy guest",
            link::GuestRole::ALL.map(|r| r.export().0).join(", ")
        ));
    }
    let role = (!roles.is_empty()).then(|| roles.iter().map(|r| r.describe()).collect::<Vec<_>>().join(" and "));
    Ok(GuestReport {
        bytes: wasm.len(),
        exports,
        imports: lines,
        role,
        grants: grants.iter().map(|c| c.short_name().to_string()).collect(),
        problems,
    })
}
