//! Capabilities the host offers guests. Each is one unit (a module here and a row of
//! [`TABLE`]) with the same steps: check its per-guest settings at config load, link its WIT
//! host implementation, and build its per-guest state from what the host lends. Only
//! granted capabilities are linked, and an import the config did not grant is refused at
//! load time (see `runtime::link`). Adding one: its WIT in `wit/capabilities/` and the
//! worlds, a module with a `UNIT`, and its row in [`TABLE`].

pub mod autoscaling;
pub mod ec2;
pub mod http;
pub mod inventory;
pub mod kv;
pub mod log;
pub mod power;

use std::any::Any;
use std::collections::BTreeMap;
use std::sync::Arc;

use wasmtime::component::Linker;
use wasmtime_wasi::{WasiCtxView, WasiView};

use crate::engine::sandbox::{HostWait, Sandbox, Sandboxed};
use crate::store::StateStore;

/// Checks a capability's settings for one guest; the error says what is wrong.
pub type CheckSettings = fn(&serde_json::Value) -> Result<(), String>;

/// One capability: its name and its three steps, the same for every capability.
pub struct Unit {
    /// The grant's name in config (`kv`); for a capability of this host's package, also its
    /// interface name inside the package.
    pub name: &'static str,
    /// The WIT interfaces a guest imports to use it.
    pub wit: Wit,
    /// What it gives a guest, in a few words (`guest check`, `--help`, docs).
    pub about: &'static str,
    /// Checks the per-guest settings config holds under `guests.<name>.<capability>`; none =
    /// the capability takes no settings.
    pub check_settings: Option<CheckSettings>,
    /// Links its WIT host implementation into a guest's linker.
    pub link: fn(&mut Linker<GuestState>) -> wasmtime::Result<()>,
    /// Builds its per-guest state from what the host lends.
    pub build: fn(&Lend<'_>) -> Result<Box<dyn Any + Send>, String>,
}

/// Where a capability's WIT comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wit {
    /// This host's package: `hostfactory:capabilities/<name>@VERSION`.
    Own,
    /// Standard WASI interfaces (paths without version, e.g. `wasi:http/outgoing-handler`)
    /// in the version line `line` (`0.2`): granted like the host's own, though their names
    /// start with `wasi:`.
    Standard {
        /// The interfaces.
        interfaces: &'static [&'static str],
        /// The version line the host implements.
        line: &'static str,
    },
}

/// Every capability this host has, in the order `guest check` and errors list them.
pub static TABLE: &[Unit] = &[
    log::UNIT,
    kv::UNIT,
    inventory::UNIT,
    power::UNIT,
    ec2::UNIT,
    autoscaling::UNIT,
    http::UNIT,
];

/// Things a provider instance lends its guests' capabilities (the inventory, the power
/// runner, a cloud client), by type: each capability takes what it needs.
#[derive(Clone, Default)]
pub struct Lent(Vec<Arc<dyn Any + Send + Sync>>);

impl Lent {
    /// Lends `v` (replacing an earlier value of its type).
    pub fn insert<T: Any + Send + Sync>(&mut self, v: T) {
        self.0.retain(|x| !x.is::<T>());
        self.0.push(Arc::new(v));
    }

    /// The value of type `T`, when lent.
    pub fn get<T: Any + Send + Sync>(&self) -> Option<&T> {
        self.0.iter().find_map(|x| x.downcast_ref::<T>())
    }
}

/// What a capability builds its per-guest state from.
pub struct Lend<'a> {
    /// Guest name from config.
    pub guest: &'a str,
    /// The state store.
    pub store: &'a Arc<dyn StateStore>,
    /// The guest's kv namespace (`<provider instance>/<guest>`).
    pub namespace: &'a str,
    /// Provider instance name: the owner of everything the guest creates.
    pub owner: &'a str,
    /// The guest's host-wait clock, for capabilities that wait on the network or the store.
    pub wait: &'a HostWait,
    /// This capability's settings for the guest (`guests.<name>.<capability>`), when any.
    pub settings: Option<&'a serde_json::Value>,
    /// What the provider instance lends.
    pub lent: &'a Lent,
}

/// Everything a guest's calls can reach: the sandbox (WASI, limits, clocks) and the state
/// of each granted capability.
pub struct GuestState {
    sandbox: Sandbox,
    slots: Vec<Box<dyn Any + Send>>,
}

impl GuestState {
    /// The state of capability `T` together with the sandbox, for a capability whose
    /// standard bindings need the guest's resource table too (wasi:http).
    pub fn slot_and_sandbox<T: Any>(&mut self) -> (&mut T, &mut Sandbox) {
        let slot = self
            .slots
            .iter_mut()
            .find_map(|s| s.downcast_mut::<T>())
            .expect("a linked capability has its state built (runtime::guest builds every granted one)");
        (slot, &mut self.sandbox)
    }

    /// A guest's state: its sandbox and its capabilities' states.
    pub fn new(sandbox: Sandbox, slots: Vec<Box<dyn Any + Send>>) -> Self {
        Self { sandbox, slots }
    }

    /// The state of the capability whose state type is `T`. Only linked capabilities are
    /// called and a linked capability always has its state built, so a missing one is a
    /// bug in the host, not something a guest can cause.
    pub fn slot<T: Any>(&mut self) -> &mut T {
        self.slot_and_sandbox::<T>().0
    }
}

impl Sandboxed for GuestState {
    fn sandbox(&mut self) -> &mut Sandbox {
        &mut self.sandbox
    }
}

impl WasiView for GuestState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        self.sandbox.wasi_view()
    }
}

/// Per-guest settings of the capabilities, by capability name (`guests.<name>.ec2`).
pub type Settings = BTreeMap<String, serde_json::Value>;

/// WIT package and version of every capability interface.
pub const PACKAGE: &str = "hostfactory:capabilities";
/// Version of the capability package this host implements.
pub const VERSION: &str = "0.2.0";

/// One capability a guest may be granted: a row of [`TABLE`].
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Capability(usize);

impl std::fmt::Debug for Capability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.short_name())
    }
}

impl Capability {
    /// Every capability, in table order.
    pub fn all() -> impl Iterator<Item = Capability> {
        (0..TABLE.len()).map(Capability)
    }

    /// Its row of the table.
    pub fn unit(self) -> &'static Unit {
        &TABLE[self.0]
    }

    /// Interface name inside the package (`kv`).
    pub fn short_name(self) -> &'static str {
        self.unit().name
    }

    /// Full WIT import name, e.g. `hostfactory:capabilities/kv@0.2.0` (for a standard
    /// capability its interfaces, `wasi:http/outgoing-handler@0.2.x, ...`).
    pub fn wit_name(self) -> String {
        match self.unit().wit {
            Wit::Own => format!("{PACKAGE}/{}@{VERSION}", self.short_name()),
            Wit::Standard { interfaces, line } => interfaces.iter().map(|i| format!("{i}@{line}.x")).collect::<Vec<_>>().join(", "),
        }
    }

    /// The capability an import (path without version) belongs to, and the version line
    /// this host implements for it; none when no capability provides it.
    pub fn of_import(path: &str) -> Option<(Capability, String)> {
        Self::all().find_map(|c| match c.unit().wit {
            Wit::Own => {
                (path.strip_prefix(PACKAGE).and_then(|p| p.strip_prefix('/')) == Some(c.short_name())).then(|| (c, VERSION.to_string()))
            }
            Wit::Standard { interfaces, line } => interfaces.contains(&path).then(|| (c, line.to_string())),
        })
    }

    /// Parses a grant as written in config: `kv` or the full WIT name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::all().find(|c| s == c.short_name() || s == c.wit_name())
    }

    /// The capability named `name`; for grant lists the host writes itself (the built-in
    /// guests'), where a missing name is a bug caught by every test that loads them.
    pub fn named(name: &str) -> Self {
        Self::parse(name).unwrap_or_else(|| panic!("no capability `{name}` in capabilities::TABLE"))
    }

    /// The names of every capability, for error messages (`log, kv, ...`).
    pub fn known() -> String {
        Self::all().map(|c| c.short_name()).collect::<Vec<_>>().join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grant_names() {
        assert_eq!(Capability::parse("kv"), Some(Capability::named("kv")));
        assert_eq!(
            Capability::parse("hostfactory:capabilities/power@0.2.0"),
            Some(Capability::named("power"))
        );
        assert_eq!(Capability::parse("hostfactory:capabilities/power@0.1.0"), None);
        assert_eq!(Capability::named("log").wit_name(), "hostfactory:capabilities/log@0.2.0");
        assert_eq!(
            Capability::of_import("hostfactory:capabilities/kv").map(|(c, _)| c),
            Some(Capability::named("kv"))
        );
        assert_eq!(
            Capability::of_import("wasi:http/outgoing-handler"),
            Some((Capability::named("http"), "0.2".into()))
        );
        assert_eq!(Capability::of_import("wasi:cli/stdout"), None);
        assert_eq!(Capability::of_import("hostfactory:capabilities/kv2"), None);
    }

    #[test]
    fn every_row_has_its_own_name_and_its_wit() {
        let names: Vec<&str> = TABLE.iter().map(|u| u.name).collect();
        let mut unique = names.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), names.len(), "two rows share a name: {names:?}");
        let wit = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../wit");
        for u in TABLE {
            assert!(!u.about.is_empty(), "capability `{}` says what it gives", u.name);
            match u.wit {
                Wit::Own => {
                    let text = std::fs::read_to_string(wit.join(format!("capabilities/{}.wit", u.name))).unwrap_or_default();
                    assert!(
                        text.contains(&format!("interface {}", u.name)),
                        "capability `{}` has no wit/capabilities/{0}.wit",
                        u.name
                    );
                }
                Wit::Standard { interfaces, .. } => {
                    for i in interfaces {
                        let (package, iface) = i.split_once('/').expect("package/interface");
                        let file = wit.join(format!("deps/{}.wit", package.trim_start_matches("wasi:")));
                        let text = std::fs::read_to_string(&file).unwrap_or_default();
                        assert!(
                            text.contains(&format!("interface {iface}")),
                            "`{i}` of `{}` is not in {}",
                            u.name,
                            file.display()
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn lent_values_are_found_by_type() {
        let mut l = Lent::default();
        l.insert(7u32);
        l.insert(String::from("x"));
        l.insert(8u32);
        assert_eq!(l.get::<u32>(), Some(&8));
        assert_eq!(l.get::<String>().map(String::as_str), Some("x"));
        assert!(l.get::<u64>().is_none());
    }
}
