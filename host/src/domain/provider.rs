//! The provider port: what the core needs of whatever makes and releases machines (a Wasm
//! guest in production, a double in tests; the core cannot tell).

use super::model::*;

/// What the core needs of a provider, one method per provider operation.
pub trait Provider {
    /// Templates on offer.
    fn templates(&mut self, ctx: &CallContext) -> Result<Vec<Template>, ProviderError>;
    /// Start provisioning a recorded request.
    fn request_machines(&mut self, ctx: &CallContext, req: &ProvisionRequest) -> Result<ProvisionProgress, ProviderError>;
    /// Progress of open provision requests, one answer per query in query order; the outer
    /// error fails the whole batch.
    fn requests_status(
        &mut self,
        ctx: &CallContext,
        queries: &[StatusQuery],
    ) -> Result<Vec<Result<ProvisionProgress, ProviderError>>, ProviderError>;
    /// Start releasing machines under a recorded return request.
    fn release_machines(&mut self, ctx: &CallContext, return_id: &str, machines: &[MachineRef]) -> Result<Vec<Machine>, ProviderError>;
    /// Progress of an open return request.
    fn release_status(&mut self, ctx: &CallContext, return_id: &str, known: &[Machine]) -> Result<Vec<Machine>, ProviderError>;
    /// Every live machine the provider made, with its request (for the orphan scan).
    fn owned_machines(&mut self, ctx: &CallContext) -> Result<Vec<OwnedMachine>, ProviderError>;
    /// Hosts HostFactory lists that the provider wants back.
    fn reclaim_candidates(&mut self, ctx: &CallContext, machines: &[MachineRef]) -> Result<Vec<Reclaim>, ProviderError>;
}

/// Builds the provider on first use, so calls that need none (status of finished or
/// unknown requests) never load a guest.
pub type ProviderLoader<'a> = Box<dyn FnOnce() -> Result<Box<dyn Provider + 'a>, ProviderError> + 'a>;
