// Daily usage as an SVG bar chart, built with DOM calls: one bar per day of the last 30; and
// how fresh the counts are.

import { h, svg } from "./dom.js";
import * as format from "./format.js";

const DAYS = 30;

/** The last `DAYS` UTC dates up to `today`, oldest first, with the requests of each. */
export function lastDays(days, today = new Date()) {
  const counts = new Map((days || []).map((day) => [day.date, day.requests]));
  const out = [];
  for (let back = DAYS - 1; back >= 0; back -= 1) {
    const date = new Date(Date.UTC(today.getUTCFullYear(), today.getUTCMonth(), today.getUTCDate() - back));
    const key = date.toISOString().slice(0, 10);
    out.push({ date: key, requests: counts.get(key) || 0 });
  }
  return out;
}

export function usageChart(usage) {
  const days = lastDays(usage.days);
  const max = Math.max(1, ...days.map((day) => day.requests));
  const inWindow = days.reduce((sum, day) => sum + day.requests, 0);
  if (inWindow === 0) {
    return h("p", { class: "notice" }, `No requests in the last ${DAYS} days (${usage.total_requests} in all).`);
  }
  const width = 10;
  const chart = svg("svg", {
    class: "chart", viewBox: `0 0 ${DAYS * width} 100`, preserveAspectRatio: "none", role: "img",
    "aria-label": `Requests per day over the last ${DAYS} days: ${inWindow} in all, at most ${max} in a day.`,
  }, days.map((day, i) => {
    const height = day.requests === 0 ? 0 : Math.max(2, (day.requests / max) * 96);
    return svg("rect", { x: i * width + 1, y: 100 - height, width: width - 2, height, class: "bar" },
      svg("title", {}, `${day.date}: ${day.requests} request${day.requests === 1 ? "" : "s"}`));
  }));
  return h("figure", { class: "usage" },
    h("div", { class: "chart-frame" }, h("span", { class: "chart-max muted small" }, `${max}`), chart),
    h("div", { class: "chart-axis muted small" }, h("span", {}, days[0].date), h("span", {}, "today (UTC)")),
    h("figcaption", {}, `${requests(usage.total_requests)} in all; ${inWindow} in the last ${DAYS} days.`));
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
    `Counts as of ${at}, when this gateway replica last wrote its usage to the store; later requests show after its next write.` :
    "Not flushed yet: this gateway replica has not written its usage to the store since it started, so its latest requests are not counted here.";
  return h("p", { class: "muted small flushed", title: at ? format.exact(usage.flushed_at) : null }, text);
}
