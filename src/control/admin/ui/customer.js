// One customer: its details, the actions on it (for a full-access token), its quota, the keys
// that name it, their daily usage and its audit trail. Each part loads on its own, so one
// failure hides nothing else.

import { api, customerPath, query, session } from "./api.js";
import { button, cell, errorBox, flash, h, notice, section, show } from "./dom.js";
import * as format from "./format.js";
import { address } from "./address.js";
import { confirmDialog } from "./dialogs.js";
import { createCustomerDialog, editCustomerDialog } from "./customer-form.js";
import { customerUsage } from "./usage.js";
import { quotaCard } from "./quota.js";
import { auditTrail } from "./events.js";

/** Keys listed in the view; the key list filtered by the customer shows them all. */
const SHOWN = 10;

export async function renderCustomer(id) {
  const back = h("p", {}, h("a", { href: "#/customers" }, "← All customers"));
  const view = h("section", { class: "view", "data-customer-id": id }, back, notice("Loading the customer…"));
  show(view);
  let customer;
  try {
    customer = (await api("GET", customerPath(id))).data;
  } catch (error) {
    view.replaceChildren(back, ...(error.status === 404 ? missing(id) : [errorBox(error, () => renderCustomer(id))]));
    return;
  }
  const keys = h("div", {}, notice("Loading its keys…"));
  const usage = h("div", {});
  const events = h("div", {}, notice("Loading the audit trail…"));
  const parts = [back, header(customer), details(customer),
    quotaCard(customer, customerPath(id, "/quota"), again(id)),
    section("Keys", keys), section("Daily usage of its keys", usage), section("Audit trail", events)];
  view.replaceChildren(...parts.filter(Boolean));
  loadKeys(keys, id);
  customerUsage(usage, id);
  auditTrail(events, customerPath(id, "/events"));
}

/** No customer object: keys may still name the id (it scopes them and limits nothing). */
function missing(id) {
  return [
    notice(`There is no customer “${id}” (it may have been deleted). Keys may still name it: ` +
      "they are then scoped to it, with no limits of a customer.", "error"),
    h("p", {},
      h("a", { href: address("#/keys", { customer_id: id }) }, `Keys that name “${id}”`),
      session.canWrite() ? [" · ", button(`Create customer “${id}”`, () => createCustomerDialog(id))] : null),
  ];
}

/** Shows customer `id` again after a change, saying what changed. */
function again(id) {
  return (message) => {
    if (message) flash(message);
    renderCustomer(id);
  };
}

function header(customer) {
  return h("div", { class: "view-head key-head" },
    h("div", {},
      h("h2", {}, customer.name || customer.id),
      h("p", { class: "muted small" }, `customer ${customer.id}`)),
    session.canWrite() ? h("div", { class: "actions key-actions" },
      button("Edit", () => editCustomerDialog(customer, again(customer.id))),
      button("Delete", () => deleteDialog(customer), "danger")) : null);
}

function details(customer) {
  const row = (term, value) => [h("dt", {}, term), h("dd", {}, value)];
  const metadata = Object.keys(customer.metadata || {}).length ? JSON.stringify(customer.metadata) : "none";
  return h("section", { class: "card" }, h("h3", {}, "Details"), h("dl", { class: "details" },
    row("Rate limit", customer.rate_limit ?
      `${format.rateLimit(customer.rate_limit)}, shared by its keys` : "none: each key only has its own"),
    row("Quota", customer.quota ? `${format.quota(customer.quota)}, shared by its keys` : "none"),
    row("Metadata", metadata),
    row("Created", format.exact(customer.created_at)),
    row("Updated", format.exact(customer.updated_at))));
}

function deleteDialog(customer) {
  confirmDialog(`Delete “${customer.name}”?`,
    "Its rate limit and quota stop applying and it leaves the list; its audit trail is kept. " +
    "The gateway refuses while keys name the customer: move them to another customer or delete them first.",
    "Delete customer", async () => {
      try {
        await api("DELETE", customerPath(customer.id));
      } catch (error) {
        // A plain Error: its words are shown as they are, without the status before them.
        throw error.status === 409 ? new Error(`Not deleted: ${error.message}.`) : error;
      }
      flash(`Customer “${customer.name}” deleted.`);
      location.hash = "#/customers";
    });
}

/** The first keys that name the customer, and a link to all of them in the key list. */
async function loadKeys(target, id) {
  const all = address("#/keys", { customer_id: id });
  try {
    const { data, headers } = await api("GET", `/v1/keys${query({ customer_id: id, limit: SHOWN })}`);
    const keys = data || [];
    const more = Boolean(headers.get("x-next-cursor"));
    if (keys.length === 0) {
      target.replaceChildren(notice("No key names this customer yet: give a key this customer's id as its customer."));
      return;
    }
    const words = more ? `The first ${SHOWN} of its keys.` :
      `${format.keyCount(keys.length)} ${keys.length === 1 ? "names" : "name"} this customer.`;
    target.replaceChildren(h("p", { class: "section-note" }, words, " ",
      h("a", { href: all, class: "all-keys" }, "All its keys in the key list, with their filters →")), keysTable(keys));
  } catch (error) {
    target.replaceChildren(errorBox(error, () => loadKeys(target, id)));
  }
}

function keysTable(keys) {
  const now = Date.now();
  const head = ["Name", "Environment", "Status", "Last used", "Quota"];
  return h("table", { class: "list customer-keys" },
    h("thead", {}, h("tr", {}, head.map((name) => h("th", { scope: "col" }, name)))),
    h("tbody", {}, keys.map((key) => h("tr", { "data-key-id": key.id },
      cell("Name", h("a", { href: `#/keys/${encodeURIComponent(key.id)}`, class: "key-name" }, key.name || "(no name)")),
      cell("Environment", h("span", { class: `env env-${key.environment}` }, key.environment)),
      cell("Status", h("span", { class: `badge status-${key.status}` }, key.status)),
      cell("Last used", h("span", { title: format.exact(key.last_used_at) || "never used" }, format.relative(key.last_used_at, now))),
      cell("Quota", key.quota ? format.quota(key.quota) : "none")))));
}
