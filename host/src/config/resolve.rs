//! The raw config resolved into the model: guests and their grants, the provider, members,
//! policies, storage, logging and limits, every value checked with the setting named.

use super::*;

impl Config {
    pub(super) fn build(mut raw: RawConfig, file: Option<PathBuf>, conf_dir: &Path, work_dir: &Path) -> Result<Self, ConfigError> {
        let where_ = file.clone().unwrap_or_else(|| conf_dir.to_path_buf());
        let err = |setting: &str, message: String| ConfigError {
            file: where_.clone(),
            setting: Some(setting.to_string()),
            message: format!("`{setting}`: {message}"),
        };
        let mut guests = BTreeMap::new();
        guests.insert("onprem".to_string(), GuestSpec::builtin("onprem", BUILTIN_ONPREM));
        let aws = match (&raw.aws, raw.inline_aws.take()) {
            (Some(a), _) => Some(ibm_aws::load(
                &conf_dir.join(&a.config_file),
                &conf_dir.join(&a.templates_file),
                |k| std::env::var(k).ok(),
            )?),
            // Seed 001's YAML or ORB's templates file: its region and templates; the endpoint
            // from the environment, credentials from the standard chain (the profile is
            // applied later).
            (None, Some(inline)) => Some(load_aws_source(AwsSource::Inline(inline), conf_dir, &where_)?),
            (None, None) => None,
        };
        if let Some(a) = &aws {
            guests.insert("aws".to_string(), GuestSpec::builtin("aws", BUILTIN_AWS).with_ec2(&a.grant));
        }
        let azure = match &raw.ibm_azure {
            Some(a) => {
                let mut a = ibm_azure::load(&conf_dir.join(&a.config_file), &conf_dir.join(&a.templates_file), |k| {
                    std::env::var(k).ok()
                })?;
                if let Some(r) = &raw.azure_region {
                    a.settings["region"] = serde_json::json!(r);
                }
                Some(a)
            }
            None => None,
        };
        if let Some(a) = &azure {
            guests.insert("azure".to_string(), GuestSpec::builtin("azure", BUILTIN_AZURE).with_http(&a.grant));
        }
        for (name, g) in raw.guests {
            let at = format!("guests.{name}");
            let builtin = [BUILTIN_ONPREM, BUILTIN_AWS, BUILTIN_AZURE, BUILTIN_DEFAULT_POLICY]
                .into_iter()
                .find(|b| *b == g.wasm);
            let source = if let Some(b) = builtin {
                GuestSource::Builtin(b)
            } else if let Some(other) = g.wasm.strip_prefix("builtin:") {
                return Err(err(
                    &format!("{at}.wasm"),
                    format!(
                        "unknown built-in guest `{other}`; built in: {BUILTIN_ONPREM}, {BUILTIN_AWS}, {BUILTIN_AZURE}, {BUILTIN_DEFAULT_POLICY}"
                    ),
                ));
            } else {
                GuestSource::File(conf_dir.join(&g.wasm))
            };
            let mut grants = Vec::new();
            for (i, gname) in g.grants.iter().enumerate() {
                let cap = Capability::parse(gname).ok_or_else(|| {
                    err(
                        &format!("{at}.grants[{i}]"),
                        format!("unknown capability `{gname}`; known: {}", Capability::known()),
                    )
                })?;
                if !grants.contains(&cap) {
                    grants.push(cap);
                }
            }
            // EC2 Auto Scaling launches EC2 instances under the EC2 grant's own checks: a
            // guest granted `ec2` has it too (so a config written before it existed still
            // loads the built-in AWS guest, which imports it).
            let (ec2, asg) = (Capability::named("ec2"), Capability::named("autoscaling"));
            if grants.contains(&ec2) && !grants.contains(&asg) {
                grants.push(asg);
            }
            let limits = GuestLimits::from_overrides(&g.limits).map_err(|m| err(&format!("{at}.limits"), m))?;
            let mut settings = Settings::new();
            for (key, value) in g.settings {
                let check = Capability::parse(&key).and_then(|c| c.unit().check_settings);
                let Some(check) = check else {
                    return Err(err(
                        &format!("{at}.{key}"),
                        format!(
                            "unknown key; a guest has wasm, grants, limits, coredump_dir and the settings of a capability that takes them ({})",
                            Capability::all()
                                .filter(|c| c.unit().check_settings.is_some())
                                .map(|c| c.short_name())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    ));
                };
                check(&value).map_err(|m| err(&format!("{at}.{key}"), m))?;
                settings.insert(key, value);
            }
            // Without its own grant a guest gets the one IBM's files imply.
            if let (false, Some(a)) = (settings.contains_key("ec2"), &aws) {
                settings.insert("ec2".into(), a.grant.to_settings());
            }
            // Auto Scaling launches under the EC2 grant unless the guest has its own.
            if let (false, Some(ec2)) = (settings.contains_key("autoscaling"), settings.get("ec2").cloned()) {
                settings.insert("autoscaling".into(), ec2);
            }
            if let (false, Some(a)) = (settings.contains_key("http"), &azure) {
                settings.insert("http".into(), a.grant.to_settings());
            }
            guests.insert(
                name.clone(),
                GuestSpec {
                    name,
                    source,
                    grants,
                    limits,
                    settings,
                    coredump_dir: g.coredump_dir.map(|d| work_dir.join(d)),
                },
            );
        }
        let guest_name = raw.provider.guest.unwrap_or_else(|| match (&aws, &azure) {
            (Some(_), _) => "aws".into(),
            (None, Some(_)) => "azure".into(),
            (None, None) => "onprem".into(),
        });
        let provider = guests.get(&guest_name).cloned().ok_or_else(|| {
            err(
                "provider.guest",
                format!(
                    "no guest named `{guest_name}`; define it under `guests` (known: {})",
                    guests.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            )
        })?;
        let policy = match raw.policy {
            None => None,
            Some(p) => Some(policy_spec("policy", p, &mut guests, &guest_name, conf_dir, &err)?),
        };
        let placement = match raw.placement {
            None => None,
            Some(p) => Some(policy_spec("placement", p, &mut guests, &guest_name, conf_dir, &err)?),
        };
        let breaker = match raw.provider.circuit_breaker {
            Some(b) if b.enabled.unwrap_or(true) => {
                let failure_threshold = b.failure_threshold.unwrap_or(DEFAULT_BREAKER_THRESHOLD);
                if failure_threshold == 0 {
                    return Err(err("provider.circuit_breaker.failure_threshold", "must be at least 1".into()));
                }
                let recovery_secs = b.recovery_timeout.unwrap_or(DEFAULT_BREAKER_RECOVERY_SECS);
                if recovery_secs == 0 {
                    return Err(err(
                        "provider.circuit_breaker.recovery_timeout",
                        "must be at least 1 (seconds the circuit stays open)".into(),
                    ));
                }
                Some(crate::service::breaker::BreakerPolicy {
                    failure_threshold,
                    recovery_secs,
                })
            }
            _ => None,
        };
        let mut settings = raw.provider.settings.unwrap_or_else(|| serde_json::json!({}));
        if let (Some(a), Some(obj)) = (&aws, settings.as_object_mut()) {
            // The AWS guest's inputs: IBM's templates and the reclaim policy.
            obj.entry("templates").or_insert_with(|| a.templates.clone());
            obj.entry("spot_terminate_on_reclaim")
                .or_insert(serde_json::Value::Bool(a.spot_terminate_on_reclaim));
        }
        if let (Some(a), Some(obj)) = (&azure, settings.as_object_mut()) {
            // The Azure guest's inputs: region, subscription, endpoint and IBM's templates.
            for (k, v) in a.settings.as_object().into_iter().flatten() {
                obj.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }
        if !settings.is_object() {
            return Err(err("provider.settings", "must be a JSON object".into()));
        }
        let pending_timeout_secs = raw
            .provider
            .pending_timeout_secs
            .or(aws.as_ref().map(|a| a.pending_timeout_secs))
            .unwrap_or(DEFAULT_PENDING_TIMEOUT_SECS);
        let abandon_after_secs = raw
            .provider
            .abandon_after_secs
            .or(aws.as_ref().map(|a| a.creation_timeout_secs))
            .or(azure.as_ref().map(|a| a.creation_timeout_secs))
            .unwrap_or(600);
        if abandon_after_secs == 0 {
            return Err(err("provider.abandon_after_secs", "must be at least 1".into()));
        }
        if pending_timeout_secs == 0 {
            return Err(err("provider.pending_timeout_secs", "must be at least 1".into()));
        }
        let storage = storage::build(
            raw.storage,
            work_dir,
            conf_dir,
            |k| std::env::var(k).ok(),
            |setting, message| err(setting, message),
        )?;
        let log_level = match raw.logging.level {
            Some(l) => ibm_aws::level(&l).map(str::to_string).ok_or_else(|| {
                err(
                    "logging.level",
                    format!(
                        "`{l}` is not a level; use one of {} (any case; WARNING and CRITICAL too)",
                        LOG_LEVELS.join(", ")
                    ),
                )
            })?,
            None => aws
                .as_ref()
                .and_then(|a| a.log_level.clone())
                .or(azure.as_ref().and_then(|a| a.log_level.clone()))
                .unwrap_or_else(|| "info".into()),
        };
        let max_bytes = match &raw.logging.max_size {
            None => crate::logging::DEFAULT_MAX_BYTES,
            Some(v) => match size_bytes(v) {
                Some(b) if b > 0 && b <= crate::logging::MAX_LOG_BYTES => b,
                _ => {
                    return Err(err(
                        "logging.max_size",
                        format!(
                            "`{v}` is not a size up to {} MiB; give MiB as a number (100) or text with a unit (\"100MB\", \"512KB\")",
                            crate::logging::MAX_LOG_BYTES >> 20
                        ),
                    ));
                }
            },
        };
        let keep = raw.logging.backup_count.unwrap_or(crate::logging::DEFAULT_KEEP);
        if keep > crate::logging::MAX_KEEP {
            // Rotation renames every kept file: millions of them made each call take seconds.
            return Err(err(
                "logging.backup_count",
                format!("{keep} rotated files: at most {} are kept", crate::logging::MAX_KEEP),
            ));
        }
        let metrics_push = match (raw.monitoring.enabled, raw.monitoring.metrics_endpoint) {
            (Some(false), _) => None,
            (Some(true), None) => {
                return Err(err(
                    "monitoring.metrics_endpoint",
                    "is needed with `enabled: true`: the Prometheus Pushgateway URL each call pushes its metrics to (for scraping, `hfwasm serve` serves /metrics without any config)".into(),
                ));
            }
            (None, None) => None,
            (_, Some(url)) => {
                crate::metrics::PushTarget::parse(&url).map_err(|e| err("monitoring.metrics_endpoint", format!("`{url}`: {e}")))?;
                Some(url)
            }
        };
        let log = LogSpec {
            file: raw.logging.file_path.map(|f| work_dir.join(f)),
            max_bytes,
            keep,
        };
        Ok(Self {
            file,
            provider,
            settings,
            policy,
            breaker,
            pending_timeout_secs,
            abandon_after_secs,
            orphan_scan_secs: raw.provider.orphan_scan_secs.unwrap_or(600),
            reconcile_secs: raw.provider.health_check_interval,
            metrics_push,
            inventory_file: conf_dir.join(raw.inventory.file.unwrap_or_else(|| PathBuf::from("inventory.txt"))),
            store: storage.spec,
            retention: storage.retention,
            log_level,
            log,
            ec2: aws.as_ref().map(|a| {
                let mut s = a.settings.clone();
                s.credential_cache_dir = Some(work_dir.to_path_buf());
                s
            }),
            problems: aws
                .as_ref()
                .map(|a| a.problems.clone())
                .or(azure.as_ref().map(|a| a.problems.clone()))
                .unwrap_or_default(),
            ibm_files: match (aws, azure) {
                (Some(a), _) => Some(IbmFiles {
                    cloud: "AWS",
                    config: a.config_file,
                    templates: a.templates_file,
                }),
                (None, Some(a)) => Some(IbmFiles {
                    cloud: "Azure",
                    config: a.config_file,
                    templates: a.templates_file,
                }),
                (None, None) => None,
            },
            members: Vec::new(),
            notes: raw.notes,
            placement,
            recording: None,
        })
    }
}

/// A live policy (`at`: `policy` or `placement`) with its settings, fallback and shadow.
pub(super) fn policy_spec(
    at: &str,
    p: RawPolicy,
    guests: &mut BTreeMap<String, GuestSpec>,
    provider_guest: &str,
    conf_dir: &Path,
    err: &dyn Fn(&str, String) -> ConfigError,
) -> Result<PolicySpec, ConfigError> {
    let source = policy_source(at, p.guest, p.script, p.limits, guests, provider_guest, conf_dir, err)?;
    let shadow = match p.shadow {
        None => None,
        Some(sh) => {
            let sh = RawPolicy {
                guest: sh.guest,
                script: sh.script,
                settings: sh.settings,
                on_error: None,
                limits: sh.limits,
                shadow: None,
            };
            Some(Box::new(policy_spec(
                &format!("{at}.shadow"),
                sh,
                guests,
                provider_guest,
                conf_dir,
                err,
            )?))
        }
    };
    let settings = p.settings.unwrap_or_else(|| serde_json::json!({}));
    if !settings.is_object() {
        return Err(err(&format!("{at}.settings"), "must be a JSON object".into()));
    }
    Ok(PolicySpec {
        source,
        settings,
        // A shadow is never acted on, so it has no fallback of its own.
        on_error: on_error(&format!("{at}.on_error"), p.on_error.as_deref(), err)?,
        shadow,
    })
}

/// `on_error` at `at`: `fail_open` (the default) or `fail_closed`.
pub(super) fn on_error(
    at: &str,
    v: Option<&str>,
    err: &dyn Fn(&str, String) -> ConfigError,
) -> Result<crate::policy::OnError, ConfigError> {
    match v {
        None => Ok(crate::policy::OnError::FailOpen),
        Some(v) => crate::policy::OnError::parse(v)
            .ok_or_else(|| err(at, format!("`{v}` is not a choice; use `fail_open` (the default) or `fail_closed`"))),
    }
}

/// Where a policy (`at`: `policy`, `policy.shadow` or `placement`) comes from: a Wasm guest named in
/// `guests` (or `builtin:default-policy`), or a Rhai script.
#[allow(clippy::too_many_arguments)]
pub(super) fn policy_source(
    at: &str,
    guest: Option<String>,
    script: Option<PathBuf>,
    limits: Option<crate::policy::rhai::ScriptLimits>,
    guests: &mut BTreeMap<String, GuestSpec>,
    provider_guest: &str,
    conf_dir: &Path,
    err: &dyn Fn(&str, String) -> ConfigError,
) -> Result<PolicySource, ConfigError> {
    Ok(match (guest, script) {
        (Some(_), Some(_)) => {
            return Err(err(at, "give `guest` (a Wasm policy) or `script` (a Rhai policy), not both".into()));
        }
        (None, None) => {
            return Err(err(
                at,
                "needs `guest` (a Wasm policy, e.g. builtin:default-policy) or `script` (a Rhai file)".into(),
            ));
        }
        (None, Some(script)) => {
            let limits = limits.unwrap_or_default();
            if let Err((key, m)) = limits.check() {
                return Err(err(&format!("{at}.limits.{key}"), m));
            }
            PolicySource::Script {
                file: conf_dir.join(script),
                limits,
            }
        }
        (Some(pguest), None) => {
            if limits.is_some() {
                return Err(err(
                    &format!("{at}.limits"),
                    format!("limits a Rhai script; a Wasm policy's limits are guests.{pguest}.limits"),
                ));
            }
            if pguest == BUILTIN_DEFAULT_POLICY && !guests.contains_key(&pguest) {
                // `"policy": {"guest": "builtin:default-policy"}` needs no `guests` entry.
                guests.insert(pguest.clone(), GuestSpec::builtin("default-policy", BUILTIN_DEFAULT_POLICY));
            }
            let guest = guests.get(&pguest).cloned().ok_or_else(|| {
                err(
                    &format!("{at}.guest"),
                    format!(
                        "no guest named `{}`; define it under `guests` (known: {})",
                        pguest,
                        guests.keys().cloned().collect::<Vec<_>>().join(", ")
                    ),
                )
            })?;
            let builtin_provider = matches!(guest.source, GuestSource::Builtin(b) if b != BUILTIN_DEFAULT_POLICY);
            if builtin_provider || guest.name == provider_guest {
                return Err(err(
                    &format!("{at}.guest"),
                    format!(
                        "`{}` is a provider guest; a policy is a guest of the template-selector world (wit/policy)",
                        pguest
                    ),
                ));
            }
            if !guest.grants.is_empty() {
                return Err(err(
                    &format!("guests.{}.grants", pguest),
                    "a policy guest is granted nothing (it imports only sandboxed WASI, so its decisions replay); remove its grants".into(),
                ));
            }
            PolicySource::Guest(Box::new(guest))
        }
    })
}
