//! The placement hook: which of several providers serves a request, and in what order the
//! rest are tried when it fails (the seed's `selection_policy`). The router calls
//! [`PlacementPolicy`] and never knows whether the built-in guest, a site's Wasm guest, a
//! Rhai script or a test double answered; this module checks the answer and applies
//! `placement.on_error`.

use serde::{Deserialize, Serialize};

use super::{OnError, PolicyError};
use crate::domain::model::{CallContext, Template};
use crate::store::StateStore;

/// A provider's circuit breaker as a policy sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Circuit {
    /// Healthy.
    Closed,
    /// The next request is the trial.
    HalfOpen,
    /// Skipped by the router whatever the policy answers.
    Open,
}

impl Circuit {
    /// Lower-case spelling for scripts, logs and recordings.
    pub fn as_str(self) -> &'static str {
        match self {
            Circuit::Closed => "closed",
            Circuit::HalfOpen => "half-open",
            Circuit::Open => "open",
        }
    }
}

/// One provider that could serve a request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    /// `providers[].name`.
    pub name: String,
    /// `providers[].type`.
    pub kind: String,
    /// `providers[].priority` (lower first).
    pub priority: u32,
    /// `providers[].weight`.
    pub weight: u32,
    /// `providers[].config.cost_threshold`.
    pub cost_threshold: Option<f64>,
    /// Its breaker's state.
    pub circuit: Circuit,
    /// The template as this provider offers it.
    pub template: Template,
}

/// What is being placed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    /// HostFactory request id.
    pub request_id: String,
    /// Template asked for.
    pub template_id: String,
    /// Hosts (units) asked for.
    pub count: u32,
    /// Uniform random number derived from the request id ([`draw`]).
    pub draw: u64,
}

/// The port: a site's placement policy.
pub trait PlacementPolicy {
    /// The policy's name, for logs and errors.
    fn name(&self) -> &str;
    /// Provider names to try, first choice first: a subset of `candidates`.
    fn choose_providers(&mut self, ctx: &CallContext, request: &Placement, candidates: &[Candidate]) -> Result<Vec<String>, PolicyError>;
}

/// Builds the placement policy on first use (only requestMachines with several providers needs it).
pub type PlacementLoader<'a> = Box<dyn FnOnce() -> Result<Box<dyn PlacementPolicy + 'a>, PolicyError> + 'a>;

/// One live placement decision as recorded for `hfwasm replay`: everything the policy saw
/// (request, candidates, time, its settings) and what it decided.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    /// When, epoch seconds (the policy's `now`).
    pub at: u64,
    /// The live policy's name.
    pub policy: String,
    /// The live policy's settings (prices for cost estimates come from here).
    pub settings: serde_json::Value,
    /// The request.
    pub request: Placement,
    /// The candidates it was offered.
    pub candidates: Vec<Candidate>,
    /// Its answer (after the fallback, when it failed open).
    pub live: Vec<String>,
}

/// The store namespace of provider instance `instance`'s recorded decisions.
pub fn record_namespace(instance: &str) -> String {
    crate::store::namespaces::record(instance)
}

/// Key prefix of recorded placement decisions.
pub const RECORD_PREFIX: &str = "placement/";

/// Records `d` (key: time, then request id, so a scan is in time order), keeping the last
/// `keep`. A failure is logged, never fails the request.
pub fn record(store: &dyn StateStore, instance: &str, keep: usize, d: &Decision) {
    let ns = record_namespace(instance);
    let key = format!("{RECORD_PREFIX}{:020}-{}", d.at, d.request.request_id);
    let stored = serde_json::to_string(d)
        .map_err(|e| e.to_string())
        .and_then(|v| super::keep_last(store, &ns, RECORD_PREFIX, &key, &v, keep).map_err(|e| e.to_string()));
    if let Err(e) = stored {
        tracing::warn!(error = %e, request_id = %d.request.request_id, "cannot record the placement decision");
    }
}

/// The request's random draw: SplitMix64 over an FNV-1a hash of its id. Request ids are
/// random, so draws are uniform across requests; the same id always draws the same number,
/// so a recorded decision replays the same way.
pub fn draw(request_id: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in request_id.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let mut z = h.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Candidates by priority (stable: ties keep config order): the order when there is no
/// policy answer to follow.
pub fn by_priority(candidates: &[Candidate]) -> Vec<String> {
    let mut v: Vec<&Candidate> = candidates.iter().collect();
    v.sort_by_key(|c| c.priority);
    v.into_iter().map(|c| c.name.clone()).collect()
}

/// What a policy may answer: only candidates, each once.
pub fn check_choice(candidates: &[Candidate], choice: &[String]) -> Result<(), String> {
    let mut seen: Vec<&str> = Vec::new();
    for name in choice {
        if !candidates.iter().any(|c| &c.name == name) {
            return Err(format!(
                "chose provider '{name}', which is not a candidate for this request (candidates: {})",
                candidates.iter().map(|c| c.name.as_str()).collect::<Vec<_>>().join(", ")
            ));
        }
        if seen.contains(&name.as_str()) {
            return Err(format!("chose provider '{name}' twice"));
        }
        seen.push(name);
    }
    Ok(())
}

/// Asks `policy` for the order, checks it, and on failure falls back as `on_error` says:
/// fail open = every candidate by priority (logged with the policy's name).
pub fn choose(
    policy: Result<&mut dyn PlacementPolicy, PolicyError>,
    on_error: OnError,
    ctx: &CallContext,
    request: &Placement,
    candidates: &[Candidate],
) -> Result<Vec<String>, PolicyError> {
    let answer = policy.and_then(|p| {
        let asked = p.choose_providers(ctx, request, candidates);
        super::checked(p.name(), asked, |c| check_choice(candidates, c))
    });
    super::or_fall_back(
        answer,
        on_error,
        "placement policy",
        "placement",
        &format!("trying providers by priority for request {}", request.request_id),
        || by_priority(candidates),
    )
}

/// Runs `candidate` beside the live placement on the same request and candidates, logs
/// whether it agrees with the `live` order, and stores the verdict (kv
/// `hfwasm.shadow/<instance>`, keys `placement/...`, the last [`super::SHADOW_KEEP`]).
/// Never acted on, never fails the request.
pub fn shadow(
    candidate: Result<&mut dyn PlacementPolicy, PolicyError>,
    store: &dyn StateStore,
    ctx: &CallContext,
    request: &Placement,
    candidates: &[Candidate],
    live: &[String],
) {
    let answer = candidate.and_then(|p| {
        let name = p.name().to_string();
        super::checked(&name, p.choose_providers(ctx, request, candidates), |c| check_choice(candidates, c)).map(|c| (name, c))
    });
    super::record_shadow(
        "placement",
        store,
        &ctx.provider_instance,
        ("placement/", format!("placement/{:020}-{}", ctx.now, request.request_id)),
        answer,
        |c| (c.as_slice() == live, serde_json::json!(c)),
        serde_json::json!({"at": ctx.now, "hook": "choose-providers", "request_id": request.request_id, "live": live}),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(name: &str, priority: u32) -> Candidate {
        Candidate {
            name: name.into(),
            kind: "aws".into(),
            priority,
            weight: 1,
            cost_threshold: None,
            circuit: Circuit::Closed,
            template: Template {
                id: "t".into(),
                max_number: 10,
                available_number: None,
                attributes: Vec::new(),
                extra: Default::default(),
            },
        }
    }

    struct Fixed(Vec<String>);
    impl PlacementPolicy for Fixed {
        fn name(&self) -> &str {
            "fixed"
        }
        fn choose_providers(&mut self, _: &CallContext, _: &Placement, _: &[Candidate]) -> Result<Vec<String>, PolicyError> {
            Ok(self.0.clone())
        }
    }

    #[test]
    fn answers_are_checked_and_failures_fall_back_by_priority() {
        let cands = [c("b", 2), c("a", 1), c("c", 2)];
        assert_eq!(by_priority(&cands), ["a", "b", "c"]);
        let ctx = CallContext {
            provider_instance: "i".into(),
            settings: serde_json::json!({}),
            now: 0,
        };
        let req = Placement {
            request_id: "req-1".into(),
            template_id: "t".into(),
            count: 1,
            draw: draw("req-1"),
        };
        let mut good = Fixed(vec!["c".into()]);
        assert_eq!(choose(Ok(&mut good), OnError::FailClosed, &ctx, &req, &cands).expect("ok"), ["c"]);
        let mut liar = Fixed(vec!["zzz".into()]);
        let e = choose(Ok(&mut liar), OnError::FailClosed, &ctx, &req, &cands).expect_err("invented");
        assert!(e.message.contains("'zzz'") && e.message.contains("not a candidate"), "{e}");
        assert_eq!(
            choose(Ok(&mut liar), OnError::FailOpen, &ctx, &req, &cands).expect("open"),
            ["a", "b", "c"]
        );
        let mut twice = Fixed(vec!["a".into(), "a".into()]);
        assert!(check_choice(&cands, &twice.0).is_err());
        assert!(choose(Ok(&mut twice), OnError::FailClosed, &ctx, &req, &cands).is_err());
    }

    #[test]
    fn draws_are_stable_and_spread() {
        assert_eq!(draw("req-1"), draw("req-1"));
        assert_ne!(draw("req-1"), draw("req-2"));
        let ids: Vec<String> = (0..4000).map(|i| format!("req-{i}")).collect();
        let low = ids.iter().filter(|id| draw(id).is_multiple_of(4)).count();
        assert!((800..1200).contains(&low), "a quarter expected, got {low} of 4000");
    }
}
