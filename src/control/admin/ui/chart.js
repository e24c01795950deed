// Daily usage as an SVG bar chart, built with DOM calls: one bar per day of the last 30.

import { h, svg } from "./dom.js";

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
    return h("p", { class: "notice" }, `No requests in the last ${DAYS} days (${usage.total_requests} in all). ` +
      "Usage reaches the store every few seconds, so the latest requests may show a little later.");
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
    h("figcaption", {}, `${usage.total_requests} requests in all; ${inWindow} in the last ${DAYS} days.`));
}
