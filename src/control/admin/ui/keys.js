// The key list: filters, one row per key, paging by the API's cursor, and the create button;
// filtered by a customer, that customer's usage above its keys.
// The filters and the cursor are in the address (#/keys?environment=staging&cursor=42).

import { api, query, session } from "./api.js";
import { button, cell, errorBox, h, notice, show } from "./dom.js";
import * as format from "./format.js";
import { createDialog } from "./dialogs.js";
import { loadIdle, idleNotice } from "./idle.js";
import { address, go, pager, viewParams } from "./address.js";
import { customerUsage } from "./usage.js";

const PAGE = 50;
const PATH = "#/keys";
const FILTERS = ["environment", "status", "customer_id"];

export function renderKeys() {
  const state = viewParams([...FILTERS, "cursor"]);
  const results = h("div", { class: "results" }, notice("Loading keys…"));
  show(h("section", { class: "view" },
    h("div", { class: "view-head" },
      h("h2", {}, "API keys"),
      session.canWrite() ? button("Create key", () => createDialog(() => renderKeys()), "primary") : null),
    filters(state),
    customerCard(state.customer_id),
    results));
  load(results, state);
}

/** Filtered by a customer: the usage of all its keys, above them. */
function customerCard(customer) {
  if (!customer) return null;
  const body = h("div", {});
  customerUsage(body, customer);
  const view = h("a", { href: `#/customers/${encodeURIComponent(customer)}`, class: "customer-view" }, `Customer “${customer}”: its limits and quota →`);
  return h("section", { class: "card customer-usage" },
    h("div", { class: "view-head" }, h("h3", {}, `Daily usage of customer “${customer}”`), view), body);
}

function filters(state) {
  const environment = select("environment", "Environment", ["", "production", "staging", "development"], state.environment);
  const status = select("status", "Status", ["", "active", "revoked", "expired"], state.status);
  const customer = h("input", { id: "filter-customer", name: "customer_id", type: "search", value: state.customer_id });
  const apply = (event) => {
    event.preventDefault();
    go(PATH, {
      environment: environment.querySelector("select").value,
      status: status.querySelector("select").value,
      customer_id: customer.value.trim(),
    });
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

async function load(results, state) {
  try {
    const [{ data, headers }, idle] = await Promise.all([api("GET", `/v1/keys${query({ ...state, limit: PAGE })}`), loadIdle()]);
    results.replaceChildren(...page(state, data || [], headers.get("x-next-cursor"), idle));
  } catch (error) {
    results.replaceChildren(errorBox(error, () => renderKeys()));
  }
}

function page(state, keys, next, idle) {
  const filtered = state.environment || state.status || state.customer_id;
  if (keys.length === 0 && !state.cursor) {
    const text = filtered ? "No key matches these filters." :
      session.canWrite() ? "No keys yet. Create the first one with “Create key”." : "No keys yet.";
    return [notice(text)];
  }
  return [table(keys, idle), pager(PATH, state, next)];
}

function table(keys, idle) {
  const now = Date.now();
  const head = ["Name", "Environment", "Permissions", "Status", "Last used", "Rate limit", "Customer"];
  return h("table", { id: "keys", class: "list" },
    h("caption", { class: "visually-hidden" }, "API keys"),
    h("thead", {}, h("tr", {}, head.map((name) => h("th", { scope: "col" }, name)))),
    h("tbody", {}, keys.map((key) => row(key, now, idle))));
}

/** A badge for a key whose secret was reported leaked under leaks.action = "quarantine". */
function quarantined(key) {
  if (!key.quarantined) return null;
  return h("span", {
    class: "badge quarantined",
    title: "A secret of this key was reported leaked: it works until it is regenerated",
  }, "quarantined");
}

function row(key, now, idle) {
  return h("tr", { "data-key-id": key.id },
    cell("Name",
      h("a", { href: `#/keys/${encodeURIComponent(key.id)}`, class: "key-name" }, key.name || "(no name)"),
      h("div", { class: "muted small" }, `${key.prefix}…`),
      idleNotice(idle, key.id, now)),
    cell("Environment", h("span", { class: `env env-${key.environment}` }, key.environment)),
    cell("Permissions", h("span", { title: (key.permissions || []).join(", ") || "none" }, format.permissions(key.permissions))),
    cell("Status", h("span", { class: `badge status-${key.status}` }, key.status), quarantined(key)),
    cell("Last used", h("span", { title: format.exact(key.last_used_at) || "never used" }, format.relative(key.last_used_at, now))),
    cell("Rate limit", format.rateLimit(key.rate_limit)),
    cell("Customer", customerLink(key.customer_id)));
}

/** A customer id as a link to its keys and their usage, or "—". */
export function customerLink(customer) {
  if (!customer) return "—";
  return h("a", { href: address(PATH, { customer_id: customer }), title: `The keys of “${customer}” and their usage` }, customer);
}
