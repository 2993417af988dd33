//! The map of the host's own state in the store's kv: every namespace the host writes, the
//! module that owns it, what it holds and what bounds it. The host's namespaces start with
//! `hfwasm.`; a guest's is `<provider instance>/<guest>` (the kv capability confines it
//! there), so no guest can name one of the host's.

use crate::limits;

/// One row of the map: a namespace pattern, its owner, what it holds, what bounds it.
#[derive(Debug, Clone, Copy)]
pub struct Namespace {
    /// The namespace, `<instance>` and `<...>` standing for their values.
    pub pattern: &'static str,
    /// The module that reads and writes it.
    pub owner: &'static str,
    /// What its keys hold.
    pub holds: &'static str,
    /// Why it cannot grow without end.
    pub bound: &'static str,
}

/// Every kv namespace in a store, host's and guests'.
pub const TABLE: &[Namespace] = &[
    Namespace {
        pattern: "hfwasm.store",
        owner: "store",
        holds: "the store's id, tagged on everything an installation launches",
        bound: "one key",
    },
    Namespace {
        pattern: "hfwasm.claim/<instance>",
        owner: "service::claims",
        holds: "who acts on a request right now: one key per request a live call works on",
        bound: "released when the call stores its answer; a dead call's expires after the longest a call lives",
    },
    Namespace {
        pattern: "hfwasm.sweep/<instance>",
        owner: "service::sweep",
        holds: "when the orphan scan last ran, and since when this store has judged orphans",
        bound: "two keys",
    },
    Namespace {
        pattern: "hfwasm.route/<instance>",
        owner: "service::routing",
        holds: "which provider made which machines of a request, with several providers",
        bound: "one key per request; pruned with its request after the retention",
    },
    Namespace {
        pattern: "hfwasm.breaker/<instance>/<provider>",
        owner: "service::breaker",
        holds: "a provider's recent failures and when its circuit opened",
        bound: "failures inside the breaker's window (failure_threshold of them)",
    },
    Namespace {
        pattern: "hfwasm.lease/<instance>",
        owner: "service::lease",
        holds: "which `hfwasm serve` replica runs the background reconciler, until when",
        bound: "one key",
    },
    Namespace {
        pattern: "hfwasm.power/<instance>",
        owner: "capabilities::power",
        holds: "each inventory host's last power-on/off outcome and its command claim",
        bound: "three keys per inventory host",
    },
    Namespace {
        pattern: "hfwasm.record/<instance>",
        owner: "recording, policy::placement, policy (offers)",
        holds: "recorded calls, placement decisions and template offers for replay",
        bound: "the last `recording.keep` of each",
    },
    Namespace {
        pattern: "hfwasm.shadow/<instance>",
        owner: "policy (shadow mode)",
        holds: "what a shadow policy would have decided",
        bound: "the last policy::SHADOW_KEEP",
    },
    Namespace {
        pattern: "<instance>/<guest>",
        owner: "capabilities::kv (a guest's own)",
        holds: "whatever the guest keeps (the on-prem guest: one lease per leased host)",
        bound: "limits::KV_NAMESPACE_MAX_ENTRIES and KV_NAMESPACE_MAX_BYTES across calls",
    },
];

/// The store's own namespace ([`TABLE`] row `hfwasm.store`).
pub const STORE: &str = "hfwasm.store";

/// Request claims of provider instance `instance`.
pub fn claims(instance: &str) -> String {
    format!("hfwasm.claim/{instance}")
}

/// The sweep's bookkeeping of provider instance `instance`.
pub fn sweep(instance: &str) -> String {
    format!("hfwasm.sweep/{instance}")
}

/// Routing records of provider instance `instance`.
pub fn routes(instance: &str) -> String {
    format!("hfwasm.route/{instance}")
}

/// The circuit breaker of `provider` in provider instance `instance`.
pub fn breaker(instance: &str, provider: &str) -> String {
    format!("hfwasm.breaker/{instance}/{provider}")
}

/// The reconciler's leader lease of provider instance `instance`.
pub fn lease(instance: &str) -> String {
    format!("hfwasm.lease/{instance}")
}

/// Power outcomes and claims of provider instance `instance`.
pub fn power(instance: &str) -> String {
    format!("hfwasm.power/{instance}")
}

/// Recorded calls and decisions of provider instance `instance`.
pub fn record(instance: &str) -> String {
    format!("hfwasm.record/{instance}")
}

/// Shadow decisions of provider instance `instance`.
pub fn shadow(instance: &str) -> String {
    format!("hfwasm.shadow/{instance}")
}

/// Guest `guest`'s own namespace in provider instance `instance`.
pub fn guest(instance: &str, guest: &str) -> String {
    format!("{instance}/{guest}")
}

/// Keeps the bound a guest namespace's row names in step with the limits it cites.
const _: () = assert!(limits::KV_NAMESPACE_MAX_ENTRIES > 0 && limits::KV_NAMESPACE_MAX_BYTES > 0);

#[cfg(test)]
mod tests {
    use super::*;

    /// Every namespace function's output matches its row of the table, and the host's
    /// never collide with each other.
    #[test]
    fn the_table_lists_every_namespace_the_host_makes() {
        let made = [
            (STORE.to_string(), "hfwasm.store"),
            (claims("i"), "hfwasm.claim/<instance>"),
            (sweep("i"), "hfwasm.sweep/<instance>"),
            (routes("i"), "hfwasm.route/<instance>"),
            (breaker("i", "p"), "hfwasm.breaker/<instance>/<provider>"),
            (lease("i"), "hfwasm.lease/<instance>"),
            (power("i"), "hfwasm.power/<instance>"),
            (record("i"), "hfwasm.record/<instance>"),
            (shadow("i"), "hfwasm.shadow/<instance>"),
            (guest("i", "g"), "<instance>/<guest>"),
        ];
        for (ns, pattern) in &made {
            let row = TABLE
                .iter()
                .find(|r| r.pattern == *pattern)
                .unwrap_or_else(|| panic!("{pattern} is not in TABLE"));
            let expected = row
                .pattern
                .replace("<instance>", "i")
                .replace("<provider>", "p")
                .replace("<guest>", "g");
            assert_eq!(ns, &expected);
        }
        assert_eq!(made.len(), TABLE.len(), "every row has a maker");
        let prefixes: std::collections::BTreeSet<&str> = TABLE.iter().map(|r| r.pattern.split('/').next().unwrap_or("")).collect();
        assert_eq!(prefixes.len(), TABLE.len(), "no two rows share a namespace prefix");
    }
}
