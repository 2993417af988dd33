//! The `storage` section of `hfwasm.json`, in the seed's shape:
//! `{"strategy": "sql" | "json" | "dynamodb", "json_strategy": {...}, "sql_strategy": {"type":
//! "sqlite" | "postgresql", ...}, "dynamodb": {...}, "retention_hours": N}` (seed 001 and ORB
//! write the strategy as `type`). Every key has an effect or a named refusal.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::store::{DynamoSettings, JsonLayout, PgSettings, SslMode, StoreSpec, Synchronous};

/// Default for `storage.retention_hours`: finished requests are kept a week.
pub const DEFAULT_RETENTION_HOURS: u64 = 168;

/// `storage` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStorage {
    /// Seed 001's and ORB's spelling of `strategy`.
    #[serde(rename = "type")]
    kind: Option<String>,
    /// Seed 001's `storage.dynamodb` settings.
    dynamodb: Option<RawDynamo>,
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
struct RawDynamo {
    table_prefix: Option<String>,
    region: Option<String>,
    backup_enabled: Option<bool>,
    endpoint_url: Option<String>,
    profile: Option<String>,
    connect_timeout: Option<u64>,
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
    sslmode: Option<String>,
    sslrootcert: Option<PathBuf>,
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
    // ORB and seed 001 write the strategy as `storage.type`.
    if let Some(k) = &raw.kind
        && raw.strategy.as_deref().is_some_and(|s| s != k)
    {
        return Err(err("storage.type", format!("`{k}` and `storage.strategy` disagree; keep one")));
    }
    let key = if raw.kind.is_some() { "storage.type" } else { "storage.strategy" };
    let strategy = raw.strategy.as_deref().or(raw.kind.as_deref()).unwrap_or("sql");
    if strategy != "dynamodb" && raw.dynamodb.is_some() {
        return Err(err(
            "storage.dynamodb",
            format!("is set but `{key}` is `{strategy}`; set `{key}: dynamodb` or remove `storage.dynamodb`"),
        ));
    }
    let spec = match strategy {
        "dynamodb" => {
            for (set, name) in [
                (raw.json_strategy.is_some(), "json_strategy"),
                (raw.sql_strategy.is_some(), "sql_strategy"),
            ] {
                if set {
                    return Err(err(
                        &format!("storage.{name}"),
                        format!("is set but `{key}` is `dynamodb`; remove one of them"),
                    ));
                }
            }
            StoreSpec::Dynamodb(dynamo_settings(raw.dynamodb.unwrap_or_default(), &env, &err)?)
        }
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
                        (s.sslmode.is_some(), "sslmode"),
                        (s.sslrootcert.is_some(), "sslrootcert"),
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
                key,
                format!("`{other}` is not a strategy; use `sql` (SQLite or PostgreSQL, see `sql_strategy.type`), `json` or `dynamodb`"),
            ));
        }
    };
    Ok(Storage {
        spec,
        retention: Duration::from_secs(retention_hours * 3600),
    })
}

/// DynamoDB settings: the seed's `table_prefix` (default `hostfactory`, the seed's), `region`
/// (else `AWS_REGION` / `AWS_DEFAULT_REGION`), `backup_enabled`, and hfwasm's `endpoint_url`,
/// `profile` and `connect_timeout`.
fn dynamo_settings<E>(d: RawDynamo, env: &impl Fn(&str) -> Option<String>, err: &impl Fn(&str, String) -> E) -> Result<DynamoSettings, E> {
    let table_prefix = d.table_prefix.unwrap_or_else(|| "hostfactory".into());
    // DynamoDB table names: 3-255 of [A-Za-z0-9_.-]; the longest suffix is `-requests`.
    if table_prefix.is_empty()
        || table_prefix.len() > 255 - "-requests".len()
        || !table_prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
    {
        return Err(err(
            "storage.dynamodb.table_prefix",
            format!("`{table_prefix}`: use 1-246 letters, digits, `_`, `.` or `-` (it starts DynamoDB table names)"),
        ));
    }
    let region = d
        .region
        .or_else(|| env("AWS_REGION").filter(|r| !r.is_empty()))
        .or_else(|| env("AWS_DEFAULT_REGION").filter(|r| !r.is_empty()))
        .ok_or_else(|| err("storage.dynamodb.region", "no region: set `region` (or AWS_REGION)".into()))?;
    if let Some(url) = &d.endpoint_url
        && !(url.starts_with("https://") || url.starts_with("http://"))
    {
        return Err(err(
            "storage.dynamodb.endpoint_url",
            format!("`{url}` is not an http:// or https:// URL"),
        ));
    }
    let connect_timeout = match d.connect_timeout {
        Some(0) => return Err(err("storage.dynamodb.connect_timeout", "must be at least 1 (seconds)".into())),
        Some(n) => Duration::from_secs(n),
        None => Duration::from_secs(10),
    };
    Ok(DynamoSettings {
        table_prefix,
        region,
        endpoint_url: d.endpoint_url,
        profile: d.profile,
        backup: d.backup_enabled.unwrap_or(false),
        connect_timeout,
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
    let mode_text = pick("sslmode", s.sslmode, "PGSSLMODE", Some("disable".into())).unwrap_or_default();
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
    let ssl_mode = SslMode::parse(&mode_text).ok_or_else(|| {
        err(
            sources.get("sslmode").map_or("storage.sql_strategy.sslmode", String::as_str),
            format!("`{mode_text}` is not a mode; use disable, require, verify-ca or verify-full (prefer and allow connect without TLS)"),
        )
    })?;
    let ssl_root_cert = match s.sslrootcert {
        Some(f) => {
            sources.insert("sslrootcert", "storage.sql_strategy.sslrootcert".into());
            Some(conf_dir.join(f))
        }
        None => env("PGSSLROOTCERT").filter(|v| !v.is_empty()).map(|v| {
            sources.insert("sslrootcert", "PGSSLROOTCERT".into());
            PathBuf::from(v)
        }),
    };
    if let Some(f) = &ssl_root_cert {
        if ssl_mode == SslMode::Disable {
            return Err(err(
                sources
                    .get("sslrootcert")
                    .map_or("storage.sql_strategy.sslrootcert", String::as_str),
                format!(
                    "is set but sslmode is `{mode_text}`: without TLS the CA file is never used; set sslmode verify-full (or verify-ca, require)"
                ),
            ));
        }
        if !f.is_file() {
            return Err(err(
                sources
                    .get("sslrootcert")
                    .map_or("storage.sql_strategy.sslrootcert", String::as_str),
                format!("{} is not a file", f.display()),
            ));
        }
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
        ssl_mode,
        ssl_root_cert,
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
    fn the_seeds_dynamodb_keys_are_read() {
        let s = parse(
            r#"{"type": "dynamodb", "dynamodb": {"table_prefix": "hostfactory-prod", "region": "us-east-1", "backup_enabled": true}}"#,
            &[],
        )
        .expect("seed 001, scenario 3");
        let StoreSpec::Dynamodb(d) = s.spec else {
            panic!("not dynamodb: {:?}", s.spec)
        };
        assert_eq!(
            (d.table_prefix.as_str(), d.region.as_str(), d.backup),
            ("hostfactory-prod", "us-east-1", true)
        );
        assert_eq!(d.endpoint_url, None);
        // The region may come from the environment, the prefix defaults to the seed's.
        let s = parse(r#"{"strategy": "dynamodb"}"#, &[("AWS_REGION", "eu-west-1")]).expect("defaults");
        let StoreSpec::Dynamodb(d) = s.spec else { panic!("not dynamodb") };
        assert_eq!(
            (d.table_prefix.as_str(), d.region.as_str(), d.backup),
            ("hostfactory", "eu-west-1", false)
        );
        for (json, setting) in [
            (r#"{"type": "dynamodb"}"#, "storage.dynamodb.region"),
            (
                r#"{"type": "dynamodb", "dynamodb": {"region": "r", "endpoint_url": "dynamo.local"}}"#,
                "storage.dynamodb.endpoint_url",
            ),
            (
                r#"{"type": "dynamodb", "dynamodb": {"region": "r", "table_prefix": "a/b"}}"#,
                "storage.dynamodb.table_prefix",
            ),
            (
                r#"{"type": "dynamodb", "dynamodb": {"region": "r"}, "sql_strategy": {}}"#,
                "storage.sql_strategy",
            ),
            (r#"{"type": "sql", "dynamodb": {"region": "r"}}"#, "storage.dynamodb"),
            (r#"{"type": "dynamodb", "strategy": "sql"}"#, "storage.type"),
        ] {
            let (got, message) = parse(json, &[]).expect_err(json);
            assert_eq!(got, setting, "{json}: {message}");
        }
    }

    #[test]
    fn postgres_tls_settings_follow_libpq() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "x").expect("ca");
        let pg = |json: &str, env: &[(&str, &str)]| -> Result<PgSettings, (String, String)> {
            let raw: RawStorage = serde_json::from_str(json).map_err(|e| ("parse".to_string(), e.to_string()))?;
            let s = build(
                raw,
                Path::new("/w"),
                dir.path(),
                |k| env.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string()),
                |s, m| (s.to_string(), m),
            )?;
            match s.spec {
                StoreSpec::Postgres(p) => Ok(p),
                other => panic!("not postgres: {other:?}"),
            }
        };
        let base = r#"{"strategy": "sql", "sql_strategy": {"type": "postgresql", "user": "u""#;
        let p = pg(&format!("{base}}}}}"), &[]).expect("default");
        assert_eq!((p.ssl_mode, p.ssl_root_cert), (SslMode::Disable, None));
        let p = pg(&format!(r#"{base}, "sslmode": "verify-full", "sslrootcert": "ca.pem"}}}}"#), &[]).expect("keys");
        assert_eq!((p.ssl_mode, p.ssl_root_cert.clone()), (SslMode::VerifyFull, Some(ca.clone())));
        assert!(p.location().ends_with("?sslmode=verify-full"), "{}", p.location());
        let p = pg(
            &format!("{base}}}}}"),
            &[("PGSSLMODE", "require"), ("PGSSLROOTCERT", ca.to_str().expect("utf8"))],
        )
        .expect("env");
        assert_eq!(p.ssl_mode, SslMode::Require);
        assert_eq!(p.source("sslrootcert"), "PGSSLROOTCERT");
        for (json, env, setting) in [
            (
                format!(r#"{base}, "sslmode": "verify_full"}}}}"#),
                vec![],
                "storage.sql_strategy.sslmode",
            ),
            (format!("{base}}}}}"), vec![("PGSSLMODE", "on")], "PGSSLMODE"),
            (
                format!(r#"{base}, "sslmode": "require", "sslrootcert": "missing.pem"}}}}"#),
                vec![],
                "storage.sql_strategy.sslrootcert",
            ),
            (
                format!(r#"{base}, "sslrootcert": "ca.pem"}}}}"#),
                vec![],
                "storage.sql_strategy.sslrootcert",
            ),
        ] {
            let (got, message) = pg(&json, &env).expect_err(&json);
            assert_eq!(got, setting, "{json}: {message}");
        }
        let (got, _) = parse(r#"{"sql_strategy": {"type": "sqlite", "sslmode": "require"}}"#, &[]).expect_err("sqlite");
        assert_eq!(got, "storage.sql_strategy.sslmode");
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
