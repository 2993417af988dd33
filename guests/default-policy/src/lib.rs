//! The built-in template policy (`builtin:default-policy`): HostFactory takes hosts from
//! templates in the order it is offered them, so this policy offers the templates with the
//! lowest price per CPU first, hides those above `max_price`, and adds IBM's `rank`
//! attribute (1 = first choice). Templates without a known price keep the provider's order,
//! after the priced ones. Settings: `{"prices": {"<templateId>": <per hour>}, "max_price": <per hour>}`.
//!
//! `examples/python-selector` and `examples/js-selector` are the same policy in Python and
//! JavaScript; the tests check that all three make the same offer.
//!
//! It is also the built-in placement policy: the seed's `selection_policy` among several
//! providers (see [`placement`]).

wit_bindgen::generate!({
    world: "hostfactory:policy/policy@0.1.0",
    path: "../../wit/policy",
});

mod placement;

use exports::hostfactory::policy::template_policy::{Attribute, AttributeKind, Guest, PolicyContext, Template};
use serde_json::Value;

/// The policy's settings object (`{}` when none).
fn settings(json: &str) -> Result<serde_json::Map<String, Value>, String> {
    let settings: Value = if json.trim().is_empty() {
        Value::Object(Default::default())
    } else {
        serde_json::from_str(json).map_err(|e| format!("settings: not JSON: {e}"))?
    };
    match settings {
        Value::Object(s) => Ok(s),
        _ => Err("settings: must be a JSON object".into()),
    }
}

struct DefaultPolicy;

fn number(value: &Value, at: &str) -> Result<f64, String> {
    match value.as_f64() {
        Some(n) if value.is_number() && n >= 0.0 => Ok(n),
        _ => Err(format!("{at}: must be a non-negative number, not {value}")),
    }
}

fn ncpus(t: &Template) -> Result<f64, String> {
    match t.attributes.iter().find(|a| a.name == "ncpus") {
        None => Ok(1.0),
        Some(a) => a
            .value
            .trim()
            .parse::<f64>()
            .map(|n| n.max(1.0))
            .map_err(|_| format!("template '{}': ncpus is not a number: '{}'", t.id, a.value)),
    }
}

impl Guest for DefaultPolicy {
    fn offer_templates(ctx: PolicyContext, templates: Vec<Template>) -> Result<Vec<Template>, String> {
        let settings = settings(&ctx.settings_json)?;
        let empty = serde_json::Map::new();
        let prices = match settings.get("prices") {
            None => &empty,
            Some(Value::Object(p)) => p,
            Some(_) => return Err("settings.prices: must be an object of templateId -> price per hour".into()),
        };
        let max_price = settings.get("max_price").map(|v| number(v, "settings.max_price")).transpose()?;

        let mut priced: Vec<(f64, Template)> = Vec::new();
        let mut unpriced: Vec<Template> = Vec::new();
        for t in templates {
            match prices.get(&t.id) {
                Some(p) => {
                    let price = number(p, &format!("settings.prices.{}", t.id))?;
                    if max_price.is_some_and(|m| price > m) {
                        continue; // too expensive: not offered
                    }
                    priced.push((price / ncpus(&t)?, t));
                }
                None => unpriced.push(t),
            }
        }
        priced.sort_by(|(a, ta), (b, tb)| a.total_cmp(b).then_with(|| ta.id.cmp(&tb.id)));
        let mut offer: Vec<Template> = priced.into_iter().map(|(_, t)| t).chain(unpriced).collect();
        for (i, t) in offer.iter_mut().enumerate() {
            t.attributes.retain(|a| a.name != "rank");
            t.attributes.push(Attribute {
                name: "rank".into(),
                kind: AttributeKind::Numeric,
                value: (i + 1).to_string(),
            });
        }
        Ok(offer)
    }
}

export!(DefaultPolicy);
