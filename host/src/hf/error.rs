//! The error envelope HostFactory gets on stdout with exit code 1.

use serde_json::{Map, Value, json};

/// Stable, machine-readable error codes (`^[A-Z][A-Z0-9_]*$`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// The `-f` file does not exist or cannot be read.
    InputNotFound,
    /// The input file is not valid JSON.
    InvalidJson,
    /// The input is JSON but a field is missing or wrong.
    InvalidInput,
    /// `machineCount` is missing, not a positive integer, or more than can be had.
    InvalidMachineCount,
    /// The template id is not offered by the provider.
    TemplateNotFound,
    /// The provider has no free capacity for the request.
    InsufficientCapacity,
    /// A config file is missing, malformed or has an unknown key.
    ConfigError,
    /// The inventory file is broken.
    InventoryError,
    /// The state store could not be opened or written.
    StoreError,
    /// A guest trapped (panic, unreachable, bad memory access).
    GuestTrap,
    /// A guest ran past its wall-time deadline.
    GuestTimeout,
    /// A guest exceeded its memory limit.
    GuestMemoryLimit,
    /// A guest could not be loaded or linked (missing file, ungranted import, bad version).
    GuestLoadError,
    /// The provider refused or failed the operation.
    ProviderError,
    /// The provider's dependency is unavailable; HostFactory should retry later.
    ProviderUnavailable,
    /// The provider guest answered something the HostFactory contract forbids (more
    /// machines than asked, a machine twice, a name or address HostFactory cannot use).
    GuestContract,
    /// The site's policy failed and config says to fail closed (`policy.on_error`).
    PolicyError,
    /// The whole call ran past `call_timeout_ms` (a host call that never answered).
    CallTimeout,
    /// A bug in hfwasm itself.
    Internal,
}

impl ErrorCode {
    /// The HTTP status `hfwasm serve` answers with: the caller's input (4xx), the cloud or
    /// store being unavailable (503, retry later), a timeout (504), the rest (5xx).
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::InputNotFound | ErrorCode::InvalidJson | ErrorCode::InvalidInput | ErrorCode::InvalidMachineCount => 400,
            ErrorCode::TemplateNotFound => 404,
            ErrorCode::InsufficientCapacity => 409,
            ErrorCode::ProviderError | ErrorCode::GuestContract => 502,
            ErrorCode::StoreError | ErrorCode::ProviderUnavailable => 503,
            ErrorCode::GuestTimeout | ErrorCode::CallTimeout => 504,
            ErrorCode::ConfigError
            | ErrorCode::InventoryError
            | ErrorCode::GuestTrap
            | ErrorCode::GuestMemoryLimit
            | ErrorCode::GuestLoadError
            | ErrorCode::PolicyError
            | ErrorCode::Internal => 500,
        }
    }

    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InputNotFound => "INPUT_NOT_FOUND",
            ErrorCode::InvalidJson => "INVALID_JSON",
            ErrorCode::InvalidInput => "INVALID_INPUT",
            ErrorCode::InvalidMachineCount => "INVALID_MACHINE_COUNT",
            ErrorCode::TemplateNotFound => "TEMPLATE_NOT_FOUND",
            ErrorCode::InsufficientCapacity => "INSUFFICIENT_CAPACITY",
            ErrorCode::ConfigError => "CONFIG_ERROR",
            ErrorCode::InventoryError => "INVENTORY_ERROR",
            ErrorCode::StoreError => "STORE_ERROR",
            ErrorCode::GuestTrap => "GUEST_TRAP",
            ErrorCode::GuestTimeout => "GUEST_TIMEOUT",
            ErrorCode::GuestMemoryLimit => "GUEST_MEMORY_LIMIT",
            ErrorCode::GuestLoadError => "GUEST_LOAD_ERROR",
            ErrorCode::ProviderError => "PROVIDER_ERROR",
            ErrorCode::ProviderUnavailable => "PROVIDER_UNAVAILABLE",
            ErrorCode::GuestContract => "GUEST_CONTRACT",
            ErrorCode::PolicyError => "POLICY_ERROR",
            ErrorCode::CallTimeout => "CALL_TIMEOUT",
            ErrorCode::Internal => "INTERNAL",
        }
    }
}

/// A failed call as HostFactory sees it: code, a message naming the offending field, file
/// or template, and structured details.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{code_str}: {message}", code_str = .code.as_str())]
pub struct HfError {
    /// Stable error code.
    pub code: ErrorCode,
    /// Human-readable message; names what is wrong and, where possible, what to do.
    pub message: String,
    /// Structured details (file, field, available templates, ...).
    pub details: Map<String, Value>,
}

impl HfError {
    /// An error without details.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            details: Map::new(),
        }
    }

    /// Adds one detail.
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.details.insert(key.to_string(), value.into());
        self
    }

    /// The JSON document written to stdout.
    pub fn to_envelope(&self) -> Value {
        json!({"error": {"code": self.code.as_str(), "message": self.message, "details": self.details}})
    }
}

use crate::domain::model::{AbortKind, ProviderError};
use crate::service::ServiceError;

impl From<ServiceError> for HfError {
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::TemplateNotFound { id, available } => {
                HfError::new(ErrorCode::TemplateNotFound, format!("Template '{id}' not found"))
                    .with("templateId", id)
                    .with("available_templates", available)
            }
            ServiceError::TooMany { message } => {
                HfError::new(ErrorCode::InvalidMachineCount, message).with("field", "template.machineCount")
            }
            ServiceError::Unknown(m) => HfError::new(ErrorCode::InvalidInput, m),
            ServiceError::BadAnswer(m) => HfError::new(
                ErrorCode::GuestContract,
                format!("the provider's answer breaks the HostFactory contract: {m}"),
            ),
            ServiceError::Store(e) => e.into(),
            ServiceError::Provider(p) => p.into(),
            ServiceError::Policy(e) => HfError::new(ErrorCode::PolicyError, e.to_string()).with("policy", e.policy),
        }
    }
}

impl From<crate::store::StoreError> for HfError {
    fn from(e: crate::store::StoreError) -> Self {
        let err = HfError::new(ErrorCode::StoreError, e.to_string());
        match e {
            crate::store::StoreError::Connect { setting, location, .. } => err.with("setting", setting).with("store", location),
            _ => err,
        }
    }
}

impl From<ProviderError> for HfError {
    fn from(p: ProviderError) -> Self {
        let code = match &p {
            ProviderError::InvalidTemplate(_) => ErrorCode::TemplateNotFound,
            ProviderError::InvalidInput(_) => ErrorCode::InvalidInput,
            ProviderError::Capacity(_) => ErrorCode::InsufficientCapacity,
            ProviderError::Unavailable(_) => ErrorCode::ProviderUnavailable,
            ProviderError::Denied(_) | ProviderError::Internal(_) => ErrorCode::ProviderError,
            ProviderError::Contract(_) => ErrorCode::GuestContract,
            ProviderError::Policy(_) => ErrorCode::PolicyError,
            ProviderError::Aborted { kind: AbortKind::Trap, .. } => ErrorCode::GuestTrap,
            ProviderError::Aborted {
                kind: AbortKind::Timeout, ..
            } => ErrorCode::GuestTimeout,
            ProviderError::Aborted {
                kind: AbortKind::Memory, ..
            } => ErrorCode::GuestMemoryLimit,
            ProviderError::Aborted { kind: AbortKind::Load, .. } => ErrorCode::GuestLoadError,
        };
        let err = HfError::new(code, p.to_string());
        match p {
            ProviderError::Aborted { provider, operation, .. } => err.with("guest", provider).with("export", operation),
            _ => err,
        }
    }
}
