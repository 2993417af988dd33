//! The embedded default store: SQLite in WAL mode in the provider work dir. Writers take
//! the database lock up front (`BEGIN IMMEDIATE`) and wait for each other, so parallel
//! HostFactory calls in separate processes serialise their state changes safely.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::{Phase, RequestKind, RequestRecord, StateStore, StoreError};
use crate::service::lifecycle::RequestStatus;
use crate::service::model::{Machine, MachineState};

/// Newest schema this binary knows.
const SCHEMA_VERSION: i64 = 1;

/// How long a writer waits for another process's transaction before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

const SCHEMA_V1: &str = "
CREATE TABLE requests (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    template_id TEXT,
    count INTEGER NOT NULL,
    rc_account TEXT,
    phase TEXT NOT NULL,
    status TEXT NOT NULL,
    outstanding INTEGER NOT NULL,
    message TEXT,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE TABLE machines (
    request_id TEXT NOT NULL REFERENCES requests(id) ON DELETE CASCADE,
    seq INTEGER NOT NULL,
    machine_id TEXT NOT NULL,
    name TEXT NOT NULL,
    private_ip TEXT NOT NULL,
    public_ip TEXT,
    launch_time INTEGER NOT NULL,
    state TEXT NOT NULL,
    message TEXT,
    PRIMARY KEY (request_id, machine_id)
);
CREATE INDEX machines_by_name ON machines(name);
CREATE INDEX requests_by_phase ON requests(phase, created_at);
CREATE TABLE kv (
    namespace TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (namespace, key)
);
";

/// How hard SQLite works to keep the newest commits across a power loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Synchronous {
    /// WAL without fsync per commit: survives process crashes (kill -9) with nothing lost
    /// and never corrupts; a power loss can roll back the newest commits. The default.
    #[default]
    Normal,
    /// fsync per commit: commits also survive power loss; about 2-3 ms more per write call.
    Full,
}

impl Synchronous {
    fn pragma(self) -> &'static str {
        match self {
            Synchronous::Normal => "NORMAL",
            Synchronous::Full => "FULL",
        }
    }
}

/// SQLite-backed [`StateStore`].
pub struct SqliteStore {
    path: PathBuf,
    conn: Mutex<Connection>,
}

impl SqliteStore {
    /// Opens (creating and migrating as needed) the database at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_with(path, Synchronous::default())
    }

    /// Opens the database at `path` with the given durability.
    pub fn open_with(path: &Path, sync: Synchronous) -> Result<Self, StoreError> {
        let location = path.display().to_string();
        let err = |e: rusqlite::Error| StoreError::Backend {
            location: location.clone(),
            message: e.to_string(),
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| StoreError::Backend {
                location: location.clone(),
                message: format!("cannot create directory {}: {e}", dir.display()),
            })?;
        }
        let conn = Connection::open(path).map_err(err)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(err)?;
        // Switching a new database to WAL needs an exclusive lock, and SQLite answers that
        // pragma with "database is locked" at once (no busy handler) while another process
        // creates the same store: retry within the busy timeout. WAL is persistent, so this
        // only ever races on a store's first use.
        retry_busy(|| {
            let mode: String = conn.pragma_query_value(None, "journal_mode", |r| r.get(0))?;
            if !mode.eq_ignore_ascii_case("wal") {
                conn.pragma_update(None, "journal_mode", "WAL")?;
            }
            Ok(())
        })
        .map_err(err)?;
        conn.pragma_update(None, "synchronous", sync.pragma()).map_err(err)?;
        conn.pragma_update(None, "foreign_keys", "ON").map_err(err)?;
        // Every HostFactory call is a new process. By default the last connection to close
        // checkpoints the WAL (with fsync) and deletes the -wal/-shm files, which the next
        // process recreates: most of a call's cost. Keep them; writers checkpoint
        // automatically as the WAL grows (every 1000 pages).
        conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)
            .map_err(err)?;
        let store = Self {
            path: path.to_path_buf(),
            conn: Mutex::new(conn),
        };
        retry_busy_store(|| store.migrate())?;
        Ok(store)
    }

    fn location(&self) -> String {
        self.path.display().to_string()
    }

    fn backend(&self, e: impl std::fmt::Display) -> StoreError {
        StoreError::Backend {
            location: self.location(),
            message: e.to_string(),
        }
    }

    fn corrupt(&self, message: String) -> StoreError {
        StoreError::Corrupt {
            location: self.location(),
            message,
        }
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Connection>, StoreError> {
        self.conn
            .lock()
            .map_err(|_| self.backend("connection lock poisoned by an earlier panic"))
    }

    fn migrate(&self) -> Result<(), StoreError> {
        let mut conn = self.lock()?;
        // Common case first, without the write lock: the schema is current.
        let current: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(|e| self.backend(e))?;
        if current == SCHEMA_VERSION {
            return Ok(());
        }
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| self.backend(e))?;
        let version: i64 = tx
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(|e| self.backend(e))?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::SchemaTooNew {
                location: self.location(),
                found: version,
                known: SCHEMA_VERSION,
            });
        }
        if version < 1 {
            tx.execute_batch(SCHEMA_V1).map_err(|e| self.backend(e))?;
            tx.pragma_update(None, "user_version", SCHEMA_VERSION)
                .map_err(|e| self.backend(e))?;
        }
        tx.commit().map_err(|e| self.backend(e))
    }

    fn read_request(&self, row: &rusqlite::Row<'_>) -> rusqlite::Result<RawRequest> {
        Ok(RawRequest {
            id: row.get(0)?,
            kind: row.get(1)?,
            template_id: row.get(2)?,
            count: row.get(3)?,
            rc_account: row.get(4)?,
            phase: row.get(5)?,
            status: row.get(6)?,
            outstanding: row.get(7)?,
            message: row.get(8)?,
            created_at: row.get(9)?,
            updated_at: row.get(10)?,
        })
    }

    fn to_record(&self, r: RawRequest) -> Result<RequestRecord, StoreError> {
        let kind = match r.kind.as_str() {
            "provision" => RequestKind::Provision,
            "return" => RequestKind::Return,
            other => return Err(self.corrupt(format!("request {}: unknown kind '{other}'", r.id))),
        };
        let phase = match r.phase.as_str() {
            "accepted" => Phase::Accepted,
            "submitted" => Phase::Submitted,
            other => return Err(self.corrupt(format!("request {}: unknown phase '{other}'", r.id))),
        };
        let status =
            RequestStatus::parse(&r.status).ok_or_else(|| self.corrupt(format!("request {}: unknown status '{}'", r.id, r.status)))?;
        let num = |v: i64, what: &str| u32::try_from(v).map_err(|_| self.corrupt(format!("request {}: {what} {v} out of range", r.id)));
        let time = |v: i64, what: &str| u64::try_from(v).map_err(|_| self.corrupt(format!("request {}: {what} {v} out of range", r.id)));
        Ok(RequestRecord {
            count: num(r.count, "count")?,
            outstanding: num(r.outstanding, "outstanding")?,
            created_at: time(r.created_at, "created_at")?,
            updated_at: time(r.updated_at, "updated_at")?,
            id: r.id,
            kind,
            template_id: r.template_id,
            rc_account: r.rc_account,
            phase,
            status,
            message: r.message,
        })
    }

    fn read_machine(row: &rusqlite::Row<'_>) -> rusqlite::Result<RawMachine> {
        Ok(RawMachine {
            machine_id: row.get(0)?,
            name: row.get(1)?,
            private_ip: row.get(2)?,
            public_ip: row.get(3)?,
            launch_time: row.get(4)?,
            state: row.get(5)?,
            message: row.get(6)?,
        })
    }

    fn to_machine(&self, m: RawMachine) -> Result<Machine, StoreError> {
        let state =
            MachineState::parse(&m.state).ok_or_else(|| self.corrupt(format!("machine {}: unknown state '{}'", m.machine_id, m.state)))?;
        let launch_time =
            u64::try_from(m.launch_time).map_err(|_| self.corrupt(format!("machine {}: launch time {}", m.machine_id, m.launch_time)))?;
        Ok(Machine {
            machine_id: m.machine_id,
            name: m.name,
            private_ip: m.private_ip,
            public_ip: m.public_ip,
            launch_time,
            state,
            message: m.message,
        })
    }

    fn write_machines(&self, tx: &rusqlite::Transaction<'_>, request_id: &str, machines: &[Machine]) -> Result<(), StoreError> {
        let next_seq: i64 = tx
            .query_row(
                "SELECT COALESCE(MAX(seq), -1) + 1 FROM machines WHERE request_id = ?1",
                [request_id],
                |r| r.get(0),
            )
            .map_err(|e| self.backend(e))?;
        let mut stmt = tx
            .prepare_cached(
                "INSERT INTO machines (request_id, seq, machine_id, name, private_ip, public_ip, launch_time, state, message)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
                 ON CONFLICT (request_id, machine_id) DO UPDATE SET
                    name = excluded.name, private_ip = excluded.private_ip, public_ip = excluded.public_ip,
                    launch_time = excluded.launch_time, state = excluded.state, message = excluded.message
                 WHERE (name, private_ip, public_ip, launch_time, state, message)
                    IS NOT (excluded.name, excluded.private_ip, excluded.public_ip, excluded.launch_time, excluded.state, excluded.message)",
            )
            .map_err(|e| self.backend(e))?;
        for (i, m) in machines.iter().enumerate() {
            let seq = next_seq + i64::try_from(i).unwrap_or(i64::MAX);
            let launch = i64::try_from(m.launch_time).unwrap_or(i64::MAX);
            stmt.execute(params![
                request_id,
                seq,
                m.machine_id,
                m.name,
                m.private_ip,
                m.public_ip,
                launch,
                m.state.as_str(),
                m.message
            ])
            .map_err(|e| self.backend(e))?;
        }
        Ok(())
    }
}

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if matches!(f.code, rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked))
}

/// Runs `f` again while SQLite reports busy/locked, for up to [`BUSY_TIMEOUT`].
fn retry_busy<T>(mut f: impl FnMut() -> rusqlite::Result<T>) -> rusqlite::Result<T> {
    let start = std::time::Instant::now();
    let mut pause = Duration::from_millis(2);
    loop {
        match f() {
            Err(e) if is_busy(&e) && start.elapsed() < BUSY_TIMEOUT => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(50));
            }
            other => return other,
        }
    }
}

/// [`retry_busy`] for the first-use migration, which reports through [`StoreError`].
fn retry_busy_store<T>(mut f: impl FnMut() -> Result<T, StoreError>) -> Result<T, StoreError> {
    let start = std::time::Instant::now();
    loop {
        match f() {
            Err(StoreError::Backend { message, .. }) if message.contains("database is locked") && start.elapsed() < BUSY_TIMEOUT => {
                std::thread::sleep(Duration::from_millis(10));
            }
            other => return other,
        }
    }
}

struct RawRequest {
    id: String,
    kind: String,
    template_id: Option<String>,
    count: i64,
    rc_account: Option<String>,
    phase: String,
    status: String,
    outstanding: i64,
    message: Option<String>,
    created_at: i64,
    updated_at: i64,
}

struct RawMachine {
    machine_id: String,
    name: String,
    private_ip: String,
    public_ip: Option<String>,
    launch_time: i64,
    state: String,
    message: Option<String>,
}

const REQUEST_COLUMNS: &str = "id, kind, template_id, count, rc_account, phase, status, outstanding, message, created_at, updated_at";
const MACHINE_COLUMNS: &str = "machine_id, name, private_ip, public_ip, launch_time, state, message";

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl StateStore for SqliteStore {
    fn insert_request(&self, rec: &RequestRecord, machines: &[Machine]) -> Result<(), StoreError> {
        let mut conn = self.lock()?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| self.backend(e))?;
        tx.execute(
            &format!("INSERT INTO requests ({REQUEST_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)"),
            params![
                rec.id,
                rec.kind.as_str(),
                rec.template_id,
                rec.count,
                rec.rc_account,
                rec.phase.as_str(),
                rec.status.as_str(),
                rec.outstanding,
                rec.message,
                to_i64(rec.created_at),
                to_i64(rec.updated_at)
            ],
        )
        .map_err(|e| self.backend(e))?;
        self.write_machines(&tx, &rec.id, machines)?;
        tx.commit().map_err(|e| self.backend(e))
    }

    fn request(&self, id: &str) -> Result<Option<RequestRecord>, StoreError> {
        let conn = self.lock()?;
        let raw = conn
            .query_row(&format!("SELECT {REQUEST_COLUMNS} FROM requests WHERE id = ?1"), [id], |r| {
                self.read_request(r)
            })
            .optional()
            .map_err(|e| self.backend(e))?;
        drop(conn);
        raw.map(|r| self.to_record(r)).transpose()
    }

    fn machines(&self, request_id: &str) -> Result<Vec<Machine>, StoreError> {
        let conn = self.lock()?;
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT {MACHINE_COLUMNS} FROM machines WHERE request_id = ?1 ORDER BY seq"
            ))
            .map_err(|e| self.backend(e))?;
        let raws = stmt
            .query_map([request_id], Self::read_machine)
            .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
            .map_err(|e| self.backend(e))?;
        raws.into_iter().map(|m| self.to_machine(m)).collect()
    }

    fn update_request(&self, rec: &RequestRecord, machines: &[Machine]) -> Result<(), StoreError> {
        let mut conn = self.lock()?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| self.backend(e))?;
        tx.execute(
            "UPDATE requests SET phase = ?2, status = ?3, outstanding = ?4, message = ?5, updated_at = ?6
             WHERE id = ?1 AND (phase, status, outstanding, message) IS NOT (?2, ?3, ?4, ?5)",
            params![
                rec.id,
                rec.phase.as_str(),
                rec.status.as_str(),
                rec.outstanding,
                rec.message,
                to_i64(rec.updated_at)
            ],
        )
        .map_err(|e| self.backend(e))?;
        self.write_machines(&tx, &rec.id, machines)?;
        tx.commit().map_err(|e| self.backend(e))
    }

    fn stale_requests(&self, before: u64) -> Result<Vec<RequestRecord>, StoreError> {
        let conn = self.lock()?;
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT {REQUEST_COLUMNS} FROM requests WHERE phase = 'accepted' AND created_at < ?1 ORDER BY created_at"
            ))
            .map_err(|e| self.backend(e))?;
        let raws = stmt
            .query_map([to_i64(before)], |r| self.read_request(r))
            .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
            .map_err(|e| self.backend(e))?;
        drop(stmt);
        drop(conn);
        raws.into_iter().map(|r| self.to_record(r)).collect()
    }

    fn provision_holders(&self, name: &str) -> Result<Vec<(String, Machine)>, StoreError> {
        let conn = self.lock()?;
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT m.request_id, {} FROM machines m JOIN requests r ON r.id = m.request_id
                 WHERE m.name = ?1 AND r.kind = 'provision' ORDER BY r.created_at DESC",
                MACHINE_COLUMNS.split(", ").map(|c| format!("m.{c}")).collect::<Vec<_>>().join(", ")
            ))
            .map_err(|e| self.backend(e))?;
        let rows = stmt
            .query_map([name], |r| {
                let id: String = r.get(0)?;
                let m = RawMachine {
                    machine_id: r.get(1)?,
                    name: r.get(2)?,
                    private_ip: r.get(3)?,
                    public_ip: r.get(4)?,
                    launch_time: r.get(5)?,
                    state: r.get(6)?,
                    message: r.get(7)?,
                };
                Ok((id, m))
            })
            .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
            .map_err(|e| self.backend(e))?;
        rows.into_iter().map(|(id, m)| Ok((id, self.to_machine(m)?))).collect()
    }

    fn kv_get(&self, namespace: &str, key: &str) -> Result<Option<String>, StoreError> {
        let conn = self.lock()?;
        conn.query_row("SELECT value FROM kv WHERE namespace = ?1 AND key = ?2", [namespace, key], |r| {
            r.get(0)
        })
        .optional()
        .map_err(|e| self.backend(e))
    }

    fn kv_set(&self, namespace: &str, key: &str, value: &str) -> Result<(), StoreError> {
        let conn = self.lock()?;
        conn.execute(
            "INSERT INTO kv (namespace, key, value) VALUES (?1, ?2, ?3)
             ON CONFLICT (namespace, key) DO UPDATE SET value = excluded.value WHERE value IS NOT excluded.value",
            [namespace, key, value],
        )
        .map(|_| ())
        .map_err(|e| self.backend(e))
    }

    fn kv_insert_if_absent(&self, namespace: &str, key: &str, value: &str) -> Result<bool, StoreError> {
        let conn = self.lock()?;
        conn.execute(
            "INSERT OR IGNORE INTO kv (namespace, key, value) VALUES (?1, ?2, ?3)",
            [namespace, key, value],
        )
        .map(|n| n == 1)
        .map_err(|e| self.backend(e))
    }

    fn kv_delete_if_equals(&self, namespace: &str, key: &str, expected: &str) -> Result<bool, StoreError> {
        let conn = self.lock()?;
        conn.execute(
            "DELETE FROM kv WHERE namespace = ?1 AND key = ?2 AND value = ?3",
            [namespace, key, expected],
        )
        .map(|n| n == 1)
        .map_err(|e| self.backend(e))
    }

    fn kv_delete(&self, namespace: &str, key: &str) -> Result<(), StoreError> {
        let conn = self.lock()?;
        conn.execute("DELETE FROM kv WHERE namespace = ?1 AND key = ?2", [namespace, key])
            .map(|_| ())
            .map_err(|e| self.backend(e))
    }

    fn kv_scan(&self, namespace: &str, prefix: &str) -> Result<Vec<(String, String)>, StoreError> {
        let conn = self.lock()?;
        let mut stmt = conn
            .prepare_cached("SELECT key, value FROM kv WHERE namespace = ?1 AND substr(key, 1, length(?2)) = ?2 ORDER BY key")
            .map_err(|e| self.backend(e))?;
        stmt.query_map([namespace, prefix], |r| Ok((r.get(0)?, r.get(1)?)))
            .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
            .map_err(|e| self.backend(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: &str) -> RequestRecord {
        RequestRecord {
            id: id.into(),
            kind: RequestKind::Provision,
            template_id: Some("t".into()),
            count: 2,
            rc_account: None,
            phase: Phase::Accepted,
            status: RequestStatus::Running,
            outstanding: 2,
            message: None,
            created_at: 10,
            updated_at: 10,
        }
    }

    fn machine(id: &str, state: MachineState) -> Machine {
        Machine {
            machine_id: id.into(),
            name: format!("host-{id}"),
            private_ip: "10.0.0.1".into(),
            public_ip: None,
            launch_time: 5,
            state,
            message: None,
        }
    }

    #[test]
    fn request_round_trip_and_update() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(&dir.path().join("s.db")).expect("open");
        store.insert_request(&rec("req-1"), &[]).expect("insert");
        assert_eq!(store.request("req-1").expect("read"), Some(rec("req-1")));
        assert_eq!(store.request("nope").expect("read"), None);
        let mut r = rec("req-1");
        r.phase = Phase::Submitted;
        r.outstanding = 0;
        store
            .update_request(&r, &[machine("a", MachineState::Pending), machine("b", MachineState::Running)])
            .expect("update");
        store
            .update_request(&r, &[machine("a", MachineState::Running)])
            .expect("update again");
        let ms = store.machines("req-1").expect("machines");
        assert_eq!(
            ms.iter().map(|m| (m.machine_id.as_str(), m.state)).collect::<Vec<_>>(),
            [("a", MachineState::Running), ("b", MachineState::Running)]
        );
        assert_eq!(store.request("req-1").expect("read").map(|r| r.phase), Some(Phase::Submitted));
        assert_eq!(store.provision_holders("host-a").expect("holders").len(), 1);
    }

    #[test]
    fn kv_insert_if_absent_has_one_winner() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(&dir.path().join("s.db")).expect("open");
        assert!(store.kv_insert_if_absent("ns", "lease/h1", "req-1").expect("first"));
        assert!(!store.kv_insert_if_absent("ns", "lease/h1", "req-2").expect("second"));
        assert!(
            store
                .kv_insert_if_absent("other", "lease/h1", "req-2")
                .expect("namespaces are separate")
        );
        assert!(!store.kv_delete_if_equals("ns", "lease/h1", "req-2").expect("not the holder"));
        assert!(store.kv_delete_if_equals("ns", "lease/h1", "req-1").expect("holder"));
        store.kv_set("ns", "lease/b", "x").expect("set");
        store.kv_set("ns", "other", "y").expect("set");
        assert_eq!(
            store.kv_scan("ns", "lease/").expect("scan"),
            [("lease/b".to_string(), "x".to_string())]
        );
    }

    #[test]
    fn synchronous_setting_reaches_sqlite() {
        let dir = tempfile::tempdir().expect("tempdir");
        for (sync, level) in [(Synchronous::Normal, 1), (Synchronous::Full, 2)] {
            let store = SqliteStore::open_with(&dir.path().join("s.db"), sync).expect("open");
            let got: i64 = store
                .lock()
                .expect("lock")
                .pragma_query_value(None, "synchronous", |r| r.get(0))
                .expect("pragma");
            assert_eq!(got, level, "{sync:?}");
        }
    }

    #[test]
    fn newer_schema_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s.db");
        drop(SqliteStore::open(&path).expect("create"));
        Connection::open(&path)
            .and_then(|c| c.pragma_update(None, "user_version", 99))
            .expect("bump");
        match SqliteStore::open(&path) {
            Err(StoreError::SchemaTooNew { found: 99, .. }) => {}
            other => panic!("expected SchemaTooNew, got {:?}", other.err()),
        }
    }
}
