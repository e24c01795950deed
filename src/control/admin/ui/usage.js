// Usage of a key or of a customer's keys: the last 30 days, a bar a day, stacked by status
// class or by route as the person picks (GET /v1/usage, summed over the fleet); for a key also
// its total and how fresh the counts are (GET /v1/keys/{id}/usage).

import { api, keyPath, query } from "./api.js";
import { errorBox, h, notice } from "./dom.js";
import { flushedNote, lastDates, layers, usageChart } from "./chart.js";

const SPLITS = [
  { by: "status", label: "By status", what: "by status class" },
  { by: "route", label: "By route", what: "by route" },
];

/**
 * Fills `target` with key `id`'s usage, split by status class first; `counted` gets each
 * answer of GET /v1/keys/{id}/usage (its `last_used_at` is then up to date too).
 */
export function keyUsage(target, id, counted = () => {}) {
  // After the series: asking for them writes this replica's counts to the store first, so the
  // total and its "as of" include them too.
  const totals = async () => {
    const { data } = await api("GET", keyPath(id, "/usage"));
    counted(data || {});
    return data || {};
  };
  usagePanel(target, { key_id: id }, totals);
}

/** Fills `target` with the usage of every key whose customer is `customer`. */
export function customerUsage(target, customer) {
  usagePanel(target, { customer_id: customer }, null);
}

/** The chart of `of` (the query's key_id or customer_id) with the split buttons above it. */
function usagePanel(target, of, totals) {
  let split = SPLITS[0];
  let asked = 0;
  const body = h("div", {}, notice("Loading usage…"));
  const toggle = h("div", { class: "split", role: "group", "aria-label": "Split the bars" });
  const load = async () => {
    const mine = ++asked;
    try {
      const { data } = await api("GET", `/v1/usage${query({ ...of, granularity: "day", group_by: split.by })}`);
      const usage = totals ? await totals() : null;
      // A slower answer to an earlier choice must not replace a later one.
      if (mine !== asked) return;
      const dates = lastDates();
      const stack = layers((data && data.series) || [], split.by, dates);
      const chart = usageChart(dates, stack, split.what, usage ? usage.total_requests : null);
      // Without requests there is nothing to split (and no button to offer).
      if (chart.tagName !== "FIGURE") toggle.remove();
      else if (!toggle.isConnected) target.prepend(toggle);
      body.replaceChildren(chart, usage ? flushedNote(usage) : freshness());
    } catch (error) {
      if (mine === asked) body.replaceChildren(errorBox(error, load));
    }
  };
  const buttons = SPLITS.map((one) => h("button", {
    type: "button", "aria-pressed": String(one === split), "data-split": one.by,
    on: { click: () => {
      split = one;
      for (const other of buttons) other.setAttribute("aria-pressed", String(other.dataset.split === one.by));
      load();
    } },
  }, one.label));
  toggle.append(...buttons);
  target.replaceChildren(body);
  load();
}

function freshness() {
  return h("p", { class: "muted small flushed" },
    "This gateway replica's requests are counted up to now; other replicas' show after their next write to the store.");
}
