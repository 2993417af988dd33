//! IBM-shaped output documents for the five calls. Serialised here, printed by `main`.

use serde::Serialize;
use serde_json::{Map, Value};

use crate::domain::lifecycle::{MachineResult, RequestStatus};
use crate::domain::model::{AttributeKind, Reclaim, Template};
use crate::service::{MachineReport, RequestReport};

fn kind_tag(k: AttributeKind) -> &'static str {
    match k {
        AttributeKind::Text => "String",
        AttributeKind::Numeric => "Numeric",
        AttributeKind::Boolean => "Boolean",
    }
}

/// getAvailableTemplates answer.
pub fn templates(templates: &[Template]) -> Value {
    let list: Vec<Value> = templates
        .iter()
        .map(|t| {
            let mut o = Map::new();
            o.insert("templateId".into(), t.id.clone().into());
            o.insert("maxNumber".into(), t.max_number.into());
            if let Some(n) = t.available_number {
                o.insert("availableNumber".into(), n.into());
            }
            let attrs: Map<String, Value> = t
                .attributes
                .iter()
                .map(|a| (a.name.clone(), Value::from(vec![kind_tag(a.kind).to_string(), a.value.clone()])))
                .collect();
            o.insert("attributes".into(), Value::Object(attrs));
            for (k, v) in &t.extra {
                // Provider keys never override the contract's own keys.
                o.entry(k.clone()).or_insert_with(|| v.clone());
            }
            Value::Object(o)
        })
        .collect();
    serde_json::json!({"message": "Get available templates success.", "templates": list})
}

/// requestMachines / requestReturnMachines answer.
#[derive(Debug, Serialize)]
pub struct RequestAccepted<'a> {
    /// The new request id.
    #[serde(rename = "requestId")]
    pub request_id: &'a str,
    /// Free text.
    pub message: &'a str,
}

/// Wire spelling of a request status.
pub fn status_str(s: RequestStatus) -> &'static str {
    match s {
        RequestStatus::Running => "running",
        RequestStatus::Complete => "complete",
        RequestStatus::CompleteWithError => "complete_with_error",
    }
}

fn result_str(r: MachineResult) -> &'static str {
    match r {
        MachineResult::Executing => "executing",
        MachineResult::Succeed => "succeed",
        MachineResult::Fail => "fail",
    }
}

fn machine(m: &MachineReport) -> Value {
    let mut o = Map::new();
    o.insert("machineId".into(), m.machine.machine_id.clone().into());
    o.insert("name".into(), m.machine.name.clone().into());
    o.insert("result".into(), result_str(m.result).into());
    o.insert("status".into(), m.machine.state.as_str().into());
    o.insert("privateIpAddress".into(), m.machine.private_ip.clone().into());
    if let Some(ip) = &m.machine.public_ip {
        o.insert("publicIpAddress".into(), ip.clone().into());
    }
    o.insert("launchtime".into(), m.machine.launch_time.into());
    o.insert("message".into(), m.message.clone().into());
    if let Some(acct) = &m.rc_account {
        o.insert("rcAccount".into(), acct.clone().into());
    }
    Value::Object(o)
}

/// getRequestStatus answer.
pub fn request_status(reports: &[RequestReport]) -> Value {
    // Built as maps, not with `json!`, which would copy each machine list once more (at
    // 10,000 machines, ~7 MiB of peak memory).
    let list: Vec<Value> = reports
        .iter()
        .map(|r| {
            let mut o = Map::new();
            o.insert("requestId".into(), r.request_id.clone().into());
            o.insert("status".into(), status_str(r.status).into());
            o.insert("message".into(), r.message.clone().into());
            o.insert("machines".into(), Value::Array(r.machines.iter().map(machine).collect()));
            Value::Object(o)
        })
        .collect();
    let mut doc = Map::new();
    doc.insert("requests".into(), Value::Array(list));
    Value::Object(doc)
}

/// getReturnRequests answer.
pub fn return_requests(reclaims: &[Reclaim]) -> Value {
    let list: Vec<Value> = reclaims
        .iter()
        .map(|r| {
            let mut o = Map::new();
            o.insert("machine".into(), r.name.clone().into());
            if let Some(id) = &r.machine_id {
                o.insert("machineId".into(), id.clone().into());
            }
            o.insert("gracePeriod".into(), r.grace_period.into());
            Value::Object(o)
        })
        .collect();
    let message = match reclaims.len() {
        0 => "No hosts to return.".to_string(),
        1 => "1 host must be returned to the provider.".to_string(),
        n => format!("{n} hosts must be returned to the provider."),
    };
    serde_json::json!({"status": "complete", "message": message, "requests": list})
}
