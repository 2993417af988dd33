//! The `storage` section of `hfwasm.json`, in the seed's shape:
//! `{"strategy": "sql" | "json", "json_strategy": {...}, "sql_strategy": {"type": "sqlite" |
//! "postgresql", ...}, "retention_hours": N}`. Every key has an effect or a named refusal.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::store::{JsonLayout, PgSettings, StoreSpec, Synchronous};

/// Default for `storage.retention_hours`: finished requests are kept a week.
pub const DEFAULT_RETENTION_HOURS: u64 = 168;

/// `storage` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStorage {
    /// Seed 001's `storage.type` (`dynamodb`): refused with the reason.
    #[serde(rename = "type")]
    kind: Option<String>,
    /// Seed 001's `storage.dynamodb` settings: refused with `type`.
    dynamodb: Option<serde_json::Value>,
    strategy: Option<String>,
    json_strategy: Option<RawJson>,
    sql_strategy: Option<RawSql>,
    retention_hours: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJson {
    storage_type: Option<String>,
    base_path: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSql {
    #[serde(rename = "type")]
    kind: Option<String>,
    // sqlite
    path: Option<PathBuf>,
    synchronous: Option<String>,
    // postgresql
    host: Option<String>,
    port: Option<u16>,
    name: Option<String>,
    user: Option<String>,
    password: Option<String>,
    password_file: Option<PathBuf>,
    pool_size: Option<usize>,
    connect_timeout: Option<u64>,
    statement_timeout: Option<u64>,
    // the seed's, refused with a reason
    backup_enabled: Option<serde_json::Value>,
    replication: Option<serde_json::Value>,
}

/// Storage settings after validation.
#[derive(Debug, Clone)]
pub struct Storage {
    /// Backend and where.
    pub spec: StoreSpec,
    /// Finished requests older than this are pruned.
    pub retention: Duration,
}

/// Builds [`Storage`]; `err(setting, message)` makes the caller's error; relative paths are
/// relative to `work_dir` (state belongs to the work dir) or, for `password_file`, `conf_dir`.
pub fn build<E>(
    raw: RawStorage,
    work_dir: &Path,
    conf_dir: &Path,
    env: impl Fn(&str) -> Option<String>,
    err: impl Fn(&str, String) -> E,
) -> Result<Storage, E> {
    let retention_hours = raw.retention_hours.unwrap_or(DEFAULT_RETENTION_HOURS);
    if retention_hours == 0 {
        return Err(err("storage.retention_hours", "must be at least 1 (hours)".into()));
    }
    // ORB writes the strategy as `storage.type` (`json`, `sql`); seed 001 names DynamoDB there.
    if let Some(k) = &raw.kind {
        if !matches!(k.as_str(), "json" | "sql") {
            return Err(err(
                "storage.type",
                format!(
                    "`{k}`: hfwasm keeps its state in SQLite (the default), JSON files or PostgreSQL, chosen by `storage.type` or `storage.strategy` (`sql` with `sql_strategy.type` sqlite or postgresql, or `json`); DynamoDB is not supported"
                ),
            ));
        }
        if raw.strategy.as_deref().is_some_and(|s| s != k) {
            return Err(err("storage.type", format!("`{k}` and `storage.strategy` disagree; keep one")));
        }
    }
    if raw.dynamodb.is_some() {
        return Err(err("storage.dynamodb", "DynamoDB is not supported; see `storage.strategy`".into()));
    }
    let strategy = raw.strategy.as_deref().or(raw.kind.as_deref()).unwrap_or("sql");
    let spec = match strategy {
        "json" => {
            if raw.sql_strategy.is_some() {
                return Err(err(
                    "storage.sql_strategy",
                    "is set but `storage.strategy` is `json`; remove one of them".into(),
                ));
            }
            let j = raw.json_strategy.unwrap_or_default();
            let layout = match j.storage_type.as_deref() {
                None | Some("single_file") => JsonLayout::SingleFile,
                Some("split_files") => JsonLayout::SplitFiles,
                Some(other) => {
                    return Err(err(
                        "storage.json_strategy.storage_type",
                        format!("`{other}` is not a layout; use `single_file` or `split_files`"),
                    ));
                }
            };
            StoreSpec::Json {
                dir: work_dir.join(j.base_path.unwrap_or_else(|| PathBuf::from("state"))),
                layout,
            }
        }
        "sql" => {
            if raw.json_strategy.is_some() {
                return Err(err(
                    "storage.json_strategy",
                    "is set but `storage.strategy` is `sql`; remove one of them".into(),
                ));
            }
            let s = raw.sql_strategy.unwrap_or_default();
            if s.backup_enabled.is_some() {
                return Err(err(
                    "storage.sql_strategy.backup_enabled",
                    "is not a hfwasm setting: back the database up with its own tools (pg_dump, RDS snapshots) or `hfwasm store export`"
                        .into(),
                ));
            }
            if s.replication.is_some() {
                return Err(err(
                    "storage.sql_strategy.replication",
                    "is not a hfwasm setting: hfwasm writes to one primary; replicate it with PostgreSQL's own replication and point `host` at the primary (or a failover endpoint)".into(),
                ));
            }
            match s.kind.as_deref().unwrap_or("sqlite") {
                "sqlite" => {
                    for (set, key) in [
                        (s.host.is_some(), "host"),
                        (s.port.is_some(), "port"),
                        (s.name.is_some(), "name"),
                        (s.user.is_some(), "user"),
                        (s.password.is_some(), "password"),
                        (s.password_file.is_some(), "password_file"),
                        (s.pool_size.is_some(), "pool_size"),
                        (s.connect_timeout.is_some(), "connect_timeout"),
                        (s.statement_timeout.is_some(), "statement_timeout"),
                    ] {
                        if set {
                            return Err(err(
                                &format!("storage.sql_strategy.{key}"),
                                "applies to `type: postgresql` only; SQLite takes `path` and `synchronous`".into(),
                            ));
                        }
                    }
                    let synchronous = match s.synchronous.as_deref() {
                        None | Some("normal") => Synchronous::Normal,
                        Some("full") => Synchronous::Full,
                        Some(other) => {
                            return Err(err(
                                "storage.sql_strategy.synchronous",
                                format!(
                                    "`{other}` is not a setting; use `normal` (survives process crashes) or `full` (also power loss, slower writes)"
                                ),
                            ));
                        }
                    };
                    StoreSpec::Sqlite {
                        path: work_dir.join(s.path.unwrap_or_else(|| PathBuf::from("hfwasm.sqlite"))),
                        synchronous,
                    }
                }
                "postgresql" | "postgres" => {
                    for (set, key) in [(s.path.is_some(), "path"), (s.synchronous.is_some(), "synchronous")] {
                        if set {
                            return Err(err(&format!("storage.sql_strategy.{key}"), "applies to `type: sqlite` only".into()));
                        }
                    }
                    StoreSpec::Postgres(postgres_settings(s, conf_dir, &env, &err)?)
                }
                other => {
                    return Err(err(
                        "storage.sql_strategy.type",
                        format!("`{other}` is not supported; use `sqlite` (embedded default) or `postgresql`"),
                    ));
                }
            }
        }
        other => {
            return Err(err(
                "storage.strategy",
                format!("`{other}` is not a strategy; use `sql` (SQLite or PostgreSQL, see `sql_strategy.type`) or `json`"),
            ));
        }
    };
    Ok(Storage {
        spec,
        retention: Duration::from_secs(retention_hours * 3600),
    })
}

/// PostgreSQL settings: config keys first, then the standard `PG*` variables, then libpq's
/// defaults; each remembers its source for error messages.
fn postgres_settings<E>(
    s: RawSql,
    conf_dir: &Path,
    env: &impl Fn(&str) -> Option<String>,
    err: &impl Fn(&str, String) -> E,
) -> Result<PgSettings, E> {
    let mut sources: BTreeMap<&'static str, String> = BTreeMap::new();
    let mut pick = |field: &'static str, value: Option<String>, var: &str, default: Option<String>| -> Option<String> {
        if let Some(v) = value {
            sources.insert(field, format!("storage.sql_strategy.{field}"));
            return Some(v);
        }
        if let Some(v) = env(var).filter(|v| !v.is_empty()) {
            sources.insert(field, var.to_string());
            return Some(v);
        }
        sources.insert(field, format!("storage.sql_strategy.{field}"));
        default
    };
    let host = pick("host", s.host, "PGHOST", Some("localhost".into())).unwrap_or_default();
    let port_text = pick("port", s.port.map(|p| p.to_string()), "PGPORT", Some("5432".into())).unwrap_or_default();
    let os_user = env("USER").or_else(|| env("LOGNAME"));
    let user = pick("user", s.user, "PGUSER", os_user)
        .ok_or_else(|| err("storage.sql_strategy.user", "no database user: set `user` (or PGUSER)".into()))?;
    let dbname = pick("name", s.name, "PGDATABASE", Some(user.clone())).unwrap_or_default();
    let password = match (s.password, &s.password_file) {
        (Some(_), Some(_)) => {
            return Err(err(
                "storage.sql_strategy.password_file",
                "give either `password` or `password_file`, not both".into(),
            ));
        }
        (Some(p), None) => {
            sources.insert("password", "storage.sql_strategy.password".into());
            Some(p)
        }
        (None, Some(file)) => {
            let path = conf_dir.join(file);
            let text = crate::limits::read_capped(&path, crate::limits::MAX_CONFIG_BYTES)
                .map_err(|e| err("storage.sql_strategy.password_file", format!("cannot read {}: {e}", path.display())))?;
            sources.insert("password", format!("storage.sql_strategy.password_file ({})", path.display()));
            Some(text.trim_end_matches(['\n', '\r']).to_string())
        }
        (None, None) => pick("password", None, "PGPASSWORD", None),
    };
    let port: u16 = port_text.parse().map_err(|_| {
        err(
            sources.get("port").map_or("storage.sql_strategy.port", String::as_str),
            format!("`{port_text}` is not a port number"),
        )
    })?;
    let pool_size = s.pool_size.unwrap_or(4);
    if pool_size == 0 {
        return Err(err("storage.sql_strategy.pool_size", "must be at least 1".into()));
    }
    let connect_timeout = match s.connect_timeout {
        Some(0) => return Err(err("storage.sql_strategy.connect_timeout", "must be at least 1 (seconds)".into())),
        Some(n) => n,
        None => env("PGCONNECT_TIMEOUT")
            .and_then(|v| v.parse().ok())
            .filter(|n| *n > 0)
            .unwrap_or(10),
    };
    let statement_timeout = match s.statement_timeout {
        None => crate::limits::STORE_STATEMENT_TIMEOUT,
        Some(n @ 1..=3600) => Duration::from_secs(n),
        Some(n) => {
            return Err(err(
                "storage.sql_strategy.statement_timeout",
                format!("{n}: must be 1..=3600 (seconds)"),
            ));
        }
    };
    if let Some(mode) = env("PGSSLMODE").filter(|m| !matches!(m.as_str(), "disable" | "allow" | "prefer")) {
        return Err(err(
            "PGSSLMODE",
            format!(
                "`{mode}`: TLS to PostgreSQL is not in this build yet; use a server on a trusted network or a local TLS tunnel, and unset PGSSLMODE"
            ),
        ));
    }
    Ok(PgSettings {
        host,
        port,
        user,
        password,
        dbname,
        pool_size,
        connect_timeout: Duration::from_secs(connect_timeout),
        statement_timeout,
        sources,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str, env: &[(&str, &str)]) -> Result<Storage, (String, String)> {
        let raw: RawStorage = serde_json::from_str(json).map_err(|e| ("parse".to_string(), e.to_string()))?;
        build(
            raw,
            Path::new("/w"),
            Path::new("/c"),
            |k| env.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string()),
            |s, m| (s.to_string(), m),
        )
    }

    #[test]
    fn default_is_sqlite_in_the_work_dir() {
        let s = parse("{}", &[]).expect("default");
        assert!(
            matches!(s.spec, StoreSpec::Sqlite { ref path, synchronous: Synchronous::Normal } if path == Path::new("/w/hfwasm.sqlite"))
        );
        assert_eq!(s.retention, Duration::from_secs(168 * 3600));
    }

    #[test]
    fn the_seeds_shapes_are_read_as_they_are() {
        let s = parse(
            r#"{"strategy": "json", "json_strategy": {"storage_type": "split_files", "base_path": "/opt/hostfactory-plugin/data"}}"#,
            &[],
        )
        .expect("json");
        assert!(
            matches!(s.spec, StoreSpec::Json { ref dir, layout: JsonLayout::SplitFiles } if dir == Path::new("/opt/hostfactory-plugin/data"))
        );
        let s = parse(
            r#"{"strategy": "sql", "sql_strategy": {"type": "postgresql", "host": "db.example", "port": 5433, "name": "hostfactory", "pool_size": 10}}"#,
            &[("PGUSER", "hf"), ("PGPASSWORD", "secret")],
        )
        .expect("pg");
        let StoreSpec::Postgres(pg) = s.spec else {
            panic!("postgres expected")
        };
        assert_eq!(pg.location(), "postgresql://hf@db.example:5433/hostfactory");
        assert_eq!(pg.pool_size, 10);
        assert_eq!(pg.password.as_deref(), Some("secret"));
        assert_eq!(pg.sources["password"], "PGPASSWORD");
        assert_eq!(pg.sources["host"], "storage.sql_strategy.host");
        assert!(!format!("{pg:?}").contains("secret"), "the password never shows in Debug output");
    }

    #[test]
    fn bad_settings_are_named() {
        for (json, setting) in [
            (r#"{"strategy": "mongodb"}"#, "storage.strategy"),
            (r#"{"sql_strategy": {"type": "oracle"}}"#, "storage.sql_strategy.type"),
            (
                r#"{"sql_strategy": {"synchronous": "sometimes"}}"#,
                "storage.sql_strategy.synchronous",
            ),
            (r#"{"sql_strategy": {"host": "db"}}"#, "storage.sql_strategy.host"),
            (
                r#"{"sql_strategy": {"type": "postgresql", "user": "u", "replication": {"enabled": true}}}"#,
                "storage.sql_strategy.replication",
            ),
            (
                r#"{"sql_strategy": {"type": "postgresql", "user": "u", "backup_enabled": true}}"#,
                "storage.sql_strategy.backup_enabled",
            ),
            (
                r#"{"sql_strategy": {"type": "postgresql", "user": "u", "pool_size": 0}}"#,
                "storage.sql_strategy.pool_size",
            ),
            (
                r#"{"strategy": "json", "json_strategy": {"storage_type": "many_files"}}"#,
                "storage.json_strategy.storage_type",
            ),
            (r#"{"strategy": "json", "sql_strategy": {}}"#, "storage.sql_strategy"),
            (r#"{"retention_hours": 0}"#, "storage.retention_hours"),
        ] {
            let (got, msg) = parse(json, &[]).expect_err(json);
            assert_eq!(got, setting, "{json}: {msg}");
        }
        let (got, _) = parse(r#"{"sql_strategy": {"type": "postgresql", "user": "u"}}"#, &[("PGPORT", "abc")]).expect_err("port");
        assert_eq!(got, "PGPORT");
    }
}
