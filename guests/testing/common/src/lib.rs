//! The adversarial test guests differ only in their `templates` export; this macro writes
//! the rest (harmless answers) and exports the guest.

/// A minimal valid template named `id`, with `extra_json` as its extra keys.
pub fn template(id: &str, extra_json: Option<String>) -> hfwasm_guest_sdk::Template {
    hfwasm_guest_sdk::Template {
        id: id.into(),
        max_number: 1,
        available_number: Some(1),
        attributes: vec![
            hfwasm_guest_sdk::text("type", "X86_64"),
            hfwasm_guest_sdk::numeric("ncpus", 1),
            hfwasm_guest_sdk::numeric("nram", 1024),
        ],
        extra_json,
    }
}

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
