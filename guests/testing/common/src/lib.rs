//! The adversarial test guests differ only in their `templates` export; this macro writes
//! the rest (harmless answers) and exports the guest.

/// `adversarial_guest!(Name, |ctx| body)`: a provider guest whose `templates` runs `body`.
#[macro_export]
macro_rules! adversarial_guest {
    ($name:ident, |$ctx:ident| $templates:block) => {
        struct $name;

        impl hfwasm_guest_sdk::Guest for $name {
            fn templates($ctx: hfwasm_guest_sdk::CallContext) -> Result<Vec<hfwasm_guest_sdk::Template>, hfwasm_guest_sdk::ProviderError> $templates
            fn request_machines(
                _: hfwasm_guest_sdk::CallContext,
                _: hfwasm_guest_sdk::ProvisionRequest,
            ) -> Result<hfwasm_guest_sdk::ProvisionProgress, hfwasm_guest_sdk::ProviderError> {
                Err(hfwasm_guest_sdk::ProviderError::Internal("test guest provisions nothing".into()))
            }
            fn requests_status(
                _: hfwasm_guest_sdk::CallContext,
                _: Vec<hfwasm_guest_sdk::StatusQuery>,
            ) -> Result<Vec<Result<hfwasm_guest_sdk::ProvisionProgress, hfwasm_guest_sdk::ProviderError>>, hfwasm_guest_sdk::ProviderError> {
                Err(hfwasm_guest_sdk::ProviderError::Internal("test guest provisions nothing".into()))
            }
            fn release_machines(
                _: hfwasm_guest_sdk::CallContext,
                _: String,
                _: Vec<hfwasm_guest_sdk::MachineRef>,
            ) -> Result<Vec<hfwasm_guest_sdk::Machine>, hfwasm_guest_sdk::ProviderError> {
                Ok(Vec::new())
            }
            fn release_status(
                _: hfwasm_guest_sdk::CallContext,
                _: String,
                _: Vec<hfwasm_guest_sdk::Machine>,
            ) -> Result<Vec<hfwasm_guest_sdk::Machine>, hfwasm_guest_sdk::ProviderError> {
                Ok(Vec::new())
            }
            fn owned_machines(
                _: hfwasm_guest_sdk::CallContext,
            ) -> Result<Vec<hfwasm_guest_sdk::OwnedMachine>, hfwasm_guest_sdk::ProviderError> {
                Ok(Vec::new())
            }
            fn reclaim_candidates(
                _: hfwasm_guest_sdk::CallContext,
                _: Vec<hfwasm_guest_sdk::MachineRef>,
            ) -> Result<Vec<hfwasm_guest_sdk::Reclaim>, hfwasm_guest_sdk::ProviderError> {
                Ok(Vec::new())
            }
        }

        hfwasm_guest_sdk::export!($name);
    };
}
