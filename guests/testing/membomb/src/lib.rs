//! Adversarial guest: `templates` allocates without bound, growing linear memory after
//! instantiation. The host's memory limit must stop it.

hfwasm_testing_common::adversarial_guest!(MemBomb, |_ctx| {
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        // 1 MiB at a time, touched so the pages are real.
        hoard.push(vec![0xA5; 1 << 20]);
        core::hint::black_box(&hoard);
    }
});
