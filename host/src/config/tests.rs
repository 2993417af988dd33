//! Config loading tested on every format and with the sample files.

use super::*;

fn load(json: &str) -> Result<Config, ConfigError> {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join(CONFIG_FILE), json).expect("write");
    Config::load(dir.path(), Path::new("/work"), "test")
}

#[test]
fn defaults_without_a_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = Config::load(dir.path(), Path::new("/w"), "test").expect("defaults");
    assert!(c.file.is_none());
    assert_eq!(c.provider.source, GuestSource::Builtin(BUILTIN_ONPREM));
    assert_eq!(c.inventory_file, dir.path().join("inventory.txt"));
    assert!(matches!(c.store, StoreSpec::Sqlite { ref path, .. } if path == Path::new("/w/hfwasm.sqlite")));
}

#[test]
fn unknown_keys_name_the_setting_and_file() {
    let e = load(r#"{"provider": {"guest": "onprem", "colour": "red"}}"#).expect_err("unknown key");
    assert_eq!(e.setting.as_deref(), Some("provider.colour"));
    assert!(e.to_string().contains("hfwasm.json") && e.to_string().contains("colour"), "{e}");
    let e = load(r#"{"guests": {"x": {"wasm": "x.wasm", "grants": ["ec9"]}}}"#).expect_err("unknown grant");
    assert_eq!(e.setting.as_deref(), Some("guests.x.grants[0]"));
    // A guest's other keys are its capabilities' settings, each checked by its capability.
    let e = load(r#"{"guests": {"x": {"wasm": "x.wasm", "grnats": ["kv"]}}}"#).expect_err("typo");
    assert_eq!(e.setting.as_deref(), Some("guests.x.grnats"));
    assert!(e.to_string().contains("ec2, autoscaling, http"), "{e}");
    let e = load(r#"{"guests": {"x": {"wasm": "x.wasm", "ec2": {"regionz": []}}}}"#).expect_err("bad ec2 grant");
    assert_eq!(e.setting.as_deref(), Some("guests.x.ec2"));
    let e = load(r#"{"guests": {"x": {"wasm": "x.wasm", "http": {"allow": [{"url": "gopher://x"}]}}}}"#).expect_err("bad http grant");
    assert_eq!(e.setting.as_deref(), Some("guests.x.http"));
    let c = load(r#"{"provider": {"guest": "x"}, "guests": {"x": {"wasm": "x.wasm", "grants": ["http"], "http": {"allow": [{"url": "https://a.example"}]}}}}"#)
        .expect("http grant");
    assert_eq!(c.provider.settings["http"]["allow"][0]["url"], "https://a.example");
    let e = load(r#"{"provider": {"guest": "missing"}}"#).expect_err("unknown guest");
    assert!(e.to_string().contains("no guest named `missing`"), "{e}");
    let e = load(r#"{"storage": {"strategy": "mongodb"}}"#).expect_err("strategy");
    assert_eq!(e.setting.as_deref(), Some("storage.strategy"));
    assert!(e.to_string().contains("hfwasm.json"), "{e}");
    let e = load(r#"{"storage": {"sql_strategy": {"colour": "red"}}}"#).expect_err("unknown key");
    assert_eq!(e.setting.as_deref(), Some("storage.sql_strategy.colour"));
}

#[test]
fn the_seed_provider_section() {
    // Scenario 1's shape with the on-prem type: one enabled provider, as is.
    let c = load(
        r#"{"version": "2.0.0", "provider": {"active_provider": "pool", "selection_policy": "PRIORITY_FAILOVER",
        "providers": [{"name": "pool", "type": "onprem", "enabled": true, "priority": 1, "weight": 100}]}}"#,
    )
    .expect("valid");
    assert_eq!(c.provider.source, GuestSource::Builtin(BUILTIN_ONPREM));
    let bad = |json: &str, setting: &str, words: &str| {
        let e = load(json).expect_err(json);
        assert_eq!(e.setting.as_deref(), Some(setting), "{e}");
        assert!(e.to_string().contains(words), "{e}");
    };
    bad(r#"{"version": "1.0", "provider": {}}"#, "version", "2.x");
    bad(
        r#"{"provider": {"providers": [{"name": "a", "type": "onprem"}, {"name": "b", "type": "onprem"}]}}"#,
        "provider.providers[1].type",
        "one inventory file",
    );
    bad(
        r#"{"provider": {"providers": [{"name": "a", "type": "onprem"}, {"name": "a", "type": "aws"}]}}"#,
        "provider.providers[1].name",
        "names two providers",
    );
    bad(
        r#"{"placement": {"guest": "builtin:default-policy"}, "provider": {"providers": [{"name": "a", "type": "onprem"}]}}"#,
        "placement",
        "two or more",
    );
    bad(
        r#"{"provider": {"providers": [{"name": "a", "type": "onprem"}, {"name": "b", "type": "aws", "config": {"cost_threshold": -1}}]}}"#,
        "provider.providers[1].config.cost_threshold",
        "price per host-hour",
    );
    bad(
        r#"{"provider": {"providers": [{"name": "a", "type": "onprem"}, {"name": "b", "type": "aws"}]}}"#,
        "provider.providers",
        "`b` needs IBM's",
    );
    bad(
        r#"{"provider": {"providers": [{"name": "a", "type": "onprem", "enabled": false}]}}"#,
        "provider.providers",
        "no provider",
    );
    bad(
        r#"{"provider": {"active_provider": "b", "providers": [{"name": "a", "type": "onprem"}]}}"#,
        "provider.active_provider",
        "`b` is not an enabled provider",
    );
    bad(
        r#"{"provider": {"selection_policy": "ROUND_ROBIN", "providers": [{"name": "a", "type": "onprem"}]}}"#,
        "provider.selection_policy",
        "PRIORITY_FAILOVER",
    );
    bad(
        r#"{"provider": {"health_check_interval": 0, "providers": [{"name": "a", "type": "onprem"}]}}"#,
        "provider.health_check_interval",
        "reconciler",
    );
    bad(
        r#"{"provider": {"providers": [{"name": "g", "type": "gce"}]}}"#,
        "provider.providers[0].type",
        "aws, azure, onprem",
    );
    // vmware is the on-prem pool (scenario 5), said so; one pool only.
    bad(
        r#"{"provider": {"providers": [{"name": "a", "type": "onprem"}, {"name": "v", "type": "vmware", "config": {"vcenter_host": "vc"}}]}}"#,
        "provider.providers[1].type",
        "one is already enabled",
    );
    let c = load(
        r#"{"provider": {"providers": [{"name": "v", "type": "vmware", "config": {"vcenter_host": "vc.example", "datacenter": "DC1"}}]}}"#,
    )
    .expect("vmware as the pool");
    assert_eq!(c.provider.source, GuestSource::Builtin(BUILTIN_ONPREM));
    assert!(
        c.notes.iter().any(|n| n.contains("vc.example") && n.contains("on-prem pool")),
        "{:?}",
        c.notes
    );
    bad(
        r#"{"provider": {"providers": [{"name": "z", "type": "azure", "config": {"profile": "p"}}]}}"#,
        "provider.providers[0].config.profile",
        "AWS setting",
    );
    bad(
        r#"{"provider": {"providers": [{"name": "a", "type": "onprem"}, {"name": "z", "type": "azure"}]}}"#,
        "provider.providers",
        "`z` needs IBM's Azure files",
    );
    bad(
        r#"{"provider": {"providers": [{"name": "a", "type": "aws", "config": {"handlers": {"types": {"asg": "Lambda"}}}}]}}"#,
        "provider.providers[0].config.handlers.types.asg",
        "is not an EC2 API hfwasm uses (RunInstances, EC2Fleet, SpotFleet, ASG)",
    );
    bad(
        r#"{"provider": {"providers": [{"name": "a", "type": "aws", "config": {"cost_threshold": 0.1}}]}}"#,
        "provider.providers[0].config.cost_threshold",
        "COST_OPTIMIZED",
    );
    bad(
        r#"{"provider": {"providers": [{"name": "a", "type": "aws"}]}}"#,
        "provider.providers",
        "prov_config.json",
    );
    bad(
        r#"{"provider": {"selection_policy": "COST_OPTIMIZED"}}"#,
        "provider.selection_policy",
        "provider.providers",
    );
    bad(
        r#"{"provider": {"providers": [{"name": "a", "type": "onprem", "colour": "red"}]}}"#,
        "provider.providers[0].colour",
        "colour",
    );
}

#[test]
fn yaml_files_and_the_seed_single_provider_form() {
    let dir = tempfile::tempdir().expect("tempdir");
    let load_yaml = |name: &str, yaml: &str| {
        for n in CONFIG_FILES {
            let _ = std::fs::remove_file(dir.path().join(n));
        }
        std::fs::write(dir.path().join(name), yaml).expect("write");
        Config::load(dir.path(), Path::new("/work"), "test")
    };
    // The seed's v2 shape, in YAML.
    let c = load_yaml(
        "hfwasm.yml",
        "version: \"2.0.0\"\nprovider:\n  providers:\n    - name: pool\n      type: onprem\nlogging:\n  level: WARNING\n",
    )
    .expect("v2 in yaml");
    assert_eq!(
        (c.provider.source.clone(), c.log_level.as_str()),
        (GuestSource::Builtin(BUILTIN_ONPREM), "warn")
    );
    // Seed 001's single-provider form.
    let c = load_yaml(
        "config.yml",
        "provider:\n  type: aws\n  aws:\n    region: eu-west-1\n    profile: prod\ntemplates:\n  - template_id: t\n    max_number: 4\n    attributes: {vm_type: t3.micro, image_id: ami-1, subnet_id: subnet-1}\n",
    )
    .expect("seed 001");
    let ec2 = c.ec2.as_ref().expect("aws");
    assert_eq!((ec2.region.as_str(), ec2.profile.as_deref()), ("eu-west-1", Some("prod")));
    assert_eq!(
        c.settings["templates"],
        serde_json::json!([{"templateId": "t", "maxNumber": 4, "vmType": "t3.micro", "imageId": "ami-1", "subnetId": "subnet-1"}])
    );
    let bad = |yaml: &str, setting: &str, words: &str| {
        let e = load_yaml("config.yml", yaml).expect_err(yaml);
        assert_eq!(e.setting.as_deref(), Some(setting), "{e}");
        assert!(e.to_string().contains(words), "{e}");
    };
    bad(
        "provider:\n  type: aws\n  aws:\n    connection_pool_size: 10\n",
        "provider.aws.connection_pool_size",
        "no pool",
    );
    bad("provider:\n  type: aws\n  aws:\n    zone: a\n", "provider.aws.zone", "unknown key");
    bad(
        "logging:\n  console_enabled: true\n",
        "logging.console_enabled",
        "stdout belongs to HostFactory",
    );
    bad(
        "provider:\n  type: aws\ntemplates:\n  - max_number: 1\n",
        "provider.aws.region",
        "required",
    );
    bad(
        "provider:\n  type: aws\n  aws: {region: us-east-1}\ntemplates:\n  - template_id: t\n    colour: red\n",
        "templates[0].colour",
        "unknown key",
    );
    bad(
        "storage:\n  type: dynamodb\n  dynamodb:\n    table_prefix: hf prod\n",
        "storage.dynamodb.table_prefix",
        "letters, digits",
    );
    bad(
        "storage:\n  type: json\n  dynamodb:\n    table_prefix: hf\n",
        "storage.dynamodb",
        "is `json`",
    );
    // Two config files: which one is meant is not guessed.
    std::fs::write(dir.path().join("hfwasm.json"), "{}").expect("write");
    std::fs::write(dir.path().join("config.yml"), "{}").expect("write");
    let e = Config::load(dir.path(), Path::new("/work"), "test").expect_err("two files");
    assert!(e.to_string().contains("keep one config file"), "{e}");
    // CONFIG_PATH (the seed's HostProvider parameter) names the file.
    let found = find_file(dir.path(), |k| {
        (k == "CONFIG_PATH").then(|| dir.path().join("config.yml").display().to_string())
    });
    assert_eq!(found.expect("found"), Some(dir.path().join("config.yml")));
    assert!(find_file(dir.path(), |k| (k == "CONFIG_PATH").then(|| "/nonexistent.yml".to_string())).is_err());
}

#[test]
fn the_seed_logging_keys() {
    let c = load(r#"{"logging": {"level": "WARNING", "file_path": "/var/log/hf/app.log", "max_size": 100, "backup_count": 10}}"#)
        .expect("valid");
    assert_eq!(c.log_level, "warn");
    assert_eq!(
        c.log,
        LogSpec {
            file: Some(PathBuf::from("/var/log/hf/app.log")),
            max_bytes: 100 << 20,
            keep: 10
        }
    );
    let c = load(r#"{"logging": {"level": "INFO", "file_path": "app.log", "max_size": "512KB"}}"#).expect("valid");
    assert_eq!((c.log.file, c.log.max_bytes), (Some(PathBuf::from("/work/app.log")), 512 << 10));
    let e = load(r#"{"logging": {"max_size": "huge"}}"#).expect_err("size");
    assert_eq!(e.setting.as_deref(), Some("logging.max_size"));
    let e = load(r#"{"logging": {"level": "LOUD"}}"#).expect_err("level");
    assert_eq!(e.setting.as_deref(), Some("logging.level"));
}

#[test]
fn the_seed_circuit_breaker_keys() {
    let c =
        load(r#"{"provider": {"circuit_breaker": {"enabled": true, "failure_threshold": 3, "recovery_timeout": 180}}}"#).expect("valid");
    let b = c.breaker.expect("enabled");
    assert_eq!((b.failure_threshold, b.recovery_secs), (3, 180));
    let c = load(r#"{"provider": {"circuit_breaker": {"failure_threshold": 4}}}"#).expect("valid");
    assert_eq!(
        c.breaker.map(|b| (b.failure_threshold, b.recovery_secs)),
        Some((4, DEFAULT_BREAKER_RECOVERY_SECS))
    );
    assert!(
        load(r#"{"provider": {"circuit_breaker": {"enabled": false}}}"#)
            .expect("valid")
            .breaker
            .is_none()
    );
    assert!(load("{}").expect("valid").breaker.is_none());
    let e = load(r#"{"provider": {"circuit_breaker": {"failure_threshold": 0}}}"#).expect_err("zero");
    assert_eq!(e.setting.as_deref(), Some("provider.circuit_breaker.failure_threshold"));
    let e = load(r#"{"provider": {"circuit_breaker": {"half_open_calls": 2}}}"#).expect_err("unknown");
    assert_eq!(e.setting.as_deref(), Some("provider.circuit_breaker.half_open_calls"));
}

#[test]
fn policy_guests_are_granted_nothing() {
    let ok = load(r#"{"guests": {"sel": {"wasm": "sel.wasm", "limits": {"random_seed": 7}}}, "policy": {"guest": "sel", "settings": {"max_price": 1}, "on_error": "fail_closed"}}"#)
        .expect("valid");
    let p = ok.policy.expect("policy");
    assert_eq!((p.name().as_str(), p.on_error), ("sel", crate::policy::OnError::FailClosed));
    assert_eq!(p.guest().and_then(|g| g.limits.random_seed), Some(7));
    let r = load(r#"{"policy": {"script": "p/sel.rhai", "limits": {"max_operations": 5000}}}"#).expect("valid");
    let r = r.policy.expect("policy");
    assert_eq!(r.name(), "sel.rhai");
    assert!(matches!(r.source, PolicySource::Script { ref limits, .. } if limits.max_operations == 5000 && limits.max_call_levels == 32));
    let e = load(r#"{"policy": {"script": "a.rhai", "guest": "builtin:default-policy"}}"#).expect_err("both");
    assert_eq!(e.setting.as_deref(), Some("policy"));
    let e = load(r#"{"policy": {"script": "a.rhai", "limits": {"max_ops": 1}}}"#).expect_err("unknown limit");
    assert_eq!(e.setting.as_deref(), Some("policy.limits.max_ops"));
    let e = load(r#"{"policy": {"guest": "builtin:default-policy", "limits": {"max_operations": 1}}}"#).expect_err("guest limits");
    assert_eq!(e.setting.as_deref(), Some("policy.limits"));
    let e = load(r#"{"guests": {"sel": {"wasm": "sel.wasm", "grants": ["kv"]}}, "policy": {"guest": "sel"}}"#).expect_err("grants");
    assert_eq!(e.setting.as_deref(), Some("guests.sel.grants"));
    let e = load(r#"{"policy": {"guest": "onprem"}}"#).expect_err("a provider");
    assert!(e.to_string().contains("provider guest"), "{e}");
    let e = load(r#"{"guests": {"sel": {"wasm": "sel.wasm"}}, "policy": {"guest": "sel", "on_error": "shrug"}}"#).expect_err("on_error");
    assert_eq!(e.setting.as_deref(), Some("policy.on_error"));
    let e = load(r#"{"policy": {"guest": "nope"}}"#).expect_err("unknown");
    assert_eq!(e.setting.as_deref(), Some("policy.guest"));
}

#[test]
fn guests_with_grants_and_limits() {
    let c = load(r#"{"provider": {"guest": "mine", "settings": {"a": 1}}, "guests": {"mine": {"wasm": "g/mine.wasm", "grants": ["log", "hostfactory:capabilities/kv@0.2.0"], "limits": {"timeout_ms": 500}}}}"#)
        .expect("valid");
    assert_eq!(c.provider.grants, vec![Capability::named("log"), Capability::named("kv")]);
    assert_eq!(c.provider.limits.timeout.as_millis(), 500);
    assert!(matches!(c.provider.source, GuestSource::File(ref p) if p.ends_with("g/mine.wasm")));
}

mod sample_tests {
    use super::*;

    /// The samples in `config/` are what users copy: they must load as they are.
    #[test]
    fn shipped_samples_are_valid() {
        let samples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config");
        let c = Config::load(&samples, Path::new("/w"), "test").expect("config/hfwasm.json loads");
        assert!(c.file.is_some());
        let inv = crate::capabilities::inventory::Inventory::load(&c.inventory_file).expect("config/inventory.txt parses");
        assert_eq!(inv.hosts.len(), 4);
        assert_eq!(
            inv.hosts[0].power_on.as_deref(),
            Some("ssh -o BatchMode=yes 192.168.1.20 sudo systemctl start lsfd")
        );
    }
}
