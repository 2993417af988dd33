//! IBM's Azure provider files, read as they are: `azureprov_config.json` (or
//! `<instance>prov_config.json` with `AZURE_` keys) and `azureprov_templates.json`. They
//! select the built-in Azure guest: the config gives its region, its `http` grant (the
//! Resource Manager endpoint, with the credentials the host attaches) and the lifecycle
//! timeouts; the templates go to the guest, which checks every key's value itself.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value, json};

use super::ConfigError;
use super::ibm_aws::{check_id_and_max, checked_templates, joined, level, number, read_object, relative_to, template_keys, text, unset};
use crate::capabilities::http::azure_auth_file::{AzureAuthFile, DEFAULT_ARM};
use crate::capabilities::http::{Auth, HttpGrant, Origin};

/// The template keys the Azure guest reads (one list on both sides of the sandbox).
#[path = "../../../guests/azure/src/keys.rs"]
mod azure_keys;

/// What IBM's two files configure.
#[derive(Debug, Clone)]
pub struct IbmAzure {
    /// The config file.
    pub config_file: PathBuf,
    /// The templates file.
    pub templates_file: PathBuf,
    /// The guest's `http` grant: Resource Manager under the subscription, with credentials.
    pub grant: HttpGrant,
    /// The guest's settings: `region`, `subscription`, `arm_endpoint`, `templates`.
    pub settings: Value,
    /// `INSTANCE_CREATION_TIMEOUT` (minutes, IBM's default 15) in seconds.
    pub creation_timeout_secs: u64,
    /// `LogLevel`, as a tracing level.
    pub log_level: Option<String>,
    /// Templates left out, each with its file and setting.
    pub problems: Vec<ConfigError>,
}

/// Every `azureprov_config.json` key hfwasm reads.
const CONFIG_KEYS: [&str; 7] = [
    "AZURE_REGION",
    "AZURE_CREDENTIAL_FILE",
    "AZURE_MANAGED_IDENTITY",
    "AZURE_KEY_FILE",
    "INSTANCE_CREATION_TIMEOUT",
    "ACCEPT_PROPAGATED_LOG_SETTING",
    "LogLevel",
];

/// The config and templates files for provider instance `name` in `conf_dir`, if they are
/// Azure's: `<name>prov_config.json` naming an `AZURE_` key, or `azureprov_config.json`.
pub fn find(conf_dir: &Path, name: &str) -> Option<(PathBuf, PathBuf)> {
    for prefix in [format!("{name}prov"), "azureprov".to_string()] {
        let config = conf_dir.join(format!("{prefix}_config.json"));
        if !config.is_file() {
            continue;
        }
        if is_azure(&config) {
            return Some((config, conf_dir.join(format!("{prefix}_templates.json"))));
        }
    }
    None
}

/// Whether IBM config file `config` is the Azure plugin's: named `azureprov_config.json`, or
/// naming an `AZURE_` key.
fn is_azure(config: &Path) -> bool {
    config.file_name().is_some_and(|n| n == "azureprov_config.json")
        || crate::limits::read_capped(config, crate::limits::MAX_CONFIG_BYTES)
            .ok()
            .and_then(|t| serde_json::from_str::<Map<String, Value>>(&t).ok())
            .is_some_and(|m| m.keys().any(|k| k.starts_with("AZURE_")))
}

/// Reads both files; `env` looks up `HF_LOGLEVEL` for `ACCEPT_PROPAGATED_LOG_SETTING`.
pub fn load(config_file: &Path, templates_file: &Path, env: impl Fn(&str) -> Option<String>) -> Result<IbmAzure, ConfigError> {
    let cfg = read_object(config_file)?;
    let t = read_object(templates_file)?;
    let f = config_file;
    let err = |key: &str, message: String| ConfigError {
        file: f.to_path_buf(),
        setting: Some(key.to_string()),
        message,
    };
    let mut errors = Vec::new();
    let (mut region, mut credential_file, mut managed) = (None, None, false);
    let mut creation_timeout_secs = 15 * 60;
    let mut log_level = None;
    for (key, v) in &cfg {
        if key != "AZURE_REGION" && CONFIG_KEYS.contains(&key.as_str()) && unset(v) {
            continue;
        }
        let r: Result<(), ConfigError> = (|| {
            match key.as_str() {
                "AZURE_REGION" => region = Some(text(f, key, v)?),
                "AZURE_CREDENTIAL_FILE" => credential_file = Some(relative_to(f, &text(f, key, v)?)),
                "AZURE_MANAGED_IDENTITY" => {
                    managed = match text(f, key, v)?.to_ascii_uppercase().as_str() {
                        "Y" => true,
                        "N" => false,
                        other => return Err(err(key, format!("`{key}` = {other} must be Y or N"))),
                    }
                }
                // IBM's plugin reads it for nothing hfwasm does (it never logs in to VMs).
                "AZURE_KEY_FILE" => tracing::debug!(file = %f.display(), "AZURE_KEY_FILE has no effect in hfwasm"),
                "INSTANCE_CREATION_TIMEOUT" => creation_timeout_secs = number(f, key, v, 1, 10_000)? * 60,
                "ACCEPT_PROPAGATED_LOG_SETTING" => {
                    if super::ibm_aws::boolean(f, key, v)? {
                        log_level = env("HF_LOGLEVEL").as_deref().and_then(level).map(str::to_string);
                    }
                }
                "LogLevel" => {
                    let l = text(f, key, v)?;
                    log_level = Some(
                        level(&l)
                            .map(str::to_string)
                            .ok_or_else(|| err(key, format!("`LogLevel` = {l} is not a level (ERROR, WARN, INFO, DEBUG, TRACE)")))?,
                    );
                }
                other => {
                    return Err(err(
                        other,
                        format!(
                            "unknown key `{other}`{} (keys hfwasm reads: {})",
                            template_keys::nearest_in(other, &CONFIG_KEYS),
                            CONFIG_KEYS.join(", ")
                        ),
                    ));
                }
            }
            Ok(())
        })();
        if let Err(e) = r {
            errors.push(e);
        }
    }
    if region.is_none() && !errors.iter().any(|e| e.setting.as_deref() == Some("AZURE_REGION")) {
        errors.push(err(
            "AZURE_REGION",
            "`AZURE_REGION` is required (the region VMs are made in, e.g. southeastasia)".into(),
        ));
    }
    if let Some(first) = joined(errors) {
        return Err(first);
    }
    // Credentials: a managed identity (IBM: `AZURE_MANAGED_IDENTITY: Y`) or the SDK auth file,
    // by default `credentials` beside the config (IBM's `<conf>/credentials`).
    let (auth, subscription, arm) = if managed {
        let auth = Auth::ManagedIdentity {
            resource: DEFAULT_ARM.into(),
            endpoint: "http://169.254.169.254/metadata/identity/oauth2/token".into(),
            client_id: None,
        };
        (auth, None, DEFAULT_ARM.to_string())
    } else {
        let file = credential_file.unwrap_or_else(|| relative_to(f, "credentials"));
        let a = AzureAuthFile::read(&file).map_err(|m| {
            err(
                "AZURE_CREDENTIAL_FILE",
                format!("`AZURE_CREDENTIAL_FILE`: cannot use the service principal's file {m} (or set AZURE_MANAGED_IDENTITY to Y)"),
            )
        })?;
        (Auth::AzureAuthFile { file }, a.subscription, a.arm_endpoint)
    };
    let origin = origin_of(&arm).ok_or_else(|| {
        err(
            "AZURE_CREDENTIAL_FILE",
            format!("the Resource Manager endpoint `{arm}` (baseURL) must be scheme://host[:port]/"),
        )
    })?;
    let grant = HttpGrant::allowing(vec![Origin {
        url: origin.clone(),
        methods: vec!["GET".into(), "PUT".into(), "DELETE".into()],
        paths: vec![match &subscription {
            Some(s) => format!("/subscriptions/{s}/"),
            None => "/subscriptions".into(),
        }],
        auth,
    }]);

    let (good, problems) = checked_templates(t, templates_file, check_template)?;
    let mut settings = json!({
        "region": region.unwrap_or_default(),
        "arm_endpoint": origin,
        "templates": good,
    });
    if let Some(s) = subscription {
        settings["subscription"] = json!(s);
    }
    Ok(IbmAzure {
        config_file: config_file.to_path_buf(),
        templates_file: templates_file.to_path_buf(),
        grant,
        settings,
        creation_timeout_secs,
        log_level,
        problems,
    })
}

/// `scheme://host[:port]` of an endpoint written `scheme://host[:port][/]`.
fn origin_of(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let host = rest.trim_end_matches('/');
    (matches!(scheme, "http" | "https") && !host.is_empty() && !host.contains('/')).then(|| format!("{scheme}://{host}"))
}

/// Template `i`: [`check_id_and_max`], only keys the Azure guest reads, and the text of its
/// `sshPubKeyFile` read for the guest (which reads no files).
fn check_template(i: usize, tpl: &mut Value, earlier: &[Value], file: &Path) -> Result<(), ConfigError> {
    let (obj, at) = check_id_and_max(i, tpl, earlier, file)?;
    let err = |k: &str, message: String| ConfigError {
        file: file.to_path_buf(),
        setting: Some(format!("templates[{i}].{k}")),
        message,
    };
    if let Some(k) = obj.keys().find(|k| !azure_keys::KEYS.contains(&k.as_str())) {
        return Err(err(
            k,
            format!(
                "{at}: `{k}` is not a template key{}",
                template_keys::nearest_in(k, &azure_keys::KEYS)
            ),
        ));
    }
    let key_file = match obj.get("sshPubKeyFile") {
        Some(v) if !unset(v) => v
            .as_str()
            .map(|p| relative_to(file, p))
            .ok_or_else(|| err("sshPubKeyFile", format!("{at}: `sshPubKeyFile` must be a file path")))?,
        _ => {
            return Err(err(
                "sshPubKeyFile",
                format!("{at}: `sshPubKeyFile` is required: the VMs' administrator logs in with that public key"),
            ));
        }
    };
    let key = crate::limits::read_capped(&key_file, 64 << 10).map_err(|e| {
        err(
            "sshPubKeyFile",
            format!("{at}: cannot read sshPubKeyFile {}: {e}", key_file.display()),
        )
    })?;
    obj.insert(azure_keys::SSH_KEY_CONTENT.into(), Value::String(key.trim().to_string()));
    Ok(())
}
