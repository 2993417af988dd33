//! Adversarial guest: `templates` recurses without bound. The host's wasm stack limit must
//! stop it with a trap, not crash the host.
use hfwasm_guest_sdk::*;

struct Recursion;

/// Frames live on the wasm stack (no address-taken locals, so nothing goes to the shadow
/// stack in linear memory): this exhausts the host's `max_wasm_stack`.
#[inline(never)]
fn deeper(n: u64) -> u64 {
    // Not a tail call: the addition happens after the recursive call returns.
    core::hint::black_box(deeper(core::hint::black_box(n + 1))) + n
}

impl Guest for Recursion {
    fn templates(_ctx: CallContext) -> Result<Vec<Template>, ProviderError> {
        let n = deeper(0);
        Err(ProviderError::Internal(format!("unreachable: recursion returned {n}")))
    }
    fn request_machines(_: CallContext, _: ProvisionRequest) -> Result<ProvisionProgress, ProviderError> {
        Err(ProviderError::Internal("recursion guest provisions nothing".into()))
    }
    fn request_status(_: CallContext, _: ProvisionRequest, _: Vec<Machine>) -> Result<ProvisionProgress, ProviderError> {
        Err(ProviderError::Internal("recursion guest provisions nothing".into()))
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

export!(Recursion);
