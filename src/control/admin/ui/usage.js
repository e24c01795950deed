// A key's usage in its view: the last 30 days, a bar a day, stacked by status class or by
// route as the person picks (GET /v1/usage, summed over the fleet), with the key's total and
// how fresh the counts are (GET /v1/keys/{id}/usage).

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
  let split = SPLITS[0];
  let asked = 0;
  const body = h("div", {}, notice("Loading usage…"));
  const toggle = h("div", { class: "split", role: "group", "aria-label": "Split the bars" });
  const load = async () => {
    const mine = ++asked;
    try {
      const [series, usage] = await fetchUsage(id, split.by);
      // A slower answer to an earlier choice must not replace a later one.
      if (mine !== asked) return;
      const dates = lastDates();
      const chart = usageChart(dates, layers(series, split.by, dates), split.what, usage.total_requests);
      // Without requests there is nothing to split (and no button to offer).
      if (chart.tagName !== "FIGURE") toggle.remove();
      else if (!toggle.isConnected) target.prepend(toggle);
      body.replaceChildren(chart, flushedNote(usage));
      counted(usage);
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

/**
 * The series, then the key's total: asking for the series writes this replica's counts to
 * the store first, so the total and its "as of" include them too.
 */
async function fetchUsage(id, by) {
  const path = `/v1/usage${query({ key_id: id, granularity: "day", group_by: by })}`;
  const { data } = await api("GET", path);
  const { data: usage } = await api("GET", keyPath(id, "/usage"));
  return [(data && data.series) || [], usage || {}];
}
