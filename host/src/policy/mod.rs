//! Site policies: what HostFactory is offered (order, subset and attributes of the provider's
//! templates), decided behind one port. The core calls [`TemplatePolicy`] and never knows
//! whether a Wasm guest (`wasm`), a script or a test double answered; this module checks the
//! answer and applies the site's choice of what happens when a policy fails.

pub mod placement;
pub mod replay;
pub mod rhai;
pub mod wasm;

use crate::domain::model::{CallContext, PolicyError, Template};

/// What happens to a call when its policy fails (`policy.on_error`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnError {
    /// Log the failure with the policy's name and go on without the policy (the provider's
    /// templates as they are). The default: a broken policy never stops provisioning.
    FailOpen,
    /// Fail the call with an error naming the policy.
    FailClosed,
}

impl OnError {
    /// Parses the config spelling (`fail_open` / `fail_closed`).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "fail_open" => Some(OnError::FailOpen),
            "fail_closed" => Some(OnError::FailClosed),
            _ => None,
        }
    }
}

/// The port: a site's template policy.
pub trait TemplatePolicy {
    /// The policy's name, for logs and errors.
    fn name(&self) -> &str;
    /// The templates to offer HostFactory, best first, chosen from `templates`.
    fn offer_templates(&mut self, ctx: &CallContext, templates: &[Template]) -> Result<Vec<Template>, PolicyError>;
}

/// Builds the policy on first use, so calls that never consult it never load it.
pub type PolicyLoader<'a> = Box<dyn FnOnce() -> Result<Box<dyn TemplatePolicy + 'a>, PolicyError> + 'a>;

/// What a policy may answer: only templates the provider offered, each once, keeping the
/// required attributes, never promising more hosts than the provider.
pub fn check_offer(provided: &[Template], offer: &[Template]) -> Result<(), String> {
    let mut seen: Vec<&str> = Vec::new();
    for t in offer {
        let Some(orig) = provided.iter().find(|p| p.id == t.id) else {
            return Err(format!(
                "offered template '{}', which the provider does not have (a policy chooses among the provider's templates; it cannot invent one)",
                t.id
            ));
        };
        if seen.contains(&t.id.as_str()) {
            return Err(format!("offered template '{}' twice", t.id));
        }
        seen.push(&t.id);
        for required in ["type", "ncpus", "nram"] {
            if t.attribute(required).is_none() {
                return Err(format!("dropped the required attribute '{required}' of template '{}'", t.id));
            }
        }
        let raised = match (orig.max_number, t.max_number) {
            (_, n) if n < -1 => true,
            (-1, _) => false,
            (o, -1) => o != -1,
            (o, n) => n > o,
        };
        if raised {
            return Err(format!(
                "raised maxNumber of template '{}' from {} to {} (a policy may lower it, never raise it)",
                t.id, orig.max_number, t.max_number
            ));
        }
        if let (Some(o), Some(n)) = (orig.available_number, t.available_number)
            && n > o
        {
            return Err(format!("raised availableNumber of template '{}' from {o} to {n}", t.id));
        }
    }
    Ok(())
}

/// A policy's answer, checked: the policy's own error, or what `check` finds wrong with the
/// answer, named with the policy. The first step of every hook, live or shadow.
pub fn checked<A>(policy: &str, answer: Result<A, PolicyError>, check: impl FnOnce(&A) -> Result<(), String>) -> Result<A, PolicyError> {
    let a = answer?;
    check(&a).map_err(|message| PolicyError {
        policy: policy.to_string(),
        message,
    })?;
    Ok(a)
}

/// What a live hook does with a failed policy: fail open = `fallback()` (`instead` says what
/// that is, for the log), fail closed = the error. Logged with the policy's name either way.
pub fn or_fall_back<A>(
    answer: Result<A, PolicyError>,
    on_error: OnError,
    hook: &str,
    section: &str,
    instead: &str,
    fallback: impl FnOnce() -> A,
) -> Result<A, PolicyError> {
    match (answer, on_error) {
        (Ok(a), _) => Ok(a),
        (Err(e), OnError::FailOpen) => {
            tracing::error!(policy = %e.policy, error = %e.message, "{hook} failed; {instead} ({section}.on_error = fail_open)");
            Ok(fallback())
        }
        (Err(e), OnError::FailClosed) => {
            tracing::error!(policy = %e.policy, error = %e.message, "{hook} failed; failing the call ({section}.on_error = fail_closed)");
            Err(e)
        }
    }
}

/// Logs (as `shadow <label> ...`) and stores a shadow policy's verdict beside the live
/// decision: `answer` is the shadow's checked answer with its name, `verdict` whether it
/// agrees with the live one and how to record it, `fields` what the record holds besides
/// (time, hook, the live decision). Stored under `key` in the instance's shadow namespace,
/// the last [`SHADOW_KEEP`] under `prefix`; never acted on, never fails the call.
pub fn record_shadow<A>(
    label: &str,
    store: &dyn crate::store::StateStore,
    instance: &str,
    (prefix, key): (&str, String),
    answer: Result<(String, A), PolicyError>,
    verdict: impl FnOnce(&A) -> (bool, serde_json::Value),
    fields: serde_json::Value,
) {
    let mut record = match &answer {
        Ok((name, a)) => {
            let (same, candidate) = verdict(a);
            if same {
                tracing::info!(shadow = %name, key = %key, "shadow {label} agrees with the live one");
            } else {
                tracing::info!(shadow = %name, key = %key, "shadow {label} differs from the live one (not acted on)");
            }
            serde_json::json!({"policy": name, "same": same, "candidate": candidate})
        }
        Err(e) => {
            tracing::warn!(shadow = %e.policy, error = %e.message, key = %key, "shadow {label} failed (not acted on)");
            serde_json::json!({"policy": e.policy, "same": false, "error": e.message})
        }
    };
    if let (Some(r), serde_json::Value::Object(f)) = (record.as_object_mut(), fields) {
        r.extend(f);
    }
    if let Err(e) = keep_last(store, &shadow_namespace(instance), prefix, &key, &record.to_string(), SHADOW_KEEP) {
        tracing::warn!(error = %e, "cannot store the shadow policy's decision");
    }
}

/// Asks `policy` what to offer, checks the answer, and on failure falls back as `on_error`
/// says (logging the failure with the policy's name either way).
pub fn offer(
    policy: Result<&mut dyn TemplatePolicy, PolicyError>,
    on_error: OnError,
    ctx: &CallContext,
    templates: Vec<Template>,
) -> Result<Vec<Template>, PolicyError> {
    let answer = policy.and_then(|p| {
        let asked = p.offer_templates(ctx, &templates);
        checked(p.name(), asked, |o| check_offer(&templates, o))
    });
    if let Ok(offer) = &answer {
        tracing::debug!(offered = offer.len(), of = templates.len(), "template policy answered");
    }
    or_fall_back(
        answer,
        on_error,
        "template policy",
        "policy",
        "offering the provider's templates unchanged",
        || templates.clone(),
    )
}

/// One live template-offer decision as recorded for `hfwasm replay`: the provider's
/// templates the policy saw, and what it offered. Recorded only when either changed since
/// the last record (HostFactory asks every 30 s, mostly for the same answer).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct OfferDecision {
    /// When, epoch seconds (the policy's `now`).
    pub at: u64,
    /// The live policy's name.
    pub policy: String,
    /// The provider's templates.
    pub templates: Vec<Template>,
    /// What was offered (after the fallback, when the policy failed open).
    pub live: Vec<Template>,
}

/// Key prefix of recorded template offers (in [`placement::record_namespace`]).
pub const OFFER_PREFIX: &str = "offer/";
/// Key of the fingerprint of the last recorded offer.
const OFFER_LAST: &str = "offer-last";

/// Records `d` unless it repeats the last recorded offer, keeping the last `keep`. A
/// failure is logged, never fails the call.
pub fn record_offer(store: &dyn crate::store::StateStore, instance: &str, keep: usize, d: &OfferDecision) {
    use std::hash::{Hash, Hasher};
    let ns = placement::record_namespace(instance);
    let stored = serde_json::to_string(&(&d.policy, &d.templates, &d.live))
        .map_err(|e| e.to_string())
        .and_then(|seen| {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            seen.hash(&mut h);
            let print = format!("{:016x}", h.finish());
            // `offer-last` = "<fingerprint>/<sequence>": the sequence orders records made
            // within one second.
            let last = store.kv_get(&ns, OFFER_LAST).map_err(|e| e.to_string())?.unwrap_or_default();
            let (last_print, seq) = last.split_once('/').unwrap_or(("", "0"));
            if last_print == print {
                return Ok(());
            }
            let seq = seq.parse::<u64>().unwrap_or(0) + 1;
            let value = serde_json::to_string(d).map_err(|e| e.to_string())?;
            let key = format!("{OFFER_PREFIX}{:020}-{seq:010}-{}", d.at, uuid::Uuid::new_v4());
            keep_last(store, &ns, OFFER_PREFIX, &key, &value, keep).map_err(|e| e.to_string())?;
            store.kv_set(&ns, OFFER_LAST, &format!("{print}/{seq}")).map_err(|e| e.to_string())
        });
    if let Err(e) = stored {
        tracing::warn!(error = %e, "cannot record the template offer");
    }
}

/// Shadow decisions kept in the store (the oldest go first).
pub const SHADOW_KEEP: usize = 500;

/// The store namespace of provider instance `instance`'s shadow decisions.
pub fn shadow_namespace(instance: &str) -> String {
    crate::store::namespaces::shadow(instance)
}

fn summary(offer: &[Template]) -> serde_json::Value {
    serde_json::Value::Array(
        offer
            .iter()
            .map(|t| serde_json::json!({"id": t.id, "rank": t.attribute("rank").map(|a| a.value.clone()), "maxNumber": t.max_number}))
            .collect(),
    )
}

/// Runs `candidate` beside the live policy on the same provider templates, logs whether it
/// agrees with what was `live`ly offered, and stores the decision in the store (namespace
/// [`shadow_namespace`], the last [`SHADOW_KEEP`]). Never acted on, never fails the call.
pub fn shadow(
    candidate: Result<Box<dyn TemplatePolicy + '_>, PolicyError>,
    store: &dyn crate::store::StateStore,
    ctx: &CallContext,
    provided: &[Template],
    live: &[Template],
) {
    let answer = candidate.and_then(|mut p| {
        let name = p.name().to_string();
        checked(&name, p.offer_templates(ctx, provided), |o| check_offer(provided, o)).map(|o| (name, o))
    });
    record_shadow(
        "policy",
        store,
        &ctx.provider_instance,
        ("offer/", format!("offer/{:020}-{}", ctx.now, uuid::Uuid::new_v4())),
        answer,
        |o| (o.as_slice() == live, summary(o)),
        serde_json::json!({"at": ctx.now, "hook": "offer-templates", "live": summary(live)}),
    );
}

/// Stores `value` at `key` (if absent) and deletes the oldest entries under `prefix`
/// beyond the last `keep` (keys sort by time): the bounded logs of shadow verdicts and
/// recorded decisions.
pub fn keep_last(
    store: &dyn crate::store::StateStore,
    ns: &str,
    prefix: &str,
    key: &str,
    value: &str,
    keep: usize,
) -> Result<(), crate::store::StoreError> {
    store.kv_insert_if_absent(ns, key, value)?;
    let all = store.kv_scan(ns, prefix)?;
    for (old, _) in all.iter().take(all.len().saturating_sub(keep)) {
        store.kv_delete(ns, old)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::model::{Attribute, AttributeKind};

    fn t(id: &str, max: i32) -> Template {
        let a = |n: &str, v: &str| Attribute {
            name: n.into(),
            kind: AttributeKind::Numeric,
            value: v.into(),
        };
        Template {
            id: id.into(),
            max_number: max,
            available_number: None,
            attributes: vec![a("type", "X86_64"), a("ncpus", "2"), a("nram", "4096")],
            extra: Default::default(),
        }
    }

    struct Fixed(Result<Vec<Template>, String>);
    impl TemplatePolicy for Fixed {
        fn name(&self) -> &str {
            "fixed"
        }
        fn offer_templates(&mut self, _: &CallContext, _: &[Template]) -> Result<Vec<Template>, PolicyError> {
            self.0.clone().map_err(|message| PolicyError {
                policy: "fixed".into(),
                message,
            })
        }
    }

    fn ctx() -> CallContext {
        CallContext {
            provider_instance: "i".into(),
            settings: serde_json::json!({}),
            now: 0,
        }
    }

    #[test]
    fn offers_are_checked_against_the_provider() {
        let provided = vec![t("a", 10), t("b", -1)];
        assert!(check_offer(&provided, &[t("b", 5), t("a", 3)]).is_ok());
        assert!(check_offer(&provided, &[]).is_ok());
        let e = check_offer(&provided, &[t("zzz", 1)]).expect_err("invented");
        assert!(e.contains("'zzz'") && e.contains("does not have"), "{e}");
        assert!(
            check_offer(&provided, &[t("a", 1), t("a", 1)])
                .expect_err("twice")
                .contains("twice")
        );
        assert!(
            check_offer(&provided, &[t("a", 11)])
                .expect_err("raised")
                .contains("raised maxNumber")
        );
        assert!(
            check_offer(&provided, &[t("a", -1)])
                .expect_err("unlimited")
                .contains("raised maxNumber")
        );
        let mut bare = t("a", 1);
        bare.attributes.retain(|a| a.name != "nram");
        assert!(check_offer(&provided, &[bare]).expect_err("nram").contains("'nram'"));
    }

    #[test]
    fn shadow_decisions_are_stored_and_capped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = crate::store::SqliteStore::open(&dir.path().join("s.db")).expect("store");
        let provided = vec![t("a", 10), t("b", 10)];
        for i in 0..(SHADOW_KEEP as u64 + 5) {
            let mut c = ctx();
            c.now = 1_000 + i;
            shadow(Ok(Box::new(Fixed(Ok(vec![t("b", 10)])))), &store, &c, &provided, &provided);
        }
        let kept = crate::store::StateStore::kv_scan(&store, &shadow_namespace("i"), "offer/").expect("scan");
        assert_eq!(kept.len(), SHADOW_KEEP, "only the last {SHADOW_KEEP} are kept");
        assert!(
            kept[0].0.contains(&format!("{:020}", 1_005)),
            "the oldest went first: {}",
            kept[0].0
        );
        let r: serde_json::Value = serde_json::from_str(&kept[0].1).expect("json");
        assert_eq!((r["same"].as_bool(), r["policy"].as_str()), (Some(false), Some("fixed")));
    }

    #[test]
    fn failures_fall_back_as_configured() {
        let provided = vec![t("a", 10), t("b", 10)];
        let mut good = Fixed(Ok(vec![t("b", 10)]));
        let out = offer(Ok(&mut good), OnError::FailClosed, &ctx(), provided.clone()).expect("ok");
        assert_eq!(out.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(), ["b"]);
        let mut broken = Fixed(Err("settings.prices.a: must be a number".into()));
        let out = offer(Ok(&mut broken), OnError::FailOpen, &ctx(), provided.clone()).expect("fail open");
        assert_eq!(out, provided);
        let e = offer(Ok(&mut broken), OnError::FailClosed, &ctx(), provided.clone()).expect_err("fail closed");
        assert_eq!(e.policy, "fixed");
        let mut liar = Fixed(Ok(vec![t("c", 1)]));
        let e = offer(Ok(&mut liar), OnError::FailClosed, &ctx(), provided.clone()).expect_err("invented");
        assert!(e.message.contains("'c'"), "{e}");
        let unloadable = Err(PolicyError {
            policy: "gone".into(),
            message: "cannot read gone.wasm".into(),
        });
        assert_eq!(
            offer(unloadable, OnError::FailOpen, &ctx(), provided.clone()).expect("open"),
            provided
        );
    }
}
