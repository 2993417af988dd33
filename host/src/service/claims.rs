//! Who acts on a request right now. A live call claims its request before it calls the
//! provider and releases the claim when it has stored the answer; the sweep and a status
//! call's resume act only on a request they could claim. So the sweep never abandons a
//! request whose call is still being served (it judged by age alone, and the live call
//! then overwrote what the sweep had written). A claim of a process that died expires after
//! the longest a call can live (`call_timeout_ms` and the watchdog's margin), after which the
//! request is free again; nothing waits on a dead process for longer.

use crate::store::{StateStore, StoreError};

/// kv namespace of provider instance `instance`'s claims (no guest can name it).
pub fn namespace(instance: &str) -> String {
    crate::store::namespaces::claims(instance)
}

/// A claim held on one request; release it once the request's record is written.
pub struct Claim<'a> {
    store: &'a dyn StateStore,
    namespace: String,
    key: String,
    value: String,
}

/// Claims `request_id` until `now + hold_secs`: Some when this caller holds it now, None
/// when another live call does. An expired claim (its process died) is taken over.
pub fn take<'a>(
    store: &'a dyn StateStore,
    instance: &str,
    request_id: &str,
    now: u64,
    hold_secs: u64,
) -> Result<Option<Claim<'a>>, StoreError> {
    let namespace = namespace(instance);
    let key = format!("req/{request_id}");
    let value = format!("{}:{}", now.saturating_add(hold_secs), uuid::Uuid::new_v4().simple());
    let claim = || Claim {
        store,
        namespace: namespace.clone(),
        key: key.clone(),
        value: value.clone(),
    };
    if store.kv_insert_if_absent(&namespace, &key, &value)? {
        return Ok(Some(claim()));
    }
    let Some(held) = store.kv_get(&namespace, &key)? else {
        return Ok(store.kv_insert_if_absent(&namespace, &key, &value)?.then(claim));
    };
    let until: u64 = held.split(':').next().and_then(|t| t.parse().ok()).unwrap_or(0);
    if until > now {
        return Ok(None);
    }
    tracing::warn!(request_id, "taking over the claim of a call that did not finish");
    Ok((store.kv_delete_if_equals(&namespace, &key, &held)? && store.kv_insert_if_absent(&namespace, &key, &value)?).then(claim))
}

impl Claim<'_> {
    /// Gives the request back (only this claim: a taken-over one is not touched).
    pub fn release(self) {
        if let Err(e) = self.store.kv_delete_if_equals(&self.namespace, &self.key, &self.value) {
            // It expires by itself; nothing is held for longer than a call lives.
            tracing::warn!(error = %e, key = %self.key, "cannot release a request claim");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SqliteStore;

    #[test]
    fn one_holder_at_a_time_and_dead_holders_expire() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(&dir.path().join("s.db")).expect("store");
        let a = take(&store, "i", "req-1", 100, 60).expect("take").expect("free");
        assert!(take(&store, "i", "req-1", 120, 60).expect("take").is_none(), "held");
        a.release();
        let b = take(&store, "i", "req-1", 130, 60).expect("take").expect("free again");
        drop(b); // its process dies without releasing
        assert!(take(&store, "i", "req-1", 189, 60).expect("take").is_none(), "not yet expired");
        assert!(take(&store, "i", "req-1", 191, 60).expect("take").is_some(), "expired: taken over");
    }
}
