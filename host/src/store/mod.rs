//! Durable state: requests, their machines, and guests' kv entries. One trait, backends
//! chosen by config; the service layer never knows which one it talks to.

pub mod sqlite;

use crate::service::lifecycle::RequestStatus;
use crate::service::model::Machine;

pub use sqlite::{SqliteStore, Synchronous};

/// Provision or return.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    /// requestMachines.
    Provision,
    /// requestReturnMachines.
    Return,
}

impl RequestKind {
    /// Store spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            RequestKind::Provision => "provision",
            RequestKind::Return => "return",
        }
    }
}

/// How far the provider got with a request: the write-ahead record is `Accepted` before the
/// provider acts, `Submitted` once its answer is stored. An `Accepted` record found later
/// means a crash in between, and the next status call resumes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Recorded; the provider has not (durably) acted yet.
    Accepted,
    /// The provider acted and its answer is stored.
    Submitted,
}

impl Phase {
    /// Store spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Accepted => "accepted",
            Phase::Submitted => "submitted",
        }
    }
}

/// One request as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    /// Request id (`req-…` or `ret-…`).
    pub id: String,
    /// Provision or return.
    pub kind: RequestKind,
    /// Template (provision only).
    pub template_id: Option<String>,
    /// Units requested (provision) or hosts to return.
    pub count: u32,
    /// LSF `rc_account`.
    pub rc_account: Option<String>,
    /// Write-ahead phase.
    pub phase: Phase,
    /// Last derived HostFactory status.
    pub status: RequestStatus,
    /// Units the provider still seeks.
    pub outstanding: u32,
    /// Message for HostFactory.
    pub message: Option<String>,
    /// Creation time, epoch seconds.
    pub created_at: u64,
    /// Last change, epoch seconds.
    pub updated_at: u64,
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be opened, read or written.
    #[error("state store {location}: {message}")]
    Backend {
        /// Where the store lives (file path, database URL without password).
        location: String,
        /// What failed.
        message: String,
    },
    /// The store was written by a newer hfwasm.
    #[error(
        "state store {location} has schema version {found}, but this hfwasm knows up to {known}; upgrade hfwasm or point it at another store"
    )]
    SchemaTooNew {
        /// Where the store lives.
        location: String,
        /// Version found.
        found: i64,
        /// Newest version this binary knows.
        known: i64,
    },
    /// A stored row could not be understood.
    #[error("state store {location}: corrupt record: {message}")]
    Corrupt {
        /// Where the store lives.
        location: String,
        /// What is wrong.
        message: String,
    },
}

/// The one interface to durable state. Every method is one transaction.
pub trait StateStore: Send + Sync {
    /// Records a new request and its initial machines (write-ahead, before any provider acts).
    fn insert_request(&self, rec: &RequestRecord, machines: &[Machine]) -> Result<(), StoreError>;
    /// The request `id`, if known.
    fn request(&self, id: &str) -> Result<Option<RequestRecord>, StoreError>;
    /// The machines of request `id`, in the order first recorded.
    fn machines(&self, request_id: &str) -> Result<Vec<Machine>, StoreError>;
    /// Stores a request's new state and machines; rows that did not change are not rewritten.
    fn update_request(&self, rec: &RequestRecord, machines: &[Machine]) -> Result<(), StoreError>;
    /// Requests still `Accepted` (recorded, never answered) created before `before`: their
    /// process died between the write-ahead record and its answer.
    fn stale_requests(&self, before: u64) -> Result<Vec<RequestRecord>, StoreError>;
    /// Provision requests holding machines named `name` (newest first).
    fn provision_holders(&self, name: &str) -> Result<Vec<(String, Machine)>, StoreError>;

    /// kv: value of `key` in `namespace`.
    fn kv_get(&self, namespace: &str, key: &str) -> Result<Option<String>, StoreError>;
    /// kv: set `key`.
    fn kv_set(&self, namespace: &str, key: &str, value: &str) -> Result<(), StoreError>;
    /// kv: set `key` only if absent; true when stored. Atomic across processes.
    fn kv_insert_if_absent(&self, namespace: &str, key: &str, value: &str) -> Result<bool, StoreError>;
    /// kv: delete `key` only while it holds `expected`; true when deleted.
    fn kv_delete_if_equals(&self, namespace: &str, key: &str, expected: &str) -> Result<bool, StoreError>;
    /// kv: delete `key`.
    fn kv_delete(&self, namespace: &str, key: &str) -> Result<(), StoreError>;
    /// kv: all entries whose key starts with `prefix`, in key order.
    fn kv_scan(&self, namespace: &str, prefix: &str) -> Result<Vec<(String, String)>, StoreError>;
}
