//! HostFactory's registration files, which `hfwasm init` merges its entries into:
//! `providerplugins/hostProviderPlugins.json` (plugins and their scripts),
//! `providers/hostProviders.json` (provider instances and their dirs) and
//! `requestors/hostRequestors.json` (which instances each requestor may use). Each merge
//! adds or updates hfwasm's own entry, keeps every other entry and key as it is, in order,
//! and refuses to take over a name another plugin owns.

use serde_json::{Map, Value, json};

/// What a merge did to a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Already as wanted: the file is left untouched (no backup, no write).
    Unchanged,
    /// The entry was added.
    Added,
    /// The entry existed and was brought up to date.
    Updated,
}

impl Change {
    /// For the summary: `added`, `updated`, `unchanged`.
    pub fn as_str(self) -> &'static str {
        match self {
            Change::Unchanged => "unchanged",
            Change::Added => "added",
            Change::Updated => "updated",
        }
    }
}

/// Why a registration file cannot take hfwasm's entry.
#[derive(Debug, thiserror::Error)]
pub enum RegistrationError {
    /// The document is not the shape HostFactory writes.
    #[error("{file}: {message}")]
    Shape {
        /// Which registration file.
        file: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The name is taken by something that is not hfwasm's.
    #[error("{file}: {message}")]
    Taken {
        /// Which registration file.
        file: &'static str,
        /// Whose it is, and what to do.
        message: String,
    },
}

/// The file names, for messages.
pub const PLUGINS_FILE: &str = "providerplugins/hostProviderPlugins.json";
/// See [`PLUGINS_FILE`].
pub const PROVIDERS_FILE: &str = "providers/hostProviders.json";
/// See [`PLUGINS_FILE`].
pub const REQUESTORS_FILE: &str = "requestors/hostRequestors.json";

/// The list `key` of `doc` (created with `version: 2` when `doc` is None or lacks it).
fn list<'a>(doc: &'a mut Value, key: &str, file: &'static str) -> Result<&'a mut Vec<Value>, RegistrationError> {
    let obj = doc.as_object_mut().ok_or_else(|| RegistrationError::Shape {
        file,
        message: "is not a JSON object".into(),
    })?;
    if !obj.contains_key("version") {
        obj.insert("version".into(), json!(2));
    }
    obj.entry(key).or_insert_with(|| Value::Array(Vec::new()));
    obj.get_mut(key)
        .and_then(Value::as_array_mut)
        .ok_or_else(|| RegistrationError::Shape {
            file,
            message: format!("`{key}` is not a list"),
        })
}

/// Sets `want`'s keys on `entry`, keeping its other keys; whether anything changed.
fn set_keys(entry: &mut Map<String, Value>, want: &Map<String, Value>) -> bool {
    let mut changed = false;
    for (k, v) in want {
        if entry.get(k) != Some(v) {
            entry.insert(k.clone(), v.clone());
            changed = true;
        }
    }
    changed
}

/// Adds or updates `entry` (matched by `name`) in `items`; `owned` says whether an existing
/// entry of that name may be changed (else the error message says whose it is).
fn upsert(
    items: &mut Vec<Value>,
    entry: Map<String, Value>,
    file: &'static str,
    owned: impl Fn(&Map<String, Value>) -> Result<(), String>,
) -> Result<Change, RegistrationError> {
    let name = entry.get("name").cloned();
    match items.iter_mut().find(|e| e.get("name") == name.as_ref()) {
        Some(existing) => {
            let obj = existing.as_object_mut().ok_or_else(|| RegistrationError::Shape {
                file,
                message: "an entry is not a JSON object".into(),
            })?;
            owned(obj).map_err(|message| RegistrationError::Taken { file, message })?;
            Ok(if set_keys(obj, &entry) {
                Change::Updated
            } else {
                Change::Unchanged
            })
        }
        None => {
            items.push(Value::Object(entry));
            Ok(Change::Added)
        }
    }
}

fn object(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

/// Registers plugin `name` with its `scripts` dir (as written, `${HF_TOP}/...` kept).
pub fn register_plugin(doc: &mut Value, name: &str, scripts: &str) -> Result<Change, RegistrationError> {
    let items = list(doc, "providerplugins", PLUGINS_FILE)?;
    let entry = object(json!({"name": name, "enabled": 1, "scriptPath": scripts}));
    upsert(items, entry, PLUGINS_FILE, |e| {
        let path = e.get("scriptPath").and_then(Value::as_str).unwrap_or("");
        if path.is_empty() || path.contains("/providerplugins/") && path.trim_end_matches('/').ends_with(&format!("{name}/scripts")) {
            Ok(())
        } else {
            Err(format!(
                "plugin `{name}` is registered with scriptPath `{path}`, which is not hfwasm's layout; choose another --plugin name"
            ))
        }
    })
}

/// The paths of a provider instance, as HostFactory's own entries spell them.
pub struct InstancePaths {
    /// `confPath`.
    pub conf: String,
    /// `workPath`.
    pub work: String,
    /// `logPath`.
    pub log: String,
}

impl InstancePaths {
    /// `${HF_CONFDIR}/providers/<instance>/` and the like, as IBM's shipped file has them.
    pub fn standard(instance: &str) -> Self {
        Self {
            conf: format!("${{HF_CONFDIR}}/providers/{instance}/"),
            work: format!("${{HF_WORKDIR}}/providers/{instance}/"),
            log: "${HF_LOGDIR}/".into(),
        }
    }
}

/// Registers provider instance `instance` of plugin `plugin`; an instance of that name that
/// belongs to another plugin is refused.
pub fn register_instance(doc: &mut Value, instance: &str, plugin: &str, paths: &InstancePaths) -> Result<Change, RegistrationError> {
    let items = list(doc, "providers", PROVIDERS_FILE)?;
    let entry = object(json!({
        "name": instance,
        "enabled": 1,
        "plugin": plugin,
        "confPath": paths.conf,
        "workPath": paths.work,
        "logPath": paths.log,
    }));
    upsert(items, entry, PROVIDERS_FILE, |e| match e.get("plugin").and_then(Value::as_str) {
        Some(p) if p != plugin => Err(format!(
            "provider instance `{instance}` belongs to plugin `{p}`; choose another --instance name"
        )),
        _ => Ok(()),
    })
}

/// Adds `instance` to the `providers` of requestor `requestor` (last: the others keep their
/// preference), returning the change; the requestor must exist.
pub fn attach_to_requestor(doc: &mut Value, requestor: &str, instance: &str) -> Result<Change, RegistrationError> {
    let items = list(doc, "requestors", REQUESTORS_FILE)?;
    let names: Vec<String> = items
        .iter()
        .filter_map(|r| r.get("name").and_then(Value::as_str).map(str::to_string))
        .collect();
    let entry = items
        .iter_mut()
        .find(|r| r.get("name").and_then(Value::as_str) == Some(requestor))
        .ok_or_else(|| RegistrationError::Shape {
            file: REQUESTORS_FILE,
            message: format!("no requestor `{requestor}` (there are: {}); give --requestor", names.join(", ")),
        })?;
    let obj = entry.as_object_mut().ok_or_else(|| RegistrationError::Shape {
        file: REQUESTORS_FILE,
        message: format!("requestor `{requestor}` is not a JSON object"),
    })?;
    let providers = obj
        .entry("providers")
        .or_insert_with(|| Value::Array(Vec::new()))
        .as_array_mut()
        .ok_or_else(|| RegistrationError::Shape {
            file: REQUESTORS_FILE,
            message: format!("requestor `{requestor}`: `providers` is not a list"),
        })?;
    if providers.iter().any(|p| p.as_str() == Some(instance)) {
        return Ok(Change::Unchanged);
    }
    providers.push(json!(instance));
    Ok(Change::Updated)
}

/// The requestor `hfwasm init` attaches to when not told: `symAinst` (Symphony's), else the
/// first enabled one that polls, else the first.
pub fn default_requestor(doc: &Value) -> Option<String> {
    let items = doc.get("requestors")?.as_array()?;
    let name = |r: &Value| r.get("name").and_then(Value::as_str).map(str::to_string);
    items
        .iter()
        .find(|r| r.get("name").and_then(Value::as_str) == Some("symAinst"))
        .or_else(|| {
            items
                .iter()
                .find(|r| r.get("enabled") == Some(&json!(1)) && r.get("requestMode").and_then(Value::as_str) == Some("POLL"))
        })
        .or_else(|| items.first())
        .and_then(name)
}

/// `doc` as HostFactory's tools write it: tab-indented (cJSON) when `like` was, else four
/// spaces; a final newline.
pub fn render(doc: &Value, like: Option<&str>) -> String {
    let tabs = like.is_some_and(|t| t.contains("\n\t"));
    let indent: &[u8] = if tabs { b"\t" } else { b"    " };
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut out, serde_json::ser::PrettyFormatter::with_indent(indent));
    let _ = serde::Serialize::serialize(doc, &mut ser);
    let mut text = String::from_utf8(out).unwrap_or_default();
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(s: &str) -> Value {
        serde_json::from_str(s).expect("json")
    }

    #[test]
    fn entries_are_added_once_and_others_are_kept() {
        let mut p = doc(r#"{"version": 2, "providerplugins": [{"name": "aws", "enabled": 0, "scriptPath": "x"}]}"#);
        let scripts = "${HF_TOP}/${HF_VERSION}/providerplugins/hfwasm/scripts/";
        assert_eq!(register_plugin(&mut p, "hfwasm", scripts).expect("add"), Change::Added);
        assert_eq!(register_plugin(&mut p, "hfwasm", scripts).expect("again"), Change::Unchanged);
        assert_eq!(p["providerplugins"][0], json!({"name": "aws", "enabled": 0, "scriptPath": "x"}));
        assert!(
            register_plugin(&mut p, "aws", scripts).is_err(),
            "IBM's aws plugin is not taken over"
        );

        let mut i = doc(r#"{"version": 2, "providers": [{"name": "awsinst", "enabled": 0, "plugin": "aws"}]}"#);
        let paths = InstancePaths::standard("hfwasminst");
        assert_eq!(
            register_instance(&mut i, "hfwasminst", "hfwasm", &paths).expect("add"),
            Change::Added
        );
        assert_eq!(
            register_instance(&mut i, "hfwasminst", "hfwasm", &paths).expect("again"),
            Change::Unchanged
        );
        let e = register_instance(&mut i, "awsinst", "hfwasm", &paths).expect_err("another plugin's");
        assert!(e.to_string().contains("belongs to plugin `aws`"), "{e}");

        let mut r =
            doc(r#"{"version": 2, "requestors": [{"name": "admin", "providers": ["x"]}, {"name": "symAinst", "providers": ["awsinst"]}]}"#);
        assert_eq!(default_requestor(&r).as_deref(), Some("symAinst"));
        assert_eq!(
            attach_to_requestor(&mut r, "symAinst", "hfwasminst").expect("attach"),
            Change::Updated
        );
        assert_eq!(
            attach_to_requestor(&mut r, "symAinst", "hfwasminst").expect("again"),
            Change::Unchanged
        );
        assert_eq!(r["requestors"][1]["providers"], json!(["awsinst", "hfwasminst"]));
        assert!(attach_to_requestor(&mut r, "nobody", "hfwasminst").is_err());
        assert!(render(&r, Some("{\n\t\"a\"")).contains("\n\t\"version\""));
    }
}
