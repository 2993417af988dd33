//! The config file as written: serde types of every key hfwasm reads (its own, the seed's
//! and ORB's spellings), finding the file in the conf dir and parsing JSON or YAML. What the
//! keys mean is decided in `resolve`.

use super::*;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    /// The seed's format version (`2.0.0`).
    pub(super) version: Option<String>,
    #[serde(default)]
    pub(super) provider: RawProvider,
    #[serde(default)]
    pub(super) guests: BTreeMap<String, RawGuest>,
    #[serde(default)]
    pub(super) inventory: RawInventory,
    #[serde(default)]
    pub(super) storage: storage::RawStorage,
    #[serde(default)]
    pub(super) logging: RawLogging,
    pub(super) aws: Option<RawAws>,
    /// Seed 001's templates (YAML, snake_case), when no IBM templates file is used.
    pub(super) templates: Option<Vec<serde_json::Value>>,
    /// Seed 001's region and templates in IBM's format, standing in for IBM's files.
    #[serde(skip)]
    pub(super) inline_aws: Option<InlineAws>,
    /// IBM's Azure files (`azure: {config_file, templates_file}`, or found in the conf dir
    /// when there is no config file).
    #[serde(rename = "azure")]
    pub(super) ibm_azure: Option<RawAws>,
    /// Notes for the log of every call (what a config leaves to the site to add).
    #[serde(skip)]
    pub(super) notes: Vec<String>,
    /// The seed's `config.region` of an azure provider (over AZURE_REGION).
    #[serde(skip)]
    pub(super) azure_region: Option<String>,
    /// Seed 001's `monitoring` (`enabled`, `metrics_endpoint`): each script call pushes its
    /// metrics there.
    #[serde(default)]
    pub(super) monitoring: RawMonitoring,
    /// Seed 001's `caching`: refused with the reason.
    pub(super) caching: Option<serde_json::Value>,
    /// ORB's `scheduler` (`type`, `config_root`): checked against what hfwasm is.
    pub(super) scheduler: Option<RawScheduler>,
    /// ORB's `server` (its REST API): refused with the reason.
    pub(super) server: Option<serde_json::Value>,
    pub(super) policy: Option<RawPolicy>,
    /// Which of several providers serves a request; the same shape as `policy`.
    pub(super) placement: Option<RawPolicy>,
    pub(super) recording: Option<RawRecording>,
}

/// ORB's `scheduler`: which protocol the broker speaks and where its conf dir is.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawScheduler {
    #[serde(rename = "type")]
    pub(super) kind: Option<String>,
    pub(super) config_root: Option<String>,
}

/// AWS templates that do not come with IBM's config file (seed 001's YAML, ORB's
/// templates file): the region from the seed's provider, and where the templates came from.
#[derive(Debug, Clone)]
pub(super) struct InlineAws {
    pub(super) region: String,
    pub(super) templates: serde_json::Value,
    /// The file the templates were read from (ORB's), else the config file.
    pub(super) from: Option<PathBuf>,
}

/// `recording`: keep calls (input and answer) and policy decisions for `hfwasm replay`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRecording {
    pub(super) enabled: Option<bool>,
    pub(super) keep: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPolicy {
    pub(super) guest: Option<String>,
    pub(super) script: Option<PathBuf>,
    pub(super) settings: Option<serde_json::Value>,
    pub(super) on_error: Option<String>,
    pub(super) limits: Option<crate::policy::rhai::ScriptLimits>,
    pub(super) shadow: Option<RawShadow>,
}

/// `policy.shadow`: a candidate policy run beside the live one, never acted on.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawShadow {
    pub(super) guest: Option<String>,
    pub(super) script: Option<PathBuf>,
    pub(super) settings: Option<serde_json::Value>,
    pub(super) limits: Option<crate::policy::rhai::ScriptLimits>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAws {
    pub(super) config_file: PathBuf,
    pub(super) templates_file: PathBuf,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProvider {
    /// Seed 001's single-provider form: `type` with its `aws` section.
    #[serde(rename = "type")]
    pub(super) kind: Option<String>,
    pub(super) aws: Option<serde_json::Map<String, serde_json::Value>>,
    pub(super) guest: Option<String>,
    pub(super) settings: Option<serde_json::Value>,
    pub(super) pending_timeout_secs: Option<u64>,
    pub(super) abandon_after_secs: Option<u64>,
    pub(super) orphan_scan_secs: Option<u64>,
    pub(super) circuit_breaker: Option<RawBreaker>,
    pub(super) active_provider: Option<String>,
    pub(super) selection_policy: Option<String>,
    pub(super) health_check_interval: Option<u64>,
    pub(super) providers: Option<Vec<seed::RawSeedProvider>>,
    /// ORB's `provider_defaults` (`aws.template_defaults` fills ORB's templates).
    pub(super) provider_defaults: Option<serde_json::Value>,
    /// ORB's `default_provider_type`: must name the type of the providers given.
    pub(super) default_provider_type: Option<String>,
}

/// The seed's `provider.circuit_breaker`, under its own key names.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBreaker {
    pub(super) enabled: Option<bool>,
    pub(super) failure_threshold: Option<u32>,
    pub(super) recovery_timeout: Option<u64>,
}

/// A guest entry. Its other keys are capability settings (`ec2`), each checked by its
/// capability; serde cannot deny unknown keys beside a flattened map, so `build` does.
#[derive(Debug, Deserialize)]
pub(super) struct RawGuest {
    pub(super) wasm: String,
    #[serde(default)]
    pub(super) grants: Vec<String>,
    #[serde(default)]
    pub(super) limits: LimitOverrides,
    pub(super) coredump_dir: Option<PathBuf>,
    #[serde(flatten)]
    pub(super) settings: BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawInventory {
    pub(super) file: Option<PathBuf>,
}

/// Seed 001's `monitoring`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMonitoring {
    pub(super) enabled: Option<bool>,
    pub(super) metrics_endpoint: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLogging {
    pub(super) level: Option<String>,
    pub(super) file_path: Option<PathBuf>,
    pub(super) max_size: Option<serde_json::Value>,
    pub(super) backup_count: Option<u32>,
    /// Seed 001's `console_enabled`: refused with the reason.
    pub(super) console_enabled: Option<bool>,
}

/// `logging.max_size`: a number of MiB, or text with a unit (`"100MB"`, `"512KB"`, `"1GB"`).
pub(super) fn size_bytes(v: &serde_json::Value) -> Option<u64> {
    if let Some(n) = v.as_u64() {
        return n.checked_mul(1 << 20);
    }
    let t = v.as_str()?.trim().to_ascii_uppercase();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(split);
    let n: u64 = n.parse().ok()?;
    let mult: u64 = match unit.trim() {
        "" | "M" | "MB" | "MIB" => 1 << 20,
        "K" | "KB" | "KIB" => 1 << 10,
        "G" | "GB" | "GIB" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(mult)
}

/// The config file: `CONFIG_PATH` when set (it must exist), else the one of
/// [`CONFIG_FILES`] in `conf_dir` (two are an error), else none.
pub(super) fn find_file(conf_dir: &Path, env: impl Fn(&str) -> Option<String>) -> Result<Option<PathBuf>, ConfigError> {
    if let Some(p) = env("CONFIG_PATH").filter(|p| !p.trim().is_empty()) {
        let p = PathBuf::from(p);
        if !p.is_file() {
            return Err(ConfigError {
                file: p,
                setting: None,
                message: "CONFIG_PATH names this file, which does not exist".into(),
            });
        }
        return Ok(Some(p));
    }
    let found: Vec<PathBuf> = CONFIG_FILES.iter().map(|n| conf_dir.join(n)).filter(|p| p.is_file()).collect();
    match found.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some(one.clone())),
        [first, second, ..] => Err(ConfigError {
            file: first.clone(),
            setting: None,
            message: format!("{} is also there; keep one config file", second.display()),
        }),
    }
}

/// With nothing hfwasm reads in `conf_dir` (no config file, no IBM AWS files, no
/// inventory), the embedded defaults would serve the on-prem pool and fail on a missing
/// `inventory.txt`. When the directory holds config files of another name, say which and
/// what hfwasm reads instead, rather than fall through to that error.
pub(super) fn unread_files(conf_dir: &Path, instance: &str) -> Result<(), ConfigError> {
    let Ok(entries) = std::fs::read_dir(conf_dir) else {
        return Ok(());
    };
    let mut found: Vec<String> = entries
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| [".json", ".yml", ".yaml"].iter().any(|x| n.ends_with(x)))
        .collect();
    if found.is_empty() {
        return Ok(());
    }
    found.sort();
    // IBM files of another instance name are the likeliest slip.
    let other = found.iter().find_map(|n| n.strip_suffix("prov_config.json")).map(str::to_string);
    let hint = match other {
        Some(other) => format!(
            "IBM's files here are named for provider instance `{other}` but this is `{instance}` (HF_PROVIDER_NAME): rename them to {instance}prov_config.json and {instance}prov_templates.json, or set HF_PROVIDER_NAME={other}"
        ),
        None => format!(
            "hfwasm reads {}, or IBM's {instance}prov_config.json with {instance}prov_templates.json (LSF: awsprov_*), or inventory.txt for the on-prem pool",
            CONFIG_FILES.join(", ")
        ),
    };
    Err(ConfigError {
        file: conf_dir.to_path_buf(),
        setting: None,
        message: format!("nothing here configures hfwasm: found {}; {hint}", found.join(", ")),
    })
}

/// Parses `file` as YAML (`.yml`, `.yaml`) or JSON, naming the key of any error.
pub(super) fn parse_file(file: &Path) -> Result<RawConfig, ConfigError> {
    let text = crate::limits::read_capped(file, crate::limits::MAX_CONFIG_BYTES).map_err(|e| ConfigError {
        file: file.to_path_buf(),
        setting: None,
        message: format!("cannot read: {e}"),
    })?;
    let yaml = file.extension().is_some_and(|e| e == "yml" || e == "yaml");
    let located = |path: String, inner: String| ConfigError {
        file: file.to_path_buf(),
        message: format!("{inner} (at `{path}`)"),
        setting: (path != ".").then_some(path),
    };
    if yaml {
        serde_path_to_error::deserialize(serde_yaml::Deserializer::from_str(&text))
            .map_err(|e| located(e.path().to_string(), e.inner().to_string()))
    } else {
        let de = &mut serde_json::Deserializer::from_str(&text);
        serde_path_to_error::deserialize(de).map_err(|e| located(e.path().to_string(), e.inner().to_string()))
    }
}
