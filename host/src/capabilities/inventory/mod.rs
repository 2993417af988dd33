//! `inventory` capability: the admin's inventory file, parsed and validated by the host.

pub mod format;

use std::sync::Arc;

use crate::engine::bindings::hostfactory::capabilities::inventory::{self as wit, Host, InventoryError, InventoryHost};
pub use format::Inventory;

/// The inventory capability's row of [`super::TABLE`].
pub const UNIT: super::Unit = super::Unit {
    name: "inventory",
    wit: super::Wit::Own,
    about: "the site's host inventory (inventory.file)",
    check_settings: None,
    link: |l| wit::add_to_linker::<_, wasmtime::component::HasSelf<GuestInventory>>(l, |s| s.slot::<GuestInventory>()),
    build: |l| Ok(Box::new(GuestInventory::new(l.lent.get::<Arc<Inventory>>().cloned()))),
};

/// Per-guest state of the inventory capability.
pub struct GuestInventory {
    inventory: Option<Arc<Inventory>>,
}

impl GuestInventory {
    /// Serves `inventory`, or refuses when none was loaded for this guest.
    pub fn new(inventory: Option<Arc<Inventory>>) -> Self {
        Self { inventory }
    }
}

impl Host for GuestInventory {
    fn hosts(&mut self) -> Result<Vec<InventoryHost>, InventoryError> {
        let inv = self
            .inventory
            .as_ref()
            .ok_or_else(|| InventoryError::Denied("no inventory is configured for this guest".into()))?;
        Ok(inv
            .hosts
            .iter()
            .map(|h| InventoryHost {
                name: h.name.clone(),
                ip: h.ip.clone(),
                template: h.template.clone(),
                attributes: h.attributes.clone(),
                has_power_on: h.power_on.is_some(),
                has_power_off: h.power_off.is_some(),
            })
            .collect())
    }
}
