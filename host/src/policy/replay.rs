//! `hfwasm replay`: a candidate policy re-run over recorded live decisions (placements,
//! [`super::placement::Decision`], and template offers, [`super::OfferDecision`]) with the
//! recorded inputs, time and draw, so the run is deterministic and touches no cloud; and the
//! decision-diff report it prints.

use std::collections::BTreeMap;

use serde::Serialize;

use super::placement::{self, Decision, PlacementPolicy};
use super::{OfferDecision, TemplatePolicy};
use crate::domain::model::CallContext;
use crate::store::{StateStore, StoreError};

/// One recorded decision, replayed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Row {
    /// When it was decided, epoch seconds.
    pub at: u64,
    /// The request.
    pub request_id: String,
    /// Its template.
    pub template_id: String,
    /// Units asked for.
    pub count: u32,
    /// The live order.
    pub live: Vec<String>,
    /// The candidate's order (none when it failed).
    pub candidate: Option<Vec<String>>,
    /// Why the candidate failed.
    pub error: Option<String>,
    /// Whether both orders are the same.
    pub same: bool,
}

/// Estimated cost per hour of first choices where a price is known.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Cost {
    /// Live first choices.
    pub live: f64,
    /// Candidate first choices.
    pub candidate: f64,
    /// Decisions left out because a first choice had no known price.
    pub unpriced: usize,
}

/// The decision-diff report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// Provider instance.
    pub instance: String,
    /// The candidate policy's name.
    pub candidate: String,
    /// Time range asked for (epoch seconds, inclusive).
    pub from: Option<u64>,
    /// See `from`.
    pub to: Option<u64>,
    /// Decisions replayed.
    pub decisions: usize,
    /// Decisions the candidate made the same way.
    pub same: usize,
    /// Decisions it made differently.
    pub differ: usize,
    /// Decisions it failed on (error, trap, fuel, a rejected answer).
    pub failed: usize,
    /// Hosts (units) by the provider chosen first: (live, candidate).
    pub hosts_by_first_choice: BTreeMap<String, (u64, u64)>,
    /// Estimated cost per hour of the first choices.
    pub cost: Cost,
    /// Every decision, in recorded order.
    pub rows: Vec<Row>,
    /// The template offers replayed, when the candidate has the template hook.
    pub offers: Option<Offers>,
}

/// One recorded template offer, replayed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OfferRow {
    /// When it was offered, epoch seconds.
    pub at: u64,
    /// Template ids the live policy offered, in order.
    pub live: Vec<String>,
    /// Template ids the candidate offered (none when it failed).
    pub candidate: Option<Vec<String>>,
    /// Why the candidate failed.
    pub error: Option<String>,
    /// Whether both offers are the same, attributes and numbers included.
    pub same: bool,
}

/// The template-offer part of the report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Offers {
    /// Offers replayed.
    pub decisions: usize,
    /// Offers the candidate made the same way.
    pub same: usize,
    /// Offers it made differently.
    pub differ: usize,
    /// Offers it failed on.
    pub failed: usize,
    /// Every offer, in recorded order.
    pub rows: Vec<OfferRow>,
}

impl Report {
    /// Whether something was replayed and the candidate failed every decision and offer:
    /// the run tells nothing about the policy, so `hfwasm replay` exits non-zero.
    pub fn all_failed(&self) -> bool {
        let (offers, offers_failed) = self.offers.as_ref().map_or((0, 0), |o| (o.decisions, o.failed));
        let total = self.decisions + offers;
        total > 0 && self.failed + offers_failed == total
    }

    /// A report of nothing replayed yet, for candidate `candidate`.
    pub fn empty(instance: &str, candidate: &str, from: Option<u64>, to: Option<u64>) -> Self {
        Report {
            instance: instance.to_string(),
            candidate: candidate.to_string(),
            from,
            to,
            decisions: 0,
            same: 0,
            differ: 0,
            failed: 0,
            hosts_by_first_choice: BTreeMap::new(),
            cost: Cost::default(),
            rows: Vec::new(),
            offers: None,
        }
    }
}

/// Recorded records under `prefix` of `instance` made within `from..=to` (by `at`), in
/// time order; `what` names them in errors.
fn load_records<T: serde::de::DeserializeOwned>(
    store: &dyn StateStore,
    instance: &str,
    prefix: &str,
    what: &str,
    at: impl Fn(&T) -> u64,
    (from, to): (Option<u64>, Option<u64>),
) -> Result<Vec<T>, StoreError> {
    let ns = placement::record_namespace(instance);
    let mut out = Vec::new();
    for (key, value) in store.kv_scan(&ns, prefix)? {
        let d: T = serde_json::from_str(&value).map_err(|e| StoreError::Corrupt {
            location: format!("kv {ns}"),
            message: format!("recorded {what} {key}: {e}"),
        })?;
        if !(from.is_some_and(|f| at(&d) < f) || to.is_some_and(|t| at(&d) > t)) {
            out.push(d);
        }
    }
    Ok(out)
}

/// Recorded placement decisions of `instance` made within `from..=to`, in time order.
pub fn load(store: &dyn StateStore, instance: &str, from: Option<u64>, to: Option<u64>) -> Result<Vec<Decision>, StoreError> {
    load_records(
        store,
        instance,
        placement::RECORD_PREFIX,
        "decision",
        |d: &Decision| d.at,
        (from, to),
    )
}

/// Recorded template offers of `instance` made within `from..=to`, in time order.
pub fn load_offers(store: &dyn StateStore, instance: &str, from: Option<u64>, to: Option<u64>) -> Result<Vec<OfferDecision>, StoreError> {
    load_records(store, instance, super::OFFER_PREFIX, "offer", |d: &OfferDecision| d.at, (from, to))
}

/// Re-runs template policy `policy` over `decisions`; `progress(done, total)` after each.
pub fn replay_offers(
    instance: &str,
    policy: &mut dyn TemplatePolicy,
    decisions: &[OfferDecision],
    mut progress: impl FnMut(usize, usize),
) -> Offers {
    let ids = |ts: &[crate::domain::model::Template]| ts.iter().map(|t| t.id.clone()).collect::<Vec<_>>();
    let mut out = Offers {
        decisions: decisions.len(),
        same: 0,
        differ: 0,
        failed: 0,
        rows: Vec::with_capacity(decisions.len()),
    };
    for (i, d) in decisions.iter().enumerate() {
        let ctx = CallContext {
            provider_instance: instance.to_string(),
            settings: serde_json::json!({}),
            now: d.at,
        };
        let answer = policy.offer_templates(&ctx, &d.templates).and_then(|offer| {
            super::check_offer(&d.templates, &offer).map_err(|message| super::PolicyError {
                policy: policy.name().to_string(),
                message,
            })?;
            Ok(offer)
        });
        let row = match answer {
            Ok(offer) => {
                let same = offer == d.live;
                if same {
                    out.same += 1;
                } else {
                    out.differ += 1;
                }
                OfferRow {
                    at: d.at,
                    live: ids(&d.live),
                    candidate: Some(ids(&offer)),
                    error: None,
                    same,
                }
            }
            Err(e) => {
                out.failed += 1;
                OfferRow {
                    at: d.at,
                    live: ids(&d.live),
                    candidate: None,
                    error: Some(e.message),
                    same: false,
                }
            }
        };
        out.rows.push(row);
        progress(i + 1, decisions.len());
    }
    out
}

/// Price per host-hour of provider `name` for decision `d`: the live policy's
/// `settings.prices` (`{provider: {template | "*": price}}`), else the candidate's numeric
/// `price` attribute.
fn price(d: &Decision, name: &str) -> Option<f64> {
    let table = d.settings.get("prices").and_then(|p| p.get(name));
    if let Some(p) = table
        .and_then(|t| t.get(&d.request.template_id).or_else(|| t.get("*")))
        .and_then(|v| v.as_f64())
    {
        return Some(p);
    }
    let c = d.candidates.iter().find(|c| c.name == name)?;
    c.template.attribute("price")?.value.trim().parse().ok()
}

/// Re-runs `policy` over `decisions`; `progress(done, total)` is called after each.
pub fn replay(
    instance: &str,
    policy: &mut dyn PlacementPolicy,
    decisions: &[Decision],
    from: Option<u64>,
    to: Option<u64>,
    mut progress: impl FnMut(usize, usize),
) -> Report {
    let mut report = Report::empty(instance, policy.name(), from, to);
    report.decisions = decisions.len();
    for (i, d) in decisions.iter().enumerate() {
        let ctx = CallContext {
            provider_instance: instance.to_string(),
            settings: serde_json::json!({}),
            now: d.at,
        };
        let answer = policy.choose_providers(&ctx, &d.request, &d.candidates).and_then(|choice| {
            placement::check_choice(&d.candidates, &choice).map_err(|message| super::PolicyError {
                policy: policy.name().to_string(),
                message,
            })?;
            Ok(choice)
        });
        let units = u64::from(d.request.count);
        if let Some(first) = d.live.first() {
            report.hosts_by_first_choice.entry(first.clone()).or_default().0 += units;
        }
        let (candidate, error, same) = match answer {
            Ok(choice) => {
                if let Some(first) = choice.first() {
                    report.hosts_by_first_choice.entry(first.clone()).or_default().1 += units;
                }
                let prices = (d.live.first().map(|n| price(d, n)), choice.first().map(|n| price(d, n)));
                match prices {
                    (Some(Some(l)), Some(Some(c))) => {
                        report.cost.live += l * units as f64;
                        report.cost.candidate += c * units as f64;
                    }
                    _ => report.cost.unpriced += 1,
                }
                let same = choice == d.live;
                (Some(choice), None, same)
            }
            Err(e) => (None, Some(e.message), false),
        };
        match (&error, same) {
            (Some(_), _) => report.failed += 1,
            (None, true) => report.same += 1,
            (None, false) => report.differ += 1,
        }
        report.rows.push(Row {
            at: d.at,
            request_id: d.request.request_id.clone(),
            template_id: d.request.template_id.clone(),
            count: d.request.count,
            live: d.live.clone(),
            candidate,
            error,
            same,
        });
        progress(i + 1, decisions.len());
    }
    report
}

/// The report for people: one line per decision, then the totals.
pub fn render(r: &Report) -> String {
    let range = |v: Option<u64>| v.map_or("*".to_string(), |t| t.to_string());
    let mut out = format!(
        "replay of {} placement decision(s) of provider instance {} ({}..{}) with candidate {}\n",
        r.decisions,
        r.instance,
        range(r.from),
        range(r.to),
        r.candidate
    );
    if r.decisions == 0 && r.offers.as_ref().is_none_or(|o| o.decisions == 0) {
        out.push_str(
            "nothing recorded in this range: is `\"recording\": {\"enabled\": true}` in the instance's config, and did calls run since?\n",
        );
    }
    if !r.rows.is_empty() {
        out.push_str(&format!(
            "{:<10} {:<42} {:<24} {:>5}  {:<32} {:<32} verdict\n",
            "at", "request", "template", "count", "live", "candidate"
        ));
    }
    for row in &r.rows {
        let cand = match (&row.candidate, &row.error) {
            (Some(c), _) => c.join(","),
            (None, _) => "-".to_string(),
        };
        let verdict = match (&row.error, row.same) {
            (Some(e), _) => format!("FAILED: {e}"),
            (None, true) => "same".to_string(),
            (None, false) => "DIFFERS".to_string(),
        };
        out.push_str(&format!(
            "{:<10} {:<42} {:<24} {:>5}  {:<32} {:<32} {verdict}\n",
            row.at,
            row.request_id,
            row.template_id,
            row.count,
            row.live.join(","),
            cand
        ));
    }
    out.push_str(&format!(
        "totals: {} decision(s): {} same, {} differ, {} failed\n",
        r.decisions, r.same, r.differ, r.failed
    ));
    out.push_str("hosts by first choice (live -> candidate):\n");
    for (name, (live, cand)) in &r.hosts_by_first_choice {
        out.push_str(&format!("  {name:<24} {live:>6} -> {cand}\n"));
    }
    out.push_str(&format!(
        "estimated cost per hour of first choices (where priced): live {:.4} -> candidate {:.4} ({} decision(s) unpriced)\n",
        r.cost.live, r.cost.candidate, r.cost.unpriced
    ));
    if let Some(o) = &r.offers {
        out.push_str(&format!("\ntemplate offers: {} replayed\n", o.decisions));
        for row in &o.rows {
            let verdict = match (&row.error, row.same) {
                (Some(e), _) => format!("FAILED: {e}"),
                (None, true) => "same".to_string(),
                (None, false) => "DIFFERS".to_string(),
            };
            out.push_str(&format!(
                "{:<10} live {} -> candidate {}  {verdict}\n",
                row.at,
                row.live.join(","),
                row.candidate.as_ref().map_or("-".to_string(), |c| c.join(","))
            ));
        }
        out.push_str(&format!(
            "offer totals: {} offer(s): {} same, {} differ, {} failed\n",
            o.decisions, o.same, o.differ, o.failed
        ));
    }
    out
}
