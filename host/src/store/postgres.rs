//! The seed's `sql_strategy` with `type: postgresql`: one database shared by several
//! hfwasm installations (HA pairs, regions). Every state change is one transaction; a
//! request's row is locked (`SELECT … FOR UPDATE`) while its machines change, so two hosts
//! answering for the same request serialise. Connections come from a small pool sized by
//! `pool_size`; the password comes from config or `PGPASSWORD` and never reaches a log or
//! an error message.

use std::collections::HashMap;
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use postgres::error::SqlState;
use postgres::{Client, NoTls, Row};

use super::document::{StoredMachine, StoredRequest};
use super::pg_tls::SslMode;
use super::{BackendReport, Document, RequestRecord, SCHEMA_VERSION, StateStore, StoreError};
use crate::domain::model::Machine;

/// Connection settings, each remembering where it came from so errors can name it.
#[derive(Clone)]
pub struct PgSettings {
    /// Server host name, address, or socket directory (starting with `/`).
    pub host: String,
    /// Server port.
    pub port: u16,
    /// Role to log in as.
    pub user: String,
    /// Password, if the server asks for one.
    pub password: Option<String>,
    /// Database name.
    pub dbname: String,
    /// Most connections this process opens at once.
    pub pool_size: usize,
    /// How long to wait for a connection to be set up.
    pub connect_timeout: Duration,
    /// The longest one statement may run (lock waits included) before the server cancels
    /// it: a hung or locked-up server fails the call with a named error, in bounded time.
    pub statement_timeout: Duration,
    /// `sslmode` (libpq's meanings; see [`super::pg_tls`]).
    pub ssl_mode: SslMode,
    /// `sslrootcert`: the CA file the server's certificate must chain to.
    pub ssl_root_cert: Option<std::path::PathBuf>,
    /// For each of `host`, `port`, `user`, `password`, `name`, `sslmode`, `sslrootcert`: the
    /// config key or `PG*` variable it came from (named in connection errors).
    pub sources: std::collections::BTreeMap<&'static str, String>,
}

impl std::fmt::Debug for PgSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgSettings")
            .field("location", &self.location())
            .field("password", &self.password.as_ref().map(|_| "(set)"))
            .field("pool_size", &self.pool_size)
            .field("ssl_mode", &self.ssl_mode)
            .finish()
    }
}

impl PgSettings {
    /// `postgresql://user@host:port/dbname` (and the TLS mode when on), without the password.
    pub fn location(&self) -> String {
        let tls = match self.ssl_mode {
            SslMode::Disable => String::new(),
            m => format!("?sslmode={}", m.as_str()),
        };
        format!("postgresql://{}@{}:{}/{}{tls}", self.user, self.host, self.port, self.dbname)
    }

    /// The config key or `PG*` variable `field` came from (named in errors).
    pub fn source(&self, field: &'static str) -> String {
        self.sources
            .get(field)
            .cloned()
            .unwrap_or_else(|| format!("storage.sql_strategy.{field}"))
    }

    fn config(&self) -> postgres::Config {
        let mut c = postgres::Config::new();
        if self.host.starts_with('/') {
            c.host_path(&self.host);
        } else {
            c.host(&self.host);
        }
        c.port(self.port)
            .user(&self.user)
            .dbname(&self.dbname)
            .application_name("hfwasm")
            .connect_timeout(self.connect_timeout)
            .options(&format!("-c statement_timeout={}", self.statement_timeout.as_millis()));
        if let Some(p) = &self.password {
            c.password(p);
        }
        // With TLS asked for, a server that will not speak it is an error, never plain text.
        // A Unix socket is local and never TLS (libpq ignores sslmode there too).
        c.ssl_mode(match self.ssl_mode {
            _ if self.host.starts_with('/') => postgres::config::SslMode::Disable,
            SslMode::Disable => postgres::config::SslMode::Disable,
            _ => postgres::config::SslMode::Require,
        });
        c
    }
}

/// Newest schema: v1 tables, v2 the pruning index, v3 `claimed`. Each step runs once, in order.
const MIGRATIONS: [&str; 3] = [
    r#"
CREATE TABLE requests (
    id TEXT COLLATE "C" PRIMARY KEY,
    kind TEXT NOT NULL,
    template_id TEXT,
    count BIGINT NOT NULL,
    rc_account TEXT,
    phase TEXT NOT NULL,
    status TEXT NOT NULL,
    outstanding BIGINT NOT NULL,
    message TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE TABLE machines (
    request_id TEXT COLLATE "C" NOT NULL REFERENCES requests(id) ON DELETE CASCADE,
    seq BIGINT NOT NULL,
    machine_id TEXT COLLATE "C" NOT NULL,
    name TEXT COLLATE "C" NOT NULL,
    private_ip TEXT NOT NULL,
    public_ip TEXT,
    launch_time BIGINT NOT NULL,
    state TEXT NOT NULL,
    message TEXT,
    PRIMARY KEY (request_id, machine_id)
);
CREATE INDEX machines_by_name ON machines(name);
CREATE INDEX requests_by_phase ON requests(phase, created_at);
CREATE TABLE kv (
    namespace TEXT COLLATE "C" NOT NULL,
    key TEXT COLLATE "C" NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (namespace, key)
);
"#,
    "CREATE INDEX requests_by_status ON requests(status, updated_at);",
    "ALTER TABLE requests ADD COLUMN claimed BOOLEAN NOT NULL DEFAULT FALSE;
     UPDATE requests SET claimed = TRUE WHERE phase <> 'accepted';
     CREATE INDEX requests_unclaimed ON requests(created_at) WHERE NOT claimed;",
];

/// Advisory lock key serialising migrations across hosts ("hfwasm" in ASCII).
const MIGRATION_LOCK: i64 = 0x6866_7761_736d;

const REQUEST_COLUMNS: &str =
    "id, kind, template_id, count, rc_account, phase, status, outstanding, message, created_at, updated_at, claimed";
const MACHINE_COLUMNS: &str = "machine_id, name, private_ip, public_ip, launch_time, state, message";

/// PostgreSQL-backed [`StateStore`].
pub struct PgStore {
    settings: PgSettings,
    /// The TLS connector when `sslmode` asks for TLS.
    tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
    /// Idle connections and how many are open in all.
    pool: Mutex<(Vec<Client>, usize)>,
    freed: Condvar,
}

/// Error text with the server's own words (`postgres::Error` alone prints "db error").
trait PgMessage {
    fn message(&self) -> String;
}

impl PgMessage for postgres::Error {
    fn message(&self) -> String {
        match self.as_db_error() {
            Some(db) => {
                let mut m = format!("{} (SQLSTATE {})", db.message(), db.code().code());
                if let Some(d) = db.detail() {
                    m.push_str(&format!(": {d}"));
                }
                m
            }
            None => self.to_string(),
        }
    }
}

impl PgMessage for &str {
    fn message(&self) -> String {
        self.to_string()
    }
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn to_u32(v: i64) -> u32 {
    u32::try_from(v).unwrap_or(0)
}

fn read_request(r: &Row) -> Result<StoredRequest, postgres::Error> {
    Ok(StoredRequest {
        id: r.try_get(0)?,
        kind: r.try_get(1)?,
        template_id: r.try_get(2)?,
        count: to_u32(r.try_get(3)?),
        rc_account: r.try_get(4)?,
        phase: r.try_get(5)?,
        status: r.try_get(6)?,
        outstanding: to_u32(r.try_get(7)?),
        message: r.try_get(8)?,
        created_at: to_u64(r.try_get(9)?),
        updated_at: to_u64(r.try_get(10)?),
        claimed: r.try_get(11)?,
        machines: Vec::new(),
    })
}

fn read_machine(r: &Row, first: usize) -> Result<StoredMachine, postgres::Error> {
    Ok(StoredMachine {
        machine_id: r.try_get(first)?,
        name: r.try_get(first + 1)?,
        private_ip: r.try_get(first + 2)?,
        public_ip: r.try_get(first + 3)?,
        launch_time: to_u64(r.try_get(first + 4)?),
        state: r.try_get(first + 5)?,
        message: r.try_get(first + 6)?,
    })
}

fn insert_request_row(tx: &mut postgres::Transaction<'_>, r: &StoredRequest) -> Result<u64, postgres::Error> {
    tx.execute(
        &format!("INSERT INTO requests ({REQUEST_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"),
        &[
            &r.id,
            &r.kind,
            &r.template_id,
            &i64::from(r.count),
            &r.rc_account,
            &r.phase,
            &r.status,
            &i64::from(r.outstanding),
            &r.message,
            &to_i64(r.created_at),
            &to_i64(r.updated_at),
            &r.claimed,
        ],
    )
}

/// Inserts or updates the machines of requests in two round trips, whatever their number:
/// the next `seq` of each request, then one insert of them all from arrays (`UNNEST`). A
/// machine keeps its first `seq`; one listed twice for a request is written as last listed.
/// Upserts machines of requests, sent as columns borrowed from them (10,000 machines are
/// not copied to be sent).
fn write_machines(tx: &mut postgres::Transaction<'_>, batch: &[(&str, &[Machine])]) -> Result<(), postgres::Error> {
    let ids: Vec<&str> = batch.iter().filter(|(_, m)| !m.is_empty()).map(|(id, _)| *id).collect();
    if ids.is_empty() {
        return Ok(());
    }
    let next: HashMap<String, i64> = tx
        .query(
            "SELECT request_id, MAX(seq) + 1 FROM machines WHERE request_id = ANY($1) GROUP BY request_id",
            &[&ids],
        )?
        .iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect::<Result<_, postgres::Error>>()?;
    let mut rows: Vec<(&str, i64, &Machine)> = Vec::new();
    for (id, machines) in batch {
        let first = next.get(*id).copied().unwrap_or(0);
        let mut at: HashMap<&str, usize> = HashMap::with_capacity(machines.len());
        for (i, m) in machines.iter().enumerate() {
            let seq = first + i64::try_from(i).unwrap_or(i64::MAX);
            match at.get(m.machine_id.as_str()) {
                Some(&k) => rows[k].2 = m,
                None => {
                    at.insert(&m.machine_id, rows.len());
                    rows.push((id, seq, m));
                }
            }
        }
    }
    let col = |f: for<'a> fn(&'a Machine) -> Option<&'a str>| rows.iter().map(|r| f(r.2)).collect::<Vec<_>>();
    let request_ids: Vec<&str> = rows.iter().map(|r| r.0).collect();
    let seqs: Vec<i64> = rows.iter().map(|r| r.1).collect();
    let launch: Vec<i64> = rows.iter().map(|r| to_i64(r.2.launch_time)).collect();
    tx.execute(
        "INSERT INTO machines AS m (request_id, seq, machine_id, name, private_ip, public_ip, launch_time, state, message)
         SELECT * FROM UNNEST($1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[], $7::bigint[], $8::text[], $9::text[])
         ON CONFLICT (request_id, machine_id) DO UPDATE SET
            name = EXCLUDED.name, private_ip = EXCLUDED.private_ip, public_ip = EXCLUDED.public_ip,
            launch_time = EXCLUDED.launch_time, state = EXCLUDED.state, message = EXCLUDED.message
         WHERE (m.name, m.private_ip, m.public_ip, m.launch_time, m.state, m.message)
            IS DISTINCT FROM (EXCLUDED.name, EXCLUDED.private_ip, EXCLUDED.public_ip, EXCLUDED.launch_time, EXCLUDED.state, EXCLUDED.message)",
        &[
            &request_ids,
            &seqs,
            &col(|m| Some(m.machine_id.as_str())),
            &col(|m| Some(m.name.as_str())),
            &col(|m| Some(m.private_ip.as_str())),
            &col(|m| m.public_ip.as_deref()),
            &launch,
            &col(|m| Some(m.state.as_str())),
            &col(|m| m.message.as_deref()),
        ],
    )?;
    Ok(())
}

impl PgStore {
    /// Stores requests' new state and machines in one transaction of four round trips: the
    /// rows locked (in id order, so two writers cannot deadlock), the changed request rows
    /// updated from arrays, then their machines. A request since deleted is skipped.
    fn update_all(&self, updates: &[(&RequestRecord, &[Machine])]) -> Result<(), StoreError> {
        if updates.is_empty() {
            return Ok(());
        }
        // The requests' columns in stored form; their machines are sent as they are.
        let stored: Vec<StoredRequest> = updates.iter().map(|(r, _)| StoredRequest::from_record(r, &[])).collect();
        let ids: Vec<&str> = stored.iter().map(|s| s.id.as_str()).collect();
        self.with(|c| {
            let mut tx = c.transaction().map_err(|e| self.backend(e))?;
            let existing: std::collections::HashSet<String> = tx
                .query("SELECT id FROM requests WHERE id = ANY($1) ORDER BY id FOR UPDATE", &[&ids])
                .and_then(|rows| rows.iter().map(|r| r.try_get(0)).collect())
                .map_err(|e| self.backend(e))?;
            let live: Vec<(&StoredRequest, &[Machine])> = stored
                .iter()
                .zip(updates)
                .filter(|(s, _)| existing.contains(&s.id))
                .map(|(s, (_, m))| (s, *m))
                .collect();
            if live.is_empty() {
                return Ok(());
            }
            let text = |f: for<'a> fn(&'a StoredRequest) -> Option<&'a str>| live.iter().map(|(s, _)| f(s)).collect::<Vec<_>>();
            let outstanding: Vec<i64> = live.iter().map(|(s, _)| i64::from(s.outstanding)).collect();
            let updated: Vec<i64> = live.iter().map(|(s, _)| to_i64(s.updated_at)).collect();
            let claimed: Vec<bool> = live.iter().map(|(s, _)| s.claimed).collect();
            tx.execute(
                "UPDATE requests AS r SET phase = u.phase, status = u.status, outstanding = u.outstanding,
                        message = u.message, updated_at = u.updated_at, claimed = u.claimed
                 FROM UNNEST($1::text[], $2::text[], $3::text[], $4::bigint[], $5::text[], $6::bigint[], $7::bool[])
                      AS u(id, phase, status, outstanding, message, updated_at, claimed)
                 WHERE r.id = u.id
                   AND (r.phase, r.status, r.outstanding, r.message, r.claimed) IS DISTINCT FROM (u.phase, u.status, u.outstanding, u.message, u.claimed)",
                &[
                    &text(|s| Some(s.id.as_str())),
                    &text(|s| Some(s.phase.as_str())),
                    &text(|s| Some(s.status.as_str())),
                    &outstanding,
                    &text(|s| s.message.as_deref()),
                    &updated,
                    &claimed,
                ],
            )
            .map_err(|e| self.backend(e))?;
            let batch: Vec<(&str, &[Machine])> = live.iter().map(|(s, m)| (s.id.as_str(), *m)).collect();
            write_machines(&mut tx, &batch).map_err(|e| self.backend(e))?;
            tx.commit().map_err(|e| self.backend(e))
        })
    }

    /// Connects (one connection, to fail early with a clear error) and migrates the schema.
    pub fn open(settings: &PgSettings) -> Result<Self, StoreError> {
        let tls =
            super::pg_tls::connector(settings.ssl_mode, settings.ssl_root_cert.as_deref()).map_err(|message| StoreError::Connect {
                location: settings.location(),
                setting: settings.source(if settings.ssl_root_cert.is_some() {
                    "sslrootcert"
                } else {
                    "sslmode"
                }),
                message,
            })?;
        let store = Self {
            settings: settings.clone(),
            tls,
            pool: Mutex::new((Vec::new(), 0)),
            freed: Condvar::new(),
        };
        store.migrate()?;
        Ok(store)
    }

    fn location(&self) -> String {
        self.settings.location()
    }

    fn backend(&self, e: impl PgMessage) -> StoreError {
        StoreError::Backend {
            location: self.location(),
            message: e.message(),
        }
    }

    /// A connection error, naming the setting most likely at fault.
    fn connect_error(&self, e: &postgres::Error) -> StoreError {
        let s = &self.settings;
        let code = e.code();
        let text = {
            let mut m = e.to_string();
            let mut src = std::error::Error::source(e);
            while let Some(inner) = src {
                m.push_str(&format!(": {inner}"));
                src = inner.source();
            }
            m
        };
        let tls_problem = text.contains("certificate") || text.contains("TLS") || text.contains("tls");
        let setting = if code == Some(&SqlState::INVALID_PASSWORD) {
            s.source("password")
        } else if code == Some(&SqlState::INVALID_AUTHORIZATION_SPECIFICATION)
            && e.as_db_error().is_some_and(|d| d.message().contains("no encryption"))
        {
            // The server's pg_hba.conf takes TLS connections only.
            s.source("sslmode")
        } else if e.as_db_error().is_none() && (text.contains("NotValidForName") || text.contains("not valid for name")) {
            // verify-full: the certificate does not name the host connected to.
            s.source("host")
        } else if e.as_db_error().is_none() && tls_problem && s.ssl_root_cert.is_some() {
            s.source("sslrootcert")
        } else if e.as_db_error().is_none() && tls_problem {
            s.source("sslmode")
        } else if code == Some(&SqlState::INVALID_AUTHORIZATION_SPECIFICATION) {
            s.source("user")
        } else if code == Some(&SqlState::INVALID_CATALOG_NAME) {
            s.source("name")
        } else if e.as_db_error().is_none() && e.to_string().contains("password missing") {
            s.source("password")
        } else {
            s.source("host")
        };
        let mut message = match e.as_db_error() {
            Some(db) => db.message().to_string(),
            None => text.clone(),
        };
        if e.as_db_error().is_none() && tls_problem {
            message.push_str(&format!(
                " (TLS to {}:{} with {})",
                s.host,
                s.port,
                super::pg_tls::describe(s.ssl_mode, s.ssl_root_cert.as_ref())
            ));
            if text.contains("not valid for name") || text.contains("NotValidForName") {
                message.push_str("; connect by a name the certificate carries, or use sslmode verify-ca");
            }
        } else if e.as_db_error().is_none() {
            // Nothing answered: the address is wrong or the server is down.
            message.push_str(&format!(
                " (no server answered at {}:{}; see also `{}`)",
                s.host,
                s.port,
                s.source("port")
            ));
        }
        StoreError::Connect {
            location: self.location(),
            setting,
            message: format!("cannot connect: {message}"),
        }
    }

    fn checkout(&self) -> Result<Client, StoreError> {
        let mut pool = self.pool.lock().map_err(|_| self.backend("pool lock poisoned"))?;
        loop {
            if let Some(c) = pool.0.pop() {
                if !c.is_closed() {
                    return Ok(c);
                }
                pool.1 -= 1;
                continue;
            }
            if pool.1 < self.settings.pool_size.max(1) {
                pool.1 += 1;
                drop(pool);
                let config = self.settings.config();
                let connected = match &self.tls {
                    Some(tls) => config.connect(tls.clone()),
                    None => config.connect(NoTls),
                };
                return connected.map_err(|e| {
                    if let Ok(mut p) = self.pool.lock() {
                        p.1 -= 1;
                    }
                    self.freed.notify_one();
                    self.connect_error(&e)
                });
            }
            pool = self.freed.wait(pool).map_err(|_| self.backend("pool lock poisoned"))?;
        }
    }

    fn checkin(&self, client: Client) {
        if let Ok(mut pool) = self.pool.lock() {
            if client.is_closed() {
                pool.1 -= 1;
            } else {
                pool.0.push(client);
            }
        }
        self.freed.notify_one();
    }

    /// Runs `f` on a pooled connection; retried on serialisation failures and deadlocks
    /// (another host won a race), and once on a connection that broke.
    fn with<T>(&self, mut f: impl FnMut(&mut Client) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let mut attempt = 0;
        loop {
            let mut client = self.checkout()?;
            let out = f(&mut client);
            let broken = client.is_closed();
            self.checkin(client);
            match out {
                Err(StoreError::Backend { ref message, .. })
                    if attempt < 5 && (message.contains("deadlock detected") || message.contains("could not serialize") || broken) =>
                {
                    attempt += 1;
                    std::thread::sleep(Duration::from_millis(5 << attempt));
                }
                other => return other,
            }
        }
    }

    /// One statement on a pooled connection; the number of rows it touched.
    fn execute(&self, sql: &str, params: &[&(dyn postgres::types::ToSql + Sync)]) -> Result<u64, StoreError> {
        self.with(|c| c.execute(sql, params).map_err(|e| self.backend(e)))
    }

    fn migrate(&self) -> Result<(), StoreError> {
        self.with(|c| {
            let current = self.schema_version(c)?;
            if current == Some(SCHEMA_VERSION) {
                return Ok(());
            }
            let mut tx = c.transaction().map_err(|e| self.backend(e))?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
                .map_err(|e| self.backend(e))?;
            tx.batch_execute("CREATE TABLE IF NOT EXISTS hfwasm_schema (version BIGINT NOT NULL)")
                .map_err(|e| self.backend(e))?;
            let found: Option<i64> = tx
                .query_opt("SELECT version FROM hfwasm_schema", &[])
                .and_then(|r| r.map(|r| r.try_get(0)).transpose())
                .map_err(|e| self.backend(e))?;
            let found = found.unwrap_or(0);
            if found > SCHEMA_VERSION {
                return Err(StoreError::SchemaTooNew {
                    location: self.location(),
                    found,
                    known: SCHEMA_VERSION,
                });
            }
            for (i, step) in MIGRATIONS.iter().enumerate() {
                if i64::try_from(i).unwrap_or(i64::MAX) >= found {
                    tx.batch_execute(step).map_err(|e| self.backend(e))?;
                }
            }
            tx.execute("DELETE FROM hfwasm_schema", &[]).map_err(|e| self.backend(e))?;
            tx.execute("INSERT INTO hfwasm_schema (version) VALUES ($1)", &[&SCHEMA_VERSION])
                .map_err(|e| self.backend(e))?;
            tx.commit().map_err(|e| self.backend(e))
        })
    }

    fn schema_version(&self, c: &mut Client) -> Result<Option<i64>, StoreError> {
        let exists: bool = c
            .query_one("SELECT to_regclass('hfwasm_schema') IS NOT NULL", &[])
            .and_then(|r| r.try_get(0))
            .map_err(|e| self.backend(e))?;
        if !exists {
            return Ok(None);
        }
        let v = c
            .query_opt("SELECT version FROM hfwasm_schema", &[])
            .and_then(|r| r.map(|r| r.try_get(0)).transpose())
            .map_err(|e| self.backend(e))?;
        if let Some(found) = v
            && found > SCHEMA_VERSION
        {
            return Err(StoreError::SchemaTooNew {
                location: self.location(),
                found,
                known: SCHEMA_VERSION,
            });
        }
        Ok(v)
    }
}

impl StateStore for PgStore {
    fn insert_request(&self, rec: &RequestRecord, machines: &[Machine]) -> Result<(), StoreError> {
        let stored = StoredRequest::from_record(rec, machines);
        self.with(|c| {
            let mut tx = c.transaction().map_err(|e| self.backend(e))?;
            insert_request_row(&mut tx, &stored).map_err(|e| self.backend(e))?;
            write_machines(&mut tx, &[(stored.id.as_str(), machines)]).map_err(|e| self.backend(e))?;
            tx.commit().map_err(|e| self.backend(e))
        })
    }

    fn request(&self, id: &str) -> Result<Option<RequestRecord>, StoreError> {
        let row = self.with(|c| {
            c.query_opt(&format!("SELECT {REQUEST_COLUMNS} FROM requests WHERE id = $1"), &[&id])
                .and_then(|r| r.as_ref().map(read_request).transpose())
                .map_err(|e| self.backend(e))
        })?;
        row.map(|r| r.to_record(&self.location())).transpose()
    }

    fn machines(&self, request_id: &str) -> Result<Vec<Machine>, StoreError> {
        let rows = self.with(|c| {
            c.query(
                &format!("SELECT {MACHINE_COLUMNS} FROM machines WHERE request_id = $1 ORDER BY seq"),
                &[&request_id],
            )
            .and_then(|rows| rows.iter().map(|r| read_machine(r, 0)).collect::<Result<Vec<_>, _>>())
            .map_err(|e| self.backend(e))
        })?;
        let location = self.location();
        rows.iter().map(|m| m.to_machine(&location)).collect()
    }

    fn update_request(&self, rec: &RequestRecord, machines: &[Machine]) -> Result<(), StoreError> {
        self.update_all(&[(rec, machines)])
    }

    fn requests_with_machines(&self, ids: &[String]) -> Result<HashMap<String, (RequestRecord, Vec<Machine>)>, StoreError> {
        let location = self.location();
        self.with(|c| {
            let requests = c
                .query(&format!("SELECT {REQUEST_COLUMNS} FROM requests WHERE id = ANY($1)"), &[&ids])
                .and_then(|rows| rows.iter().map(read_request).collect::<Result<Vec<_>, _>>())
                .map_err(|e| self.backend(e))?;
            let mut out: HashMap<String, (RequestRecord, Vec<Machine>)> = HashMap::with_capacity(requests.len());
            for r in &requests {
                out.insert(r.id.clone(), (r.to_record(&location)?, Vec::new()));
            }
            // Row by row as they arrive: 10,000 machines are never held as rows, then as
            // stored machines, then as machines.
            let params: [&(dyn postgres::types::ToSql + Sync); 1] = [&ids];
            let mut rows = c
                .query_raw(
                    &format!("SELECT request_id, {MACHINE_COLUMNS} FROM machines WHERE request_id = ANY($1) ORDER BY request_id, seq"),
                    params,
                )
                .map_err(|e| self.backend(e))?;
            while let Some(row) = postgres::fallible_iterator::FallibleIterator::next(&mut rows).map_err(|e| self.backend(e))? {
                let id: String = row.try_get(0).map_err(|e| self.backend(e))?;
                let m = read_machine(&row, 1).map_err(|e| self.backend(e))?;
                if let Some((_, list)) = out.get_mut(&id) {
                    list.push(m.to_machine(&location)?);
                }
            }
            Ok(out)
        })
    }

    fn update_requests(&self, updates: &[(RequestRecord, Vec<Machine>)]) -> Result<(), StoreError> {
        let refs: Vec<(&RequestRecord, &[Machine])> = updates.iter().map(|(r, m)| (r, m.as_slice())).collect();
        self.update_all(&refs)
    }

    fn stale_requests(&self, before: u64) -> Result<Vec<RequestRecord>, StoreError> {
        let rows = self.with(|c| {
            c.query(
                &format!(
                    "SELECT {REQUEST_COLUMNS} FROM requests
                     WHERE (created_at < $1 AND (phase = 'accepted' OR (NOT claimed AND kind = 'provision')))
                        OR (NOT claimed AND status = 'running' AND kind = 'return' AND updated_at < $1)
                     ORDER BY created_at"
                ),
                &[&to_i64(before)],
            )
            .and_then(|rows| rows.iter().map(read_request).collect::<Result<Vec<_>, _>>())
            .map_err(|e| self.backend(e))
        })?;
        let location = self.location();
        rows.iter().map(|r| r.to_record(&location)).collect()
    }

    fn provision_holders(&self, name: &str) -> Result<Vec<(String, Machine)>, StoreError> {
        Ok(self.provision_holders_of(&[name.to_string()])?.remove(name).unwrap_or_default())
    }

    fn provision_holders_of(&self, names: &[String]) -> Result<HashMap<String, Vec<(String, Machine)>>, StoreError> {
        if names.is_empty() {
            return Ok(HashMap::new());
        }
        let cols = MACHINE_COLUMNS.split(", ").map(|c| format!("m.{c}")).collect::<Vec<_>>().join(", ");
        let rows = self.with(|c| {
            c.query(
                &format!(
                    "SELECT m.request_id, {cols} FROM machines m JOIN requests r ON r.id = m.request_id
                     WHERE m.name = ANY($1) AND r.kind = 'provision' ORDER BY r.created_at DESC"
                ),
                &[&names],
            )
            .and_then(|rows| {
                rows.iter()
                    .map(|r| Ok((r.try_get::<_, String>(0)?, read_machine(r, 1)?)))
                    .collect::<Result<Vec<_>, postgres::Error>>()
            })
            .map_err(|e| self.backend(e))
        })?;
        let location = self.location();
        let mut out: HashMap<String, Vec<(String, Machine)>> = HashMap::new();
        for (id, m) in rows {
            let m = m.to_machine(&location)?;
            out.entry(m.name.clone()).or_default().push((id, m));
        }
        Ok(out)
    }

    fn kv_get(&self, namespace: &str, key: &str) -> Result<Option<String>, StoreError> {
        self.with(|c| {
            c.query_opt("SELECT value FROM kv WHERE namespace = $1 AND key = $2", &[&namespace, &key])
                .and_then(|r| r.map(|r| r.try_get(0)).transpose())
                .map_err(|e| self.backend(e))
        })
    }

    fn kv_set(&self, namespace: &str, key: &str, value: &str) -> Result<(), StoreError> {
        self.execute(
            "INSERT INTO kv AS k (namespace, key, value) VALUES ($1, $2, $3)
             ON CONFLICT (namespace, key) DO UPDATE SET value = EXCLUDED.value WHERE k.value IS DISTINCT FROM EXCLUDED.value",
            &[&namespace, &key, &value],
        )
        .map(|_| ())
    }

    fn kv_insert_if_absent(&self, namespace: &str, key: &str, value: &str) -> Result<bool, StoreError> {
        self.execute(
            "INSERT INTO kv (namespace, key, value) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            &[&namespace, &key, &value],
        )
        .map(|n| n == 1)
    }

    fn kv_delete_if_equals(&self, namespace: &str, key: &str, expected: &str) -> Result<bool, StoreError> {
        self.execute(
            "DELETE FROM kv WHERE namespace = $1 AND key = $2 AND value = $3",
            &[&namespace, &key, &expected],
        )
        .map(|n| n == 1)
    }

    fn kv_delete(&self, namespace: &str, key: &str) -> Result<(), StoreError> {
        self.execute("DELETE FROM kv WHERE namespace = $1 AND key = $2", &[&namespace, &key])
            .map(|_| ())
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
        // The server stops at one row past the bound; the bytes are counted as rows arrive.
        let limit = i64::try_from(max_entries.saturating_add(1)).unwrap_or(i64::MAX);
        let rows = self.with(|c| {
            c.query(
                "SELECT key, value FROM kv WHERE namespace = $1 AND left(key, length($2)) = $2 ORDER BY key LIMIT $3",
                &[&namespace, &prefix, &limit],
            )
            .map_err(|e| self.backend(e))
        })?;
        super::within_bounds(
            rows.iter().map(|r| Ok::<_, postgres::Error>((r.try_get(0)?, r.try_get(1)?))),
            max_entries,
            max_bytes,
        )
        .map_err(|e| self.backend(e))
    }

    fn kv_usage(&self, namespace: &str) -> Result<(usize, usize), StoreError> {
        let row = self.with(|c| {
            c.query_one(
                "SELECT count(*), coalesce(sum(octet_length(key) + octet_length(value)), 0)::bigint FROM kv WHERE namespace = $1",
                &[&namespace],
            )
            .map_err(|e| self.backend(e))
        })?;
        let n: i64 = row.try_get(0).map_err(|e| self.backend(e))?;
        let bytes: i64 = row.try_get(1).map_err(|e| self.backend(e))?;
        Ok((usize::try_from(n).unwrap_or(0), usize::try_from(bytes).unwrap_or(0)))
    }

    fn prune_finished(&self, before: u64, limit: usize) -> Result<usize, StoreError> {
        self.execute(
            &super::prune_sql("$1", "$2", " FOR UPDATE OF r SKIP LOCKED"),
            &[&to_i64(before), &i64::try_from(limit).unwrap_or(i64::MAX)],
        )
        .map(|n| usize::try_from(n).unwrap_or(usize::MAX))
    }

    fn export(&self) -> Result<Document, StoreError> {
        self.with(|c| {
            // One snapshot for the whole document.
            let mut tx = c
                .build_transaction()
                .isolation_level(postgres::IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()
                .map_err(|e| self.backend(e))?;
            let requests = tx
                .query(&format!("SELECT {REQUEST_COLUMNS} FROM requests ORDER BY created_at, id"), &[])
                .and_then(|rows| rows.iter().map(read_request).collect::<Result<Vec<_>, _>>())
                .map_err(|e| self.backend(e))?;
            let machines = tx
                .query(
                    &format!("SELECT request_id, {MACHINE_COLUMNS} FROM machines ORDER BY request_id, seq"),
                    &[],
                )
                .and_then(|rows| rows.iter().map(|r| Ok((r.try_get(0)?, read_machine(r, 1)?))).collect())
                .map_err(|e| self.backend(e))?;
            let kv = tx
                .query("SELECT namespace, key, value FROM kv ORDER BY namespace, key", &[])
                .and_then(|rows| rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?))).collect())
                .map_err(|e| self.backend(e))?;
            tx.commit().map_err(|e| self.backend(e))?;
            Ok(Document::from_rows(requests, machines, kv))
        })
    }

    fn import(&self, doc: &Document) -> Result<(), StoreError> {
        super::check_import_version(&self.location(), doc)?;
        for r in &doc.requests {
            r.to_record(&self.location())?;
            r.to_machines(&self.location())?;
        }
        self.with(|c| {
            let mut tx = c.transaction().map_err(|e| self.backend(e))?;
            tx.batch_execute("LOCK TABLE requests, machines, kv IN EXCLUSIVE MODE")
                .map_err(|e| self.backend(e))?;
            let count = |tx: &mut postgres::Transaction<'_>, sql: &str| -> Result<usize, StoreError> {
                tx.query_one(sql, &[])
                    .and_then(|r| r.try_get::<_, i64>(0))
                    .map(|n| usize::try_from(n).unwrap_or(0))
                    .map_err(|e| self.backend(e))
            };
            let requests = count(&mut tx, "SELECT COUNT(*) FROM requests")?;
            let kv = count(&mut tx, "SELECT COUNT(*) FROM kv")?;
            if requests + kv > 0 {
                return Err(StoreError::NotEmpty {
                    location: self.location(),
                    requests,
                    kv,
                });
            }
            for r in &doc.requests {
                insert_request_row(&mut tx, r).map_err(|e| self.backend(e))?;
                let machines = r.to_machines(&self.location())?;
                write_machines(&mut tx, &[(r.id.as_str(), &machines)]).map_err(|e| self.backend(e))?;
            }
            for (ns, entries) in &doc.kv {
                for (k, v) in entries {
                    tx.execute("INSERT INTO kv (namespace, key, value) VALUES ($1, $2, $3)", &[ns, k, v])
                        .map_err(|e| self.backend(e))?;
                }
            }
            tx.commit().map_err(|e| self.backend(e))
        })
    }

    fn inspect(&self) -> Result<BackendReport, StoreError> {
        self.with(|c| {
            let version = self.schema_version(c)?.unwrap_or(0);
            let size: i64 = c
                .query_one(
                    "SELECT COALESCE(SUM(pg_total_relation_size(t)), 0)::BIGINT FROM unnest(ARRAY['requests', 'machines', 'kv', 'hfwasm_schema']) t",
                    &[],
                )
                .and_then(|r| r.try_get(0))
                .map_err(|e| self.backend(e))?;
            let orphans: i64 = c
                .query_one("SELECT COUNT(*) FROM machines m WHERE NOT EXISTS (SELECT 1 FROM requests r WHERE r.id = m.request_id)", &[])
                .and_then(|r| r.try_get(0))
                .map_err(|e| self.backend(e))?;
            let mut problems = Vec::new();
            if orphans > 0 {
                problems.push(format!("{orphans} machine row(s) belong to no request"));
            }
            Ok(BackendReport {
                backend: "postgresql",
                location: self.location(),
                schema_version: version,
                size_bytes: u64::try_from(size).ok(),
                problems,
            })
        })
    }
}
