//! `kv` capability: durable key-value state in the host's store, one namespace per guest
//! and provider instance, with size limits checked before anything is written.

use std::sync::Arc;

use crate::engine::bindings::hostfactory::capabilities::kv::{self as wit, Host, KvError};
use crate::engine::sandbox::HostWait;
use crate::store::{StateStore, StoreError};

/// The kv capability's row of [`super::TABLE`].
pub const UNIT: super::Unit = super::Unit {
    name: "kv",
    wit: super::Wit::Own,
    about: "durable key-value state in the host's store",
    check_settings: None,
    link: |l| wit::add_to_linker::<_, wasmtime::component::HasSelf<GuestKv>>(l, |s| s.slot::<GuestKv>()),
    build: |l| Ok(Box::new(GuestKv::new(l.store.clone(), l.namespace.to_string(), l.wait.clone()))),
};

/// Longest key a guest may use.
pub const MAX_KEY_BYTES: usize = 512;
/// The read-only key whose value is the store's id (`store::store_id`), for guests that tag
/// what they make the way the host tags EC2 instances (`hfwasm:store`).
pub const STORE_ID_KEY: &str = "hfwasm:store-id";
/// Largest value a guest may store.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;
/// Most entries one scan returns.
pub const MAX_SCAN_ENTRIES: usize = 100_000;
/// Most bytes (keys and values) one scan returns; the store stops reading there.
pub const MAX_SCAN_BYTES: usize = 16 << 20;
/// Most bytes (keys and values) one guest instance may write in one call: a guest writing
/// in a loop wrote 6 GB into the store in one call.
pub const MAX_WRITE_BYTES_PER_CALL: usize = 64 << 20;

/// Per-guest state of the kv capability.
pub struct GuestKv {
    store: Arc<dyn StateStore>,
    namespace: String,
    wait: HostWait,
    /// Bytes written so far in this process's call.
    written: usize,
    /// Entries added so far in this call (each write counted as new: an upper bound).
    added: usize,
    /// (entries, bytes) the namespace held when this call first wrote, read once per call.
    usage: Option<(usize, usize)>,
}

impl GuestKv {
    /// Guest kv over `store`, confined to `namespace` (`<provider instance>/<guest>`).
    pub fn new(store: Arc<dyn StateStore>, namespace: String, wait: HostWait) -> Self {
        Self {
            store,
            namespace,
            wait,
            written: 0,
            added: 0,
            usage: None,
        }
    }

    /// Refuses a write or delete of the read-only [`STORE_ID_KEY`].
    fn check_writable(key: &str) -> Result<(), KvError> {
        if key == STORE_ID_KEY {
            return Err(KvError::Denied(format!("`{STORE_ID_KEY}` is read-only (the store's id)")));
        }
        Ok(())
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

    /// Counts a write of `key` and `value` against [`MAX_WRITE_BYTES_PER_CALL`] and the
    /// namespace's quota across calls ([`limits::KV_NAMESPACE_MAX_ENTRIES`] and
    /// [`limits::KV_NAMESPACE_MAX_BYTES`]; the namespace's size is read at the call's first
    /// write). Deletes are never refused, so a guest over its quota can always clean up.
    fn count_write(&mut self, key: &str, value: &str) -> Result<(), KvError> {
        use crate::limits;
        let after = self.written + key.len() + value.len();
        if after > MAX_WRITE_BYTES_PER_CALL {
            return Err(KvError::Denied(format!(
                "this call already wrote {} bytes; at most {MAX_WRITE_BYTES_PER_CALL} per call",
                self.written
            )));
        }
        let (entries, bytes) = match self.usage {
            Some(u) => u,
            None => {
                let u = self.wait.measure(|| self.store.kv_usage(&self.namespace)).map_err(unavailable)?;
                self.usage = Some(u);
                u
            }
        };
        if entries + self.added + 1 > limits::KV_NAMESPACE_MAX_ENTRIES || bytes + after > limits::KV_NAMESPACE_MAX_BYTES {
            return Err(KvError::Denied(format!(
                "namespace `{}` holds {entries} entries and {bytes} bytes (and this call wrote {} bytes); at most {} entries and {} bytes (limits::KV_NAMESPACE_MAX_ENTRIES/_BYTES): delete keys first",
                self.namespace,
                self.written,
                limits::KV_NAMESPACE_MAX_ENTRIES,
                limits::KV_NAMESPACE_MAX_BYTES
            )));
        }
        self.written = after;
        self.added += 1;
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
        if key == STORE_ID_KEY {
            return self
                .wait
                .measure(|| crate::store::store_id(self.store.as_ref()))
                .map(Some)
                .map_err(unavailable);
        }
        self.wait.measure(|| self.store.kv_get(&self.namespace, &key)).map_err(unavailable)
    }

    fn set(&mut self, key: String, value: String) -> Result<(), KvError> {
        self.check_key(&key)?;
        Self::check_writable(&key)?;
        self.check_value(&value)?;
        self.count_write(&key, &value)?;
        self.wait
            .measure(|| self.store.kv_set(&self.namespace, &key, &value))
            .map_err(unavailable)
    }

    fn insert_if_absent(&mut self, key: String, value: String) -> Result<bool, KvError> {
        self.check_key(&key)?;
        Self::check_writable(&key)?;
        self.check_value(&value)?;
        self.count_write(&key, &value)?;
        self.wait
            .measure(|| self.store.kv_insert_if_absent(&self.namespace, &key, &value))
            .map_err(unavailable)
    }

    fn delete_if_equals(&mut self, key: String, expected: String) -> Result<bool, KvError> {
        self.check_key(&key)?;
        Self::check_writable(&key)?;
        self.wait
            .measure(|| self.store.kv_delete_if_equals(&self.namespace, &key, &expected))
            .map_err(unavailable)
    }

    fn delete(&mut self, key: String) -> Result<(), KvError> {
        self.check_key(&key)?;
        Self::check_writable(&key)?;
        self.wait
            .measure(|| self.store.kv_delete(&self.namespace, &key))
            .map_err(unavailable)
    }

    fn scan(&mut self, prefix: String) -> Result<Vec<(String, String)>, KvError> {
        self.wait
            .measure(|| {
                self.store
                    .kv_scan_bounded(&self.namespace, &prefix, MAX_SCAN_ENTRIES, MAX_SCAN_BYTES)
            })
            .map_err(unavailable)?
            .ok_or_else(|| {
                KvError::Denied(format!(
                    "scan of `{prefix}` matches more than {MAX_SCAN_ENTRIES} entries or {MAX_SCAN_BYTES} bytes; use a narrower prefix"
                ))
            })
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

    #[test]
    fn the_store_id_reads_the_same_in_every_namespace_and_cannot_be_changed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store: Arc<dyn StateStore> = Arc::new(SqliteStore::open(&dir.path().join("s.db")).expect("open"));
        let mut a = GuestKv::new(store.clone(), "inst/a".into(), HostWait::default());
        let mut b = GuestKv::new(store.clone(), "inst/b".into(), HostWait::default());
        let id = crate::store::store_id(store.as_ref()).expect("store id");
        assert_eq!(a.get(STORE_ID_KEY.into()).expect("get"), Some(id.clone()));
        assert_eq!(b.get(STORE_ID_KEY.into()).expect("get"), Some(id.clone()));
        assert!(matches!(a.set(STORE_ID_KEY.into(), "mine".into()), Err(KvError::Denied(_))));
        assert!(matches!(
            a.insert_if_absent(STORE_ID_KEY.into(), "mine".into()),
            Err(KvError::Denied(_))
        ));
        assert!(matches!(a.delete(STORE_ID_KEY.into()), Err(KvError::Denied(_))));
        assert!(matches!(
            a.delete_if_equals(STORE_ID_KEY.into(), id.clone()),
            Err(KvError::Denied(_))
        ));
        assert_eq!(b.get(STORE_ID_KEY.into()).expect("get"), Some(id));
    }

    #[test]
    fn one_call_writes_and_scans_a_bounded_volume() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store: Arc<dyn StateStore> = Arc::new(SqliteStore::open(&dir.path().join("s.db")).expect("open"));
        let mut g = GuestKv::new(store, "inst/g".into(), HostWait::default());
        let value = "v".repeat(MAX_VALUE_BYTES);
        let mut stored = 0;
        let refused = loop {
            match g.set(format!("big/{stored:06}"), value.clone()) {
                Ok(()) => stored += 1,
                Err(e) => break e,
            }
            assert!(stored < 10_000, "never refused");
        };
        assert!(matches!(refused, KvError::Denied(ref m) if m.contains("per call")), "{refused:?}");
        assert!(stored * MAX_VALUE_BYTES <= MAX_WRITE_BYTES_PER_CALL);
        // What was stored is more than one scan may carry: refused, not loaded.
        assert!(matches!(g.scan("big/".into()), Err(KvError::Denied(ref m)) if m.contains("narrower prefix")));
        assert_eq!(g.scan("big/00000".into()).expect("small scan").len(), 10);
    }

    #[test]
    fn a_namespace_is_bounded_across_calls_and_deletes_make_room() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store: Arc<dyn StateStore> = Arc::new(SqliteStore::open(&dir.path().join("s.db")).expect("open"));
        let call = || GuestKv::new(store.clone(), "inst/g".into(), HostWait::default());
        let value = "v".repeat(MAX_VALUE_BYTES);
        // One call fills the namespace as far as a call may.
        let mut first = call();
        let mut n = 0;
        while first.set(format!("k/{n:06}"), value.clone()).is_ok() {
            n += 1;
        }
        // The next call finds the namespace full.
        let mut second = call();
        let refused = second.set("one-more".into(), value.clone()).expect_err("over the namespace quota");
        assert!(
            matches!(refused, KvError::Denied(ref m) if m.contains("namespace `inst/g`") && m.contains("delete keys")),
            "{refused:?}"
        );
        // Another guest's namespace is its own; deletes are never refused and make room.
        GuestKv::new(store.clone(), "inst/h".into(), HostWait::default())
            .set("x".into(), "y".into())
            .expect("another namespace");
        for i in 0..10 {
            second.delete(format!("k/{i:06}")).expect("delete");
        }
        call().set("one-more".into(), value).expect("room again");
    }
}
