//! Who of several `hfwasm serve` replicas on one store runs the background reconciler: a
//! lease in the store's kv (`<holder> <expires-at>`), taken when absent or expired and
//! renewed by its holder, with the store's atomic insert-if-absent and delete-if-equals as
//! the only primitives, so it works the same on PostgreSQL, SQLite and the JSON store. A
//! replica that dies stops renewing; another takes the lease once it expires. No consensus
//! of our own: two replicas racing for an expired lease see one winner, the store's.

use crate::store::{StateStore, StoreError, namespaces};

/// The one key of the lease namespace.
const KEY: &str = "leader";

/// A replica's claim on the reconciler lease of one provider instance.
pub struct Lease<'a> {
    store: &'a dyn StateStore,
    namespace: String,
    holder: String,
    ttl_secs: u64,
}

impl<'a> Lease<'a> {
    /// `holder` names this replica (unique across replicas); a lease lasts `ttl_secs`
    /// unless renewed.
    pub fn new(store: &'a dyn StateStore, instance: &str, holder: &str, ttl_secs: u64) -> Self {
        Self {
            store,
            namespace: namespaces::lease(instance),
            holder: holder.to_string(),
            ttl_secs,
        }
    }

    /// Takes or renews the lease at `now`; returns whether this replica holds it until
    /// `now + ttl`. Another holder's unexpired lease is left alone.
    pub fn acquire(&self, now: u64) -> Result<bool, StoreError> {
        let mine = format!("{} {}", self.holder, now.saturating_add(self.ttl_secs));
        if let Some(old) = self.store.kv_get(&self.namespace, KEY)? {
            let (who, until) = old.rsplit_once(' ').unwrap_or((old.as_str(), "0"));
            let expired = until.parse::<u64>().map_or(true, |u| u <= now);
            if who != self.holder && !expired {
                return Ok(false);
            }
            // Ours to renew, or expired: replace it only while it is still what we read.
            if !self.store.kv_delete_if_equals(&self.namespace, KEY, &old)? {
                return Ok(false);
            }
        }
        self.store.kv_insert_if_absent(&self.namespace, KEY, &mine)
    }

    /// Gives the lease up (a replica stopping), if this replica still holds it.
    pub fn release(&self) -> Result<(), StoreError> {
        if let Some(old) = self.store.kv_get(&self.namespace, KEY)?
            && old.rsplit_once(' ').is_some_and(|(who, _)| who == self.holder)
        {
            self.store.kv_delete_if_equals(&self.namespace, KEY, &old)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::Lease;

    #[test]
    fn one_holder_at_a_time_renewed_by_it_taken_over_when_it_expires() {
        let dir = tempfile::tempdir().expect("dir");
        let store = crate::store::sqlite::SqliteStore::open(&dir.path().join("s.db")).expect("store");
        let a = Lease::new(&store, "pool", "replica-a", 30);
        let b = Lease::new(&store, "pool", "replica-b", 30);
        assert!(a.acquire(100).expect("a"), "free: a takes it");
        assert!(!b.acquire(101).expect("b"), "a holds it");
        assert!(a.acquire(120).expect("a renews"), "a renews (now until 150)");
        assert!(!b.acquire(140).expect("b"), "renewed: still a's");
        assert!(b.acquire(151).expect("b"), "a stopped renewing: b takes it after expiry");
        assert!(!a.acquire(152).expect("a"), "a, back, does not take it from b");
        b.release().expect("release");
        assert!(a.acquire(153).expect("a"), "released: a takes it at once");
        b.release().expect("b releases nothing it does not hold");
        assert!(!b.acquire(154).expect("b"), "still a's");
    }
}
