// The dialogs that create and edit a customer (POST /v1/customers, PATCH /v1/customers/{id}):
// id (on create), name, rate limit, quota and metadata, with the API's refusals beside the
// field they name.

import { api, customerPath } from "./api.js";
import { flash, h } from "./dom.js";
import { field, formDialog, input, limitFields, openDialog, quotaFields, readQuota, readRateLimit } from "./dialogs.js";
import { go } from "./address.js";

/** Opens the create dialog (its id filled with `id`, if given); shows the customer once made. */
export function createCustomerDialog(id = "") {
  const parts = openDialog("Create a customer");
  formDialog(parts, customerFields(null, id), "Create customer", async (form) => {
    const { data } = await api("POST", "/v1/customers", readCustomer(form, true)).catch((error) => {
      // 409: the id is taken.
      throw error.status === 409 ? Object.assign(error, { field: "id" }) : error;
    });
    parts.dialog.close();
    flash(`Customer “${data.name}” created.`);
    go(`#/customers/${encodeURIComponent(data.id)}`);
  });
}

/** Opens the edit dialog of `customer`; `done(message)` shows it again. */
export function editCustomerDialog(customer, done) {
  const parts = openDialog(`Edit “${customer.name}”`);
  formDialog(parts, customerFields(customer, customer.id), "Save", async (form) => {
    await api("PATCH", customerPath(customer.id), readCustomer(form, false));
    parts.dialog.close();
    done("Changes saved.");
  });
}

function customerFields(customer, id) {
  const metadata = customer && Object.keys(customer.metadata || {}).length ? JSON.stringify(customer.metadata, null, 2) : "";
  return [
    customer ? null : field("id", "Id", input("id", { required: true, maxlength: 200, value: id, autocomplete: "off", spellcheck: "false" }),
      "the customer_id its keys carry (and that scopes them); it cannot change later"),
    field("name", "Name", input("name", { required: Boolean(customer), maxlength: 200, value: customer ? customer.name : "" }),
      customer ? null : "empty: the id"),
    limitFields(customer ? customer.rate_limit : null, "no limit of its own"),
    quotaFields(customer ? customer.quota : null),
    field("metadata", "Metadata", h("textarea", {
      id: "f-metadata", name: "metadata", rows: 3, spellcheck: "false", "aria-describedby": "h-metadata",
      placeholder: "{\"plan\": \"pro\"}",
    }, metadata), "a JSON object; empty: none"),
  ];
}

/** The body of a create or edit request from the form; throws an Error with words. */
function readCustomer(form, creating) {
  const value = (name) => form.elements[name].value.trim();
  const body = {
    rate_limit: readRateLimit(form),
    quota: readQuota(form),
    metadata: readMetadata(value("metadata")),
  };
  if (creating) {
    body.id = value("id");
    if (value("name")) body.name = value("name");
  } else {
    body.name = value("name");
  }
  return body;
}

/** A JSON object from the metadata field: {} when empty. */
export function readMetadata(text) {
  if (!text) return {};
  let parsed;
  try {
    parsed = JSON.parse(text);
  } catch {
    parsed = undefined;
  }
  if (parsed === null || typeof parsed !== "object" || Array.isArray(parsed)) {
    throw Object.assign(new Error("Metadata must be a JSON object, e.g. {\"plan\": \"pro\"}, or empty."), { field: "metadata" });
  }
  return parsed;
}
