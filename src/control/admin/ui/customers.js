// The Customers view (SPEC 11): one row per customer with its rate limit, this period's quota
// as a bar and how many keys name it, a page at a time by the API's cursor (in the address,
// #/customers?cursor=42), and the create button for a full-access token. The list answer holds
// each customer's quota state and key count: one request for the page, none per row.

import { api, query, session } from "./api.js";
import { button, cell, errorBox, h, notice, show } from "./dom.js";
import * as format from "./format.js";
import { address, pager, viewParams } from "./address.js";
import { quotaBar } from "./quota.js";
import { createCustomerDialog } from "./customer-form.js";

const PAGE = 50;
const PATH = "#/customers";

export function renderCustomers() {
  const state = viewParams(["cursor"]);
  const results = h("div", { class: "results" }, notice("Loading customers…"));
  show(h("section", { class: "view" },
    h("div", { class: "view-head" },
      h("h2", {}, "Customers"),
      session.canWrite() ? button("Create customer", () => createCustomerDialog(), "primary") : null),
    h("p", { class: "muted" },
      "A customer's keys share its rate limit and quota, on top of their own. A key names its customer by id."),
    results));
  load(results, state);
}

async function load(results, state) {
  try {
    const { data, headers } = await api("GET", `/v1/customers${query({ limit: PAGE, cursor: state.cursor })}`);
    const customers = data || [];
    if (customers.length === 0 && !state.cursor) {
      results.replaceChildren(notice(session.canWrite() ?
        "No customers yet. Create the first one with “Create customer”." : "No customers yet."));
      return;
    }
    results.replaceChildren(table(customers), pager(PATH, state, headers.get("x-next-cursor")));
  } catch (error) {
    results.replaceChildren(errorBox(error, () => renderCustomers()));
  }
}

function table(customers) {
  const head = ["Customer", "Rate limit", "Quota this period", "Keys"];
  return h("table", { id: "customers", class: "list" },
    h("caption", { class: "visually-hidden" }, "Customers"),
    h("thead", {}, h("tr", {}, head.map((name) => h("th", { scope: "col" }, name)))),
    h("tbody", {}, customers.map(row)));
}

function row(customer) {
  const quota = h("div", { class: "quota-cell" }, customer.quota ? quotaState(customer) : "none");
  const keys = h("a", {
    href: address("#/keys", { customer_id: customer.id }),
    class: "key-count",
    title: `The keys of “${customer.id}” and their usage`,
  }, format.keyCount(customer.key_count || 0));
  return h("tr", { "data-customer-id": customer.id },
    cell("Customer",
      h("a", { href: `${PATH}/${encodeURIComponent(customer.id)}`, class: "key-name" }, customer.name || customer.id),
      h("div", { class: "muted small" }, customer.id)),
    cell("Rate limit", customer.rate_limit ? format.rateLimit(customer.rate_limit) : "none"),
    cell("Quota this period", quota),
    cell("Keys", keys));
}

/** The customer's quota bar and a line of words, from the list's `quota_state` (absent when
 * the limiter could not say). */
function quotaState(customer) {
  const state = customer.quota_state;
  if (!state) {
    return h("span", { class: "muted" }, `${format.quota(customer.quota)} (state unknown)`);
  }
  return [quotaBar(state),
    h("div", { class: "muted small", title: format.exact(state.resets_at) || null }, format.quotaBrief(customer.quota, state))];
}
