// Daily usage as an SVG bar chart, built with DOM calls: one bar per day of the last 30,
// stacked by status class or by route (the series of GET /v1/usage), with a legend and the same
// numbers as a table; and how fresh the counts are.

import { h, svg } from "./dom.js";
import * as format from "./format.js";

export const DAYS = 30;
/** Routes shown each in its own colour; the others are summed as one "other routes" layer. */
const ROUTES = 6;
/** Status classes in stacking order; 2xx, 4xx and 5xx are always in the legend. */
const CLASSES = ["2xx", "3xx", "4xx", "5xx", "1xx"];
const ALWAYS = new Set(["2xx", "4xx", "5xx"]);
export const OTHER_ROUTES = "other routes";

/** The last `DAYS` UTC dates up to `today`, oldest first ("2026-12-01"). */
export function lastDates(today = new Date()) {
  const out = [];
  for (let back = DAYS - 1; back >= 0; back -= 1) {
    const date = new Date(Date.UTC(today.getUTCFullYear(), today.getUTCMonth(), today.getUTCDate() - back));
    out.push(date.toISOString().slice(0, 10));
  }
  return out;
}

/** "2xx" for "204"; a group that is no status code stays as it is. */
export function statusClass(group) {
  return /^[1-5][0-9][0-9]$/.test(group) ? `${group[0]}xx` : group;
}

/**
 * The layers of a stacked chart, bottom first, from the API's series: by status class or by
 * route (the busiest `ROUTES`, the others summed), each `{ name, tone, counts, total }` with
 * its count on each of `dates`. Points outside `dates` are left out.
 */
export function layers(series, by, dates) {
  const at = new Map(dates.map((date, i) => [date, i]));
  const sums = new Map();
  for (const one of series || []) {
    const name = by === "status" ? statusClass(String(one.group)) : String(one.group);
    for (const point of one.points || []) {
      const i = at.get(String(point.t).slice(0, 10));
      if (i === undefined) continue;
      if (!sums.has(name)) sums.set(name, new Array(dates.length).fill(0));
      sums.get(name)[i] += Number(point.count) || 0;
    }
  }
  return by === "status" ? statusLayers(sums, dates.length) : routeLayers(sums, dates.length);
}

function layer(name, tone, counts) {
  return { name, tone, counts, total: counts.reduce((sum, n) => sum + n, 0) };
}

function statusLayers(sums, length) {
  const known = CLASSES.filter((name) => ALWAYS.has(name) || sums.has(name));
  const odd = [...sums.keys()].filter((name) => !CLASSES.includes(name)).sort();
  return [...known, ...odd].map((name) =>
    layer(name, CLASSES.includes(name) ? `tone-${name}` : "tone-rest", sums.get(name) || new Array(length).fill(0)));
}

function routeLayers(sums, length) {
  const all = [...sums.entries()].map(([name, counts]) => layer(name, "", counts))
    .sort((a, b) => b.total - a.total || (a.name < b.name ? -1 : 1));
  // One more route than fits is shown itself rather than as an "other routes" of one.
  const shown = all.length > ROUTES + 1 ? all.slice(0, ROUTES) : all;
  const out = shown.map((one, i) => ({ ...one, tone: `tone-r${i}` }));
  if (shown.length < all.length) {
    const rest = new Array(length).fill(0);
    for (const one of all.slice(ROUTES)) one.counts.forEach((n, i) => { rest[i] += n; });
    out.push(layer(OTHER_ROUTES, "tone-rest", rest));
  }
  return out;
}

/** Each day's requests over all layers. */
export function dayTotals(dates, stack) {
  return dates.map((_, i) => stack.reduce((sum, one) => sum + one.counts[i], 0));
}

/**
 * The chart of `stack` over `dates` ("by status class" or "by route" in `what`), its legend,
 * caption (`total`: the requests the key authenticated since it was created, or null) and table; a notice
 * when the days hold nothing.
 */
export function usageChart(dates, stack, what, total) {
  const totals = dayTotals(dates, stack);
  const inWindow = totals.reduce((sum, n) => sum + n, 0);
  if (inWindow === 0) {
    const all = total === null ? "" : ` (${total} authenticated since the key was created)`;
    return h("p", { class: "notice" }, `No requests in the last ${DAYS} days${all}.`);
  }
  const max = Math.max(1, ...totals);
  const spread = stack.map((one) => `${one.name} ${one.total}`).join(", ");
  const chart = svg("svg", {
    class: "chart", viewBox: `0 0 ${dates.length * 10} 100`, preserveAspectRatio: "none", role: "img",
    "aria-label": `Requests per day over the last ${DAYS} days, ${what}: ${spread}; at most ${max} in a day.`,
  }, dates.map((date, i) => dayBar(date, i, stack, totals[i], max)));
  return h("figure", { class: "usage", "data-split": what },
    h("div", { class: "chart-frame" }, h("span", { class: "chart-max muted small", title: "the busiest day" }, `${max}`), chart),
    h("div", { class: "chart-axis muted small" }, h("span", {}, dates[0]), h("span", {}, "today (UTC)")),
    legend(stack, what),
    h("figcaption", {}, caption(inWindow, total)),
    numbers(dates, stack, totals));
}

/** One day's bar: a segment per layer that counted something, bottom first. */
function dayBar(date, i, stack, total, max) {
  let top = 100;
  const segments = [];
  for (const one of stack) {
    const count = one.counts[i];
    if (count === 0) continue;
    const height = Math.max(1.5, (count / max) * 96);
    top -= height;
    segments.push(svg("rect", { x: i * 10 + 1, y: Math.max(0, top), width: 8, height, class: `seg ${one.tone}` },
      svg("title", {}, `${date}, ${one.name}: ${requests(count)} of ${total}`)));
  }
  return svg("g", { "data-date": date }, segments);
}

function legend(stack, what) {
  return h("ul", { class: "legend", "aria-label": `Legend, ${what}` }, stack.map((one) =>
    h("li", {},
      svg("svg", { class: "swatch", viewBox: "0 0 10 10", "aria-hidden": "true" }, svg("rect", { width: 10, height: 10, class: `seg ${one.tone}` })),
      h("span", { class: "legend-name" }, one.name), " ",
      h("span", { class: "muted" }, String(one.total)))));
}

/** The chart's numbers for the days that counted something, for reading out or copying. */
function numbers(dates, stack, totals) {
  const head = ["Day", ...stack.map((one) => one.name), "Total"];
  const rows = dates.map((date, i) => [date, ...stack.map((one) => one.counts[i]), totals[i]])
    .filter((row) => row[row.length - 1] > 0);
  return h("details", { class: "usage-numbers" },
    h("summary", {}, "Show the numbers"),
    h("table", { class: "list numbers" },
      h("thead", {}, h("tr", {}, head.map((name) => h("th", { scope: "col" }, name)))),
      h("tbody", {}, rows.map((row) => h("tr", { "data-date": row[0] },
        row.map((value, i) => h("td", { "data-label": head[i] }, String(value))))))));
}

/**
 * The chart counts every answer to a request that named the key (a revoked key's 401s too);
 * the key's total counts the requests it authenticated, so the two are named apart.
 */
function caption(inWindow, total) {
  const shown = `${requests(inWindow)} in the last ${DAYS} days, refusals included`;
  return total === null ? `${shown}.` : `${shown}; ${total} authenticated since the key was created.`;
}

function requests(n) {
  return `${n} request${n === 1 ? "" : "s"}`;
}

/**
 * When this replica last wrote its counts to the store (its usage flush): the counts hold its
 * requests up to then. Nothing when the gateway does not say.
 */
export function flushedNote(usage, now = Date.now()) {
  if (usage.flushed_at === undefined) return "";
  const at = format.asOf(usage.flushed_at, now);
  const text = at ?
    `Counts as of ${at}, when this gateway replica last wrote its usage to the store; other replicas' requests show after their next write.` :
    "Not flushed yet: this gateway replica has not written its usage to the store since it started, so its latest requests are not counted here.";
  return h("p", { class: "muted small flushed", title: at ? format.exact(usage.flushed_at) : null }, text);
}
