//! The seed's selection policies, as the built-in placement hook. Settings:
//! `{"selection_policy": "PRIORITY_FAILOVER" | "COST_OPTIMIZED" | "WEIGHTED",
//!   "prices": {"<provider>": {"<templateId>" | "*": <per host-hour>}}}`.
//!
//! - PRIORITY_FAILOVER (the default): by `priority`, lowest first.
//! - COST_OPTIMIZED: by price, cheapest first (a price from `prices`, else the template's
//!   numeric `price` attribute); providers whose price is above their `cost_threshold` are
//!   left out; providers of unknown price come after the priced ones; ties by priority.
//! - WEIGHTED: the first provider is drawn with probability weight / (sum of the weights of
//!   providers whose circuit is not open), using the host's `draw`; the rest follow by
//!   priority, as failover targets.

use serde_json::Value;

use crate::DefaultPolicy;
use crate::exports::hostfactory::policy::placement::{Candidate, Circuit, Guest, PlacementContext, PlacementRequest};

/// The seed's selection policy names this guest implements.
const POLICIES: [&str; 3] = ["PRIORITY_FAILOVER", "COST_OPTIMIZED", "WEIGHTED"];

/// `c`'s price per host-hour for `template_id`, when known.
fn price(prices: Option<&serde_json::Map<String, Value>>, c: &Candidate, template_id: &str) -> Result<Option<f64>, String> {
    if let Some(table) = prices.and_then(|p| p.get(&c.name)) {
        let Value::Object(table) = table else {
            return Err(format!(
                "settings.prices.{}: must be an object of templateId (or \"*\") -> price",
                c.name
            ));
        };
        if let Some(v) = table.get(template_id).or_else(|| table.get("*")) {
            return match v.as_f64() {
                Some(n) if n >= 0.0 => Ok(Some(n)),
                _ => Err(format!("settings.prices.{}: prices must be non-negative numbers, not {v}", c.name)),
            };
        }
    }
    match c.attributes.iter().find(|(name, _)| name == "price") {
        None => Ok(None),
        Some((_, value)) => value.trim().parse::<f64>().map(Some).map_err(|_| {
            format!(
                "provider '{}': template '{template_id}' has a price attribute that is not a number: '{value}'",
                c.name
            )
        }),
    }
}

impl Guest for DefaultPolicy {
    fn choose_providers(ctx: PlacementContext, request: PlacementRequest, candidates: Vec<Candidate>) -> Result<Vec<String>, String> {
        let settings = crate::settings(&ctx.settings_json)?;
        let policy = match settings.get("selection_policy") {
            None => "PRIORITY_FAILOVER",
            Some(Value::String(s)) if POLICIES.contains(&s.as_str()) => s.as_str(),
            Some(v) => return Err(format!("settings.selection_policy: {v} is not one of {}", POLICIES.join(", "))),
        };
        let prices = match settings.get("prices") {
            None => None,
            Some(Value::Object(p)) => Some(p),
            Some(_) => return Err("settings.prices: must be an object of provider -> {templateId: price}".into()),
        };
        // Stable: equal priorities keep config order.
        let mut by_priority: Vec<&Candidate> = candidates.iter().collect();
        by_priority.sort_by_key(|c| c.priority);
        let names = |list: Vec<&Candidate>| list.into_iter().map(|c| c.name.clone()).collect::<Vec<_>>();
        match policy {
            "COST_OPTIMIZED" => {
                let mut priced: Vec<(f64, &Candidate)> = Vec::new();
                let mut unpriced: Vec<&Candidate> = Vec::new();
                for c in by_priority {
                    match price(prices, c, &request.template_id)? {
                        Some(p) if c.cost_threshold.is_some_and(|t| p > t) => {}
                        Some(p) => priced.push((p, c)),
                        None => unpriced.push(c),
                    }
                }
                priced.sort_by(|(a, ca), (b, cb)| a.total_cmp(b).then(ca.priority.cmp(&cb.priority)));
                Ok(names(priced.into_iter().map(|(_, c)| c).chain(unpriced).collect()))
            }
            "WEIGHTED" => {
                let drawable: Vec<&Candidate> = by_priority
                    .iter()
                    .copied()
                    .filter(|c| c.circuit != Circuit::Open && c.weight > 0)
                    .collect();
                let total: u64 = drawable.iter().map(|c| u64::from(c.weight)).sum();
                if total == 0 {
                    return Ok(names(by_priority));
                }
                let mut r = request.draw % total;
                let mut first = drawable[0];
                for c in drawable {
                    if r < u64::from(c.weight) {
                        first = c;
                        break;
                    }
                    r -= u64::from(c.weight);
                }
                let mut order = vec![first];
                order.extend(by_priority.into_iter().filter(|c| c.name != first.name));
                Ok(names(order))
            }
            _ => Ok(names(by_priority)),
        }
    }
}
