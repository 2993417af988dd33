//! Domain types of the core: templates, machines and requests in provider terms. They
//! carry no HostFactory spelling (that is `hf`) and no WIT type (that is `engine::convert`).

use serde::{Deserialize, Serialize};

/// How an attribute value is typed on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AttributeKind {
    /// Free text.
    Text,
    /// A number as text.
    Numeric,
    /// `1` / `0`.
    Boolean,
}

impl AttributeKind {
    /// Every kind.
    pub const ALL: [AttributeKind; 3] = [AttributeKind::Text, AttributeKind::Numeric, AttributeKind::Boolean];

    /// The kind's name where policies spell it (`text`, `numeric`, `boolean`).
    pub fn name(self) -> &'static str {
        match self {
            AttributeKind::Text => "text",
            AttributeKind::Numeric => "numeric",
            AttributeKind::Boolean => "boolean",
        }
    }

    /// The kind named `s` (see [`Self::name`]).
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == s)
    }
}

/// One template attribute.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attribute {
    /// Attribute name (`ncpus`, `nram`, `type`, ...).
    pub name: String,
    /// Value type.
    pub kind: AttributeKind,
    /// Value as text.
    pub value: String,
}

/// A host shape a provider can supply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Template {
    /// Unique id within the provider instance.
    pub id: String,
    /// Most hosts (units); -1 = unlimited.
    pub max_number: i32,
    /// Hosts that can still be had now, if known.
    pub available_number: Option<u32>,
    /// Attributes; `type`, `ncpus`, `nram` are required.
    pub attributes: Vec<Attribute>,
    /// Provider-specific keys passed through to HostFactory.
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl Template {
    /// The attribute named `name`.
    pub fn attribute(&self, name: &str) -> Option<&Attribute> {
        self.attributes.iter().find(|a| a.name == name)
    }
}

/// A machine's state in provider terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MachineState {
    /// Being created / powered on.
    Pending,
    /// Usable.
    Running,
    /// Being stopped or terminated.
    Stopping,
    /// Stopped but allocated.
    Stopped,
    /// Gone.
    Terminated,
    /// Will never come up, or could not be released.
    Failed,
}

impl MachineState {
    /// Lower-case spelling, also HostFactory's machine `status` vocabulary.
    pub fn as_str(self) -> &'static str {
        match self {
            MachineState::Pending => "pending",
            MachineState::Running => "running",
            MachineState::Stopping => "stopping",
            MachineState::Stopped => "stopped",
            MachineState::Terminated => "terminated",
            MachineState::Failed => "failed",
        }
    }

    /// Parses [`MachineState::as_str`] back (for the store).
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => MachineState::Pending,
            "running" => MachineState::Running,
            "stopping" => MachineState::Stopping,
            "stopped" => MachineState::Stopped,
            "terminated" => MachineState::Terminated,
            "failed" => MachineState::Failed,
            _ => return None,
        })
    }
}

/// One machine as the provider reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Machine {
    /// Provider id.
    pub machine_id: String,
    /// Host name the machine registers with.
    pub name: String,
    /// Private address (empty while unknown).
    pub private_ip: String,
    /// Public address.
    pub public_ip: Option<String>,
    /// Launch time, epoch seconds.
    pub launch_time: u64,
    /// Provider state.
    pub state: MachineState,
    /// Failure reason or detail.
    pub message: Option<String>,
}

/// A machine as HostFactory names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineRef {
    /// Host name.
    pub name: String,
    /// Provider id, when sent.
    pub machine_id: Option<String>,
}

/// A recorded request for hosts of one template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProvisionRequest {
    /// Host-issued request id.
    pub request_id: String,
    /// Template id.
    pub template_id: String,
    /// Hosts (units) wanted.
    pub count: u32,
    /// LSF `rc_account`.
    pub rc_account: Option<String>,
}

/// A live machine and the request it was made for, as the provider lists them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedMachine {
    /// Request id the machine was made for.
    pub request_id: String,
    /// Store id of the installation that made it (`hfwasm:store` tag), when known.
    pub store_id: Option<String>,
    /// The machine.
    pub machine: Machine,
}

/// An open provision request and its recorded machines, asked about in one batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusQuery {
    /// The request.
    pub request: ProvisionRequest,
    /// Machines recorded for it so far.
    pub known: Vec<Machine>,
}

/// What a provider knows of a provision request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProvisionProgress {
    /// Machines that exist for the request.
    pub machines: Vec<Machine>,
    /// Hosts (units) the provider is still trying to obtain.
    pub outstanding: u32,
    /// Note for HostFactory.
    pub message: Option<String>,
    /// Units the live machines count for (weighted templates); None = one per machine.
    pub units: Option<u32>,
}

/// A host the provider wants back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reclaim {
    /// Host name.
    pub name: String,
    /// Provider id.
    pub machine_id: Option<String>,
    /// Seconds before the provider takes it; 0 = already gone.
    pub grace_period: u32,
}

/// Who is calling a provider: instance name, its settings and the current time.
#[derive(Debug, Clone)]
pub struct CallContext {
    /// HostFactory provider instance.
    pub provider_instance: String,
    /// Provider settings from config (a JSON object).
    pub settings: serde_json::Value,
    /// Now, epoch seconds.
    pub now: u64,
}

/// Why a provider operation failed. The core does not know whether the provider is a Wasm
/// guest, a Rhai script or a test double; `Aborted` covers an implementation that crashed or
/// hit a limit, with a stable code for scripts and operators.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    /// Unknown or unusable template.
    #[error("invalid template: {0}")]
    InvalidTemplate(String),
    /// The request is wrong.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// No capacity now.
    #[error("insufficient capacity: {0}")]
    Capacity(String),
    /// A dependency failed; retry later.
    #[error("provider unavailable: {0}")]
    Unavailable(String),
    /// Outside the provider's grant.
    #[error("denied: {0}")]
    Denied(String),
    /// A bug or unexpected state in the provider.
    #[error("provider internal error: {0}")]
    Internal(String),
    /// The provider's answer breaks the HostFactory contract (`service::contract`).
    #[error("the provider's answer breaks the HostFactory contract: {0}")]
    Contract(String),
    /// The placement policy (which of several providers) failed and config says to fail
    /// closed.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// The provider implementation crashed, hit a limit, or could not be loaded.
    #[error("{message}")]
    Aborted {
        /// What kind of abort (trap, timeout, memory, load).
        kind: AbortKind,
        /// The provider implementation (guest name).
        provider: String,
        /// The operation it was running (`templates`, `request-machines`, `load`, ...).
        operation: String,
        /// Names the provider implementation, the operation and the cause.
        message: String,
    },
}

/// Why a provider implementation was aborted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AbortKind {
    /// Trapped (panic, unreachable, stack overflow, bad memory access).
    Trap,
    /// Ran past its wall-time deadline.
    Timeout,
    /// Exceeded its memory limit.
    Memory,
    /// Could not be loaded or linked.
    Load,
}

/// A policy that failed or answered something it may not.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("policy '{policy}': {message}")]
pub struct PolicyError {
    /// The policy's name from config.
    pub policy: String,
    /// What went wrong (a trap, a limit, the policy's own error, a rejected answer).
    pub message: String,
}
