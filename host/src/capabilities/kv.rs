//! `kv` capability: durable key-value state in the host's store, one namespace per guest
//! and provider instance, with size limits checked before anything is written.

use std::sync::Arc;

use super::HostWait;
use crate::runtime::bindings::hostfactory::capabilities::kv::{Host, KvError};
use crate::store::{StateStore, StoreError};

/// Longest key a guest may use.
pub const MAX_KEY_BYTES: usize = 512;
/// Largest value a guest may store.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;
/// Most entries one scan returns.
pub const MAX_SCAN_ENTRIES: usize = 100_000;

/// Per-guest state of the kv capability.
pub struct GuestKv {
    store: Arc<dyn StateStore>,
    namespace: String,
    wait: HostWait,
}

impl GuestKv {
    /// Guest kv over `store`, confined to `namespace` (`<provider instance>/<guest>`).
    pub fn new(store: Arc<dyn StateStore>, namespace: String, wait: HostWait) -> Self {
        Self { store, namespace, wait }
    }

    fn check_key(&self, key: &str) -> Result<(), KvError> {
        if key.is_empty() || key.len() > MAX_KEY_BYTES {
            return Err(KvError::Denied(format!(
                "key length {} is outside 1..={MAX_KEY_BYTES} bytes",
                key.len()
            )));
        }
        Ok(())
    }

    fn check_value(&self, value: &str) -> Result<(), KvError> {
        if value.len() > MAX_VALUE_BYTES {
            return Err(KvError::Denied(format!("value of {} bytes exceeds {MAX_VALUE_BYTES}", value.len())));
        }
        Ok(())
    }
}

fn unavailable(e: StoreError) -> KvError {
    tracing::warn!(error = %e, "kv store operation failed");
    KvError::Unavailable(e.to_string())
}

impl Host for GuestKv {
    fn get(&mut self, key: String) -> Result<Option<String>, KvError> {
        self.check_key(&key)?;
        self.wait.measure(|| self.store.kv_get(&self.namespace, &key)).map_err(unavailable)
    }

    fn set(&mut self, key: String, value: String) -> Result<(), KvError> {
        self.check_key(&key)?;
        self.check_value(&value)?;
        self.wait
            .measure(|| self.store.kv_set(&self.namespace, &key, &value))
            .map_err(unavailable)
    }

    fn insert_if_absent(&mut self, key: String, value: String) -> Result<bool, KvError> {
        self.check_key(&key)?;
        self.check_value(&value)?;
        self.wait
            .measure(|| self.store.kv_insert_if_absent(&self.namespace, &key, &value))
            .map_err(unavailable)
    }

    fn delete_if_equals(&mut self, key: String, expected: String) -> Result<bool, KvError> {
        self.check_key(&key)?;
        self.wait
            .measure(|| self.store.kv_delete_if_equals(&self.namespace, &key, &expected))
            .map_err(unavailable)
    }

    fn delete(&mut self, key: String) -> Result<(), KvError> {
        self.check_key(&key)?;
        self.wait
            .measure(|| self.store.kv_delete(&self.namespace, &key))
            .map_err(unavailable)
    }

    fn scan(&mut self, prefix: String) -> Result<Vec<(String, String)>, KvError> {
        let entries = self
            .wait
            .measure(|| self.store.kv_scan(&self.namespace, &prefix))
            .map_err(unavailable)?;
        if entries.len() > MAX_SCAN_ENTRIES {
            return Err(KvError::Denied(format!(
                "scan of `{prefix}` matches {} entries, more than {MAX_SCAN_ENTRIES}; use a narrower prefix",
                entries.len()
            )));
        }
        Ok(entries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SqliteStore;

    #[test]
    fn limits_are_denied_not_trapped_and_namespaces_isolate() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store: Arc<dyn StateStore> = Arc::new(SqliteStore::open(&dir.path().join("s.db")).expect("open"));
        let mut a = GuestKv::new(store.clone(), "inst/a".into(), HostWait::default());
        let mut b = GuestKv::new(store, "inst/b".into(), HostWait::default());
        assert!(matches!(a.set("k".repeat(MAX_KEY_BYTES + 1), "v".into()), Err(KvError::Denied(_))));
        assert!(matches!(
            a.set("k".into(), "v".repeat(MAX_VALUE_BYTES + 1)),
            Err(KvError::Denied(_))
        ));
        a.set("k".into(), "1".into()).expect("set");
        assert_eq!(b.get("k".into()).expect("get"), None);
        assert_eq!(a.get("k".into()).expect("get"), Some("1".into()));
    }
}
