//! Adversarial guest: `templates` never returns. The host's epoch deadline must stop it.
use hfwasm_guest_sdk::*;

struct Spin;

impl Guest for Spin {
    fn templates(_ctx: CallContext) -> Result<Vec<Template>, ProviderError> {
        let mut n: u64 = 0;
        loop {
            n = n.wrapping_add(1);
            // Keep the loop observable so the optimiser cannot remove it.
            core::hint::black_box(n);
        }
    }
    fn request_machines(_: CallContext, _: ProvisionRequest) -> Result<ProvisionProgress, ProviderError> {
        Err(ProviderError::Internal("spin guest provisions nothing".into()))
    }
    fn request_status(_: CallContext, _: ProvisionRequest, _: Vec<Machine>) -> Result<ProvisionProgress, ProviderError> {
        Err(ProviderError::Internal("spin guest provisions nothing".into()))
    }
    fn release_machines(_: CallContext, _: String, _: Vec<MachineRef>) -> Result<Vec<Machine>, ProviderError> {
        Ok(Vec::new())
    }
    fn release_status(_: CallContext, _: String, _: Vec<Machine>) -> Result<Vec<Machine>, ProviderError> {
        Ok(Vec::new())
    }
    fn reclaim_candidates(_: CallContext, _: Vec<MachineRef>) -> Result<Vec<Reclaim>, ProviderError> {
        Ok(Vec::new())
    }
}

export!(Spin);
