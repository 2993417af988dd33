//! The embedded default store: SQLite in WAL mode in the provider work dir. Writers take
//! the database lock up front (`BEGIN IMMEDIATE`) and wait for each other, so parallel
//! HostFactory calls in separate processes serialise their state changes safely.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::document::{StoredMachine, StoredRequest};
use super::{BackendReport, Document, RequestRecord, SCHEMA_VERSION, StateStore, StoreError};
use crate::domain::model::Machine;

/// How long a writer waits for another process's transaction before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// WAL pages at which opening the store checkpoints and empties the WAL. Every HostFactory
/// call is a new process, and a process's first connection rebuilds the WAL index by
/// reading every frame in the WAL file (it cannot know which a checkpoint already copied,
/// so SQLite never restarts a WAL that only short processes write: it grew without bound,
/// and each call read all of it, about 3 us a page). A write call adds 5-10 pages, so this
/// empties the WAL about every tenth write call and keeps the rebuild under 0.3 ms.
const WAL_CHECKPOINT_PAGES: u64 = 100;

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

/// v2: pruning finds finished requests by status and age.
const SCHEMA_V2: &str = "CREATE INDEX requests_by_status ON requests(status, updated_at);";

/// v3: whether HostFactory ever asked about a request (requests it never learnt are swept).
/// Rows written before v3 were answered normally unless still `accepted`.
const SCHEMA_V3: &str = "
ALTER TABLE requests ADD COLUMN claimed INTEGER NOT NULL DEFAULT 0;
UPDATE requests SET claimed = 1 WHERE phase <> 'accepted';
CREATE INDEX requests_unclaimed ON requests(created_at) WHERE claimed = 0;
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
    /// Stores requests' new state and machines in one transaction (a status call's writes
    /// are one commit, not one each); a request since deleted is skipped.
    fn update_all(&self, updates: &[(&RequestRecord, &[Machine])]) -> Result<(), StoreError> {
        if updates.is_empty() {
            return Ok(());
        }
        let mut conn = self.lock()?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| self.backend(e))?;
        for (rec, machines) in updates {
            let changed = tx
                .execute(
                    "UPDATE requests SET phase = ?2, status = ?3, outstanding = ?4, message = ?5, updated_at = ?6, claimed = ?7
                     WHERE id = ?1 AND (phase, status, outstanding, message, claimed) IS NOT (?2, ?3, ?4, ?5, ?7)",
                    params![
                        rec.id,
                        rec.phase.as_str(),
                        rec.status.as_str(),
                        rec.outstanding,
                        rec.message,
                        to_i64(rec.updated_at),
                        rec.claimed
                    ],
                )
                .map_err(|e| self.backend(e))?;
            if machines.is_empty() {
                continue;
            }
            let exists = changed > 0
                || tx
                    .query_row("SELECT 1 FROM requests WHERE id = ?1", [&rec.id], |_| Ok(()))
                    .optional()
                    .map_err(|e| self.backend(e))?
                    .is_some();
            if exists {
                self.write_machines(&tx, &rec.id, machines)?;
            }
        }
        tx.commit().map_err(|e| self.backend(e))
    }

    /// Opens (creating and migrating as needed) the database at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_with(path, Synchronous::default())
    }

    /// Opens the database at `path` with the given durability.
    pub fn open_with(path: &Path, sync: Synchronous) -> Result<Self, StoreError> {
        let location = path.display().to_string();
        let err = |e: rusqlite::Error| {
            // SQLite says "unable to open database file" or "attempt to write a readonly
            // database" without saying why; the file system can.
            let denied = matches!(
                e.sqlite_error_code(),
                Some(rusqlite::ErrorCode::CannotOpen | rusqlite::ErrorCode::ReadOnly | rusqlite::ErrorCode::PermissionDenied)
            );
            StoreError::Backend {
                location: location.clone(),
                message: format!("{e}{}", if denied { crate::ownership::hint(path) } else { String::new() }),
            }
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| StoreError::Backend {
                location: location.clone(),
                message: format!(
                    "cannot create directory {}: {e}{}",
                    dir.display(),
                    crate::ownership::hint_for(&e, dir)
                ),
            })?;
        }
        // Never through a symbolic link: another local user could aim it at a file of ours.
        let flags = rusqlite::OpenFlags::default() | rusqlite::OpenFlags::SQLITE_OPEN_NOFOLLOW;
        let conn = Connection::open_with_flags(path, flags).map_err(err)?;
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
        store.trim_wal();
        Ok(store)
    }

    /// Empties the WAL when it holds [`WAL_CHECKPOINT_PAGES`] or more: copies its pages into
    /// the database and truncates it. Never waits: while another process reads or writes,
    /// SQLite copies what it can and a later call finishes the job.
    fn trim_wal(&self) {
        let mut wal = self.path.clone().into_os_string();
        wal.push("-wal");
        let pages = std::fs::metadata(&wal).map(|m| m.len() / (4096 + 24)).unwrap_or(0);
        if pages < WAL_CHECKPOINT_PAGES {
            return;
        }
        let Ok(conn) = self.lock() else { return };
        let t0 = std::time::Instant::now();
        let result = conn.busy_timeout(Duration::ZERO).and_then(|()| {
            conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
            })
        });
        let _ = conn.busy_timeout(BUSY_TIMEOUT);
        match result {
            Ok((busy, log, copied)) => tracing::debug!(
                pages,
                busy = busy != 0,
                log,
                copied,
                elapsed_us = t0.elapsed().as_micros() as u64,
                "WAL checkpointed"
            ),
            Err(e) => tracing::debug!(pages, error = %e, "WAL checkpoint skipped"),
        }
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
        }
        if version < 2 {
            tx.execute_batch(SCHEMA_V2).map_err(|e| self.backend(e))?;
        }
        if version < 3 {
            tx.execute_batch(SCHEMA_V3).map_err(|e| self.backend(e))?;
        }
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)
            .map_err(|e| self.backend(e))?;
        tx.commit().map_err(|e| self.backend(e))
    }

    fn read_request(row: &rusqlite::Row<'_>) -> rusqlite::Result<StoredRequest> {
        Ok(StoredRequest {
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
            claimed: row.get(11)?,
            machines: Vec::new(),
        })
    }

    fn read_machine(row: &rusqlite::Row<'_>, first: usize) -> rusqlite::Result<StoredMachine> {
        Ok(StoredMachine {
            machine_id: row.get(first)?,
            name: row.get(first + 1)?,
            private_ip: row.get(first + 2)?,
            public_ip: row.get(first + 3)?,
            launch_time: row.get(first + 4)?,
            state: row.get(first + 5)?,
            message: row.get(first + 6)?,
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

const REQUEST_COLUMNS: &str =
    "id, kind, template_id, count, rc_account, phase, status, outstanding, message, created_at, updated_at, claimed";
const MACHINE_COLUMNS: &str = "machine_id, name, private_ip, public_ip, launch_time, state, message";

fn insert_request_row(tx: &rusqlite::Transaction<'_>, rec: &RequestRecord) -> rusqlite::Result<usize> {
    tx.execute(
        &format!("INSERT INTO requests ({REQUEST_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)"),
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
            to_i64(rec.updated_at),
            rec.claimed
        ],
    )
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl StateStore for SqliteStore {
    fn insert_request(&self, rec: &RequestRecord, machines: &[Machine]) -> Result<(), StoreError> {
        let mut conn = self.lock()?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| self.backend(e))?;
        insert_request_row(&tx, rec).map_err(|e| self.backend(e))?;
        self.write_machines(&tx, &rec.id, machines)?;
        tx.commit().map_err(|e| self.backend(e))
    }

    fn request(&self, id: &str) -> Result<Option<RequestRecord>, StoreError> {
        let conn = self.lock()?;
        let raw = conn
            .query_row(&format!("SELECT {REQUEST_COLUMNS} FROM requests WHERE id = ?1"), [id], |r| {
                Self::read_request(r)
            })
            .optional()
            .map_err(|e| self.backend(e))?;
        drop(conn);
        raw.map(|r| r.to_record(&self.location())).transpose()
    }

    fn machines(&self, request_id: &str) -> Result<Vec<Machine>, StoreError> {
        let conn = self.lock()?;
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT {MACHINE_COLUMNS} FROM machines WHERE request_id = ?1 ORDER BY seq"
            ))
            .map_err(|e| self.backend(e))?;
        let raws = stmt
            .query_map([request_id], |r| Self::read_machine(r, 0))
            .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
            .map_err(|e| self.backend(e))?;
        let location = self.location();
        raws.iter().map(|m| m.to_machine(&location)).collect()
    }

    fn update_request(&self, rec: &RequestRecord, machines: &[Machine]) -> Result<(), StoreError> {
        self.update_all(&[(rec, machines)])
    }

    fn requests_with_machines(
        &self,
        ids: &[String],
    ) -> Result<std::collections::HashMap<String, (RequestRecord, Vec<Machine>)>, StoreError> {
        let out = super::one_by_one(self, ids)?;
        // A status call over 1,000 requests filled SQLite's page cache (2 MiB) with pages it
        // will not read again in this process; given back before the provider's answer
        // needs the memory.
        if ids.len() > 1 {
            let conn = self.lock()?;
            conn.execute_batch("PRAGMA shrink_memory").map_err(|e| self.backend(e))?;
        }
        Ok(out)
    }

    fn update_requests(&self, updates: &[(RequestRecord, Vec<Machine>)]) -> Result<(), StoreError> {
        let refs: Vec<(&RequestRecord, &[Machine])> = updates.iter().map(|(r, m)| (r, m.as_slice())).collect();
        self.update_all(&refs)
    }

    fn stale_requests(&self, before: u64) -> Result<Vec<RequestRecord>, StoreError> {
        let conn = self.lock()?;
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT {REQUEST_COLUMNS} FROM requests
                 WHERE (created_at < ?1 AND (phase = 'accepted' OR (claimed = 0 AND kind = 'provision')))
                    OR (claimed = 0 AND status = 'running' AND kind = 'return' AND updated_at < ?1)
                 ORDER BY created_at"
            ))
            .map_err(|e| self.backend(e))?;
        let raws = stmt
            .query_map([to_i64(before)], Self::read_request)
            .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
            .map_err(|e| self.backend(e))?;
        drop(stmt);
        drop(conn);
        let location = self.location();
        raws.iter().map(|r| r.to_record(&location)).collect()
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
                let m = Self::read_machine(r, 1)?;
                Ok((id, m))
            })
            .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
            .map_err(|e| self.backend(e))?;
        let location = self.location();
        rows.into_iter().map(|(id, m)| Ok((id, m.to_machine(&location)?))).collect()
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
        Ok(self.kv_scan_bounded(namespace, prefix, usize::MAX, usize::MAX)?.unwrap_or_default())
    }

    fn kv_scan_bounded(
        &self,
        namespace: &str,
        prefix: &str,
        max_entries: usize,
        max_bytes: usize,
    ) -> Result<Option<Vec<(String, String)>>, StoreError> {
        let conn = self.lock()?;
        let mut stmt = conn
            .prepare_cached("SELECT key, value FROM kv WHERE namespace = ?1 AND substr(key, 1, length(?2)) = ?2 ORDER BY key")
            .map_err(|e| self.backend(e))?;
        // Rows are read one at a time: a scan stops at its bound without loading the rest.
        let rows = stmt
            .query_map([namespace, prefix], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(|e| self.backend(e))?;
        super::within_bounds(rows, max_entries, max_bytes).map_err(|e| self.backend(e))
    }

    fn kv_usage(&self, namespace: &str) -> Result<(usize, usize), StoreError> {
        let conn = self.lock()?;
        let (n, bytes): (i64, i64) = conn
            .prepare_cached(
                "SELECT count(*), coalesce(sum(length(CAST(key AS BLOB)) + length(CAST(value AS BLOB))), 0) FROM kv WHERE namespace = ?1",
            )
            .and_then(|mut stmt| stmt.query_row([namespace], |r| Ok((r.get(0)?, r.get(1)?))))
            .map_err(|e| self.backend(e))?;
        Ok((usize::try_from(n).unwrap_or(0), usize::try_from(bytes).unwrap_or(0)))
    }

    fn prune_finished(&self, before: u64, limit: usize) -> Result<usize, StoreError> {
        let conn = self.lock()?;
        conn.execute(
            &super::prune_sql("?1", "?2", ""),
            params![to_i64(before), i64::try_from(limit).unwrap_or(i64::MAX)],
        )
        .map_err(|e| self.backend(e))
    }

    fn export(&self) -> Result<Document, StoreError> {
        let mut conn = self.lock()?;
        // One read transaction, so the document is one consistent snapshot.
        let tx = conn.transaction().map_err(|e| self.backend(e))?;
        let rows = |sql: &str| tx.prepare(sql).map_err(|e| self.backend(e));
        let requests = rows(&format!("SELECT {REQUEST_COLUMNS} FROM requests ORDER BY created_at, id"))?
            .query_map([], Self::read_request)
            .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
            .map_err(|e| self.backend(e))?;
        let machines = rows(&format!(
            "SELECT request_id, {MACHINE_COLUMNS} FROM machines ORDER BY request_id, seq"
        ))?
        .query_map([], |r| Ok((r.get::<_, String>(0)?, Self::read_machine(r, 1)?)))
        .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
        .map_err(|e| self.backend(e))?;
        let kv = rows("SELECT namespace, key, value FROM kv ORDER BY namespace, key")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
            .map_err(|e| self.backend(e))?;
        Ok(Document::from_rows(requests, machines, kv))
    }

    fn import(&self, doc: &Document) -> Result<(), StoreError> {
        super::check_import_version(&self.location(), doc)?;
        let mut conn = self.lock()?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| self.backend(e))?;
        let count = |sql: &str| -> Result<usize, StoreError> {
            tx.query_row(sql, [], |r| r.get::<_, i64>(0))
                .map(|n| usize::try_from(n).unwrap_or(0))
                .map_err(|e| self.backend(e))
        };
        let (requests, kv) = (count("SELECT COUNT(*) FROM requests")?, count("SELECT COUNT(*) FROM kv")?);
        if requests + kv > 0 {
            return Err(StoreError::NotEmpty {
                location: self.location(),
                requests,
                kv,
            });
        }
        for r in &doc.requests {
            let rec = r.to_record(&self.location())?;
            insert_request_row(&tx, &rec).map_err(|e| self.backend(e))?;
            self.write_machines(&tx, &r.id, &r.to_machines(&self.location())?)?;
        }
        for (ns, entries) in &doc.kv {
            for (k, v) in entries {
                tx.execute("INSERT INTO kv (namespace, key, value) VALUES (?1, ?2, ?3)", [ns, k, v])
                    .map_err(|e| self.backend(e))?;
            }
        }
        tx.commit().map_err(|e| self.backend(e))
    }

    fn inspect(&self) -> Result<BackendReport, StoreError> {
        let conn = self.lock()?;
        let mut problems: Vec<String> = {
            let mut stmt = conn.prepare("PRAGMA integrity_check").map_err(|e| self.backend(e))?;
            stmt.query_map([], |r| r.get::<_, String>(0))
                .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
                .map_err(|e| self.backend(e))?
                .into_iter()
                .filter(|l| l != "ok")
                .collect()
        };
        let orphans: i64 = conn
            .query_row(
                "SELECT COUNT(*) FROM machines WHERE request_id NOT IN (SELECT id FROM requests)",
                [],
                |r| r.get(0),
            )
            .map_err(|e| self.backend(e))?;
        if orphans > 0 {
            problems.push(format!("{orphans} machine row(s) belong to no request"));
        }
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(|e| self.backend(e))?;
        let file_size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        let mut wal = self.path.clone().into_os_string();
        wal.push("-wal");
        Ok(BackendReport {
            backend: "sqlite",
            location: self.location(),
            schema_version: version,
            size_bytes: Some(file_size(&self.path) + file_size(Path::new(&wal))),
            problems,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn the_wal_a_new_process_must_read_stays_short() {
        use crate::domain::lifecycle::RequestStatus;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s.db");
        let machine = |i: usize| Machine {
            machine_id: format!("i-{i}"),
            name: format!("host-{i}"),
            private_ip: "10.0.0.1".into(),
            public_ip: None,
            launch_time: 1,
            state: crate::domain::model::MachineState::Pending,
            message: None,
        };
        // Each write in its own process's connection, as HostFactory's calls make them.
        for i in 0..400 {
            let store = SqliteStore::open(&path).expect("open");
            let rec = RequestRecord {
                id: format!("req-{i}"),
                kind: crate::store::RequestKind::Provision,
                template_id: Some("t".into()),
                count: 4,
                rc_account: None,
                phase: crate::store::Phase::Submitted,
                status: RequestStatus::Running,
                outstanding: 0,
                message: Some("x".repeat(500)),
                created_at: 1,
                updated_at: 1,
                claimed: true,
            };
            let machines: Vec<Machine> = (0..4).map(|m| machine(i * 4 + m)).collect();
            store.insert_request(&rec, &machines).expect("insert");
        }
        // The next process reads the frames since the last checkpoint: the WAL file is
        // reused from its start after each, so its size bounds them.
        let wal = std::fs::metadata(dir.path().join("s.db-wal")).expect("wal").len();
        let page = 4096 + 24;
        assert!(
            wal <= (WAL_CHECKPOINT_PAGES + 20) * page,
            "WAL holds {} pages; checkpoints every {WAL_CHECKPOINT_PAGES}",
            wal / page
        );
    }

    #[test]
    fn a_version_1_store_is_migrated_in_place() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s.db");
        let c = Connection::open(&path).expect("create v1");
        c.execute_batch(SCHEMA_V1).expect("v1 schema");
        c.execute(
            "INSERT INTO requests (id, kind, count, phase, status, outstanding, created_at, updated_at) VALUES ('req-1', 'provision', 1, 'submitted', 'complete', 0, 1, 1)",
            [],
        )
        .expect("v1 row");
        c.pragma_update(None, "user_version", 1).expect("v1");
        drop(c);
        let store = SqliteStore::open(&path).expect("migrate");
        assert_eq!(store.inspect().expect("inspect").schema_version, SCHEMA_VERSION);
        assert!(store.request("req-1").expect("read").is_some(), "v1 rows survive");
        assert_eq!(store.prune_finished(10, 10).expect("prune uses the v2 index"), 1);
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
