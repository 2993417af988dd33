//! The layers of the crate, bottom first, and the test that keeps them: a module imports
//! only from layers below its own, so there is no import circle and a change to a lower
//! layer never needs one above it (DESIGN.md §3). Test code may reach up (a test of a guest
//! drives it through the service), so `#[cfg(test)]` modules are not checked.

/// Every top-level module of `host/src`, by layer, bottom first.
pub const LAYERS: &[&[&str]] = &[
    // Vocabulary and leaf helpers: import nothing from the crate.
    &[
        "domain",
        "limits",
        "awsconn",
        "builtin",
        "clock",
        "faults",
        "ownership",
        "logging",
        "metrics",
    ],
    // State: the store and its backends.
    &["store"],
    // The wasmtime layer: engine, cache, bindings, sandbox.
    &["engine"],
    // What guests may import.
    &["capabilities"],
    // Guests put together with their capabilities.
    &["runtime"],
    // Site decisions (template offer, placement) and their replay.
    &["policy"],
    // The lifecycle core over the provider and policy ports.
    &["service"],
    // The HostFactory wire format; config files of every format.
    &["hf", "config"],
    // What builds on the wire format and the config.
    &["recording", "scaffold"],
    // One HostFactory call, wired.
    &["plugin"],
    // Entry points.
    &["demo", "main", "commands", "lib", "layering"],
];

#[cfg(test)]
mod tests {
    use super::LAYERS;

    fn layer(module: &str) -> Option<usize> {
        LAYERS.iter().position(|l| l.contains(&module))
    }

    /// `crate::<module>` paths in `src`, grouped `use crate::{a, b::c}` included, outside
    /// `#[cfg(test)]` modules.
    fn imports(src: &str) -> Vec<String> {
        let code = match src.find("#[cfg(test)]") {
            Some(i) => &src[..i],
            None => src,
        };
        let mut out = Vec::new();
        let mut rest = code;
        while let Some(i) = rest.find("crate::") {
            rest = &rest[i + "crate::".len()..];
            if let Some(group) = rest.strip_prefix('{') {
                let end = group.find(';').unwrap_or(group.len());
                let mut depth = 0;
                let mut item = String::new();
                for ch in group[..end].chars() {
                    match ch {
                        '{' => depth += 1,
                        '}' => depth -= 1,
                        _ => {}
                    }
                    if (ch == ',' && depth == 0) || depth < 0 {
                        out.push(item.trim().to_string());
                        item.clear();
                        if depth < 0 {
                            break;
                        }
                    } else {
                        item.push(ch);
                    }
                }
            } else {
                out.push(rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect());
            }
        }
        out.iter()
            .map(|p| p.split("::").next().unwrap_or("").trim().to_string())
            .filter(|m| !m.is_empty())
            .collect()
    }

    #[test]
    fn every_module_imports_only_from_layers_below() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = vec![root.clone()];
        let mut problems = Vec::new();
        let mut seen = 0;
        while let Some(p) = files.pop() {
            if p.is_dir() {
                files.extend(
                    std::fs::read_dir(&p)
                        .expect("readable src dir")
                        .map(|e| e.expect("dir entry").path()),
                );
                continue;
            }
            if p.extension().is_none_or(|e| e != "rs") || p.file_name().is_some_and(|n| n.to_string_lossy().ends_with("tests.rs")) {
                continue;
            }
            let rel = p.strip_prefix(&root).expect("under src");
            let top = rel
                .iter()
                .next()
                .expect("a first component")
                .to_string_lossy()
                .trim_end_matches(".rs")
                .to_string();
            let Some(own) = layer(&top) else {
                problems.push(format!("{}: module `{top}` is in no layer of LAYERS; add it", rel.display()));
                continue;
            };
            seen += 1;
            let src = std::fs::read_to_string(&p).expect("readable source");
            for m in imports(&src) {
                if m == top {
                    continue;
                }
                match layer(&m) {
                    Some(l) if l < own => {}
                    Some(_) => problems.push(format!(
                        "{}: `{top}` imports crate::{m}, which is not in a layer below it",
                        rel.display()
                    )),
                    None => problems.push(format!("{}: imports crate::{m}, a module in no layer", rel.display())),
                }
            }
        }
        assert!(seen > 50, "only {seen} files checked: is src where the test looks?");
        assert!(problems.is_empty(), "layering broken:\n{}", problems.join("\n"));
    }

    #[test]
    fn the_checker_sees_grouped_and_plain_imports() {
        let found =
            imports("use crate::{store::{A, B}, domain::model::X};\nfn f() { crate::policy::g(); }\n#[cfg(test)]\nuse crate::service;");
        assert_eq!(found, vec!["store", "domain", "policy"]);
    }
}
