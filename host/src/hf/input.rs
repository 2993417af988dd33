//! Reading HostFactory's `-f` input files, leniently: arrays or single objects for
//! `requests`/`machines`, the integration guide's alias shapes, LSF's `rc_account` and
//! `userData`, and an empty or missing file for getAvailableTemplates.

use std::path::Path;

use serde_json::{Map, Value};

use super::{Call, ErrorCode, HfError};
use crate::domain::model::MachineRef;

/// requestMachines input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestMachinesInput {
    /// `template.templateId`.
    pub template_id: String,
    /// `template.machineCount` (alias: flat `maxNumber`).
    pub machine_count: u32,
    /// LSF `rc_account`.
    pub rc_account: Option<String>,
}

/// requestReturnMachines input: named hosts, or (alias) every host of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReturnInput {
    /// `machines`: the hosts to return.
    Machines(Vec<MachineRef>),
    /// Alias `{"requestId": ...}`: return every host of that provision request.
    Request(String),
}

/// Reads the `-f` file of `call` as a JSON object. A missing or empty file is `{}` for
/// getAvailableTemplates (HostFactory sends `{}` but a missing file is tolerated) and an
/// error for every other call.
pub fn read_object(call: Call, path: &Path) -> Result<Map<String, Value>, HfError> {
    let file = path.display().to_string();
    // `/dev/null` is read as an empty file (scripts and admins pass it for "no input");
    // other devices and FIFOs are refused by `read_capped`, since reading one may never end.
    let read = if path == Path::new("/dev/null") {
        Ok(String::new())
    } else {
        crate::limits::read_capped(path, crate::limits::MAX_INPUT_BYTES)
    };
    let text = match read {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && call == Call::GetAvailableTemplates => String::new(),
        Err(e) if e.kind() == std::io::ErrorKind::InvalidInput || e.kind() == std::io::ErrorKind::InvalidData => {
            return Err(
                HfError::new(ErrorCode::InvalidInput, format!("input file {file}: {e} (limits::MAX_INPUT_BYTES)")).with("file", file),
            );
        }
        Err(e) => {
            return Err(HfError::new(ErrorCode::InputNotFound, format!("cannot read input file {file}: {e}")).with("file", file));
        }
    };
    parse(call, text.as_bytes(), &format!("input file {file}"), Some(&file))
}

/// The input of `call` from `bytes` (a request body of `hfwasm serve`, named `source` in
/// errors), with the same rules as an input file: empty is `{}` for getAvailableTemplates
/// only, and anything but a JSON object is refused.
pub fn parse_object(call: Call, bytes: &[u8], source: &str) -> Result<Map<String, Value>, HfError> {
    if u64::try_from(bytes.len()).unwrap_or(u64::MAX) > crate::limits::MAX_INPUT_BYTES {
        return Err(HfError::new(
            ErrorCode::InvalidInput,
            format!(
                "{source}: more than {} bytes (limits::MAX_INPUT_BYTES)",
                crate::limits::MAX_INPUT_BYTES
            ),
        ));
    }
    parse(call, bytes, source, None)
}

fn parse(call: Call, bytes: &[u8], source: &str, file: Option<&str>) -> Result<Map<String, Value>, HfError> {
    let named = |e: HfError| match file {
        Some(f) => e.with("file", f),
        None => e,
    };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        if call == Call::GetAvailableTemplates {
            return Ok(Map::new());
        }
        return Err(named(HfError::new(
            ErrorCode::InvalidJson,
            format!("{source} is empty; {} needs a JSON object", call.name()),
        )));
    }
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(other) => Err(named(HfError::new(
            ErrorCode::InvalidInput,
            format!("{source} holds a JSON {}, expected an object", kind_of(&other)),
        ))),
        Err(e) => Err(named(
            HfError::new(ErrorCode::InvalidJson, format!("{source} is not valid JSON: {e}"))
                .with("line", e.line())
                .with("column", e.column()),
        )),
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn invalid(field: &str, message: String) -> HfError {
    HfError::new(ErrorCode::InvalidInput, message).with("field", field)
}

/// `key` as a list of objects: an array, a single object, or (as HostFactory sends for
/// getReturnRequests with nothing to list) an empty object.
fn objects<'a>(obj: &'a Map<String, Value>, key: &str) -> Result<Vec<&'a Map<String, Value>>, HfError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Object(o)) if o.is_empty() => Ok(Vec::new()),
        Some(Value::Object(o)) => Ok(vec![o]),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::Object(o) => Ok(o),
                other => Err(invalid(
                    &format!("{key}[{i}]"),
                    format!("`{key}[{i}]` is a {}, expected an object", kind_of(other)),
                )),
            })
            .collect(),
        Some(other) => Err(invalid(
            key,
            format!("`{key}` is a {}, expected an array of objects", kind_of(other)),
        )),
    }
}

fn string_field(obj: &Map<String, Value>, key: &str, path: &str) -> Result<Option<String>, HfError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => Err(invalid(path, format!("`{path}` is empty"))),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(invalid(path, format!("`{path}` is a {}, expected a string", kind_of(other)))),
    }
}

fn machine_refs(obj: &Map<String, Value>) -> Result<Vec<MachineRef>, HfError> {
    objects(obj, "machines")?
        .into_iter()
        .enumerate()
        .map(|(i, m)| {
            let name = string_field(m, "name", &format!("machines[{i}].name"))?.ok_or_else(|| {
                invalid(
                    &format!("machines[{i}].name"),
                    format!("`machines[{i}]` has no `name` (the host name)"),
                )
            })?;
            let machine_id = string_field(m, "machineId", &format!("machines[{i}].machineId"))?;
            Ok(MachineRef { name, machine_id })
        })
        .collect()
}

/// Parses requestMachines: `{"template": {"templateId", "machineCount"}}`, LSF's extra
/// `rc_account`/`userData`, or the alias `{"templateId", "maxNumber"}`.
pub fn request_machines(obj: &Map<String, Value>) -> Result<RequestMachinesInput, HfError> {
    let (template, prefix, count_key) = match obj.get("template") {
        Some(Value::Object(t)) => (t, "template.", "machineCount"),
        Some(other) => {
            return Err(invalid(
                "template",
                format!("`template` is a {}, expected an object", kind_of(other)),
            ));
        }
        None if obj.contains_key("templateId") => (
            obj,
            "",
            if obj.contains_key("machineCount") {
                "machineCount"
            } else {
                "maxNumber"
            },
        ),
        None => {
            return Err(invalid(
                "template",
                "input has no `template` object (expected {\"template\": {\"templateId\": ..., \"machineCount\": N}})".into(),
            ));
        }
    };
    let id_path = format!("{prefix}templateId");
    let template_id = string_field(template, "templateId", &id_path)?.ok_or_else(|| invalid(&id_path, format!("missing `{id_path}`")))?;
    let count_path = format!("{prefix}{count_key}");
    let machine_count = match template.get(count_key) {
        None | Some(Value::Null) => {
            return Err(HfError::new(
                ErrorCode::InvalidMachineCount,
                format!("missing `{count_path}`: how many hosts of template '{template_id}' to provision"),
            )
            .with("field", count_path));
        }
        Some(Value::Number(n)) => match n.as_i64() {
            Some(c) if c > 0 => u32::try_from(c).map_err(|_| count_error(&count_path, &n.to_string(), "is too large"))?,
            Some(_) => return Err(count_error(&count_path, &n.to_string(), "must be at least 1")),
            None => return Err(count_error(&count_path, &n.to_string(), "must be a whole number")),
        },
        Some(Value::String(s)) => match s.trim().parse::<i64>() {
            // Some tools quote numbers; accept "3" but hold it to the same rules.
            Ok(c) if c > 0 => u32::try_from(c).map_err(|_| count_error(&count_path, s, "is too large"))?,
            Ok(_) => return Err(count_error(&count_path, s, "must be at least 1")),
            Err(_) => return Err(count_error(&count_path, s, "must be a whole number")),
        },
        Some(other) => return Err(count_error(&count_path, &other.to_string(), "must be a whole number")),
    };
    let rc_account = string_field(obj, "rc_account", "rc_account")?;
    Ok(RequestMachinesInput {
        template_id,
        machine_count,
        rc_account,
    })
}

fn count_error(path: &str, value: &str, why: &str) -> HfError {
    HfError::new(ErrorCode::InvalidMachineCount, format!("`{path}` = {value} {why}"))
        .with("field", path)
        .with("value", value)
}

/// Parses requestReturnMachines: `{"machines": [...]}` (array or object) or the alias
/// `{"requestId": ...}`.
pub fn request_return_machines(obj: &Map<String, Value>) -> Result<ReturnInput, HfError> {
    if !obj.contains_key("machines") {
        if let Some(id) = string_field(obj, "requestId", "requestId")? {
            return Ok(ReturnInput::Request(id));
        }
        return Err(invalid(
            "machines",
            "input has no `machines` list (expected {\"machines\": [{\"name\": ..., \"machineId\": ...}]})".into(),
        ));
    }
    Ok(ReturnInput::Machines(machine_refs(obj)?))
}

/// Parses getRequestStatus: `{"requests": [{"requestId"}...]}` (array or object) or the
/// alias bare `{"requestId": ...}`. Duplicate ids are answered once.
pub fn get_request_status(obj: &Map<String, Value>) -> Result<Vec<String>, HfError> {
    let mut ids: Vec<String> = Vec::new();
    if !obj.contains_key("requests") {
        return match string_field(obj, "requestId", "requestId")? {
            Some(id) => Ok(vec![id]),
            None => Err(invalid(
                "requests",
                "input has no `requests` list (expected {\"requests\": [{\"requestId\": ...}]})".into(),
            )),
        };
    }
    // First occurrence wins, in order; a set keeps this linear for HostFactory's largest polls.
    let mut seen = std::collections::HashSet::new();
    for (i, r) in objects(obj, "requests")?.into_iter().enumerate() {
        let path = format!("requests[{i}].requestId");
        let id = string_field(r, "requestId", &path)?.ok_or_else(|| invalid(&path, format!("`requests[{i}]` has no `requestId`")))?;
        if seen.insert(id.clone()) {
            ids.push(id);
        }
    }
    Ok(ids)
}

/// Parses getReturnRequests: `{"machines": [...]}`, an object, `{}` or no key at all.
pub fn get_return_requests(obj: &Map<String, Value>) -> Result<Vec<MachineRef>, HfError> {
    machine_refs(obj)
}

/// One call's input, read out of its JSON object: what the service needs, so the object
/// (10,000 hosts as a JSON tree are megabytes) can go before the work starts.
#[derive(Debug, Clone, PartialEq)]
pub enum CallInput {
    /// getAvailableTemplates takes nothing.
    Templates,
    /// requestMachines.
    RequestMachines(RequestMachinesInput),
    /// requestReturnMachines.
    ReturnMachines(ReturnInput),
    /// getRequestStatus: the ids, first occurrence of each.
    RequestStatus(Vec<String>),
    /// getReturnRequests: HostFactory's hosts.
    ReturnRequests(Vec<MachineRef>),
}

/// The input of `call` from its object.
pub fn call_input(call: super::Call, obj: &Map<String, Value>) -> Result<CallInput, HfError> {
    use super::Call;
    Ok(match call {
        Call::GetAvailableTemplates => CallInput::Templates,
        Call::RequestMachines => CallInput::RequestMachines(request_machines(obj)?),
        Call::RequestReturnMachines => CallInput::ReturnMachines(request_return_machines(obj)?),
        Call::GetRequestStatus => CallInput::RequestStatus(get_request_status(obj)?),
        Call::GetReturnRequests => CallInput::ReturnRequests(get_return_requests(obj)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }

    #[test]
    fn request_machines_shapes() {
        let hf = request_machines(&obj(json!({"template": {"templateId": "t1", "machineCount": 3}}))).expect("hf shape");
        assert_eq!((hf.template_id.as_str(), hf.machine_count), ("t1", 3));
        let lsf = request_machines(&obj(
            json!({"rc_account": "default", "userData": {}, "template": {"templateId": "t", "machineCount": 2}}),
        ))
        .expect("lsf");
        assert_eq!(lsf.rc_account.as_deref(), Some("default"));
        let flat = request_machines(&obj(json!({"templateId": "basic", "maxNumber": 5, "attributes": {}}))).expect("alias");
        assert_eq!((flat.template_id.as_str(), flat.machine_count), ("basic", 5));
    }

    #[test]
    fn bad_machine_counts_name_the_field() {
        for (input, needle) in [
            (json!({"template": {"templateId": "t"}}), "missing `template.machineCount`"),
            (json!({"template": {"templateId": "t", "machineCount": 0}}), "must be at least 1"),
            (json!({"template": {"templateId": "t", "machineCount": -4}}), "must be at least 1"),
            (json!({"template": {"templateId": "t", "machineCount": 2.5}}), "whole number"),
            (json!({"template": {"templateId": "t", "machineCount": "x"}}), "whole number"),
        ] {
            let e = request_machines(&obj(input)).expect_err("must fail");
            assert_eq!(e.code, ErrorCode::InvalidMachineCount);
            assert!(e.message.contains(needle), "{} lacks {needle}", e.message);
        }
        let e = request_machines(&obj(json!({"template": {"machineCount": 1}}))).expect_err("no id");
        assert!(e.message.contains("template.templateId"), "{}", e.message);
    }

    #[test]
    fn status_ids_from_every_shape() {
        assert_eq!(
            get_request_status(&obj(
                json!({"requests": [{"requestId": "a"}, {"requestId": "b"}, {"requestId": "a"}]})
            ))
            .expect("array"),
            ["a", "b"]
        );
        assert_eq!(
            get_request_status(&obj(json!({"requests": {"requestId": "x"}}))).expect("object"),
            ["x"]
        );
        assert_eq!(get_request_status(&obj(json!({"requestId": "y"}))).expect("alias"), ["y"]);
        assert!(get_request_status(&obj(json!({"requests": [{"id": "a"}]}))).is_err());
    }

    #[test]
    fn machines_lists_are_lenient() {
        assert!(get_return_requests(&obj(json!({"machines": {}}))).expect("empty object").is_empty());
        assert!(get_return_requests(&obj(json!({}))).expect("missing").is_empty());
        let one = get_return_requests(&obj(json!({"machines": {"name": "h1", "machineId": "i-1"}}))).expect("object");
        assert_eq!(
            one,
            vec![MachineRef {
                name: "h1".into(),
                machine_id: Some("i-1".into())
            }]
        );
        let e = get_return_requests(&obj(json!({"machines": [{"machineId": "i-1"}]}))).expect_err("no name");
        assert!(e.message.contains("machines[0]"), "{}", e.message);
        assert_eq!(
            request_return_machines(&obj(json!({"requestId": "req-1"}))).expect("alias"),
            ReturnInput::Request("req-1".into())
        );
    }
}
