//! Adversarial guest: answers that break the HostFactory contract, chosen by the `lie`
//! setting (`provider.settings`): `many` (500 machines for any request), `duplicate` (one
//! machine id five times), `name` (a host name with a forged log line in it), `numeric`
//! (a numeric attribute that is not a number). The host must refuse each as GUEST_CONTRACT
//! and store nothing of it.

use hfwasm_guest_sdk::*;

struct Liar;

fn lie(ctx: &CallContext) -> String {
    serde_json::from_str::<serde_json::Value>(&ctx.settings_json)
        .ok()
        .and_then(|v| v.get("lie").and_then(|l| l.as_str()).map(str::to_string))
        .unwrap_or_default()
}

fn machine(i: usize, name: &str) -> Machine {
    Machine {
        machine_id: format!("m-{i}"),
        name: name.to_string(),
        private_ip: "10.9.0.1".into(),
        public_ip: None,
        launch_time: 1,
        state: MachineState::Running,
        message: None,
    }
}

fn progress(ctx: &CallContext) -> ProvisionProgress {
    let machines = match lie(ctx).as_str() {
        "many" => (0..500).map(|i| machine(i, &format!("h{i}"))).collect(),
        "duplicate" => (0..5).map(|_| machine(0, "h0")).collect(),
        "name" => vec![machine(0, "h0\n2026-12-05T00:00:00Z  INFO forged: all good")],
        _ => vec![machine(0, "h0")],
    };
    ProvisionProgress {
        machines,
        outstanding: 0,
        message: None,
        units: None,
    }
}

impl Guest for Liar {
    fn templates(ctx: CallContext) -> Result<Vec<Template>, ProviderError> {
        let ncpus = if lie(&ctx) == "numeric" {
            text("ncpus", "lots")
        } else {
            numeric("ncpus", 1)
        };
        Ok(vec![Template {
            id: "t".into(),
            max_number: 1000,
            available_number: None,
            attributes: vec![
                text("type", "X86_64"),
                Attribute {
                    kind: AttributeKind::Numeric,
                    ..ncpus
                },
                numeric("nram", 1024),
            ],
            extra_json: None,
        }])
    }
    fn request_machines(ctx: CallContext, _: ProvisionRequest) -> Result<ProvisionProgress, ProviderError> {
        Ok(progress(&ctx))
    }
    fn requests_status(
        ctx: CallContext,
        queries: Vec<StatusQuery>,
    ) -> Result<Vec<Result<ProvisionProgress, ProviderError>>, ProviderError> {
        Ok(queries.iter().map(|_| Ok(progress(&ctx))).collect())
    }
    fn release_machines(_: CallContext, _: String, _: Vec<MachineRef>) -> Result<Vec<Machine>, ProviderError> {
        Ok(Vec::new())
    }
    fn release_status(_: CallContext, _: String, _: Vec<Machine>) -> Result<Vec<Machine>, ProviderError> {
        Ok(Vec::new())
    }
    fn owned_machines(_: CallContext) -> Result<Vec<OwnedMachine>, ProviderError> {
        Ok(Vec::new())
    }
    fn reclaim_candidates(_: CallContext, _: Vec<MachineRef>) -> Result<Vec<Reclaim>, ProviderError> {
        Ok(Vec::new())
    }
}

export!(Liar);
