//! Adversarial guest: `templates` answers 200,000 templates (about 24 MiB of text), well
//! inside its memory limit. The host's answer-size limit must refuse it.

hfwasm_testing_common::adversarial_guest!(BigOutput, |_ctx| {
    Ok((0..200_000)
        .map(|i| hfwasm_guest_sdk::Template {
            id: format!("{i:0>100}"),
            max_number: 1,
            available_number: None,
            attributes: vec![
                hfwasm_guest_sdk::text("type", "X86_64"),
                hfwasm_guest_sdk::numeric("ncpus", 1),
                hfwasm_guest_sdk::numeric("nram", 1024),
            ],
            extra_json: None,
        })
        .collect())
});
