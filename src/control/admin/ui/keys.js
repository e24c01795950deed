// The key list: filters, one row per key, paging by the API's cursor, and the create button.

import { api, query, session } from "./api.js";
import { button, errorBox, h, notice, show } from "./dom.js";
import * as format from "./format.js";
import { createDialog } from "./dialogs.js";
import { loadIdle, idleNotice } from "./idle.js";

const PAGE = 50;
const state = { environment: "", status: "", customer_id: "", cursor: "", previous: [] };

export function renderKeys() {
  const results = h("div", { class: "results" }, notice("Loading keys…"));
  show(h("section", { class: "view" },
    h("div", { class: "view-head" },
      h("h2", {}, "API keys"),
      session.canWrite() ? button("Create key", () => createDialog(() => renderKeys()), "primary") : null),
    filters(),
    results));
  load(results);
}

function filters() {
  const environment = select("environment", "Environment", ["", "production", "staging", "development"], state.environment);
  const status = select("status", "Status", ["", "active", "revoked", "expired"], state.status);
  const customer = h("input", { id: "filter-customer", name: "customer_id", type: "search", value: state.customer_id });
  const apply = (event) => {
    event.preventDefault();
    Object.assign(state, {
      environment: environment.querySelector("select").value,
      status: status.querySelector("select").value,
      customer_id: customer.value.trim(),
      cursor: "",
      previous: [],
    });
    renderKeys();
  };
  return h("form", { class: "filters", "aria-label": "Filter keys", on: { submit: apply } },
    environment, status,
    h("div", { class: "field" }, h("label", { for: "filter-customer" }, "Customer"), customer),
    h("div", { class: "field end" }, h("button", { type: "submit" }, "Filter")));
}

function select(name, label, values, current) {
  const id = `filter-${name}`;
  return h("div", { class: "field" },
    h("label", { for: id }, label),
    h("select", { id, name },
      values.map((value) => h("option", { value, selected: value === current }, value || "any"))));
}

async function load(results) {
  const params = { environment: state.environment, status: state.status, customer_id: state.customer_id, limit: PAGE, cursor: state.cursor };
  try {
    const [{ data, headers }, idle] = await Promise.all([api("GET", `/v1/keys${query(params)}`), loadIdle()]);
    results.replaceChildren(...page(data || [], headers.get("x-next-cursor"), idle));
  } catch (error) {
    results.replaceChildren(errorBox(error, () => renderKeys()));
  }
}

function page(keys, next, idle) {
  const filtered = state.environment || state.status || state.customer_id;
  if (keys.length === 0 && !state.cursor) {
    const text = filtered ? "No key matches these filters." :
      session.canWrite() ? "No keys yet. Create the first one with “Create key”." : "No keys yet.";
    return [notice(text)];
  }
  return [table(keys, idle), pager(next)];
}

function table(keys, idle) {
  const now = Date.now();
  const head = ["Name", "Environment", "Permissions", "Status", "Last used", "Rate limit", "Customer"];
  return h("table", { id: "keys", class: "list" },
    h("caption", { class: "visually-hidden" }, "API keys"),
    h("thead", {}, h("tr", {}, head.map((name) => h("th", { scope: "col" }, name)))),
    h("tbody", {}, keys.map((key) => row(key, now, idle))));
}

function row(key, now, idle) {
  const cell = (label, ...content) => h("td", { "data-label": label }, ...content);
  return h("tr", { "data-key-id": key.id },
    cell("Name",
      h("a", { href: `#/keys/${encodeURIComponent(key.id)}`, class: "key-name" }, key.name || "(no name)"),
      h("div", { class: "muted small" }, `${key.prefix}…`),
      idleNotice(idle, key.id, now)),
    cell("Environment", h("span", { class: `env env-${key.environment}` }, key.environment)),
    cell("Permissions", h("span", { title: (key.permissions || []).join(", ") || "none" }, format.permissions(key.permissions))),
    cell("Status", h("span", { class: `badge status-${key.status}` }, key.status)),
    cell("Last used", h("span", { title: format.exact(key.last_used_at) || "never used" }, format.relative(key.last_used_at, now))),
    cell("Rate limit", format.rateLimit(key.rate_limit)),
    cell("Customer", key.customer_id || "—"));
}

function pager(next) {
  const previous = () => {
    state.cursor = state.previous.pop() || "";
    renderKeys();
  };
  const forward = () => {
    state.previous.push(state.cursor);
    state.cursor = next;
    renderKeys();
  };
  return h("nav", { class: "pager", "aria-label": "Pages" },
    state.previous.length || state.cursor ? button("← Previous page", previous) : null,
    next ? button("Next page →", forward) : null);
}
