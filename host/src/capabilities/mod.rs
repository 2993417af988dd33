//! Capabilities the host offers guests, one module per WIT import. Each owns its WIT host
//! implementation and its grant checks; only granted capabilities are linked, and an
//! import the config did not grant is refused at load time (see `runtime::link`).

pub mod ec2;
pub mod inventory;
pub mod kv;
pub mod log;
pub mod power;

/// WIT package and version of every capability interface.
pub const PACKAGE: &str = "hostfactory:capabilities";
/// Version of the capability package this host implements.
pub const VERSION: &str = "0.2.0";

/// One capability a guest may be granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Capability {
    /// `log`: guest log records as host tracing events.
    Log,
    /// `kv`: durable key-value state in the host's store.
    Kv,
    /// `inventory`: the site's host inventory.
    Inventory,
    /// `power`: admin-configured power commands, run by the host.
    Power,
    /// `ec2`: Amazon EC2, signed by the host, within the guest's grant.
    Ec2,
}

impl Capability {
    /// Every capability.
    pub const ALL: [Capability; 5] = [
        Capability::Log,
        Capability::Kv,
        Capability::Inventory,
        Capability::Power,
        Capability::Ec2,
    ];

    /// Interface name inside the package (`kv`).
    pub fn short_name(self) -> &'static str {
        match self {
            Capability::Log => "log",
            Capability::Kv => "kv",
            Capability::Inventory => "inventory",
            Capability::Power => "power",
            Capability::Ec2 => "ec2",
        }
    }

    /// Full WIT import name, e.g. `hostfactory:capabilities/kv@0.2.0`.
    pub fn wit_name(self) -> String {
        format!("{PACKAGE}/{}@{VERSION}", self.short_name())
    }

    /// Parses a grant as written in config: `kv` or the full WIT name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| s == c.short_name() || s == c.wit_name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grant_names() {
        assert_eq!(Capability::parse("kv"), Some(Capability::Kv));
        assert_eq!(Capability::parse("hostfactory:capabilities/power@0.2.0"), Some(Capability::Power));
        assert_eq!(Capability::parse("hostfactory:capabilities/power@0.1.0"), None);
        assert_eq!(Capability::Log.wit_name(), "hostfactory:capabilities/log@0.2.0");
    }
}
