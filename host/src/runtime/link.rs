//! Load-time import checks: before a guest is instantiated, every import it declares is
//! compared with what this host offers and what config granted it, so a mismatch is an
//! error naming guest, interface and version, with both sides listed and what to do.

use wasmtime::Engine;
use wasmtime::component::Component;

use crate::capabilities::{self, Capability};

/// WASI version line the host provides (wasmtime-wasi p2).
const WASI_LINE: &str = "0.2";
/// Provider package version line the host provides.
const PROVIDER_LINE: &str = "0.2";

/// Why a guest cannot be linked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct LinkError {
    /// Names guest, interface and version, lists both sides, and says what to do.
    pub message: String,
}

/// Everything this host can link, for error messages.
pub fn host_offers() -> Vec<String> {
    let mut v: Vec<String> = Capability::all().map(|c| c.wit_name()).collect();
    v.push(format!("hostfactory:provider/types@{PROVIDER_LINE}.x"));
    v.push(format!("wasi:*@{WASI_LINE}.x (no environment, files, network or stdin)"));
    v
}

/// `major.minor` of a `0.x.y` version, the semver-compatible line for 0.x versions.
fn line(version: &str) -> &str {
    match version.match_indices('.').nth(1) {
        Some((i, _)) => &version[..i],
        None => version,
    }
}

/// The imports a component declares, by name.
pub fn imports(engine: &Engine, component: &Component) -> Vec<String> {
    component
        .component_type()
        .imports(engine)
        .map(|(name, _)| name.to_string())
        .collect()
}

/// Checks every import of `guest` against the host's offer and the grants.
pub fn check_imports(guest: &str, imports: &[String], grants: &[Capability]) -> Result<(), LinkError> {
    for import in imports {
        let (path, version) = import.split_once('@').unwrap_or((import.as_str(), ""));
        let problem = if let Some((cap, host_line)) = Capability::of_import(path) {
            if line(version) != line(&host_line) {
                Some(format!(
                    "was built against {import}, but this host implements {path}@{host_line}; rebuild the guest against the host's WIT (wit/ of this hfwasm)"
                ))
            } else if !grants.contains(&cap) {
                return Err(LinkError {
                    message: format!(
                        "guest '{guest}' imports {import}, which config does not grant it; add \"{}\" to guests.{guest}.grants if the guest should have it (granted now: [{}])",
                        cap.short_name(),
                        grants.iter().map(|c| c.short_name()).collect::<Vec<_>>().join(", ")
                    ),
                });
            } else {
                None
            }
        } else if path.starts_with(&format!("{}/", capabilities::PACKAGE)) {
            Some(format!("imports {import}, an interface this host does not have"))
        } else if path == "hostfactory:provider/types" {
            (line(version) != PROVIDER_LINE)
                .then(|| format!("was built against {import}, but this host implements hostfactory:provider@{PROVIDER_LINE}.x"))
        } else if path.starts_with("wasi:") {
            (line(version) != WASI_LINE).then(|| format!("imports {import}, but this host provides WASI {WASI_LINE}.x"))
        } else {
            Some(format!("imports {import}, which this host does not provide"))
        };
        if let Some(p) = problem {
            return Err(LinkError {
                message: format!(
                    "guest '{guest}' {p}.\n  guest imports: {}\n  host offers:   {}",
                    imports.join(", "),
                    host_offers().join(", ")
                ),
            });
        }
    }
    Ok(())
}

/// The exports a component declares, by name.
pub fn exports(engine: &Engine, component: &Component) -> Vec<String> {
    component
        .component_type()
        .exports(engine)
        .map(|(name, _)| name.to_string())
        .collect()
}

/// Policy package version line the host provides.
const POLICY_LINE: &str = "0.1";

/// The part a guest plays, told by the interface it exports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestRole {
    /// Exports `hostfactory:provider/provider`: makes and releases machines.
    Provider,
    /// Exports `hostfactory:policy/template-policy`: decides what HostFactory is offered.
    TemplatePolicy,
    /// Exports `hostfactory:policy/placement`: decides which provider serves a request.
    Placement,
}

impl GuestRole {
    /// Every role, in the order `guest check` tries them.
    pub const ALL: [GuestRole; 3] = [GuestRole::Provider, GuestRole::TemplatePolicy, GuestRole::Placement];

    /// The interface this role exports and the version line this host calls.
    pub fn export(self) -> (&'static str, &'static str) {
        match self {
            GuestRole::Provider => ("hostfactory:provider/provider", PROVIDER_LINE),
            GuestRole::TemplatePolicy => ("hostfactory:policy/template-policy", POLICY_LINE),
            GuestRole::Placement => ("hostfactory:policy/placement", POLICY_LINE),
        }
    }

    /// The role in words.
    pub fn describe(self) -> &'static str {
        match self {
            GuestRole::Provider => "provider guest",
            GuestRole::TemplatePolicy => "template policy guest",
            GuestRole::Placement => "placement policy guest",
        }
    }

    /// The role a component's exports show, whatever their version.
    pub fn of(exports: &[String]) -> Option<GuestRole> {
        GuestRole::ALL.into_iter().find(|r| {
            exports
                .iter()
                .any(|e| e.split_once('@').map_or(e.as_str(), |(p, _)| p) == r.export().0)
        })
    }
}

/// Checks that `guest` exports the interface of `role` in this host's version line.
pub fn check_exports(guest: &str, exports: &[String], role: GuestRole) -> Result<(), LinkError> {
    let (wanted, wanted_line) = role.export();
    let found = exports.iter().find(|e| e.split_once('@').map_or(e.as_str(), |(p, _)| p) == wanted);
    let problem = match found {
        Some(e) if e.split_once('@').is_some_and(|(_, v)| line(v) == wanted_line) => return Ok(()),
        Some(e) => format!(
            "was built against {e}, but this host calls {wanted}@{wanted_line}.x; rebuild the guest against the host's WIT (wit/ of this hfwasm)"
        ),
        None => format!("does not export {wanted}, so it is not a {}", role.describe()),
    };
    Err(LinkError {
        message: format!(
            "guest '{guest}' {problem}.\n  guest exports: {}\n  host needs:    {wanted}@{wanted_line}.x",
            if exports.is_empty() {
                "(nothing)".to_string()
            } else {
                exports.join(", ")
            }
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn granted_and_compatible_imports_pass() {
        let imports = names(&[
            "wasi:cli/environment@0.2.6",
            "hostfactory:capabilities/kv@0.2.0",
            "hostfactory:provider/types@0.2.0",
        ]);
        assert_eq!(check_imports("g", &imports, &[Capability::named("kv")]), Ok(()));
    }

    #[test]
    fn ungranted_import_names_guest_interface_and_version() {
        let e = check_imports(
            "pool",
            &names(&["hostfactory:capabilities/power@0.2.0"]),
            &[Capability::named("log")],
        )
        .expect_err("ungranted");
        assert!(
            e.message.contains("guest 'pool'")
                && e.message.contains("hostfactory:capabilities/power@0.2.0")
                && e.message.contains("guests.pool.grants"),
            "{}",
            e.message
        );
    }

    #[test]
    fn other_versions_list_both_sides() {
        let e = check_imports("g", &names(&["hostfactory:capabilities/kv@0.1.0"]), &[Capability::named("kv")]).expect_err("version");
        assert!(
            e.message.contains("kv@0.1.0") && e.message.contains("host offers") && e.message.contains("kv@0.2.0"),
            "{}",
            e.message
        );
        assert!(check_imports("g", &names(&["acme:evil/net@1.0.0"]), &[]).is_err());
        let e = check_exports("old", &names(&["hostfactory:provider/provider@0.1.0"]), GuestRole::Provider).expect_err("old provider");
        assert!(
            e.message.contains("guest 'old'") && e.message.contains("provider@0.1.0") && e.message.contains("provider@0.2.x"),
            "{}",
            e.message
        );
        assert!(check_exports("g", &names(&["hostfactory:provider/provider@0.2.0"]), GuestRole::Provider).is_ok());
        assert!(check_exports("g", &names(&["wasi:cli/run@0.2.0"]), GuestRole::Provider).is_err());
        let policy = names(&["hostfactory:policy/template-policy@0.1.0"]);
        assert_eq!(GuestRole::of(&policy), Some(GuestRole::TemplatePolicy));
        let e = check_exports("sel", &policy, GuestRole::Provider).expect_err("a policy is not a provider");
        assert!(e.message.contains("not a provider guest"), "{}", e.message);
        assert!(check_exports("sel", &policy, GuestRole::TemplatePolicy).is_ok());
        assert!(check_imports("g", &names(&["wasi:http/outgoing-handler@0.3.0"]), &[]).is_err());
    }
}
