//! Open Resource Broker's files, for sites moving over from ORB (awslabs/FINOS): its
//! templates file (`<provider name>_templates.json`, `aws_templates.json` or
//! `templates.json`, in HostFactory's camelCase keys) with the defaults of its
//! `config.json` (`provider.provider_defaults.aws.template_defaults`, snake_case) filled
//! into each template, as IBM template keys the AWS guest reads. Its `config.json` itself is
//! the seed's v2 format (`super::seed`); the keys only ORB has are read or refused there.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::ConfigError;

/// ORB's templates file for provider `name` in `conf_dir`, in ORB's order of preference.
pub fn find_templates(conf_dir: &Path, name: &str) -> Option<PathBuf> {
    [
        format!("{name}_templates.json"),
        "aws_templates.json".into(),
        "templates.json".into(),
    ]
    .into_iter()
    .map(|f| conf_dir.join(f))
    .find(|p| p.is_file())
}

/// ORB's `template_defaults` keys as IBM template keys.
const DEFAULT_KEYS: [(&str, &str); 10] = [
    ("image_id", "imageId"),
    ("subnet_ids", "subnetId"),
    ("security_group_ids", "securityGroupIds"),
    ("machine_types", "vmTypes"),
    ("iam_fleet_role", "fleetRole"),
    ("key_name", "keyName"),
    ("instance_profile", "instanceProfile"),
    ("price_type", "priceType"),
    ("tags", "instanceTags"),
    ("allocation_strategy", "allocationStrategy"),
];

/// The templates of ORB's file `file`, each completed from `defaults` (ORB's
/// `template_defaults`, from `config_file`): the list of IBM templates. A key of
/// `defaults` with no IBM counterpart, or an SSM parameter path as the image, is refused
/// by name.
pub fn templates(file: &Path, defaults: Option<&Value>, config_file: &Path) -> Result<Value, ConfigError> {
    let err = |f: &Path, setting: &str, message: String| ConfigError {
        file: f.to_path_buf(),
        setting: Some(setting.to_string()),
        message,
    };
    let text = crate::limits::read_capped(file, crate::limits::MAX_CONFIG_BYTES)
        .map_err(|e| err(file, "templates", format!("cannot read: {e}")))?;
    let doc: Value = serde_json::from_str(&text).map_err(|e| err(file, "templates", format!("not valid JSON: {e}")))?;
    match doc.get("scheduler_type").and_then(Value::as_str) {
        None | Some("hostfactory") => {}
        Some(other) => {
            return Err(err(
                file,
                "scheduler_type",
                format!(
                    "`{other}`: hfwasm reads ORB templates written for HostFactory (`\"scheduler_type\": \"hostfactory\"`, camelCase keys); write them so (`orb templates generate --scheduler hostfactory`)"
                ),
            ));
        }
    }
    if let Some(k) = doc
        .as_object()
        .and_then(|o| o.keys().find(|k| !matches!(k.as_str(), "scheduler_type" | "templates")))
    {
        return Err(err(
            file,
            k,
            format!("`{k}` is not a key of ORB's templates file (scheduler_type, templates)"),
        ));
    }
    let list = doc
        .get("templates")
        .and_then(Value::as_array)
        .ok_or_else(|| err(file, "templates", "expected {\"templates\": [...]}".into()))?;
    let mut filled: Map<String, Value> = Map::new();
    if let Some(d) = defaults {
        let at = "provider.provider_defaults.aws.template_defaults";
        let obj = d
            .as_object()
            .ok_or_else(|| err(config_file, at, format!("`{at}` must be an object")))?;
        for (k, v) in obj {
            let Some((_, ibm)) = DEFAULT_KEYS.iter().find(|(orb, _)| orb == k) else {
                return Err(err(
                    config_file,
                    &format!("{at}.{k}"),
                    format!(
                        "`{k}` has no IBM template key hfwasm reads (it reads {}); write it in each template instead",
                        DEFAULT_KEYS.iter().map(|(o, _)| *o).collect::<Vec<_>>().join(", ")
                    ),
                ));
            };
            if *ibm == "imageId" && v.as_str().is_some_and(is_ssm_path) {
                return Err(err(config_file, &format!("{at}.{k}"), ssm_refusal(v)));
            }
            filled.insert((*ibm).to_string(), v.clone());
        }
    }
    let out: Vec<Value> = list
        .iter()
        .map(|t| match t.as_object() {
            Some(o) => {
                let mut t = o.clone();
                for (k, v) in &filled {
                    t.entry(k.clone()).or_insert_with(|| v.clone());
                }
                Value::Object(t)
            }
            None => t.clone(),
        })
        .collect();
    Ok(Value::Array(out))
}

/// An image given as an SSM parameter (`/aws/service/...`, `resolve:ssm:...`), which ORB
/// resolves and hfwasm does not.
pub fn is_ssm_path(s: &str) -> bool {
    s.starts_with('/') || s.starts_with("resolve:ssm:")
}

/// Why an SSM image path is refused, and the command that prints the AMI id.
pub fn ssm_refusal(v: &Value) -> String {
    format!(
        "{v} is an SSM parameter path; hfwasm does not call SSM: write the AMI id (`aws ssm get-parameters --names {}` prints it)",
        v.as_str().unwrap_or_default().trim_start_matches("resolve:ssm:")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_fill_each_template_and_ssm_paths_are_refused() {
        let d = tempfile::tempdir().expect("dir");
        let f = d.path().join("aws_templates.json");
        std::fs::write(
            &f,
            r#"{"scheduler_type": "hostfactory", "templates": [
                {"templateId": "a", "maxNumber": 2, "vmTypes": {"t3.medium": 1}, "providerApi": "EC2Fleet"},
                {"templateId": "b", "maxNumber": 2, "subnetId": "subnet-own", "imageId": "/aws/service/ami"}
            ]}"#,
        )
        .expect("write");
        assert_eq!(find_templates(d.path(), "aws-default"), Some(f.clone()));
        let defaults = serde_json::json!({"image_id": "ami-1", "subnet_ids": ["subnet-1"], "tags": {"Project": "x"}});
        let cfg = d.path().join("config.json");
        let t = templates(&f, Some(&defaults), &cfg).expect("reads");
        assert_eq!(t[0]["imageId"], "ami-1");
        assert_eq!(t[0]["subnetId"], serde_json::json!(["subnet-1"]));
        assert_eq!(t[0]["instanceTags"], serde_json::json!({"Project": "x"}));
        assert_eq!(t[1]["subnetId"], "subnet-own", "a template's own key wins");
        assert_eq!(t[1]["imageId"], "/aws/service/ami", "left for the template check to refuse, named");

        let e = templates(
            &f,
            Some(&serde_json::json!({"image_id": "/aws/service/ami-amazon-linux-latest/x"})),
            &cfg,
        )
        .expect_err("ssm");
        assert!(e.message.contains("SSM") && e.file == cfg, "{e}");
        let e = templates(&f, Some(&serde_json::json!({"user_data": "x"})), &cfg).expect_err("unknown");
        assert_eq!(
            e.setting.as_deref(),
            Some("provider.provider_defaults.aws.template_defaults.user_data")
        );
    }
}
