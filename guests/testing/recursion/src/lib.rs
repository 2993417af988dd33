//! Adversarial guest: `templates` recurses without bound. The host's wasm stack limit must
//! stop it with a trap, not crash the host.

/// Frames live on the wasm stack (no address-taken locals, so nothing goes to the shadow
/// stack in linear memory): this exhausts the host's `max_wasm_stack`.
#[inline(never)]
#[allow(unconditional_recursion)] // the whole point of this guest
fn deeper(n: u64) -> u64 {
    // Not a tail call: the addition happens after the recursive call returns.
    core::hint::black_box(deeper(core::hint::black_box(n + 1))) + n
}

hfwasm_testing_common::adversarial_guest!(Recursion, |_ctx| {
    let n = deeper(0);
    Err(hfwasm_guest_sdk::ProviderError::Internal(format!(
        "unreachable: recursion returned {n}"
    )))
});
