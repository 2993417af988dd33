//! Guests built into the binary (compiled from `guests/` by `host/build.rs`), so hfwasm
//! works on its embedded defaults with no `.wasm` files installed.

/// Name of the built-in on-prem pool guest.
pub const BUILTIN_ONPREM: &str = "builtin:onprem";
/// Name of the built-in AWS guest.
pub const BUILTIN_AWS: &str = "builtin:aws";
/// Name of the built-in Azure guest.
pub const BUILTIN_AZURE: &str = "builtin:azure";
/// Name of the built-in template policy guest (cheapest CPU first).
pub const BUILTIN_DEFAULT_POLICY: &str = "builtin:default-policy";

/// The on-prem pool provider guest (`builtin:onprem`).
pub static ONPREM: &[u8] = include_bytes!(concat!(env!("HFWASM_GUEST_DIR"), "/hfwasm_guest_onprem.wasm"));

/// The AWS provider guest (`builtin:aws`).
pub static AWS: &[u8] = include_bytes!(concat!(env!("HFWASM_GUEST_DIR"), "/hfwasm_guest_aws.wasm"));

/// The Azure provider guest (`builtin:azure`), over the `http` capability.
pub static AZURE: &[u8] = include_bytes!(concat!(env!("HFWASM_GUEST_DIR"), "/hfwasm_guest_azure.wasm"));

/// The default template policy guest (`builtin:default-policy`).
pub static DEFAULT_POLICY: &[u8] = include_bytes!(concat!(env!("HFWASM_GUEST_DIR"), "/hfwasm_guest_default_policy.wasm"));

// ONPREM_SHA256, AWS_SHA256, AZURE_SHA256, DEFAULT_POLICY_SHA256, computed by build.rs.
include!(concat!(env!("OUT_DIR"), "/builtin_digests.rs"));

/// Bytes of the built-in guest `name` (`builtin:onprem`).
pub fn bytes(name: &str) -> Option<&'static [u8]> {
    match name {
        BUILTIN_ONPREM => Some(ONPREM),
        BUILTIN_AWS => Some(AWS),
        BUILTIN_AZURE => Some(AZURE),
        BUILTIN_DEFAULT_POLICY => Some(DEFAULT_POLICY),
        _ => None,
    }
}

/// The sha256 of `wasm` when it is (the very bytes of) a built-in guest: computed at build
/// time, so finding a built-in guest's precompiled code hashes nothing.
pub fn digest(wasm: &[u8]) -> Option<[u8; 32]> {
    [
        (ONPREM, ONPREM_SHA256),
        (AWS, AWS_SHA256),
        (AZURE, AZURE_SHA256),
        (DEFAULT_POLICY, DEFAULT_POLICY_SHA256),
    ]
    .into_iter()
    .find(|(b, _)| std::ptr::eq(*b, wasm))
    .map(|(_, d)| d)
}

#[cfg(test)]
mod tests {
    use sha2::{Digest, Sha256};

    #[test]
    fn build_time_digests_are_the_sha256_of_the_embedded_bytes() {
        for (bytes, digest) in [
            (super::ONPREM, super::ONPREM_SHA256),
            (super::AWS, super::AWS_SHA256),
            (super::AZURE, super::AZURE_SHA256),
            (super::DEFAULT_POLICY, super::DEFAULT_POLICY_SHA256),
        ] {
            assert_eq!(Sha256::digest(bytes).as_slice(), digest);
            assert_eq!(super::digest(bytes), Some(digest));
        }
        // Equal bytes elsewhere (a site's copy of a built-in guest) are hashed, not trusted.
        let copy: Vec<u8> = super::AWS.into();
        assert_eq!(super::digest(&copy), None);
    }
}
