//! Adversarial guest: `templates` allocates without bound, growing linear memory after
//! instantiation. The host's memory limit must stop it.
use hfwasm_guest_sdk::*;

struct MemBomb;

impl Guest for MemBomb {
    fn templates(_ctx: CallContext) -> Result<Vec<Template>, ProviderError> {
        let mut hoard: Vec<Vec<u8>> = Vec::new();
        loop {
            // 1 MiB at a time, touched so the pages are real.
            hoard.push(vec![0xA5; 1 << 20]);
            core::hint::black_box(&hoard);
        }
    }
    fn request_machines(_: CallContext, _: ProvisionRequest) -> Result<ProvisionProgress, ProviderError> {
        Err(ProviderError::Internal("membomb guest provisions nothing".into()))
    }
    fn request_status(_: CallContext, _: ProvisionRequest, _: Vec<Machine>) -> Result<ProvisionProgress, ProviderError> {
        Err(ProviderError::Internal("membomb guest provisions nothing".into()))
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

export!(MemBomb);
