//! Durable state: requests, their machines, and guests' kv entries. One trait, backends
//! chosen by config; the service layer never knows which one it talks to.

#[doc(hidden)]
pub mod behaviour;
pub mod check;
pub mod document;
pub mod dynamodb;
pub mod json;
pub mod namespaces;
pub mod pg_tls;
pub mod postgres;
pub mod sqlite;

use std::collections::HashMap;
use std::path::PathBuf;

use crate::domain::lifecycle::RequestStatus;
use crate::domain::model::Machine;

pub use document::{Document, Summary};
pub use dynamodb::{DynamoSettings, DynamoStore};
pub use json::{JsonLayout, JsonStore};
pub use pg_tls::SslMode;
pub use postgres::{PgSettings, PgStore};
pub use sqlite::{SqliteStore, Synchronous};

/// Newest schema this binary knows (every backend, and the export format).
pub const SCHEMA_VERSION: i64 = 3;

/// Which backend holds the state and where: built from config, opened by [`open`].
#[derive(Debug, Clone)]
pub enum StoreSpec {
    /// SQLite file (the embedded default).
    Sqlite {
        /// Database file.
        path: PathBuf,
        /// Durability setting.
        synchronous: Synchronous,
    },
    /// JSON files in a directory (the seed's `json` strategy).
    Json {
        /// Directory of the files.
        dir: PathBuf,
        /// One file or one per table.
        layout: JsonLayout,
    },
    /// A PostgreSQL database (the seed's `sql_strategy` with `type: postgresql`).
    Postgres(PgSettings),
    /// DynamoDB tables (the seed's `storage: {type: dynamodb}`).
    Dynamodb(DynamoSettings),
}

impl StoreSpec {
    /// One line for humans: backend and location, never a password.
    pub fn describe(&self) -> String {
        match self {
            StoreSpec::Sqlite { path, synchronous } => format!("sqlite {} (synchronous {synchronous:?})", path.display()),
            StoreSpec::Json { dir, layout } => format!("json {} ({})", dir.display(), layout.as_str()),
            StoreSpec::Postgres(pg) => format!("postgresql {} (pool {})", pg.location(), pg.pool_size),
            StoreSpec::Dynamodb(d) => format!(
                "dynamodb {}{}",
                d.location(),
                if d.backup { " (point-in-time recovery)" } else { "" }
            ),
        }
    }
}

/// Opens (creating and migrating as needed) the store `spec` names.
pub fn open(spec: &StoreSpec) -> Result<Box<dyn StateStore>, StoreError> {
    Ok(match spec {
        StoreSpec::Sqlite { path, synchronous } => Box::new(SqliteStore::open_with(path, *synchronous)?),
        StoreSpec::Json { dir, layout } => Box::new(JsonStore::open(dir, *layout)?),
        StoreSpec::Postgres(pg) => Box::new(PgStore::open(pg)?),
        StoreSpec::Dynamodb(d) => Box::new(DynamoStore::open(d)?),
    })
}

/// Backend facts for `hfwasm store check`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BackendReport {
    /// `sqlite`, `json`, `postgresql` or `dynamodb`.
    pub backend: &'static str,
    /// Where it lives (never with a password).
    pub location: String,
    /// Schema version found.
    pub schema_version: i64,
    /// Bytes on disk (or in the database), when known.
    pub size_bytes: Option<u64>,
    /// What the backend's own integrity check found.
    pub problems: Vec<String>,
}

/// Provision or return.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    /// requestMachines.
    Provision,
    /// requestReturnMachines.
    Return,
}

impl RequestKind {
    /// Store spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            RequestKind::Provision => "provision",
            RequestKind::Return => "return",
        }
    }
}

/// How far the provider got with a request: the write-ahead record is `Accepted` before the
/// provider acts, `Submitted` once its answer is stored. An `Accepted` record found later
/// means a crash in between, and the next status call resumes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Recorded; the provider has not (durably) acted yet.
    Accepted,
    /// The provider acted and its answer is stored.
    Submitted,
}

impl Phase {
    /// Store spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Accepted => "accepted",
            Phase::Submitted => "submitted",
        }
    }
}

/// One request as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    /// Request id (`req-…` or `ret-…`).
    pub id: String,
    /// Provision or return.
    pub kind: RequestKind,
    /// Template (provision only).
    pub template_id: Option<String>,
    /// Units requested (provision) or hosts to return.
    pub count: u32,
    /// LSF `rc_account`.
    pub rc_account: Option<String>,
    /// Write-ahead phase.
    pub phase: Phase,
    /// Last derived HostFactory status.
    pub status: RequestStatus,
    /// Units the provider still seeks.
    pub outstanding: u32,
    /// Message for HostFactory.
    pub message: Option<String>,
    /// Creation time, epoch seconds.
    pub created_at: u64,
    /// Last change, epoch seconds.
    pub updated_at: u64,
    /// HostFactory asked about this id (or the sweep settled it). A provision request never
    /// claimed after `abandon_after_secs` belongs to a call that died before HostFactory
    /// read its answer: nobody will ever return its machines, so the sweep does.
    pub claimed: bool,
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be opened, read or written.
    #[error("state store {location}: {message}")]
    Backend {
        /// Where the store lives (file path, database URL without password).
        location: String,
        /// What failed.
        message: String,
    },
    /// The store was written by a newer hfwasm.
    #[error(
        "state store {location} has schema version {found}, but this hfwasm knows up to {known}; upgrade hfwasm or point it at another store"
    )]
    SchemaTooNew {
        /// Where the store lives.
        location: String,
        /// Version found.
        found: i64,
        /// Newest version this binary knows.
        known: i64,
    },
    /// The database server could not be reached or refused us; `setting` is the config key
    /// (or `PG*` variable) to look at.
    #[error("state store {location}: {message} (check `{setting}`)")]
    Connect {
        /// Where the store lives (no password).
        location: String,
        /// The setting most likely wrong.
        setting: String,
        /// What the server or network said.
        message: String,
    },
    /// An import into a store that already holds state.
    #[error(
        "state store {location} already holds {requests} request(s) and {kv} kv entr(y/ies); import only into an empty store so nothing is overwritten"
    )]
    NotEmpty {
        /// Where the store lives.
        location: String,
        /// Requests found.
        requests: usize,
        /// kv entries found.
        kv: usize,
    },
    /// A stored row could not be understood.
    #[error("state store {location}: corrupt record: {message}")]
    Corrupt {
        /// Where the store lives.
        location: String,
        /// What is wrong.
        message: String,
    },
}

/// The one interface to durable state. Every method is one transaction.
pub trait StateStore: Send + Sync {
    /// Records a new request and its initial machines (write-ahead, before any provider acts).
    fn insert_request(&self, rec: &RequestRecord, machines: &[Machine]) -> Result<(), StoreError>;
    /// The request `id`, if known.
    fn request(&self, id: &str) -> Result<Option<RequestRecord>, StoreError>;
    /// The machines of request `id`, in the order first recorded.
    fn machines(&self, request_id: &str) -> Result<Vec<Machine>, StoreError>;
    /// Stores a request's new state and machines; rows that did not change are not rewritten.
    fn update_request(&self, rec: &RequestRecord, machines: &[Machine]) -> Result<(), StoreError>;
    /// Several requests with their machines (an unknown id is absent): a status call over
    /// 1,000 requests reads them in two round trips on a server store, not 2,000.
    fn requests_with_machines(&self, ids: &[String]) -> Result<HashMap<String, (RequestRecord, Vec<Machine>)>, StoreError> {
        one_by_one(self, ids)
    }
    /// [`StateStore::update_request`] of several requests in one transaction (a status
    /// call's writes), in a few round trips on a server store.
    fn update_requests(&self, updates: &[(RequestRecord, Vec<Machine>)]) -> Result<(), StoreError> {
        for (rec, machines) in updates {
            self.update_request(rec, machines)?;
        }
        Ok(())
    }
    /// Requests the sweep settles. Created before `before` whose call died before
    /// HostFactory learnt their id: still `Accepted` (recorded, never answered), or
    /// provision requests never claimed. And open returns HostFactory never polled (never
    /// claimed: it never learnt their id, or the host started them) last updated before
    /// `before`: nobody else follows them up.
    /// Oldest first.
    fn stale_requests(&self, before: u64) -> Result<Vec<RequestRecord>, StoreError>;
    /// Provision requests holding machines named `name` (newest first).
    fn provision_holders(&self, name: &str) -> Result<Vec<(String, Machine)>, StoreError>;
    /// [`StateStore::provision_holders`] of several hosts at once (a host with none is
    /// absent): one round trip on a server, where a return or reclaim check over hundreds
    /// of hosts would otherwise make one each.
    fn provision_holders_of(&self, names: &[String]) -> Result<HashMap<String, Vec<(String, Machine)>>, StoreError> {
        let mut out = HashMap::new();
        for name in names {
            let holders = self.provision_holders(name)?;
            if !holders.is_empty() {
                out.insert(name.clone(), holders);
            }
        }
        Ok(out)
    }

    /// kv: value of `key` in `namespace`.
    fn kv_get(&self, namespace: &str, key: &str) -> Result<Option<String>, StoreError>;
    /// kv: set `key`.
    fn kv_set(&self, namespace: &str, key: &str, value: &str) -> Result<(), StoreError>;
    /// kv: set `key` only if absent; true when stored. Atomic across processes.
    fn kv_insert_if_absent(&self, namespace: &str, key: &str, value: &str) -> Result<bool, StoreError>;
    /// kv: delete `key` only while it holds `expected`; true when deleted.
    fn kv_delete_if_equals(&self, namespace: &str, key: &str, expected: &str) -> Result<bool, StoreError>;
    /// kv: delete `key`.
    fn kv_delete(&self, namespace: &str, key: &str) -> Result<(), StoreError>;
    /// kv: all entries whose key starts with `prefix`, in key order (byte order).
    fn kv_scan(&self, namespace: &str, prefix: &str) -> Result<Vec<(String, String)>, StoreError>;

    /// kv: as [`StateStore::kv_scan`], but None as soon as the entries pass `max_entries`
    /// or their keys and values `max_bytes`, having read no further (a guest's scan must
    /// not load a namespace of gigabytes into the host to find it is too large).
    fn kv_scan_bounded(
        &self,
        namespace: &str,
        prefix: &str,
        max_entries: usize,
        max_bytes: usize,
    ) -> Result<Option<Vec<(String, String)>>, StoreError> {
        let all = self.kv_scan(namespace, prefix)?;
        within_bounds(all.into_iter().map(Ok), max_entries, max_bytes)
    }

    /// kv: how many entries `namespace` holds and their bytes (keys and values), for the
    /// per-namespace quota. Counted in the store, without reading the values out.
    fn kv_usage(&self, namespace: &str) -> Result<(usize, usize), StoreError> {
        let all = self.kv_scan(namespace, "")?;
        Ok((all.len(), all.iter().map(|(k, v)| k.len() + v.len()).sum()))
    }

    /// Deletes up to `limit` finished requests (final status) last changed before `before`,
    /// with their machines, oldest first; returns how many went. Keeps a store small after
    /// a year of 30-second polling. A provision request goes only once none of its machines
    /// is still held (each is terminated or failed, or was named by a finished return made
    /// after it, in a later second: one made in the same second cannot be told from one made
    /// before it, when an on-prem host's name is leased again at once); a return request only once no provision request made before it still
    /// holds one of its machines. So the store never forgets a machine the cluster uses.
    fn prune_finished(&self, before: u64, limit: usize) -> Result<usize, StoreError>;
    /// Everything stored, as one document (`store export`, `store check`).
    fn export(&self) -> Result<Document, StoreError>;
    /// Loads `doc` in one transaction into this store, which must be empty
    /// ([`StoreError::NotEmpty`] otherwise).
    fn import(&self, doc: &Document) -> Result<(), StoreError>;
    /// Backend, location, size and the backend's own integrity check.
    fn inspect(&self) -> Result<BackendReport, StoreError>;
}

/// Refuses an import document written by a newer hfwasm.
pub(crate) fn check_import_version(location: &str, doc: &Document) -> Result<(), StoreError> {
    if doc.schema_version > SCHEMA_VERSION {
        return Err(StoreError::SchemaTooNew {
            location: location.to_string(),
            found: doc.schema_version,
            known: SCHEMA_VERSION,
        });
    }
    Ok(())
}

/// The DELETE of [`StateStore::prune_finished`] for the SQL stores, with their parameter
/// spellings (`?1`/`$1` for the cut, `?2`/`$2` for the limit) and row-lock clause; the JSON
/// store states the same rule as `document::releasable`.
fn prune_sql(before: &str, limit: &str, lock: &str) -> String {
    format!(
        "DELETE FROM requests WHERE id IN (
            SELECT r.id FROM requests r
            WHERE r.status IN ('complete', 'complete_with_error') AND r.updated_at < {before}
              AND CASE r.kind
                WHEN 'provision' THEN NOT EXISTS (
                  SELECT 1 FROM machines m WHERE m.request_id = r.id AND m.state NOT IN ('terminated', 'failed')
                    AND NOT EXISTS (
                      SELECT 1 FROM machines rm JOIN requests rr ON rr.id = rm.request_id
                      WHERE rm.name = m.name AND rr.kind = 'return' AND rr.created_at > r.created_at
                        AND rr.status IN ('complete', 'complete_with_error')))
                ELSE NOT EXISTS (
                  SELECT 1 FROM machines rm JOIN machines pm ON pm.name = rm.name JOIN requests pr ON pr.id = pm.request_id
                  WHERE rm.request_id = r.id AND pr.kind = 'provision' AND pr.created_at <= r.created_at)
              END
            ORDER BY r.updated_at LIMIT {limit}{lock})"
    )
}

/// The kv entry holding a store's id, made once per store.
const STORE_ID_KEY: (&str, &str) = (namespaces::STORE, "id");

/// This store's id, made on first use. Everything an installation launches is tagged with
/// it, so its orphan scan never judges another cluster's machines that share the provider
/// instance name and the cloud account but not the store.
pub fn store_id(store: &dyn StateStore) -> Result<String, StoreError> {
    let (ns, key) = STORE_ID_KEY;
    // A read on every call; the one write happens once per store.
    if let Some(id) = store.kv_get(ns, key)? {
        return Ok(id);
    }
    store.kv_insert_if_absent(ns, key, &uuid::Uuid::new_v4().to_string())?;
    Ok(store.kv_get(ns, key)?.unwrap_or_default())
}

/// Collects `rows` until they pass `max_entries` or `max_bytes` (None then, reading no
/// further): the bounded kv scan of every backend.
pub fn within_bounds<E>(
    rows: impl Iterator<Item = Result<(String, String), E>>,
    max_entries: usize,
    max_bytes: usize,
) -> Result<Option<Vec<(String, String)>>, E> {
    let mut b = ScanBounds::new(max_entries, max_bytes);
    for row in rows {
        let (k, v) = row?;
        if !b.push(k, v) {
            return Ok(None);
        }
    }
    Ok(Some(b.rows))
}

/// The rows of a bounded kv scan as they arrive (a store reading pages keeps one across
/// them): [`ScanBounds::push`] says false, taking nothing more, once the rows pass
/// `max_entries` or their keys and values `max_bytes`.
pub(crate) struct ScanBounds {
    /// The rows taken so far.
    pub rows: Vec<(String, String)>,
    bytes: usize,
    max_entries: usize,
    max_bytes: usize,
}

impl ScanBounds {
    /// Empty, with the bounds of the scan.
    pub(crate) fn new(max_entries: usize, max_bytes: usize) -> Self {
        Self {
            rows: Vec::new(),
            bytes: 0,
            max_entries,
            max_bytes,
        }
    }

    /// Takes one row; false once past a bound.
    pub(crate) fn push(&mut self, key: String, value: String) -> bool {
        self.bytes = self.bytes.saturating_add(key.len() + value.len());
        if self.rows.len() >= self.max_entries || self.bytes > self.max_bytes {
            return false;
        }
        self.rows.push((key, value));
        true
    }
}

/// [`StateStore::requests_with_machines`] as a request and a machines read per id: the
/// default for stores where a read is cheap (embedded ones).
pub fn one_by_one<S: StateStore + ?Sized>(store: &S, ids: &[String]) -> Result<HashMap<String, (RequestRecord, Vec<Machine>)>, StoreError> {
    let mut out = HashMap::with_capacity(ids.len());
    for id in ids {
        if let Some(rec) = store.request(id)? {
            out.insert(id.clone(), (rec, store.machines(id)?));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::behaviour::{self, Opener};
    use super::*;

    /// Fresh stores of one kind, each in its own temp dir (kept until the test ends).
    fn fresh(dirs: &mut Vec<tempfile::TempDir>, open: fn(&std::path::Path) -> Result<Box<dyn StateStore>, StoreError>) -> Opener {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().to_path_buf();
        dirs.push(dir);
        Arc::new(move || open(&path))
    }

    #[test]
    fn sqlite_behaves() {
        let mut dirs = Vec::new();
        behaviour::run_all(&mut || fresh(&mut dirs, |p| Ok(Box::new(SqliteStore::open(&p.join("s.db"))?))));
    }

    #[test]
    fn json_single_file_behaves() {
        let mut dirs = Vec::new();
        behaviour::run_all(&mut || fresh(&mut dirs, |p| Ok(Box::new(JsonStore::open(p, JsonLayout::SingleFile)?))));
    }

    #[test]
    fn json_split_files_behaves() {
        let mut dirs = Vec::new();
        behaviour::run_all(&mut || fresh(&mut dirs, |p| Ok(Box::new(JsonStore::open(p, JsonLayout::SplitFiles)?))));
    }

    #[test]
    fn json_files_are_readable_and_only_changed_files_are_rewritten() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = JsonStore::open(dir.path(), JsonLayout::SplitFiles).expect("open");
        s.insert_request(&behaviour::record("req-1", RequestKind::Provision, 1), &[])
            .expect("insert");
        s.kv_set("ns", "k", "v").expect("kv");
        let text = std::fs::read_to_string(dir.path().join("requests.json")).expect("requests.json");
        assert!(text.contains("\"id\": \"req-1\""), "pretty-printed: {text}");
        let modified = |f: &str| std::fs::metadata(dir.path().join(f)).and_then(|m| m.modified()).expect("mtime");
        let before = (modified("requests.json"), modified("kv.json"));
        std::thread::sleep(std::time::Duration::from_millis(20));
        s.kv_set("ns", "k", "v2").expect("kv change");
        assert_eq!(modified("requests.json"), before.0, "requests.json untouched by a kv change");
        assert_ne!(modified("kv.json"), before.1);
        let again = modified("kv.json");
        std::thread::sleep(std::time::Duration::from_millis(20));
        s.kv_set("ns", "k", "v2").expect("no change");
        assert_eq!(modified("kv.json"), again, "an unchanged value is not rewritten");
    }

    #[test]
    fn json_newer_schema_and_corrupt_files_are_clear_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("hfwasm-state.json"), r#"{"schema_version": 99, "requests": []}"#).expect("write");
        assert!(matches!(
            JsonStore::open(dir.path(), JsonLayout::SingleFile),
            Err(StoreError::SchemaTooNew { found: 99, .. })
        ));
        std::fs::write(dir.path().join("hfwasm-state.json"), "{ not json").expect("write");
        let e = JsonStore::open(dir.path(), JsonLayout::SingleFile).err().expect("corrupt");
        assert!(
            matches!(e, StoreError::Corrupt { .. }) && e.to_string().contains("hfwasm-state.json"),
            "{e}"
        );
    }
}
