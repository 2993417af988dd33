//! The seed's and ORB's layouts translated into hfwasm's: a single seed provider folded
//! into the raw config, a list of providers into members, ORB's keys checked, and the AWS
//! sources (IBM files, seed YAML, ORB templates) each provider names.

use super::*;

/// ORB's own top-level keys: `scheduler` must say HostFactory and point at this conf dir;
/// `server` (ORB's REST API) has nothing behind it in hfwasm; `default_provider_type`
/// must match the providers.
pub(super) fn orb_keys(raw: &RawConfig, conf_dir: &Path, err: &dyn Fn(&str, String) -> ConfigError) -> Result<(), ConfigError> {
    if let Some(s) = &raw.scheduler {
        if let Some(k) = s.kind.as_deref().filter(|k| !matches!(*k, "hostfactory" | "hf" | "default")) {
            return Err(err(
                "scheduler.type",
                format!("`{k}`: hfwasm speaks HostFactory's (and LSF's) script contract; write `hostfactory`"),
            ));
        }
        if let Some(root) = &s.config_root {
            // `$HF_PROVIDER_CONFDIR` (ORB's example) or a path: it must be this conf dir.
            let expanded = match root.trim_start_matches('$').trim_matches(|c| c == '{' || c == '}') {
                var if root.starts_with('$') => std::env::var(var).unwrap_or_default(),
                _ => root.clone(),
            };
            let same = std::path::absolute(&expanded).is_ok_and(|p| p == conf_dir);
            if !same {
                return Err(err(
                    "scheduler.config_root",
                    format!(
                        "`{root}` is not this provider's conf dir {}; hfwasm reads the conf dir HostFactory passes (HF_PROVIDER_CONFDIR). Remove the key or make it `$HF_PROVIDER_CONFDIR`",
                        conf_dir.display()
                    ),
                ));
            }
        }
    }
    if raw.server.is_some() {
        return Err(err(
            "server",
            "ORB's REST server settings: hfwasm's server is `hfwasm serve` (address, token file and reconcile interval are its flags, see `hfwasm serve --help`); remove `server`".into(),
        ));
    }
    if let Some(t) = &raw.provider.default_provider_type {
        let types: Vec<&str> = raw.provider.providers.iter().flatten().map(|p| p.kind()).collect();
        if !types.iter().all(|k| k == t) {
            return Err(err(
                "provider.default_provider_type",
                format!(
                    "`{t}` but the providers are of type {}; remove it or make it match",
                    types.join(", ")
                ),
            ));
        }
    }
    if let Some(d) = &raw.provider.provider_defaults
        && let Some(k) = d.as_object().and_then(|o| o.keys().find(|k| *k != "aws"))
    {
        return Err(err(
            &format!("provider.provider_defaults.{k}"),
            "only `aws.template_defaults` has an effect (it fills ORB's templates); remove it".into(),
        ));
    }
    if let Some(k) = raw
        .provider
        .provider_defaults
        .as_ref()
        .and_then(|d| d.get("aws"))
        .and_then(|a| a.as_object())
        .and_then(|o| o.keys().find(|k| *k != "template_defaults"))
    {
        return Err(err(
            &format!("provider.provider_defaults.aws.{k}"),
            "only `template_defaults` has an effect here; remove it".into(),
        ));
    }
    Ok(())
}

/// Seed 001's single-provider form (`provider.type` with `provider.aws`, YAML `templates`,
/// and its `caching`, `logging.console_enabled`), mapped onto the seed's
/// provider list with one entry named after the instance; what has no effect is refused.
pub(super) fn seed_single(raw: &mut RawConfig, file: &Path, conf_dir: &Path, instance: &str) -> Result<(), ConfigError> {
    let err = |setting: &str, message: String| ConfigError {
        file: file.to_path_buf(),
        setting: Some(setting.to_string()),
        message: format!("`{setting}`: {message}"),
    };
    if raw.caching.is_some() {
        return Err(err(
            "caching",
            "hfwasm caches compiled guests (`guest precompile`) and EC2 instance types in its store, and reads config and templates on every call so an edit applies at once; there is nothing to tune. Remove it".into(),
        ));
    }
    orb_keys(raw, conf_dir, &err)?;
    if raw.logging.console_enabled.is_some() {
        return Err(err(
            "logging.console_enabled",
            "hfwasm logs to its log file (`logging.file_path`, or the HostFactory log dir), else to stderr; stdout belongs to HostFactory. Remove it".into(),
        ));
    }
    let aws = raw.provider.aws.take();
    let Some(kind) = raw.provider.kind.take() else {
        if aws.is_some() {
            return Err(err("provider.aws", "goes with `provider.type: aws`".into()));
        }
        if raw.templates.is_some() {
            return Err(err("templates", "YAML templates go with `provider.type: aws`".into()));
        }
        return Ok(());
    };
    if raw.provider.providers.is_some() || raw.provider.guest.is_some() {
        return Err(err(
            "provider.type",
            "`provider.type` (one provider) and `provider.providers` or `provider.guest` both choose the provider; keep one".into(),
        ));
    }
    let mut config = serde_json::Map::new();
    for (k, v) in aws.unwrap_or_default() {
        match k.as_str() {
            "region" | "profile" | "max_retries" | "timeout" => {
                config.insert(k, v);
            }
            "connection_pool_size" => {
                return Err(err(
                    "provider.aws.connection_pool_size",
                    "each HostFactory call is a new process with one EC2 client; there is no pool to size. Remove it".into(),
                ));
            }
            other => {
                return Err(err(
                    &format!("provider.aws.{other}"),
                    "unknown key (known: region, profile, max_retries, timeout)".into(),
                ));
            }
        }
    }
    if let Some(list) = raw.templates.take() {
        if raw.aws.is_some() || ibm_aws::find(conf_dir, instance).is_some() {
            return Err(err(
                "templates",
                "IBM's templates file is in the conf dir too; keep one source of templates".into(),
            ));
        }
        let Some(region) = config.get("region").and_then(|r| r.as_str()).map(str::to_string) else {
            return Err(err(
                "provider.aws.region",
                "is required with YAML templates (there is no IBM config file)".into(),
            ));
        };
        let templates = seed::yaml_templates(&list).map_err(|(setting, m)| err(&setting, m))?;
        raw.inline_aws = Some(InlineAws {
            region,
            templates,
            from: None,
        });
    } else if kind == "aws"
        && raw.aws.is_none()
        && ibm_aws::find(conf_dir, instance).is_none()
        && orb::find_templates(conf_dir, instance).is_none()
        && let Some(region) = config.get("region").and_then(|r| r.as_str())
    {
        // The seed's scenarios 2 and 3 give no templates: nothing to offer until the site
        // adds some, said in every call's log rather than refused.
        raw.inline_aws = Some(InlineAws {
            region: region.to_string(),
            templates: serde_json::Value::Array(Vec::new()),
            from: None,
        });
        raw.notes.push(format!(
            "{} has no `templates` and the conf dir no IBM or ORB templates file: nothing is offered to HostFactory until templates are added",
            file.display()
        ));
    }
    let entry = serde_json::json!({"name": instance, "type": kind, "config": config});
    let provider: seed::RawSeedProvider = serde_json::from_value(entry).map_err(|e| err("provider.type", e.to_string()))?;
    raw.provider.providers = Some(vec![provider]);
    Ok(())
}

/// IBM's files for seed aws provider `name`: its own `config.config_file` / `templates_file`
/// (relative to the conf dir), else the instance's (`<instance>prov_*` or `awsprov_*`).
/// Where a seed aws provider's templates and connection settings come from.
pub(super) enum AwsSource {
    /// IBM's config and templates files.
    Ibm(PathBuf, PathBuf),
    /// ORB's templates file with the seed provider's region (endpoint from the environment,
    /// credentials from the standard chain and the seed's `profile`).
    Inline(InlineAws),
}

/// ORB's `provider.provider_defaults.aws.template_defaults`, when given.
pub(super) fn orb_defaults(p: &RawProvider) -> Option<serde_json::Value> {
    p.provider_defaults.as_ref()?.get("aws")?.get("template_defaults").cloned()
}

/// The seed aws provider `name`'s source: its own IBM files, the conf dir's IBM files, or
/// (a site coming from ORB) ORB's templates file with the seed's `config.region`.
pub(super) fn seed_aws_source(
    conf_dir: &Path,
    instance: &str,
    name: &str,
    own: &(Option<PathBuf>, Option<PathBuf>),
    region: Option<&str>,
    orb_defaults: Option<serde_json::Value>,
    file: &Path,
) -> Result<AwsSource, ConfigError> {
    let shared = ibm_aws::find(conf_dir, instance);
    let config_file = own.0.clone().or_else(|| shared.as_ref().map(|s| s.0.clone()));
    let templates_file = own.1.clone().or_else(|| shared.as_ref().map(|s| s.1.clone()));
    match (config_file, templates_file) {
        (Some(c), Some(t)) => Ok(AwsSource::Ibm(c, t)),
        (None, None) if let Some(t) = orb::find_templates(conf_dir, name) => {
            let region = region.ok_or_else(|| ConfigError {
                file: file.to_path_buf(),
                setting: Some("provider.providers[].config.region".into()),
                message: format!(
                    "aws provider `{name}`: `config.region` is required with ORB's templates file {} (there is no IBM config file)",
                    t.display()
                ),
            })?;
            Ok(AwsSource::Inline(InlineAws {
                region: region.to_string(),
                templates: orb::templates(&t, orb_defaults.as_ref(), file)?,
                from: Some(t),
            }))
        }
        _ => Err(ConfigError {
            file: file.to_path_buf(),
            setting: Some("provider.providers".into()),
            message: format!(
                "aws provider `{name}` needs IBM's {instance}prov_config.json (or awsprov_config.json) and its _templates.json in {}, or its own `config.config_file` and `config.templates_file`, or ORB's {name}_templates.json (or aws_templates.json) with `config.region`",
                conf_dir.display()
            ),
        }),
    }
}

/// The AWS settings and templates of an [`AwsSource`]: IBM's files as they are, or the
/// inline templates with only a region (the endpoint from `AWS_ENDPOINT_URL`).
pub(super) fn load_aws_source(src: AwsSource, conf_dir: &Path, config_file: &Path) -> Result<ibm_aws::IbmAws, ConfigError> {
    match src {
        AwsSource::Ibm(c, t) => ibm_aws::load(&conf_dir.join(&c), &conf_dir.join(&t), |k| std::env::var(k).ok()),
        AwsSource::Inline(InlineAws { region, templates, from }) => {
            let mut cfg = serde_json::Map::new();
            cfg.insert("AWS_REGION".into(), serde_json::Value::String(region));
            if let Some(url) = std::env::var("AWS_ENDPOINT_URL").ok().filter(|u| !u.is_empty()) {
                cfg.insert("AWS_ENDPOINT_URL".into(), serde_json::Value::String(url));
            }
            let mut t = serde_json::Map::new();
            t.insert("templates".into(), templates);
            let templates_file = from.unwrap_or_else(|| config_file.to_path_buf());
            ibm_aws::from_values(cfg, t, config_file, &templates_file, |k| std::env::var(k).ok())
        }
    }
}

/// The IBM Azure files of seed provider `name`: its own (`config.config_file`,
/// `config.templates_file`), else the conf dir's `azureprov_*`.
pub(super) fn seed_azure_files(
    conf_dir: &Path,
    instance: &str,
    name: &str,
    own: &(Option<PathBuf>, Option<PathBuf>),
    file: &Path,
) -> Result<(PathBuf, PathBuf), ConfigError> {
    let shared = ibm_azure::find(conf_dir, instance);
    match (
        own.0.clone().or_else(|| shared.as_ref().map(|s| s.0.clone())),
        own.1.clone().or_else(|| shared.map(|s| s.1)),
    ) {
        (Some(c), Some(t)) => Ok((c, t)),
        _ => Err(ConfigError {
            file: file.to_path_buf(),
            setting: Some("provider.providers".into()),
            message: format!(
                "azure provider `{name}` needs IBM's Azure files: azureprov_config.json and azureprov_templates.json in {}, or its own config.config_file and config.templates_file",
                conf_dir.display()
            ),
        }),
    }
}

/// The seed's per-provider AWS keys (region, profile, max_retries, timeout) over IBM's.
pub(super) fn apply_seed_aws(kind: &seed::SeedKind, ec2: &mut Ec2Settings, grant: &mut Ec2Grant) {
    if let seed::SeedKind::Aws {
        region,
        profile,
        max_retries,
        timeout_secs,
        ..
    } = kind
    {
        if let Some(r) = region {
            ec2.region = r.clone();
            grant.regions = vec![r.clone()];
        }
        ec2.profile = profile.clone().or(ec2.profile.take());
        if let Some(n) = max_retries {
            ec2.retry_attempts = *n;
            ec2.describe_retry_attempts = *n;
        }
        if let Some(t) = timeout_secs {
            ec2.connect_timeout = std::time::Duration::from_secs((*t).max(1));
        }
    }
}

/// The built-in placement: the seed's selection policies in `builtin:default-policy`.
pub(super) fn default_placement() -> PolicySpec {
    PolicySpec {
        source: PolicySource::Guest(Box::new(GuestSpec::builtin("default-policy", BUILTIN_DEFAULT_POLICY))),
        settings: serde_json::json!({}),
        on_error: crate::policy::OnError::FailOpen,
        shadow: None,
    }
}

/// The members of a seed list with several enabled providers, each with its own guest
/// instance (named after it), settings and EC2 client settings.
pub(super) fn seed_members(
    config: &Config,
    seed: &[seed::SeedProvider],
    conf_dir: &Path,
    instance: &str,
    file: &Path,
    orb_defaults: Option<serde_json::Value>,
) -> Result<(Vec<MemberSpec>, Vec<ConfigError>), ConfigError> {
    let mut base = config.settings.clone();
    if let Some(obj) = base.as_object_mut() {
        // A provider's own inputs (IBM's files, AWS's or Azure's) are not the others'.
        for k in ["templates", "spot_terminate_on_reclaim", "region", "subscription", "arm_endpoint"] {
            obj.remove(k);
        }
    }
    let mut members = Vec::new();
    let mut problems = Vec::new();
    for p in seed {
        let (guest, settings, ec2, ibm_files) = match &p.kind {
            seed::SeedKind::Aws { files, region, .. } => {
                let src = seed_aws_source(conf_dir, instance, &p.name, files, region.as_deref(), orb_defaults.clone(), file)?;
                let a = load_aws_source(src, conf_dir, file)?;
                let mut grant = a.grant.clone();
                let mut ec2 = a.settings.clone();
                apply_seed_aws(&p.kind, &mut ec2, &mut grant);
                problems.extend(a.problems.iter().cloned());
                let mut settings = base.clone();
                if let Some(obj) = settings.as_object_mut() {
                    obj.insert("templates".into(), a.templates.clone());
                    obj.insert(
                        "spot_terminate_on_reclaim".into(),
                        serde_json::Value::Bool(a.spot_terminate_on_reclaim),
                    );
                }
                let same_builtin = config.provider.source == GuestSource::Builtin(BUILTIN_AWS);
                let mut guest = GuestSpec::builtin(&p.name, BUILTIN_AWS).with_ec2(&grant);
                if same_builtin {
                    guest.limits = config.provider.limits;
                    guest.coredump_dir = config.provider.coredump_dir.clone();
                }
                (
                    guest,
                    settings,
                    Some(ec2),
                    Some(IbmFiles {
                        cloud: "AWS",
                        config: a.config_file,
                        templates: a.templates_file,
                    }),
                )
            }
            seed::SeedKind::Azure { files, region } => {
                let (c, t) = seed_azure_files(conf_dir, instance, &p.name, files, file)?;
                let mut a = ibm_azure::load(&conf_dir.join(c), &conf_dir.join(t), |k| std::env::var(k).ok())?;
                if let Some(r) = region {
                    a.settings["region"] = serde_json::json!(r);
                }
                problems.extend(a.problems.iter().cloned());
                let mut settings = base.clone();
                if let Some(obj) = settings.as_object_mut() {
                    for (k, v) in a.settings.as_object().into_iter().flatten() {
                        obj.insert(k.clone(), v.clone());
                    }
                }
                let guest = GuestSpec::builtin(&p.name, BUILTIN_AZURE).with_http(&a.grant);
                (
                    guest,
                    settings,
                    None,
                    Some(IbmFiles {
                        cloud: "Azure",
                        config: a.config_file,
                        templates: a.templates_file,
                    }),
                )
            }
            seed::SeedKind::Onprem => {
                let guest = GuestSpec::builtin(&p.name, BUILTIN_ONPREM);
                (guest, base.clone(), None, None)
            }
        };
        members.push(MemberSpec {
            member: Member {
                name: p.name.clone(),
                kind: match p.kind {
                    seed::SeedKind::Aws { .. } => "aws".into(),
                    seed::SeedKind::Azure { .. } => "azure".into(),
                    seed::SeedKind::Onprem => "onprem".into(),
                },
                priority: p.priority,
                weight: p.weight,
                cost_threshold: p.cost_threshold,
                settings,
            },
            guest,
            ec2,
            ibm_files,
        });
    }
    Ok((members, problems))
}
