// A template selector for hfwasm, in JavaScript: cheapest CPU first, too-expensive
// templates hidden.
//
// HostFactory takes hosts from templates in the order it is offered them. This policy puts
// the templates with the lowest price per CPU first, hides those above `max_price`, and adds
// IBM's `rank` attribute (1 = first choice). Templates without a known price keep the
// provider's order, after the priced ones.
//
// Settings (`policy.settings` in hfwasm.json):
//   {"prices": {"<templateId>": <price per hour>, ...}, "max_price": <price per hour>}
//
// Build:  hfwasm guest build .        (componentize-js; writes <this dir>.wasm)
// Check:  hfwasm guest check <this dir>.wasm
//
// A WIT `result<_, string>` error is a thrown string; records are plain objects with
// camelCase fields; enums are lowercase strings ("numeric").

function number(value, where) {
  if (typeof value !== "number" || !Number.isFinite(value) || value < 0) {
    throw `${where}: must be a non-negative number, not ${JSON.stringify(value)}`;
  }
  return value;
}

function ncpus(template) {
  const a = template.attributes.find((a) => a.name === "ncpus");
  if (!a) return 1;
  const n = Number(a.value);
  if (!Number.isFinite(n)) throw `template '${template.id}': ncpus is not a number: '${a.value}'`;
  return Math.max(n, 1);
}

export const templatePolicy = {
  offerTemplates(ctx, templates) {
    let settings;
    try {
      settings = JSON.parse(ctx.settingsJson || "{}");
    } catch (e) {
      throw `settings: not JSON: ${e.message}`;
    }
    if (settings === null || typeof settings !== "object" || Array.isArray(settings)) {
      throw "settings: must be a JSON object";
    }
    const prices = settings.prices ?? {};
    if (prices === null || typeof prices !== "object" || Array.isArray(prices)) {
      throw "settings.prices: must be an object of templateId -> price per hour";
    }
    const maxPrice = settings.max_price === undefined ? undefined : number(settings.max_price, "settings.max_price");

    const priced = [];
    const unpriced = [];
    for (const t of templates) {
      if (Object.hasOwn(prices, t.id)) {
        const price = number(prices[t.id], `settings.prices.${t.id}`);
        if (maxPrice !== undefined && price > maxPrice) continue; // too expensive: not offered
        priced.push({ perCpu: price / ncpus(t), t });
      } else {
        unpriced.push(t);
      }
    }
    priced.sort((a, b) => a.perCpu - b.perCpu || (a.t.id < b.t.id ? -1 : a.t.id > b.t.id ? 1 : 0));
    const offer = priced.map((p) => p.t).concat(unpriced);
    offer.forEach((t, i) => {
      t.attributes = t.attributes.filter((a) => a.name !== "rank");
      t.attributes.push({ name: "rank", kind: "numeric", value: String(i + 1) });
    });
    return offer;
  },
};
