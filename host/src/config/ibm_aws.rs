//! IBM's AWS provider files, read as they are: `<instance>prov_config.json` and
//! `<instance>prov_templates.json` (Symphony; LSF names them `awsprov_*.json`). The config
//! keys become the EC2 client's settings and the lifecycle timeouts; the templates go to
//! the AWS guest, which validates every template key itself.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Map, Value};

use super::ConfigError;
use crate::capabilities::ec2::{Ec2Grant, Ec2Settings};

/// What IBM's two files configure.
#[derive(Debug, Clone)]
pub struct IbmAws {
    /// The config file.
    pub config_file: PathBuf,
    /// The templates file.
    pub templates_file: PathBuf,
    /// EC2 client settings.
    pub settings: Ec2Settings,
    /// The guest's EC2 grant: the configured region, the templates' instance types.
    pub grant: Ec2Grant,
    /// `AWS_INSTANCE_PENDING_TIMEOUT_SEC` (default 180).
    pub pending_timeout_secs: u64,
    /// `INSTANCE_CREATION_TIMEOUT` (LSF, minutes, default 10) in seconds: instances no request
    /// adopted by then are terminated by the sweep.
    pub creation_timeout_secs: u64,
    /// `AWS_SPOT_TERMINATE_ON_RECLAIM`: terminate spot instances marked for reclaim.
    pub spot_terminate_on_reclaim: bool,
    /// The templates array, for the guest.
    pub templates: Value,
    /// `HF_LOGLEVEL`-style level when `ACCEPT_PROPAGATED_LOG_SETTING` or `LogLevel` says so.
    pub log_level: Option<String>,
}

/// The config and templates files for provider instance `name` in `conf_dir`, if present.
pub fn find(conf_dir: &Path, name: &str) -> Option<(PathBuf, PathBuf)> {
    for prefix in [format!("{name}prov"), "awsprov".to_string()] {
        let config = conf_dir.join(format!("{prefix}_config.json"));
        if config.is_file() {
            return Some((config, conf_dir.join(format!("{prefix}_templates.json"))));
        }
    }
    None
}

fn read_object(file: &Path) -> Result<Map<String, Value>, ConfigError> {
    let err = |m: String| ConfigError {
        file: file.to_path_buf(),
        setting: None,
        message: m,
    };
    let text = std::fs::read_to_string(file).map_err(|e| err(format!("cannot read: {e}")))?;
    match serde_json::from_str::<Value>(&text) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(err("expected a JSON object".into())),
        Err(e) => Err(err(format!("not valid JSON: {e}"))),
    }
}

/// IBM writes numbers both as numbers and as strings.
fn number(file: &Path, key: &str, v: &Value, min: u64, max: u64) -> Result<u64, ConfigError> {
    let n = match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse::<u64>().ok(),
        _ => None,
    };
    match n {
        Some(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(ConfigError {
            file: file.to_path_buf(),
            setting: Some(key.to_string()),
            message: format!("`{key}` = {v} must be a whole number in {min}..={max}"),
        }),
    }
}

fn text(file: &Path, key: &str, v: &Value) -> Result<String, ConfigError> {
    match v {
        Value::String(s) if !s.trim().is_empty() => Ok(s.trim().to_string()),
        _ => Err(ConfigError {
            file: file.to_path_buf(),
            setting: Some(key.to_string()),
            message: format!("`{key}` must be a non-empty string, found {v}"),
        }),
    }
}

fn boolean(file: &Path, key: &str, v: &Value) -> Result<bool, ConfigError> {
    match v {
        Value::Bool(b) => Ok(*b),
        Value::String(s) if s.eq_ignore_ascii_case("true") => Ok(true),
        Value::String(s) if s.eq_ignore_ascii_case("false") => Ok(false),
        _ => Err(ConfigError {
            file: file.to_path_buf(),
            setting: Some(key.to_string()),
            message: format!("`{key}` must be true or false, found {v}"),
        }),
    }
}

/// Maps IBM's/LSF's log level names onto tracing levels.
/// A log level in any common spelling (`INFO`, `WARNING`, `LOG_ERR`, `critical`) as
/// tracing's (`info`, `warn`, `error`).
pub fn level(v: &str) -> Option<&'static str> {
    match v.trim().to_ascii_uppercase().trim_start_matches("LOG_") {
        "TRACE" => Some("trace"),
        "DEBUG" => Some("debug"),
        "INFO" | "NOTICE" => Some("info"),
        "WARN" | "WARNING" => Some("warn"),
        "ERR" | "ERROR" | "CRIT" | "CRITICAL" | "FATAL" | "ALERT" | "EMERG" => Some("error"),
        _ => None,
    }
}

/// Reads both files. `env` looks up `HF_LOGLEVEL` for `ACCEPT_PROPAGATED_LOG_SETTING`.
pub fn load(config_file: &Path, templates_file: &Path, env: impl Fn(&str) -> Option<String>) -> Result<IbmAws, ConfigError> {
    let cfg = read_object(config_file)?;
    let t = read_object(templates_file)?;
    from_values(cfg, t, config_file, templates_file, env)
}

/// [`load`] on contents already read (`cfg` as IBM's config file, `t` as its templates
/// file, `{"templates": [...]}`); the paths name where they came from in errors and
/// anchor relative paths (`AWS_CREDENTIAL_FILE`, `userDataScript`).
pub fn from_values(
    cfg: Map<String, Value>,
    t: Map<String, Value>,
    config_file: &Path,
    templates_file: &Path,
    env: impl Fn(&str) -> Option<String>,
) -> Result<IbmAws, ConfigError> {
    let mut s = Ec2Settings::default();
    let mut region = None;
    let (mut proxy_host, mut proxy_port) = (None, None);
    let mut pending_timeout_secs = 180;
    let mut creation_timeout_secs = 600;
    let mut spot_terminate_on_reclaim = false;
    let mut log_level = None;
    let f = config_file;
    for (key, v) in &cfg {
        match key.as_str() {
            "AWS_REGION" => region = Some(text(f, key, v)?),
            "AWS_ENDPOINT_URL" => s.endpoint_url = Some(text(f, key, v)?),
            "AWS_CREDENTIAL_FILE" => {
                let p = PathBuf::from(text(f, key, v)?);
                s.credential_file = Some(if p.is_absolute() {
                    p
                } else {
                    f.parent().unwrap_or(Path::new(".")).join(p)
                });
            }
            "AWS_PROXY_HOST" => proxy_host = Some(text(f, key, v)?),
            "AWS_PROXY_PORT" => proxy_port = Some(number(f, key, v, 1, 65535)?),
            "AWS_CONNECTION_TIMEOUT_MS" => s.connect_timeout = Duration::from_millis(number(f, key, v, 1, 600_000)?),
            "AWS_REQUEST_RETRY_ATTEMPTS" => s.retry_attempts = u32::try_from(number(f, key, v, 0, 10)?).unwrap_or(10),
            "AWS_DESCRIBE_REQUEST_RETRY_ATTEMPTS" => s.describe_retry_attempts = u32::try_from(number(f, key, v, 0, 10)?).unwrap_or(10),
            "AWS_DESCRIBE_REQUEST_INTERVAL" => s.describe_interval = Duration::from_millis(number(f, key, v, 0, 10_000)?),
            "AWS_INSTANCE_PENDING_TIMEOUT_SEC" => pending_timeout_secs = number(f, key, v, 180, 10_000)?,
            "INSTANCE_CREATION_TIMEOUT" => creation_timeout_secs = number(f, key, v, 1, 10_000)? * 60,
            "AWS_SPOT_TERMINATE_ON_RECLAIM" => spot_terminate_on_reclaim = boolean(f, key, v)?,
            "ACCEPT_PROPAGATED_LOG_SETTING" => {
                if boolean(f, key, v)? {
                    log_level = env("HF_LOGLEVEL").as_deref().and_then(level).map(str::to_string);
                }
            }
            "LogLevel" => {
                let l = text(f, key, v)?;
                log_level = Some(level(&l).map(str::to_string).ok_or_else(|| ConfigError {
                    file: f.to_path_buf(),
                    setting: Some(key.clone()),
                    message: format!("`LogLevel` = {l} is not a level (LOG_ERR, LOG_WARNING, LOG_INFO, LOG_DEBUG, LOG_TRACE)"),
                })?);
            }
            // Only IBM's plugin uses it (to locate .pem files); hfwasm never logs in to hosts.
            "AWS_KEY_FILE" => tracing::debug!(file = %f.display(), "AWS_KEY_FILE has no effect in hfwasm (it never connects to instances)"),
            "AWS_CREDENTIAL_SCRIPT" | "AWS_CREDENTIAL_RENEW_MARGIN" | "AWS_TAG_InstanceID" => {
                return Err(ConfigError {
                    file: f.to_path_buf(),
                    setting: Some(key.clone()),
                    message: format!(
                        "`{key}` is not supported by hfwasm; use AWS_CREDENTIAL_FILE or the standard AWS credential chain (environment, profile, instance role) instead"
                    ),
                });
            }
            other => {
                return Err(ConfigError {
                    file: f.to_path_buf(),
                    setting: Some(other.to_string()),
                    message: format!(
                        "unknown key `{other}` (IBM awsprov_config keys: AWS_REGION, AWS_ENDPOINT_URL, AWS_CREDENTIAL_FILE, AWS_PROXY_HOST, AWS_PROXY_PORT, AWS_CONNECTION_TIMEOUT_MS, AWS_REQUEST_RETRY_ATTEMPTS, AWS_DESCRIBE_REQUEST_RETRY_ATTEMPTS, AWS_DESCRIBE_REQUEST_INTERVAL, AWS_INSTANCE_PENDING_TIMEOUT_SEC, INSTANCE_CREATION_TIMEOUT, AWS_SPOT_TERMINATE_ON_RECLAIM, ACCEPT_PROPAGATED_LOG_SETTING, LogLevel, AWS_KEY_FILE)"
                    ),
                });
            }
        }
    }
    s.region = region.ok_or_else(|| ConfigError {
        file: f.to_path_buf(),
        setting: Some("AWS_REGION".into()),
        message: "`AWS_REGION` is required".into(),
    })?;
    match (proxy_host, proxy_port) {
        (Some(h), Some(p)) => {
            s.proxy = Some(if h.contains("://") {
                format!("{h}:{p}")
            } else {
                format!("http://{h}:{p}")
            })
        }
        (None, None) => {}
        _ => {
            return Err(ConfigError {
                file: f.to_path_buf(),
                setting: Some("AWS_PROXY_HOST".into()),
                message: "`AWS_PROXY_HOST` and `AWS_PROXY_PORT` go together".into(),
            });
        }
    }

    let templates = t.get("templates").cloned().ok_or_else(|| ConfigError {
        file: templates_file.to_path_buf(),
        setting: Some("templates".into()),
        message: "expected {\"templates\": [...]}".into(),
    })?;
    if !templates.is_array() {
        return Err(ConfigError {
            file: templates_file.to_path_buf(),
            setting: Some("templates".into()),
            message: "`templates` must be an array".into(),
        });
    }
    // Guests cannot read files: the host reads each `userDataScript` for the guest.
    let mut templates = templates;
    if let Some(list) = templates.as_array_mut() {
        for tpl in list.iter_mut() {
            let Some(obj) = tpl.as_object_mut() else { continue };
            if let Some(script) = obj.get("userDataScript").and_then(Value::as_str) {
                let p = PathBuf::from(script);
                let p = if p.is_absolute() {
                    p
                } else {
                    templates_file.parent().unwrap_or(Path::new(".")).join(p)
                };
                let content = std::fs::read_to_string(&p).map_err(|e| ConfigError {
                    file: templates_file.to_path_buf(),
                    setting: Some("userDataScript".into()),
                    message: format!(
                        "template {}: cannot read userDataScript {}: {e}",
                        obj.get("templateId").unwrap_or(&Value::Null),
                        p.display()
                    ),
                })?;
                obj.insert("userDataContent".into(), Value::String(content));
            }
        }
    }
    let list = templates.as_array().map(Vec::as_slice).unwrap_or_default();
    // The grant: exactly the instance types the templates name, and their largest maxNumber.
    let mut types: Vec<String> = Vec::new();
    let mut max = 1u32;
    for tpl in list {
        if let Some(t) = tpl.get("vmType").and_then(Value::as_str) {
            types.extend(t.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()));
        }
        for key in ["vmTypes", "vmTypesOnDemand"] {
            if let Some(m) = tpl.get(key).and_then(Value::as_object) {
                types.extend(m.keys().cloned());
            }
        }
        if let Some(n) = tpl.get("maxNumber").and_then(Value::as_i64) {
            max = max.max(u32::try_from(n).unwrap_or(10_000));
        }
    }
    types.sort();
    types.dedup();
    let grant = Ec2Grant {
        regions: vec![s.region.clone()],
        instance_types: types,
        max_per_request: max,
    };
    Ok(IbmAws {
        config_file: config_file.to_path_buf(),
        templates_file: templates_file.to_path_buf(),
        settings: s,
        grant,
        pending_timeout_secs,
        creation_timeout_secs,
        spot_terminate_on_reclaim,
        templates,
        log_level,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(cfg: &str, tpl: &str) -> (tempfile::TempDir, PathBuf, PathBuf) {
        let d = tempfile::tempdir().expect("tempdir");
        let (c, t) = (
            d.path().join("awsinstprov_config.json"),
            d.path().join("awsinstprov_templates.json"),
        );
        std::fs::write(&c, cfg).expect("cfg");
        std::fs::write(&t, tpl).expect("tpl");
        (d, c, t)
    }

    #[test]
    fn ibm_keys_take_effect() {
        let (d, c, t) = files(
            r#"{"AWS_REGION": "eu-west-1", "AWS_ENDPOINT_URL": "http://127.0.0.1:5000", "AWS_CREDENTIAL_FILE": "creds", "AWS_PROXY_HOST": "proxy", "AWS_PROXY_PORT": "3128",
                "AWS_CONNECTION_TIMEOUT_MS": 2000, "AWS_REQUEST_RETRY_ATTEMPTS": "3", "AWS_INSTANCE_PENDING_TIMEOUT_SEC": 300, "AWS_KEY_FILE": "/keys",
                "ACCEPT_PROPAGATED_LOG_SETTING": "true"}"#,
            r#"{"templates": [{"templateId": "a", "maxNumber": 7, "vmType": "t3.micro"}, {"templateId": "b", "maxNumber": 20, "vmTypes": {"m5.large": 1, "m5.xlarge": 2}}]}"#,
        );
        assert_eq!(find(d.path(), "awsinst"), Some((c.clone(), t.clone())));
        let ibm = load(&c, &t, |k| (k == "HF_LOGLEVEL").then(|| "LOG_DEBUG".to_string())).expect("loads");
        assert_eq!(ibm.settings.region, "eu-west-1");
        assert_eq!(ibm.settings.credential_file, Some(d.path().join("creds")));
        assert_eq!(ibm.settings.proxy.as_deref(), Some("http://proxy:3128"));
        assert_eq!(
            (ibm.settings.connect_timeout, ibm.settings.retry_attempts, ibm.pending_timeout_secs),
            (Duration::from_millis(2000), 3, 300)
        );
        assert_eq!(ibm.grant.instance_types, ["m5.large", "m5.xlarge", "t3.micro"]);
        assert_eq!((ibm.grant.max_per_request, ibm.log_level.as_deref()), (20, Some("debug")));
    }

    #[test]
    fn bad_and_unknown_keys_are_named() {
        for (cfg, needle) in [
            (r#"{"AWS_REGION": "x", "AWS_REGIN": "y"}"#, "unknown key `AWS_REGIN`"),
            (r#"{}"#, "`AWS_REGION` is required"),
            (r#"{"AWS_REGION": "x", "AWS_INSTANCE_PENDING_TIMEOUT_SEC": 5}"#, "180..=10000"),
            (r#"{"AWS_REGION": "x", "AWS_CREDENTIAL_SCRIPT": "/bin/creds"}"#, "not supported"),
            (r#"{"AWS_REGION": "x", "AWS_PROXY_HOST": "p"}"#, "go together"),
        ] {
            let (_d, c, t) = files(cfg, r#"{"templates": []}"#);
            let e = load(&c, &t, |_| None).expect_err(cfg);
            assert!(
                e.to_string().contains(needle) && e.to_string().contains("awsinstprov_config.json"),
                "{e}"
            );
        }
    }
}

#[cfg(test)]
mod sample_tests {
    use super::*;

    /// `config/awsprov_*.json` are what a new user copies: they must load as they are.
    #[test]
    fn shipped_ibm_samples_are_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config");
        let ibm = load(&dir.join("awsprov_config.json"), &dir.join("awsprov_templates.json"), |_| None).expect("samples load");
        assert_eq!(ibm.settings.region, "us-east-1");
        assert_eq!(ibm.creation_timeout_secs, 600);
        assert_eq!(ibm.grant.instance_types, ["c5.2xlarge", "c5.4xlarge", "m5.2xlarge", "m5.xlarge"]);
        assert_eq!(ibm.templates.as_array().map(Vec::len), Some(3));
    }
}
