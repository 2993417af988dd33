//! Adversarial guest: `templates` answers 200,000 templates (about 24 MiB of text), well
//! inside its memory limit. The host's answer-size limit must refuse it.

hfwasm_testing_common::adversarial_guest!(BigOutput, |_ctx| {
    Ok((0..200_000)
        .map(|i| hfwasm_testing_common::template(&format!("{i:0>100}"), None))
        .collect())
});
