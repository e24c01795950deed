// Recent requests (GET /v1/requests): this replica's last access records, newest first, a
// page at a time, with the refusal reason of each; for all keys here (the status filter and
// the page in the address, #/requests?status=4xx&cursor=42), and per key in the key view.
// "All replicas" (#/requests?scope=fleet) asks every replica of the store at once: one page,
// each record with the replica that served it, and the replicas that could not be asked.

import { api, keyPath, query } from "./api.js";
import { button, cell, errorBox, h, notice, show } from "./dom.js";
import * as format from "./format.js";
import { go, pager, viewParams } from "./address.js";

const PATH = "#/requests";
const PAGE = 100;
const KEY_PAGE = 50;
const OLDER = { back: "← Newer requests", forward: "Older requests →" };

export function renderRequests() {
  const state = viewParams(["status", "cursor", "scope"]);
  const fleet = state.scope === "fleet";
  const results = h("div", { class: "results" }, notice("Loading recent requests…"));
  const status = h("input", { id: "filter-status", name: "status", inputmode: "numeric", value: state.status, placeholder: "403 or 4xx" });
  const everywhere = h("input", { id: "filter-scope", name: "scope", type: "checkbox" });
  everywhere.checked = fleet;
  const form = h("form", { class: "filters", "aria-label": "Filter requests", on: { submit: (event) => {
    event.preventDefault();
    go(PATH, { status: status.value.trim(), scope: everywhere.checked ? "fleet" : "" });
  } } },
  h("div", { class: "field" }, h("label", { for: "filter-status" }, "Status"), status),
  h("div", { class: "field end" }, h("label", {}, everywhere, " All replicas")),
  h("div", { class: "field end" }, h("button", { type: "submit" }, "Filter")));
  show(h("section", { class: "view" },
    h("div", { class: "view-head" }, h("h2", {}, "Recent requests")),
    h("p", { class: "muted" }, fleet ?
      "The most recent requests every replica of this store answered, newest first." :
      "The most recent requests this gateway replica answered, newest first."),
    form, results));
  if (fleet) {
    loadFleet(results, { status: state.status, scope: "fleet", limit: PAGE });
    return;
  }
  loadRequests(results, { status: state.status, cursor: state.cursor, limit: PAGE }, {
    withKey: true,
    retry: () => renderRequests(),
    pager: (next) => pager(PATH, state, next, OLDER),
  });
}

/**
 * Key `id`'s recent requests in `target`, paged in place (the key view's address stays);
 * returns a function that shows the newest again.
 */
export function keyRequests(target, id) {
  const before = [];
  let cursor = "";
  const load = () => loadRequests(target, { key_id: id, limit: KEY_PAGE, cursor }, {
    retry: load,
    pager: (next) => h("nav", { class: "pager", "aria-label": "Pages" },
      cursor ? button(OLDER.back, () => {
        cursor = before.pop() || "";
        load();
      }) : h("span"),
      next ? button(OLDER.forward, () => {
        before.push(cursor);
        cursor = next;
        load();
      }) : null),
  });
  const newest = () => {
    before.length = 0;
    cursor = "";
    return load();
  };
  newest();
  return newest;
}

/** Fills `target` with the requests matching `params`: `withKey` adds a key column, `pager`
 * makes the buttons to the pages around (from the next page's cursor). */
async function loadRequests(target, params, { withKey = false, retry, pager }) {
  try {
    const { data, headers } = await api("GET", `/v1/requests${query(params)}`);
    const items = (data && data.items) || [];
    const next = headers.get("x-next-cursor");
    const paged = params.cursor || next ? pager(next) : null;
    target.replaceChildren(items.length ? requestsTable(items, withKey) : notice(empty(data, params)), paged || "");
    if (withKey) nameKeys(target);
  } catch (error) {
    target.replaceChildren(error.status === 404 ?
      notice("This gateway does not keep recent requests (GET /v1/requests is missing).") :
      errorBox(error, retry));
  }
}

/** The fleet's records in `target`: one page, a replica column, and who is missing. */
async function loadFleet(target, params) {
  try {
    const { data } = await api("GET", `/v1/requests${query(params)}`);
    const items = (data && data.items) || [];
    const missing = (data && data.missing) || [];
    target.replaceChildren(
      items.length ? requestsTable(items, true, true) : notice("No recent requests match on any replica."),
      missing.length ? notice(`Not included: ${missing.map((m) => `${m.host} (${m.replica}): ${m.reason}`).join("; ")}.`, "error") : "");
    nameKeys(target);
  } catch (error) {
    target.replaceChildren(errorBox(error, () => loadFleet(target, params)));
  }
}

const NAMED = 25;

/** Shows the names of the first keys in the table beside their ids (a deleted one keeps its id). */
function nameKeys(target) {
  const links = [...target.querySelectorAll("a[data-key]")];
  const ids = [...new Set(links.map((link) => link.dataset.key))].slice(0, NAMED);
  for (const id of ids) {
    api("GET", keyPath(id)).then(({ data }) => {
      for (const link of links.filter((link) => link.dataset.key === id)) {
        link.replaceChildren(data.name || "(no name)", h("span", { class: "muted small" }, ` ${id}`));
      }
    }, () => {});
  }
}

function empty(data, params) {
  if (data && data.capacity === 0) return "This gateway keeps no recent requests (logs.recent = 0).";
  if (params.cursor) return "No older requests are kept: newer ones have taken their place.";
  return params.key_id ? "No recent requests with this key on this replica." : "No recent requests match.";
}

function requestsTable(items, withKey, withReplica = false) {
  const now = Date.now();
  const head = ["When", withReplica ? "Replica" : null, withKey ? "Key" : null, "Request", "Route", "Status", "Reason", "Time"].filter(Boolean);
  return h("table", { class: "list requests" },
    h("thead", {}, h("tr", {}, head.map((name) => h("th", { scope: "col" }, name)))),
    h("tbody", {}, items.map((item) => requestRow(item, withKey, now, withReplica))));
}

function requestRow(item, withKey, now, withReplica) {
  const keyCell = item.key_id ?
    h("a", { href: `#/keys/${encodeURIComponent(item.key_id)}`, "data-key": item.key_id }, item.key_id) : h("span", { class: "muted" }, "no key");
  return h("tr", { "data-request-id": item.request_id || null, "data-status": item.status },
    cell("When", h("span", { title: format.exact(item.time) }, format.relative(item.time, now))),
    withReplica ? cell("Replica", h("code", { class: "small" }, item.replica || "")) : null,
    withKey ? cell("Key", keyCell) : null,
    cell("Request", h("code", {}, `${item.method} ${item.path}`), item.client ? h("div", { class: "muted small" }, `from ${item.client}`) : null),
    cell("Route", item.route || "—"),
    cell("Status", h("span", { class: `badge http-${String(item.status)[0]}xx` }, String(item.status))),
    cell("Reason", item.reason ? format.reason(item.reason) : "—"),
    cell("Time", item.duration_ms === undefined || item.duration_ms === null ? "" : `${item.duration_ms} ms`));
}
