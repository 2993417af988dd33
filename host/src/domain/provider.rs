//! The provider port: what the core needs of whatever makes and releases machines (a Wasm
//! guest in production, a double in tests; the core cannot tell).

use super::model::*;

/// The circuits a reconciler probed: (provider, Ok when it answered, else why not).
pub type Probed = Vec<(String, Result<(), String>)>;

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
    /// Probes the providers behind it whose circuits are due a trial (a composite of
    /// several providers, each with its own breaker); (provider, outcome) of each probed.
    /// A single provider's breaker is the service's, so by default there is nothing here.
    fn probe_circuits(&mut self, _ctx: &CallContext) -> Result<Probed, ProviderError> {
        Ok(Vec::new())
    }
}

/// Builds the provider on first use, so calls that need none (status of finished or
/// unknown requests) never load a guest.
pub type ProviderLoader<'a> = Box<dyn FnOnce() -> Result<Box<dyn Provider + 'a>, ProviderError> + 'a>;

/// A provider built on first use from its loader: the service and the router both hold
/// their providers this way, so a call that needs none never loads a guest.
pub struct LazyProvider<'a> {
    name: String,
    loader: Option<ProviderLoader<'a>>,
    loaded: Option<Box<dyn Provider + 'a>>,
}

impl<'a> LazyProvider<'a> {
    /// Provider `name` (for errors), to be built by `loader`.
    pub fn new(name: &str, loader: ProviderLoader<'a>) -> Self {
        Self {
            name: name.to_string(),
            loader: Some(loader),
            loaded: None,
        }
    }

    /// The provider, loaded now if not yet; a load that failed earlier in the call is not
    /// tried again.
    pub fn get(&mut self) -> Result<&mut (dyn Provider + 'a), ProviderError> {
        if self.loaded.is_none() {
            let loader = self
                .loader
                .take()
                .ok_or_else(|| ProviderError::Internal(format!("provider '{}' failed to load earlier in this call", self.name)))?;
            self.loaded = Some(loader()?);
        }
        match self.loaded.as_deref_mut() {
            Some(p) => Ok(p),
            None => Err(ProviderError::Internal(format!("provider '{}' missing after load", self.name))),
        }
    }
}

/// A batch answer as one answer per query, in query order: a batch that failed, or that
/// answered a different number of queries, fails each query with the reason (`who` names
/// the provider).
pub fn one_answer_each<T>(
    who: &str,
    queries: usize,
    batch: Result<Vec<Result<T, ProviderError>>, ProviderError>,
) -> Vec<Result<T, ProviderError>> {
    let e = match batch {
        Ok(list) if list.len() == queries => return list,
        Ok(list) => ProviderError::Internal(format!(
            "{who}: requests-status answered {} of {queries} queries; each query needs exactly one answer, in order",
            list.len()
        )),
        Err(e) => e,
    };
    (0..queries).map(|_| Err(e.clone())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_of_the_wrong_length_fails_every_query_and_a_right_one_passes() {
        let ok: Result<Vec<Result<u32, ProviderError>>, ProviderError> = Ok(vec![Ok(1), Ok(2)]);
        assert_eq!(one_answer_each("p", 2, ok.clone()), vec![Ok(1), Ok(2)]);
        let short = one_answer_each("p", 3, ok);
        assert_eq!(short.len(), 3);
        assert!(
            short
                .iter()
                .all(|a| matches!(a, Err(ProviderError::Internal(m)) if m.contains("answered 2 of 3")))
        );
        let failed = one_answer_each::<u32>("p", 2, Err(ProviderError::Unavailable("down".into())));
        assert_eq!(failed, vec![Err(ProviderError::Unavailable("down".into())); 2]);
    }
}
