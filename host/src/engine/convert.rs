//! Conversions between WIT binding types and the core's domain types, in one place.

use super::bindings::hostfactory::provider::types as wit;
use crate::domain::model as dom;

/// Domain → WIT call context.
pub fn call_context(c: &dom::CallContext) -> wit::CallContext {
    wit::CallContext {
        provider_instance: c.provider_instance.clone(),
        settings_json: c.settings.to_string(),
        now: c.now,
    }
}

/// Domain → WIT provision request.
pub fn provision_request(r: &dom::ProvisionRequest) -> wit::ProvisionRequest {
    wit::ProvisionRequest {
        request_id: r.request_id.clone(),
        template_id: r.template_id.clone(),
        count: r.count,
        rc_account: r.rc_account.clone(),
    }
}

fn state_to_wit(s: dom::MachineState) -> wit::MachineState {
    match s {
        dom::MachineState::Pending => wit::MachineState::Pending,
        dom::MachineState::Running => wit::MachineState::Running,
        dom::MachineState::Stopping => wit::MachineState::Stopping,
        dom::MachineState::Stopped => wit::MachineState::Stopped,
        dom::MachineState::Terminated => wit::MachineState::Terminated,
        dom::MachineState::Failed => wit::MachineState::Failed,
    }
}

fn state_from_wit(s: wit::MachineState) -> dom::MachineState {
    match s {
        wit::MachineState::Pending => dom::MachineState::Pending,
        wit::MachineState::Running => dom::MachineState::Running,
        wit::MachineState::Stopping => dom::MachineState::Stopping,
        wit::MachineState::Stopped => dom::MachineState::Stopped,
        wit::MachineState::Terminated => dom::MachineState::Terminated,
        wit::MachineState::Failed => dom::MachineState::Failed,
    }
}

/// Domain → WIT machine.
pub fn machine_to_wit(m: &dom::Machine) -> wit::Machine {
    wit::Machine {
        machine_id: m.machine_id.clone(),
        name: m.name.clone(),
        private_ip: m.private_ip.clone(),
        public_ip: m.public_ip.clone(),
        launch_time: m.launch_time,
        state: state_to_wit(m.state),
        message: m.message.clone(),
    }
}

/// Domain → WIT status query.
pub fn status_query(q: &dom::StatusQuery) -> wit::StatusQuery {
    wit::StatusQuery {
        request: provision_request(&q.request),
        known: q.known.iter().map(machine_to_wit).collect(),
    }
}

/// WIT → domain machine.
pub fn machine_from_wit(m: wit::Machine) -> dom::Machine {
    dom::Machine {
        machine_id: m.machine_id,
        name: m.name,
        private_ip: m.private_ip,
        public_ip: m.public_ip,
        launch_time: m.launch_time,
        state: state_from_wit(m.state),
        message: m.message,
    }
}

/// Domain → WIT machine reference.
pub fn machine_ref(r: &dom::MachineRef) -> wit::MachineRef {
    wit::MachineRef {
        name: r.name.clone(),
        machine_id: r.machine_id.clone(),
    }
}

/// WIT → domain progress.
pub fn progress(p: wit::ProvisionProgress) -> dom::ProvisionProgress {
    dom::ProvisionProgress {
        machines: p.machines.into_iter().map(machine_from_wit).collect(),
        outstanding: p.outstanding,
        message: p.message,
        units: p.units,
    }
}

/// WIT → domain reclaim.
pub fn reclaim(r: wit::Reclaim) -> dom::Reclaim {
    dom::Reclaim {
        name: r.name,
        machine_id: r.machine_id,
        grace_period: r.grace_period,
    }
}

/// A template's `extra-json` (provider and policy guests alike) as the object it must be.
pub fn extra_object(id: &str, extra_json: Option<&str>) -> Result<serde_json::Map<String, serde_json::Value>, String> {
    match extra_json {
        None | Some("") => Ok(serde_json::Map::new()),
        Some(text) => match serde_json::from_str::<serde_json::Value>(text) {
            Ok(serde_json::Value::Object(m)) => Ok(m),
            _ => Err(format!("template '{id}': extra-json is not a JSON object")),
        },
    }
}

/// WIT → domain template (provider package); `extra-json` must be a JSON object.
pub fn template(t: wit::Template) -> Result<dom::Template, dom::ProviderError> {
    provider_template::from_wit(t).map_err(dom::ProviderError::Internal)
}

/// The template conversions of a WIT package that defines its own `template` record (the
/// provider's and the policy's), written once so the two cannot drift.
macro_rules! template_conversions {
    ($name:ident, $($wit:ident)::+) => {
        /// Template conversions of one WIT package.
        pub mod $name {
            use crate::domain::model as dom;
            use $($wit)::+ as wit;

            /// Domain → WIT attribute kind.
            pub fn kind_to_wit(k: dom::AttributeKind) -> wit::AttributeKind {
                match k {
                    dom::AttributeKind::Text => wit::AttributeKind::Text,
                    dom::AttributeKind::Numeric => wit::AttributeKind::Numeric,
                    dom::AttributeKind::Boolean => wit::AttributeKind::Boolean,
                }
            }

            /// WIT → domain attribute kind.
            pub fn kind_from_wit(k: wit::AttributeKind) -> dom::AttributeKind {
                match k {
                    wit::AttributeKind::Text => dom::AttributeKind::Text,
                    wit::AttributeKind::Numeric => dom::AttributeKind::Numeric,
                    wit::AttributeKind::Boolean => dom::AttributeKind::Boolean,
                }
            }

            /// Domain → WIT template.
            pub fn to_wit(t: &dom::Template) -> wit::Template {
                wit::Template {
                    id: t.id.clone(),
                    max_number: t.max_number,
                    available_number: t.available_number,
                    attributes: t
                        .attributes
                        .iter()
                        .map(|a| wit::Attribute {
                            name: a.name.clone(),
                            kind: kind_to_wit(a.kind),
                            value: a.value.clone(),
                        })
                        .collect(),
                    extra_json: (!t.extra.is_empty()).then(|| serde_json::Value::Object(t.extra.clone()).to_string()),
                }
            }

            /// WIT → domain template; `extra-json` must be a JSON object.
            pub fn from_wit(t: wit::Template) -> Result<dom::Template, String> {
                let extra = super::extra_object(&t.id, t.extra_json.as_deref())?;
                Ok(dom::Template {
                    id: t.id,
                    max_number: t.max_number,
                    available_number: t.available_number,
                    attributes: t
                        .attributes
                        .into_iter()
                        .map(|a| dom::Attribute {
                            name: a.name,
                            kind: kind_from_wit(a.kind),
                            value: a.value,
                        })
                        .collect(),
                    extra,
                })
            }
        }
    };
}

template_conversions!(provider_template, crate::engine::bindings::hostfactory::provider::types);
template_conversions!(
    policy_template,
    crate::engine::bindings::policy::exports::hostfactory::policy::template_policy
);

/// WIT → domain provider error.
pub fn error(e: wit::ProviderError) -> dom::ProviderError {
    match e {
        wit::ProviderError::InvalidTemplate(m) => dom::ProviderError::InvalidTemplate(m),
        wit::ProviderError::InvalidInput(m) => dom::ProviderError::InvalidInput(m),
        wit::ProviderError::Capacity(m) => dom::ProviderError::Capacity(m),
        wit::ProviderError::Unavailable(m) => dom::ProviderError::Unavailable(m),
        wit::ProviderError::Denied(m) => dom::ProviderError::Denied(m),
        wit::ProviderError::Internal(m) => dom::ProviderError::Internal(m),
    }
}

/// Bytes of text a domain answer carries (what the answer-size limit counts): every
/// string, plus a few bytes per element so a list of empty items still weighs something.
pub trait Weigh {
    /// Approximate size in bytes.
    fn weight(&self) -> usize;
}

impl Weigh for String {
    fn weight(&self) -> usize {
        self.len()
    }
}

impl<T: Weigh> Weigh for Option<T> {
    fn weight(&self) -> usize {
        self.as_ref().map_or(0, Weigh::weight)
    }
}

impl<T: Weigh> Weigh for Vec<T> {
    fn weight(&self) -> usize {
        self.iter().map(|t| t.weight() + 8).sum()
    }
}

impl<T: Weigh> Weigh for Result<T, dom::ProviderError> {
    fn weight(&self) -> usize {
        match self {
            Ok(t) => t.weight(),
            Err(e) => e.to_string().len(),
        }
    }
}

impl Weigh for dom::Machine {
    fn weight(&self) -> usize {
        self.machine_id.len() + self.name.len() + self.private_ip.len() + self.public_ip.weight() + self.message.weight()
    }
}

impl Weigh for dom::Template {
    fn weight(&self) -> usize {
        self.id.len()
            + self.attributes.iter().map(|a| a.name.len() + a.value.len() + 8).sum::<usize>()
            + self.extra.iter().map(|(k, v)| k.len() + v.to_string().len()).sum::<usize>()
    }
}

impl Weigh for dom::ProvisionProgress {
    fn weight(&self) -> usize {
        self.machines.weight() + self.message.weight()
    }
}

impl Weigh for dom::Reclaim {
    fn weight(&self) -> usize {
        self.name.len() + self.machine_id.weight()
    }
}

impl Weigh for dom::OwnedMachine {
    fn weight(&self) -> usize {
        self.request_id.len() + self.store_id.weight() + self.machine.weight()
    }
}
