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
    /// Templates left out, each with its file, setting (`templates[2].maxNumber`) and what
    /// to write instead: logged on every call, listed by `hfwasm config check`.
    pub problems: Vec<ConfigError>,
}

/// The config and templates files for provider instance `name` in `conf_dir`, if present.
pub fn find(conf_dir: &Path, name: &str) -> Option<(PathBuf, PathBuf)> {
    for prefix in [format!("{name}prov"), "awsprov".to_string()] {
        let config = conf_dir.join(format!("{prefix}_config.json"));
        // Config::load asks ibm_azure::find first (which reads the file to tell), so only
        // the name is checked here: no second read on every call.
        if config.is_file() && !config.ends_with("azureprov_config.json") {
            return Some((config, conf_dir.join(format!("{prefix}_templates.json"))));
        }
    }
    None
}

pub(super) fn read_object(file: &Path) -> Result<Map<String, Value>, ConfigError> {
    let err = |m: String| ConfigError {
        file: file.to_path_buf(),
        setting: None,
        message: m,
    };
    let text = crate::limits::read_capped(file, crate::limits::MAX_CONFIG_BYTES).map_err(|e| err(format!("cannot read: {e}")))?;
    match serde_json::from_str::<Value>(&text) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(err("expected a JSON object".into())),
        Err(e) => Err(err(format!("not valid JSON: {e}"))),
    }
}

/// IBM writes numbers both as numbers and as strings.
pub(super) fn number(file: &Path, key: &str, v: &Value, min: u64, max: u64) -> Result<u64, ConfigError> {
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

pub(super) fn text(file: &Path, key: &str, v: &Value) -> Result<String, ConfigError> {
    match v {
        Value::String(s) if !s.trim().is_empty() => Ok(s.trim().to_string()),
        _ => Err(ConfigError {
            file: file.to_path_buf(),
            setting: Some(key.to_string()),
            message: format!("`{key}` must be a non-empty string, found {v}"),
        }),
    }
}

pub(super) fn boolean(file: &Path, key: &str, v: &Value) -> Result<bool, ConfigError> {
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

/// The template-key list the AWS guest reads, shared with it (one list on both sides of
/// the sandbox; the file has no dependencies).
#[path = "../../../guests/aws/src/keys.rs"]
pub(super) mod template_keys;

/// Reads both files. `env` looks up `HF_LOGLEVEL` for `ACCEPT_PROPAGATED_LOG_SETTING`.
pub fn load(config_file: &Path, templates_file: &Path, env: impl Fn(&str) -> Option<String>) -> Result<IbmAws, ConfigError> {
    let cfg = read_object(config_file)?;
    let t = read_object(templates_file)?;
    from_values(cfg, t, config_file, templates_file, env)
}

/// The EC2 settings of IBM's config file alone (no templates yet: `hfwasm templates
/// generate` writes them).
pub fn settings_of(config_file: &Path, env: impl Fn(&str) -> Option<String>) -> Result<Ec2Settings, ConfigError> {
    let cfg = read_object(config_file)?;
    let mut t = Map::new();
    t.insert("templates".into(), Value::Array(Vec::new()));
    Ok(from_values(cfg, t, config_file, config_file, env)?.settings)
}

/// IBM's files write `""` for an optional key that is not set (`"AWS_PROXY_HOST": ""` in
/// IBM's documented example).
pub(super) fn unset(v: &Value) -> bool {
    v.is_null() || v.as_str().is_some_and(|s| s.trim().is_empty())
}

/// Every `awsprov_config.json` key hfwasm reads, for the unknown-key message.
const CONFIG_KEYS: [&str; 19] = [
    "AWS_REGION",
    "AWS_ENDPOINT_URL",
    "AWS_CREDENTIAL_FILE",
    "AWS_CREDENTIAL_SCRIPT",
    "AWS_CREDENTIAL_RENEW_MARGIN",
    "AWS_PROXY_HOST",
    "AWS_PROXY_PORT",
    "AWS_CONNECTION_TIMEOUT_MS",
    "AWS_REQUEST_RETRY_ATTEMPTS",
    "AWS_DESCRIBE_REQUEST_RETRY_ATTEMPTS",
    "AWS_DESCRIBE_REQUEST_INTERVAL",
    "AWS_INSTANCE_PENDING_TIMEOUT_SEC",
    "INSTANCE_CREATION_TIMEOUT",
    "AWS_SPOT_TERMINATE_ON_RECLAIM",
    "AWS_TAG_InstanceID",
    "TAG_INSTANCEID",
    "ACCEPT_PROPAGATED_LOG_SETTING",
    "LogLevel",
    "AWS_KEY_FILE",
];

/// ` (did you mean `X`?)` for the config key nearest to `key`, when one is close.
fn nearest_config_key(key: &str) -> String {
    let upper = key.to_ascii_uppercase();
    CONFIG_KEYS
        .iter()
        .find(|k| k.to_ascii_uppercase() == upper)
        .map(|k| format!(" (did you mean `{k}`?)"))
        .or_else(|| {
            let hint = template_keys::nearest_in(key, &CONFIG_KEYS);
            (!hint.is_empty()).then_some(hint)
        })
        .unwrap_or_default()
}

/// A path from IBM's config, relative to the config file's directory.
pub(super) fn relative_to(file: &Path, p: &str) -> PathBuf {
    let p = PathBuf::from(p);
    if p.is_absolute() {
        p
    } else {
        file.parent().unwrap_or(Path::new(".")).join(p)
    }
}

/// [`load`] on contents already read (`cfg` as IBM's config file, `t` as its templates
/// file, `{"templates": [...]}`); the paths name where they came from in errors and
/// anchor relative paths (`AWS_CREDENTIAL_FILE`, `userDataScript`). Every problem of the
/// config file is reported at once (one per line); a template with a problem is left out
/// and listed in [`IbmAws::problems`], so one bad template does not blank the others.
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
    let mut renew_margin = None;
    let f = config_file;
    let mut errors: Vec<ConfigError> = Vec::new();
    for (key, v) in &cfg {
        if key != "AWS_REGION" && CONFIG_KEYS.contains(&key.as_str()) && unset(v) {
            continue;
        }
        let r: Result<(), ConfigError> = (|| {
            match key.as_str() {
                "AWS_REGION" => region = Some(text(f, key, v)?),
                "AWS_ENDPOINT_URL" => s.endpoint_url = Some(text(f, key, v)?),
                "AWS_CREDENTIAL_FILE" => s.credential_file = Some(relative_to(f, &text(f, key, v)?)),
                "AWS_CREDENTIAL_SCRIPT" => s.credential_script = Some(relative_to(f, &text(f, key, v)?)),
                "AWS_CREDENTIAL_RENEW_MARGIN" => renew_margin = Some(number(f, key, v, 0, 86_400)?),
                "AWS_PROXY_HOST" => proxy_host = Some(text(f, key, v)?),
                "AWS_PROXY_PORT" => proxy_port = Some(number(f, key, v, 1, 65535)?),
                "AWS_CONNECTION_TIMEOUT_MS" => s.connect_timeout = Duration::from_millis(number(f, key, v, 1, 600_000)?),
                "AWS_REQUEST_RETRY_ATTEMPTS" => s.retry_attempts = u32::try_from(number(f, key, v, 0, 10)?).unwrap_or(10),
                "AWS_DESCRIBE_REQUEST_RETRY_ATTEMPTS" => s.describe_retry_attempts = u32::try_from(number(f, key, v, 0, 10)?).unwrap_or(10),
                "AWS_DESCRIBE_REQUEST_INTERVAL" => s.describe_interval = Duration::from_millis(number(f, key, v, 0, 10_000)?),
                "AWS_INSTANCE_PENDING_TIMEOUT_SEC" => pending_timeout_secs = number(f, key, v, 180, 10_000)?,
                "INSTANCE_CREATION_TIMEOUT" => creation_timeout_secs = number(f, key, v, 1, 10_000)? * 60,
                "AWS_SPOT_TERMINATE_ON_RECLAIM" => spot_terminate_on_reclaim = boolean(f, key, v)?,
                // LSF's spelling and the one IBM's code uses; both tag each instance and its
                // volumes with `InstanceID` once it runs.
                "AWS_TAG_InstanceID" | "TAG_INSTANCEID" => s.tag_instance_id = boolean(f, key, v)?,
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
                "AWS_KEY_FILE" => {
                    tracing::debug!(file = %f.display(), "AWS_KEY_FILE has no effect in hfwasm (it never connects to instances)")
                }
                other => {
                    return Err(ConfigError {
                        file: f.to_path_buf(),
                        setting: Some(other.to_string()),
                        message: format!(
                            "unknown key `{other}`{} (keys hfwasm reads: {})",
                            nearest_config_key(other),
                            CONFIG_KEYS.join(", ")
                        ),
                    });
                }
            }
            Ok(())
        })();
        if let Err(e) = r {
            errors.push(e);
        }
    }
    if region.is_none() && !errors.iter().any(|e| e.setting.as_deref() == Some("AWS_REGION")) {
        errors.push(ConfigError {
            file: f.to_path_buf(),
            setting: Some("AWS_REGION".into()),
            message: "`AWS_REGION` is required".into(),
        });
    }
    s.region = region.unwrap_or_default();
    match (proxy_host, proxy_port) {
        (Some(h), Some(p)) => {
            s.proxy = Some(if h.contains("://") {
                format!("{h}:{p}")
            } else {
                format!("http://{h}:{p}")
            })
        }
        // A host with its port written in it (`http://proxy:3128`).
        (Some(h), None) if h.rsplit_once(':').is_some_and(|(_, p)| p.parse::<u16>().is_ok()) => {
            s.proxy = Some(if h.contains("://") { h } else { format!("http://{h}") })
        }
        (Some(_), None) => errors.push(ConfigError {
            file: f.to_path_buf(),
            setting: Some("AWS_PROXY_PORT".into()),
            message:
                "`AWS_PROXY_HOST` is set but `AWS_PROXY_PORT` is not; write the proxy's port (or leave `AWS_PROXY_HOST` empty for no proxy)"
                    .into(),
        }),
        // IBM's example: `"AWS_PROXY_HOST": ""` with `"AWS_PROXY_PORT": 80` means no proxy.
        (None, _) => {}
    }
    if s.credential_script.is_some() {
        s.credential_renew_margin = Duration::from_secs(renew_margin.unwrap_or(DEFAULT_CREDENTIAL_RENEW_MARGIN_SECS));
        if s.credential_file.is_some() {
            tracing::warn!(file = %f.display(), "both AWS_CREDENTIAL_FILE and AWS_CREDENTIAL_SCRIPT are set; AWS_CREDENTIAL_SCRIPT is used (as IBM's plugin does)");
            s.credential_file = None;
        }
    }
    if let Some(first) = joined(errors) {
        return Err(first);
    }

    let (good, problems) = checked_templates(t, templates_file, check_template)?;
    // The grant: exactly the instance types the templates name, and their largest maxNumber.
    let mut types: Vec<String> = Vec::new();
    let mut max = 1u32;
    for tpl in &good {
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
        launch: launch_grant(&good),
    };
    Ok(IbmAws {
        config_file: config_file.to_path_buf(),
        templates_file: templates_file.to_path_buf(),
        settings: s,
        grant,
        pending_timeout_secs,
        creation_timeout_secs,
        spot_terminate_on_reclaim,
        templates: Value::Array(good),
        log_level,
        problems,
    })
}

/// The `templates` array of IBM's templates file `t`, each template through `check`: the
/// good ones, and the problems of those left out. Every template bad is an error.
pub(super) fn checked_templates(
    mut t: Map<String, Value>,
    templates_file: &Path,
    check: fn(usize, &mut Value, &[Value], &Path) -> Result<(), ConfigError>,
) -> Result<(Vec<Value>, Vec<ConfigError>), ConfigError> {
    let err = |message: &str| ConfigError {
        file: templates_file.to_path_buf(),
        setting: Some("templates".into()),
        message: message.into(),
    };
    let list = match t.remove("templates") {
        Some(Value::Array(list)) => list,
        Some(_) => return Err(err("`templates` must be an array")),
        None => return Err(err("expected {\"templates\": [...]}")),
    };
    let mut problems = Vec::new();
    let mut good: Vec<Value> = Vec::with_capacity(list.len());
    for (i, mut tpl) in list.into_iter().enumerate() {
        match check(i, &mut tpl, &good, templates_file) {
            Ok(()) => good.push(tpl),
            Err(e) => problems.push(e),
        }
    }
    if good.is_empty() && !problems.is_empty() {
        return Err(joined(problems).unwrap_or_else(|| err("no usable template")));
    }
    Ok((good, problems))
}

/// The launch parameters the templates name: the AWS guest may launch only with these
/// (an empty list, when no template names one, allows none of that kind to be chosen by
/// the guest: a spec without one is still allowed).
fn launch_grant(templates: &[Value]) -> crate::capabilities::ec2::LaunchGrant {
    let strings = |key: &str| -> Vec<String> {
        let mut v: Vec<String> = templates
            .iter()
            .filter_map(|t| t.get(key))
            .flat_map(|v| match v {
                Value::String(s) => s.split(',').map(|x| x.trim().to_string()).collect::<Vec<_>>(),
                Value::Array(a) => a.iter().filter_map(Value::as_str).map(|x| x.trim().to_string()).collect(),
                _ => Vec::new(),
            })
            .filter(|s| !s.is_empty())
            .collect();
        v.sort();
        v.dedup();
        // Nothing named: a sentinel no real id matches, so the guest cannot pick its own.
        if v.is_empty() {
            v.push(format!("(none: no template names a {key})"));
        }
        v
    };
    crate::capabilities::ec2::LaunchGrant {
        image_ids: strings("imageId"),
        subnet_ids: strings("subnetId"),
        security_group_ids: strings("securityGroupIds"),
        key_names: strings("keyName"),
        instance_profiles: strings("instanceProfile"),
        launch_template_ids: strings("launchTemplateId"),
        user_data: templates.iter().any(|t| {
            ["userData", "userDataScript", "userDataContent"]
                .iter()
                .any(|k| t.get(*k).is_some_and(|v| !unset(v)))
        }),
    }
}

/// IBM's default `AWS_CREDENTIAL_RENEW_MARGIN`: credentials from `AWS_CREDENTIAL_SCRIPT`
/// are renewed once they are this old (29.5 minutes, inside STS's 30-minute minimum).
pub const DEFAULT_CREDENTIAL_RENEW_MARGIN_SECS: u64 = 1770;

/// One error standing for several: the first's file and setting, every message on its own
/// line; None for none.
pub(super) fn joined(mut errors: Vec<ConfigError>) -> Option<ConfigError> {
    match errors.len() {
        0 => None,
        1 => errors.pop(),
        n => {
            let message = errors
                .iter()
                .map(|e| match &e.setting {
                    Some(s) if !e.message.contains(&format!("`{s}`")) => format!("{s}: {}", e.message),
                    _ => e.message.clone(),
                })
                .collect::<Vec<_>>()
                .join("\n");
            let first = errors.swap_remove(0);
            Some(ConfigError {
                file: first.file,
                setting: first.setting,
                message: format!("{n} problems:\n{message}"),
            })
        }
    }
}

/// What every IBM template file needs of template `i`: an object with a `templateId` of its
/// own (not one of `earlier`'s) and a whole-number `maxNumber`. Returns the object and how
/// messages name it (`templates[2] ('Template-VM-0')`).
pub(super) fn check_id_and_max<'a>(
    i: usize,
    tpl: &'a mut Value,
    earlier: &[Value],
    file: &Path,
) -> Result<(&'a mut Map<String, Value>, String), ConfigError> {
    let err = |setting: String, message: String| ConfigError {
        file: file.to_path_buf(),
        setting: Some(setting),
        message,
    };
    let at = format!("templates[{i}]");
    if !tpl.is_object() {
        return Err(err(at, format!("a template must be a JSON object, found {tpl}")));
    }
    let Some(obj) = tpl.as_object_mut() else {
        return Err(err(at, "a template must be a JSON object".into()));
    };
    let id = match obj.get("templateId") {
        Some(Value::String(s)) if !s.trim().is_empty() => s.trim().to_string(),
        Some(other) => {
            return Err(err(
                format!("{at}.templateId"),
                format!("`templateId` must be a non-empty string, found {other}"),
            ));
        }
        None => return Err(err(format!("{at}.templateId"), "`templateId` is required".into())),
    };
    let at = format!("{at} ('{id}')");
    let setting = |k: &str| format!("templates[{i}].{k}");
    if earlier
        .iter()
        .any(|e| e.get("templateId").and_then(Value::as_str).map(str::trim) == Some(id.as_str()))
    {
        return Err(err(
            setting("templateId"),
            format!("{at}: template id `{id}` is defined twice; the first is used"),
        ));
    }
    match obj.get("maxNumber") {
        None => {
            return Err(err(
                setting("maxNumber"),
                format!("{at}: `maxNumber` is required (-1 for unlimited)"),
            ));
        }
        Some(Value::Number(n)) if n.as_i64().is_some_and(|n| (-1..=100_000).contains(&n)) => {}
        Some(Value::String(s)) if s.trim().parse::<i64>().is_ok() => {
            return Err(err(
                setting("maxNumber"),
                format!(
                    "{at}: `maxNumber` got the string \"{s}\"; write {} (a number, without quotes)",
                    s.trim()
                ),
            ));
        }
        Some(other) => {
            return Err(err(
                setting("maxNumber"),
                format!("{at}: `maxNumber` must be a whole number from -1 (unlimited) to 100000, found {other}"),
            ));
        }
    }
    Ok((obj, at))
}

/// What the host checks of template `i` before the guest sees it: an object with a
/// `templateId` of its own, a whole-number `maxNumber`, and only keys the AWS guest reads
/// (a misspelt one gets the nearest known key). Reads `userDataScript` for the guest, which
/// cannot read files. The guest checks the values of the rest.
fn check_template(i: usize, tpl: &mut Value, earlier: &[Value], file: &Path) -> Result<(), ConfigError> {
    let (obj, at) = check_id_and_max(i, tpl, earlier, file)?;
    let err = |setting: String, message: String| ConfigError {
        file: file.to_path_buf(),
        setting: Some(setting),
        message,
    };
    let setting = |k: &str| format!("templates[{i}].{k}");
    if let Some(v) = obj.get("imageId").filter(|v| v.as_str().is_some_and(super::orb::is_ssm_path)) {
        return Err(err(setting("imageId"), format!("{at}: `imageId` {}", super::orb::ssm_refusal(v))));
    }
    if let Some(k) = obj.keys().find(|k| !template_keys::KEYS.contains(&k.as_str())) {
        return Err(err(
            setting(k),
            format!("{at}: `{k}` is not a template key{}", template_keys::nearest(k)),
        ));
    }
    // A numeric attribute must be a number: HostFactory computes with it, and the host
    // refuses a guest answer that says otherwise (the whole offer would fail, not this one).
    if let Some(attrs) = obj.get("attributes").and_then(Value::as_object) {
        for (name, v) in attrs {
            if let Some([kind, value]) = v.as_array().map(Vec::as_slice)
                && kind.as_str() == Some("Numeric")
                && !value
                    .as_str()
                    .map(str::trim)
                    .is_some_and(|x| x.parse::<f64>().is_ok_and(f64::is_finite))
                && !value.as_f64().is_some_and(f64::is_finite)
            {
                return Err(err(
                    setting(&format!("attributes.{name}")),
                    format!("{at}: attribute `{name}` is Numeric but {value} is not a number"),
                ));
            }
        }
    }
    // Guests cannot read files: the host reads `userDataScript` for the guest.
    if let Some(script) = obj.get("userDataScript").filter(|v| !unset(v)) {
        let Some(script) = script.as_str() else {
            return Err(err(
                setting("userDataScript"),
                format!("{at}: `userDataScript` must be a file path"),
            ));
        };
        let p = relative_to(file, script);
        let content = crate::limits::read_capped(&p, crate::limits::MAX_CONFIG_BYTES).map_err(|e| {
            err(
                setting("userDataScript"),
                format!("{at}: cannot read userDataScript {}: {e}", p.display()),
            )
        })?;
        obj.insert("userDataContent".into(), Value::String(content));
    }
    Ok(())
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
            (
                r#"{"AWS_REGION": "x", "AWS_REGIN": "y"}"#,
                "unknown key `AWS_REGIN` (did you mean `AWS_REGION`?)",
            ),
            (
                r#"{"AWS_REGION": "x", "aws_tag_instanceid": true}"#,
                "did you mean `AWS_TAG_InstanceID`?",
            ),
            (r#"{}"#, "`AWS_REGION` is required"),
            (r#"{"AWS_REGION": "x", "AWS_INSTANCE_PENDING_TIMEOUT_SEC": 5}"#, "180..=10000"),
            (r#"{"AWS_REGION": "x", "AWS_PROXY_HOST": "p"}"#, "`AWS_PROXY_PORT` is not"),
        ] {
            let (_d, c, t) = files(cfg, r#"{"templates": []}"#);
            let e = load(&c, &t, |_| None).expect_err(cfg);
            assert!(
                e.to_string().contains(needle) && e.to_string().contains("awsinstprov_config.json"),
                "{e}"
            );
        }
    }

    #[test]
    fn every_problem_of_the_config_file_is_reported_at_once() {
        let (_d, c, t) = files(
            r#"{"AWS_REGON": "x", "AWS_PROXY_PORT": "eighty", "AWS_INSTANCE_PENDING_TIMEOUT_SEC": 5}"#,
            r#"{"templates": []}"#,
        );
        let e = load(&c, &t, |_| None).expect_err("three problems");
        for needle in [
            "4 problems",
            "AWS_REGON",
            "AWS_PROXY_PORT",
            "AWS_INSTANCE_PENDING_TIMEOUT_SEC",
            "`AWS_REGION` is required",
        ] {
            assert!(e.message.contains(needle), "{needle}: {e}");
        }
    }

    #[test]
    fn empty_strings_are_unset_and_new_keys_take_effect() {
        // IBM's documented example: an empty proxy host with port 80 is no proxy.
        let (_d, c, t) = files(
            r#"{"AWS_REGION": "us-east-1", "AWS_PROXY_HOST": "", "AWS_PROXY_PORT": 80, "AWS_CREDENTIAL_FILE": "", "AWS_KEY_FILE": "",
                "AWS_CREDENTIAL_RENEW_MARGIN": "", "AWS_ENDPOINT_URL": "", "TAG_INSTANCEID": true}"#,
            r#"{"templates": []}"#,
        );
        let ibm = load(&c, &t, |_| None).expect("loads");
        assert_eq!(
            (ibm.settings.proxy, ibm.settings.credential_file, ibm.settings.endpoint_url),
            (None, None, None)
        );
        assert!(ibm.settings.tag_instance_id);
        let (d, c, t) = files(
            r#"{"AWS_REGION": "us-east-1", "AWS_CREDENTIAL_SCRIPT": "creds.sh", "AWS_CREDENTIAL_RENEW_MARGIN": "600", "AWS_CREDENTIAL_FILE": "credentials",
                "AWS_PROXY_HOST": "http://proxy:3128", "AWS_TAG_InstanceID": "false"}"#,
            r#"{"templates": []}"#,
        );
        let ibm = load(&c, &t, |_| None).expect("loads");
        assert_eq!(ibm.settings.credential_script, Some(d.path().join("creds.sh")));
        assert_eq!(ibm.settings.credential_renew_margin, Duration::from_secs(600));
        assert_eq!(ibm.settings.credential_file, None, "the script wins, as in IBM's plugin");
        assert_eq!(ibm.settings.proxy.as_deref(), Some("http://proxy:3128"));
        assert!(!ibm.settings.tag_instance_id);
    }

    #[test]
    fn a_bad_template_is_left_out_named_and_the_others_stay() {
        let (_d, c, t) = files(
            r#"{"AWS_REGION": "us-east-1"}"#,
            r#"{"templates": [
                {"templateId": "good", "maxNumber": 2, "vmType": "t3.micro"},
                {"templateId": "quoted", "maxNumber": "10", "vmType": "t3.micro"},
                {"templateId": "typo", "maxNumber": 1, "vmTyp": "t3.micro"},
                {"templateId": "good", "maxNumber": 1, "vmType": "m5.large"},
                "not an object",
                {"templateId": "lots", "maxNumber": 1, "vmType": "t3.micro", "attributes": {"ncores": ["Numeric", "lots"]}}
            ]}"#,
        );
        let ibm = load(&c, &t, |_| None).expect("loads with the good one");
        let ids: Vec<&str> = ibm
            .templates
            .as_array()
            .expect("list")
            .iter()
            .filter_map(|t| t["templateId"].as_str())
            .collect();
        assert_eq!(ids, ["good"]);
        assert_eq!(ibm.grant.instance_types, ["t3.micro"], "left-out templates grant nothing");
        let found: Vec<(Option<&str>, &str)> = ibm.problems.iter().map(|p| (p.setting.as_deref(), p.message.as_str())).collect();
        assert_eq!(found.len(), 5, "{found:?}");
        assert_eq!(found[4].0, Some("templates[5].attributes.ncores"));
        assert_eq!(found[0].0, Some("templates[1].maxNumber"));
        assert!(found[0].1.contains("got the string \"10\"; write 10"), "{}", found[0].1);
        assert_eq!(found[1].0, Some("templates[2].vmTyp"));
        assert!(found[1].1.contains("did you mean `vmType`?"), "{}", found[1].1);
        assert!(found[2].1.contains("defined twice"), "{}", found[2].1);
        assert_eq!(found[3].0, Some("templates[4]"));
        assert!(ibm.problems.iter().all(|p| p.file == t));
        // Nothing usable: the call fails, naming each problem.
        let (_d, c, t) = files(
            r#"{"AWS_REGION": "us-east-1"}"#,
            r#"{"templates": [{"templateId": "x", "maxNumber": "3"}]}"#,
        );
        let e = load(&c, &t, |_| None).expect_err("nothing usable");
        assert_eq!(e.setting.as_deref(), Some("templates[0].maxNumber"));
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
        assert!(ibm.problems.is_empty(), "{:?}", ibm.problems);
    }

    /// IBM's own files (tests/data/ibm, unedited) load as they are, every template kept.
    #[test]
    fn ibm_open_source_and_documented_samples_load_as_they_are() {
        let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/ibm");
        for dir in ["aws", "awsv2"] {
            let d = data.join(dir);
            let ibm = load(&d.join("awsprov_config.json"), &d.join("awsprov_templates.json"), |_| None).expect(dir);
            assert_eq!(ibm.settings.region, "us-west-2");
            assert_eq!(ibm.settings.credential_file.as_deref(), Some(Path::new("/home/aws/credentials")));
            assert_eq!(ibm.log_level.as_deref(), Some("info"));
            assert_eq!(ibm.templates.as_array().map(Vec::len), Some(2), "{dir}");
            assert!(ibm.problems.is_empty(), "{dir}: {:?}", ibm.problems);
        }
        let doc = data.join("symphony-doc/awsinstprov_config.json");
        let ibm = load(&doc, &data.join("aws/awsprov_templates.json"), |_| None).expect("IBM's documented config");
        assert_eq!(ibm.settings.proxy, None, "an empty AWS_PROXY_HOST is no proxy");
        assert_eq!(ibm.settings.connect_timeout, Duration::from_millis(10_000));
    }
}
