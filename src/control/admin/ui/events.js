// The audit trail of a key or a customer (GET /v1/keys/{id}/events, /v1/customers/{id}/events):
// who changed what and when, with the kind of token and the client's address, oldest first.

import { api } from "./api.js";
import { errorBox, h, notice } from "./dom.js";
import * as format from "./format.js";

/** Fills `target` with the audit trail at `path` (GET .../events) in the order it happened, a page at a time. */
export async function auditTrail(target, path, cursor = "") {
  const more = cursor ? `&cursor=${encodeURIComponent(cursor)}` : "";
  try {
    const { data, headers } = await api("GET", `${path}?limit=100${more}`);
    const next = headers.get("x-next-cursor");
    const table = target.querySelector("table.events");
    if (table) table.tBodies[0].append(...data.map(eventRow));
    else target.replaceChildren(data.length ? eventsTable(data) : notice("No changes recorded."));
    const button = target.querySelector("button.more");
    if (button) button.remove();
    if (next) target.append(h("button", { type: "button", class: "more", on: { click: () => auditTrail(target, path, next) } }, "Show later changes"));
  } catch (error) {
    target.replaceChildren(errorBox(error, () => auditTrail(target, path)));
  }
}

function eventsTable(events) {
  const head = ["When", "Event", "By", "Token", "Client", "Changes"];
  return h("table", { class: "list events" },
    h("thead", {}, h("tr", {}, head.map((name) => h("th", { scope: "col" }, name)))),
    h("tbody", {}, events.map(eventRow)));
}

function eventRow(event) {
  return h("tr", {},
    h("td", { "data-label": "When", title: format.exact(event.at) }, format.relative(event.at)),
    h("td", { "data-label": "Event" }, event.event),
    h("td", { "data-label": "By" }, event.actor),
    h("td", { "data-label": "Token" }, event.token ? `${event.token} token` : "—"),
    h("td", { "data-label": "Client" }, event.client || "—"),
    h("td", { "data-label": "Changes", class: "changes" }, changes(event.changes)));
}

function changes(map) {
  const entries = Object.entries(map || {});
  if (entries.length === 0) return "—";
  return entries.map(([name, value]) => `${name}: ${typeof value === "string" ? value : JSON.stringify(value)}`).join("; ");
}
