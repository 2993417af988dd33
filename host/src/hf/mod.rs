//! The HostFactory wire contract: every HostFactory spelling lives here and nowhere else.
//! Input files are read leniently (arrays or single objects, the integration guide's alias
//! shapes, LSF's extras); output is always IBM-shaped; failures are the error envelope.

pub mod dirs;
pub mod error;
pub mod input;
pub mod output;
pub mod registration;

pub use dirs::ProviderDirs;
pub use error::{ErrorCode, HfError};

/// The five calls of the provider plugin contract, under HostFactory's exact names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    /// List templates.
    GetAvailableTemplates,
    /// Start provisioning hosts.
    RequestMachines,
    /// Start releasing hosts.
    RequestReturnMachines,
    /// Report progress of provision and return requests.
    GetRequestStatus,
    /// Report hosts the provider wants back.
    GetReturnRequests,
}

impl Call {
    /// The script / command name HostFactory uses.
    pub fn name(self) -> &'static str {
        match self {
            Call::GetAvailableTemplates => "getAvailableTemplates",
            Call::RequestMachines => "requestMachines",
            Call::RequestReturnMachines => "requestReturnMachines",
            Call::GetRequestStatus => "getRequestStatus",
            Call::GetReturnRequests => "getReturnRequests",
        }
    }

    /// All five, in the order HostFactory uses them in a cycle.
    pub const ALL: [Call; 5] = [
        Call::GetAvailableTemplates,
        Call::RequestMachines,
        Call::RequestReturnMachines,
        Call::GetRequestStatus,
        Call::GetReturnRequests,
    ];
}
