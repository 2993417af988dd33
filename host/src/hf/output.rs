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

/// getRequestStatus answer, as a document.
pub fn request_status(reports: &[RequestReport]) -> Value {
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

/// One call's answer: a JSON document, or getRequestStatus' reports written as they are
/// serialised. At 10,000 machines the document form held ~8 MiB of maps only to be
/// printed; the reports are printed field by field, the same JSON (key order included)
/// as [`request_status`] makes.
#[derive(Debug)]
pub enum Answer {
    /// Any call's answer as a document.
    Doc(Value),
    /// getRequestStatus' answer.
    Status(Vec<RequestReport>),
}

impl Answer {
    /// The answer as a document (for callers that inspect it).
    pub fn into_value(self) -> Value {
        match self {
            Answer::Doc(v) => v,
            Answer::Status(r) => request_status(&r),
        }
    }
}

impl Serialize for Answer {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        struct Machines<'a>(&'a [MachineReport]);
        impl Serialize for Machines<'_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_seq(self.0.iter().map(MachineOut))
            }
        }
        struct MachineOut<'a>(&'a MachineReport);
        impl Serialize for MachineOut<'_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let m = self.0;
                let mut o = s.serialize_map(None)?;
                o.serialize_entry("machineId", &m.machine.machine_id)?;
                o.serialize_entry("name", &m.machine.name)?;
                o.serialize_entry("result", result_str(m.result))?;
                o.serialize_entry("status", m.machine.state.as_str())?;
                o.serialize_entry("privateIpAddress", &m.machine.private_ip)?;
                if let Some(ip) = &m.machine.public_ip {
                    o.serialize_entry("publicIpAddress", ip)?;
                }
                o.serialize_entry("launchtime", &m.machine.launch_time)?;
                o.serialize_entry("message", &m.message)?;
                if let Some(acct) = &m.rc_account {
                    o.serialize_entry("rcAccount", acct)?;
                }
                o.end()
            }
        }
        struct Report<'a>(&'a RequestReport);
        impl Serialize for Report<'_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let r = self.0;
                let mut o = s.serialize_map(Some(4))?;
                o.serialize_entry("requestId", &r.request_id)?;
                o.serialize_entry("status", status_str(r.status))?;
                o.serialize_entry("message", &r.message)?;
                o.serialize_entry("machines", &Machines(&r.machines))?;
                o.end()
            }
        }
        match self {
            Answer::Doc(v) => v.serialize(s),
            Answer::Status(reports) => {
                let mut o = s.serialize_map(Some(1))?;
                o.serialize_entry("requests", &reports.iter().map(Report).collect::<Vec<_>>())?;
                o.end()
            }
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::model::{Machine, MachineState};

    #[test]
    fn the_status_answer_prints_as_its_document_does() {
        let m = |id: &str, ip: Option<&str>, acct: Option<&str>| MachineReport {
            machine: Machine {
                machine_id: id.into(),
                name: format!("host-{id}"),
                private_ip: "10.0.0.1".into(),
                public_ip: ip.map(str::to_string),
                launch_time: 7,
                state: MachineState::Running,
                message: None,
            },
            result: MachineResult::Succeed,
            message: "ok \"quoted\"".into(),
            rc_account: acct.map(str::to_string),
        };
        let reports = vec![
            RequestReport {
                request_id: "req-1".into(),
                status: RequestStatus::Complete,
                message: String::new(),
                machines: vec![m("a", Some("1.2.3.4"), None), m("b", None, Some("acct"))],
            },
            RequestReport {
                request_id: "ret-2".into(),
                status: RequestStatus::Running,
                message: "going".into(),
                machines: vec![],
            },
        ];
        let doc = request_status(&reports);
        let streamed = serde_json::to_string_pretty(&Answer::Status(reports)).expect("serialise");
        assert_eq!(
            streamed,
            serde_json::to_string_pretty(&doc).expect("doc"),
            "same bytes, key order included"
        );
    }
}
