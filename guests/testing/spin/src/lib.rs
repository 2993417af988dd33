//! Adversarial guest: `templates` never returns. The host's epoch deadline must stop it.

hfwasm_testing_common::adversarial_guest!(Spin, |_ctx| {
    let mut n: u64 = 0;
    loop {
        n = n.wrapping_add(1);
        // Keep the loop observable so the optimiser cannot remove it.
        core::hint::black_box(n);
    }
});
