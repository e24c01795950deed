// The dialogs that change keys: create, edit, regenerate, and a confirmation. Each is a
// <dialog> (the browser traps focus and Escape closes it) removed from the page when it
// closes, so a secret shown in one is gone with it.

import { api, keyPath } from "./api.js";
import { button, describe, h } from "./dom.js";
import * as format from "./format.js";

/** Opens a modal dialog titled `title`; it removes itself from the page once closed. */
export function openDialog(title) {
  const heading = h("h2", { id: "dialog-title" }, title);
  const body = h("div", { class: "dialog-body" });
  const dialog = h("dialog", { class: "dialog", "aria-labelledby": "dialog-title" }, heading, body);
  dialog.addEventListener("close", () => dialog.remove());
  document.body.append(dialog);
  dialog.showModal();
  return { dialog, heading, body };
}

/** Shows a new secret once, with a copy button; `done` runs when the dialog closes. */
export function showSecret({ dialog, heading, body }, secret, done) {
  heading.textContent = "Copy the secret now";
  const status = h("p", { class: "muted", role: "status" });
  const code = h("code", { class: "secret", "data-secret": "" }, secret);
  const copy = button("Copy", async () => {
    try {
      await navigator.clipboard.writeText(secret);
      status.textContent = "Copied to the clipboard.";
    } catch {
      window.getSelection().selectAllChildren(code);
      status.textContent = "The browser refused the clipboard: the secret is selected, copy it with Ctrl+C.";
    }
  });
  const close = button("Done", () => dialog.close(), "primary");
  body.replaceChildren(
    h("p", {}, "This is the only time the secret is shown: keygate keeps only its hash. Store it somewhere safe."),
    h("div", { class: "secret-row" }, code, copy),
    status,
    h("div", { class: "actions" }, close));
  dialog.addEventListener("close", done, { once: true });
  copy.focus();
}

/** A labelled field: `f-<name>` is the input's id, `h-<name>` its help's. */
export function field(name, label, input, help) {
  return h("div", { class: "field" },
    h("label", { for: `f-${name}` }, label), input, help ? h("small", { class: "muted", id: `h-${name}` }, help) : null);
}

/** An input for `field`. */
export function input(name, attrs = {}) {
  return h("input", { id: `f-${name}`, name, "aria-describedby": `h-${name}`, ...attrs });
}

/** The rate limit's fields (requests, per, burst), filled from `limit`; empty: `none` says what. */
export function limitFields(limit, none) {
  // The API spells out the default burst (one period's requests); the field shows only another.
  const burst = limit && limit.burst && limit.burst !== limit.requests ? limit.burst : "";
  const per = limit ? limit.per : "1m";
  const pers = ["1s", "1m", "1h", "1d"].includes(per) ? ["1s", "1m", "1h", "1d"] : ["1s", "1m", "1h", "1d", per];
  return h("fieldset", { class: "inline" }, h("legend", {}, "Rate limit"),
    field("requests", "Requests", input("requests", { type: "number", min: 1, value: limit ? limit.requests : "" }), `empty: ${none}`),
    field("per", "per", h("select", { id: "f-per", name: "per" }, pers.map((p) => h("option", { value: p, selected: p === per }, p)))),
    field("burst", "Burst", input("burst", { type: "number", min: 1, value: burst }), "most requests at once; empty: as many as requests"));
}

/** The quota's fields (requests, period), filled from `quota`. */
export function quotaFields(quota) {
  const period = quota ? quota.period : "month";
  return h("fieldset", { class: "inline" }, h("legend", {}, "Quota"),
    field("quota_limit", "Requests", input("quota_limit", { type: "number", min: 1, value: quota ? quota.limit : "" }), "empty: no quota"),
    field("quota_period", "per", h("select", { id: "f-quota_period", name: "quota_period" },
      ["hour", "day", "week", "month", "none"].map((p) => h("option", { value: p, selected: p === period }, p === "none" ? "never renews" : p)))));
}

/** The fields shared by create and edit, filled from `key` when editing. */
function keyFields(key) {
  return [
    field("name", "Name", input("name", { required: true, maxlength: 200, value: key ? key.name : "" })),
    key ? null : field("environment", "Environment", h("select", { id: "f-environment", name: "environment" },
      ["production", "staging", "development"].map((env) => h("option", { value: env }, env)))),
    field("permissions", "Permissions", input("permissions", { value: key ? key.permissions.join(", ") : "", placeholder: "customer:read, invoice:*" }),
      "resource:action, comma separated; * grants everything; empty grants nothing"),
    limitFields(key ? key.rate_limit : null, "the gateway's default"),
    quotaFields(key ? key.quota : null),
    field("customer_id", "Customer", input("customer_id", { value: key && key.customer_id ? key.customer_id : "", list: "customer-ids", autocomplete: "off" }),
      "optional: the customer this key may act for"),
    customerChoices(),
    field("allowed_ips", "Allowed IPs", input("allowed_ips", { value: key ? key.allowed_ips.join(", ") : "", placeholder: "203.0.113.0/24" }),
      "addresses or CIDRs, comma separated; empty: any address"),
    field("expires_at", "Expires", input("expires_at", { type: "datetime-local", value: format.toLocalInput(key && key.expires_at) }), "your local time; empty: never"),
  ];
}

/** The ids of existing customers (a first page), offered by the customer field as it is typed. */
function customerChoices() {
  const list = h("datalist", { id: "customer-ids" });
  api("GET", "/v1/customers?limit=1000").then(({ data }) => {
    list.append(...(data || []).map((customer) => h("option", { value: customer.id }, customer.name)));
  }, () => {});
  return list;
}

/** The body of a create or edit request from the form; throws an Error with words. */
function readFields(form, creating) {
  const value = (name) => form.elements[name].value.trim();
  const body = {
    name: value("name"),
    permissions: format.list(value("permissions")),
    rate_limit: readRateLimit(form),
    customer_id: value("customer_id") || null,
    allowed_ips: format.list(value("allowed_ips")),
    expires_at: null,
    quota: readQuota(form),
  };
  if (value("expires_at")) {
    const at = new Date(value("expires_at"));
    if (Number.isNaN(at.getTime())) throw new Error("The expiry is not a date and time.");
    body.expires_at = at.toISOString();
  }
  if (creating) body.environment = value("environment");
  return body;
}

/** The `rate_limit` of the form's `limitFields`: null (none of its own) without requests. */
export function readRateLimit(form) {
  const value = (name) => form.elements[name].value.trim();
  const [requests, per, burst] = [value("requests"), value("per"), value("burst")];
  if (!requests) {
    if (burst) throw Object.assign(new Error("A burst needs a rate: fill in Requests as well."), { field: "requests" });
    return null;
  }
  const limit = { requests: Number(requests), per };
  if (burst) limit.burst = Number(burst);
  return limit;
}

/** The `quota` of the form's `quotaFields`, or null. Without an anchor, one keeps its quota's, or starts now. */
export function readQuota(form) {
  const limit = form.elements.quota_limit.value.trim();
  return limit ? { limit: Number(limit), period: form.elements.quota_period.value } : null;
}

/** A form in a dialog that sends `submit(form)` and shows API errors beside it. */
export function formDialog(parts, fields, label, submit) {
  const error = h("p", { class: "form-error", role: "alert" });
  const send = h("button", { type: "submit", class: "primary" }, label);
  const form = h("form", { class: "key-form", method: "dialog", on: { submit: async (event) => {
    event.preventDefault();
    error.textContent = "";
    send.disabled = true;
    try {
      await submit(form);
    } catch (failure) {
      error.textContent = failure.status !== undefined ? describe(failure) : failure.message;
      markField(form, failure.field);
    } finally {
      send.disabled = false;
    }
  } } }, fields, error, h("div", { class: "actions" }, button("Cancel", () => parts.dialog.close()), send));
  parts.body.replaceChildren(form);
  const first = form.querySelector("input, select");
  if (first) first.focus();
  return form;
}

function markField(form, field) {
  for (const input of form.querySelectorAll("[aria-invalid]")) input.removeAttribute("aria-invalid");
  // The rate limit's parts have fields of their own: "rate_limit.burst" is the burst field.
  let name = field && (field.startsWith("rate_limit.") ? field.slice("rate_limit.".length) : field.split(/[.[]/)[0]);
  if (name === "quota") name = "quota_limit";
  const input = name && form.elements[name];
  if (input && input.setAttribute) {
    input.setAttribute("aria-invalid", "true");
    input.focus();
  }
}

export function createDialog(done) {
  const parts = openDialog("Create a key");
  formDialog(parts, keyFields(null), "Create key", async (form) => {
    const { data } = await api("POST", "/v1/keys", readFields(form, true));
    showSecret(parts, data.key, done);
  });
}

export function editDialog(key, done) {
  const parts = openDialog(`Edit “${key.name}”`);
  formDialog(parts, keyFields(key), "Save", async (form) => {
    await api("PATCH", keyPath(key.id), readFields(form, false));
    parts.dialog.close();
    done("Changes saved.");
  });
}

export function regenerateDialog(key, done) {
  const parts = openDialog(`Regenerate “${key.name}”`);
  const grace = h("input", { id: "f-grace", name: "grace", placeholder: "e.g. 10m, 1h, 7d", "aria-describedby": "h-grace" });
  const fields = [
    h("p", {}, "A new secret replaces the current one; the key keeps its name, permissions and limits."),
    h("div", { class: "field" }, h("label", { for: "f-grace" }, "Grace period"), grace,
      h("small", { class: "muted", id: "h-grace" }, "how long the old secret keeps working (at most 30d); empty: it stops now")),
  ];
  formDialog(parts, fields, "Regenerate", async () => {
    const body = grace.value.trim() ? { grace: grace.value.trim() } : {};
    const { data } = await api("POST", `${keyPath(key.id, "/regenerate")}?wait=applied`, body);
    showSecret(parts, data.key, () => done(data.receipt));
  });
}

/** Asks before `action` runs; `label` names the button that confirms. */
export function confirmDialog(title, text, label, action) {
  const parts = openDialog(title);
  formDialog(parts, [h("p", {}, text)], label, async () => {
    await action();
    parts.dialog.close();
  });
  parts.body.querySelector("button.primary").classList.add("danger");
  parts.body.querySelector("button").focus();
}
