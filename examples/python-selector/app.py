"""A template selector for hfwasm, in Python: cheapest CPU first, too-expensive templates hidden.

HostFactory takes hosts from templates in the order it is offered them. This policy puts
the templates with the lowest price per CPU first, hides those above `max_price`, and adds
IBM's `rank` attribute (1 = first choice). Templates without a known price keep the
provider's order, after the priced ones.

Settings (`policy.settings` in hfwasm.json):
    {"prices": {"<templateId>": <price per hour>, ...}, "max_price": <price per hour>}

Build:  hfwasm guest build .        (componentize-py; writes <this dir>.wasm)
Check:  hfwasm guest check <this dir>.wasm
"""

import json

from wit_world import exports
from wit_world.exports.template_policy import Attribute, AttributeKind
from componentize_py_types import Err


def _number(value, where):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise Err(f"{where}: must be a non-negative number, not {json.dumps(value)}")
    return float(value)


def _ncpus(template):
    for a in template.attributes:
        if a.name == "ncpus":
            try:
                return max(float(a.value), 1.0)
            except ValueError:
                raise Err(f"template '{template.id}': ncpus is not a number: {a.value!r}")
    return 1.0


class TemplatePolicy(exports.TemplatePolicy):
    def offer_templates(self, ctx, templates):
        try:
            settings = json.loads(ctx.settings_json or "{}")
        except ValueError as e:
            raise Err(f"settings: not JSON: {e}")
        if not isinstance(settings, dict):
            raise Err("settings: must be a JSON object")
        prices = settings.get("prices", {})
        if not isinstance(prices, dict):
            raise Err("settings.prices: must be an object of templateId -> price per hour")
        max_price = settings.get("max_price")
        if max_price is not None:
            max_price = _number(max_price, "settings.max_price")

        priced, unpriced = [], []
        for position, t in enumerate(templates):
            if t.id in prices:
                price = _number(prices[t.id], f"settings.prices.{t.id}")
                if max_price is not None and price > max_price:
                    continue  # too expensive: not offered
                priced.append((price / _ncpus(t), t.id, t))
            else:
                unpriced.append(t)
        priced.sort(key=lambda p: (p[0], p[1]))
        offer = [t for _, _, t in priced] + unpriced
        for rank, t in enumerate(offer, start=1):
            t.attributes = [a for a in t.attributes if a.name != "rank"]
            t.attributes.append(Attribute("rank", AttributeKind.NUMERIC, str(rank)))
        return offer
