//! The units each template's live machines hold, kept in kv by a provider guest as it sees
//! machines come and go, so getAvailableTemplates answers `availableNumber` without a cloud
//! call (HostFactory polls it every ~30 s; a listing of 10,000 instances is 10 pages).
//!
//! The ledger follows the cloud wherever a guest lists machines anyway: request, status,
//! return and reclaim calls record what they see, and the orphan scan's full listing
//! ([`Held::rebuild`]) makes it exact again (a kill between a cloud call and the kv write,
//! a machine ended behind the guest's back that no other call looks at). A ledger that no
//! full listing has ever filled (an installation that ran before the ledger existed) says
//! so ([`Held::is_built`]), and the guest builds it once from a listing.
//!
//! One key per machine (`held/<machine id>` = `<units> <template>`): writes are idempotent,
//! so processes racing over different machines never lose each other's updates, and a
//! machine ends by its id alone (a machine that vanished has no tags left to say its template).

use std::collections::BTreeMap;

use crate::kv::{self, KvError};

/// Prefix of the per-machine keys.
const PREFIX: &str = "held/";
/// Written once a full listing has filled the ledger.
const BUILT: &str = "held:built";

/// The ledger as read at the start of a call; writes go to kv only when they change it.
#[derive(Debug, Default)]
pub struct Held {
    machines: BTreeMap<String, (u32, String)>,
    built: bool,
    /// False for [`Held::unread`]: every change is written, none skipped.
    loaded: bool,
}

impl Held {
    /// Reads the ledger (one kv scan and one get).
    pub fn load() -> Result<Self, KvError> {
        let machines = kv::scan(PREFIX)?
            .into_iter()
            .filter_map(|(k, v)| {
                let (units, template) = v.split_once(' ')?;
                Some((k[PREFIX.len()..].to_string(), (units.parse().ok()?, template.to_string())))
            })
            .collect();
        Ok(Held {
            machines,
            built: kv::get(BUILT)?.is_some(),
            loaded: true,
        })
    }

    /// A ledger not read first, for a call that touches few machines (a request's launch):
    /// each change is written, where [`Held::load`] would read every machine's entry.
    pub fn unread() -> Self {
        Held::default()
    }

    /// Whether a full listing has filled the ledger (else [`Held::rebuild`] it from one).
    pub fn is_built(&self) -> bool {
        self.built
    }

    /// Units held by the live machines of `template`.
    pub fn units_of(&self, template: &str) -> u32 {
        self.machines
            .values()
            .filter(|(_, t)| t == template)
            .fold(0u32, |sum, (u, _)| sum.saturating_add(*u))
    }

    /// `machine` is live and holds `units` of `template` (written unless already so).
    pub fn live(&mut self, machine: &str, template: &str, units: u32) -> Result<(), KvError> {
        if self.loaded && self.machines.get(machine).is_some_and(|(u, t)| *u == units && t == template) {
            return Ok(());
        }
        kv::set(&format!("{PREFIX}{machine}"), &format!("{units} {template}"))?;
        self.machines.insert(machine.to_string(), (units, template.to_string()));
        Ok(())
    }

    /// `machine` has ended, is ending, or never was (deleted if the ledger had it).
    pub fn ended(&mut self, machine: &str) -> Result<(), KvError> {
        if self.machines.remove(machine).is_some() || !self.loaded {
            kv::delete(&format!("{PREFIX}{machine}"))?;
        }
        Ok(())
    }

    /// Records `machines` of `template` as reported, one unit each: pending, running and
    /// stopped machines hold their unit; stopping, terminated and failed ones do not.
    pub fn saw(&mut self, template: &str, machines: &[crate::Machine]) -> Result<(), KvError> {
        for m in machines {
            if holds(m.state) {
                self.live(&m.machine_id, template, 1)?;
            } else {
                self.ended(&m.machine_id)?;
            }
        }
        Ok(())
    }

    /// Makes the ledger exactly `live` ((machine, template, units) of every live machine,
    /// from a full listing), and marks it built. Load the ledger before listing: a machine
    /// made between the listing and the load would otherwise be forgotten until seen again.
    pub fn rebuild(&mut self, live: impl IntoIterator<Item = (String, String, u32)>) -> Result<(), KvError> {
        if !self.loaded {
            *self = Held::load()?;
        }
        let live: BTreeMap<String, (String, u32)> = live.into_iter().map(|(m, t, u)| (m, (t, u))).collect();
        let stale: Vec<String> = self.machines.keys().filter(|m| !live.contains_key(*m)).cloned().collect();
        for m in stale {
            self.ended(&m)?;
        }
        for (m, (t, u)) in &live {
            self.live(m, t, *u)?;
        }
        if !self.built {
            kv::set(BUILT, "1")?;
            self.built = true;
        }
        Ok(())
    }
}

/// Whether a machine in `state` still holds its template's units (it exists and may run).
pub fn holds(state: crate::MachineState) -> bool {
    use crate::MachineState as S;
    matches!(state, S::Pending | S::Running | S::Stopped)
}
