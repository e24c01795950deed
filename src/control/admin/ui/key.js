// One key: its details, the actions on it (for a full-access token), its quota, daily usage,
// the audit trail and its recent requests. Each part loads on its own, so one failure hides
// nothing else.

import { api, keyPath, session } from "./api.js";
import { button, errorBox, flash, h, notice, section, show } from "./dom.js";
import * as format from "./format.js";
import { confirmDialog, editDialog, regenerateDialog } from "./dialogs.js";
import { keyUsage } from "./usage.js";
import { quotaCard } from "./quota.js";
import { customerLink } from "./keys.js";
import { keyRequests } from "./requests.js";
import { idleNotice, loadIdle } from "./idle.js";
import { auditTrail } from "./events.js";

export async function renderKey(id) {
  const back = h("p", {}, h("a", { href: "#/keys" }, "← All keys"));
  const view = h("section", { class: "view", "data-key-id": id }, back, notice("Loading the key…"));
  show(view);
  let key;
  try {
    key = (await api("GET", keyPath(id))).data;
  } catch (error) {
    const words = error.status === 404 ? notice("There is no key with this id (it may have been deleted).", "error") : errorBox(error, () => renderKey(id));
    view.replaceChildren(back, words);
    return;
  }
  const idle = h("div", {});
  const usage = h("div", {}, notice("Loading usage…"));
  const events = h("div", {}, notice("Loading the audit trail…"));
  const requests = h("div", {}, notice("Loading recent requests…"));
  const parts = [back, header(key), grace(key), idle, details(key), quotaCard(key, keyPath(key.id, "/quota"), again(key)),
    section("Daily usage", usage), section("Recent requests", requests), section("Audit trail", events)];
  view.replaceChildren(...parts.filter(Boolean));
  loadIdle().then((data) => idle.replaceChildren(idleNotice(data, key.id) || "")).catch(() => {});
  keyUsage(usage, key.id, (counts) => showLastUsed(view, counts.last_used_at));
  auditTrail(events, keyPath(key.id, "/events"));
  const newest = keyRequests(requests, key.id);
  requests.before(h("p", { class: "muted small section-note" },
    "This key's latest requests on this gateway replica, newest first, with why each refusal happened. ",
    button("Refresh", newest)));
}

function header(key) {
  return h("div", { class: "view-head key-head" },
    h("div", {},
      h("h2", {}, key.name || "(no name)", " ", h("span", { class: `badge status-${key.status}` }, key.status)),
      h("p", { class: "muted small" }, `${key.id} · ${key.prefix}… · ${key.environment}`)),
    session.canWrite() ? actions(key) : null);
}

/** Shows `key` again after a change, saying what changed. */
function again(key) {
  return (message) => {
    if (message) flash(message);
    renderKey(key.id);
  };
}

function actions(key) {
  const shown = again(key);
  const change = (verb, done) => async () => {
    try {
      await api("POST", keyPath(key.id, `/${verb}`), {});
      shown(done);
    } catch (error) {
      flash(`Could not ${verb} the key: ${error.message}`);
    }
  };
  return h("div", { class: "actions key-actions" },
    button("Edit", () => editDialog(key, shown)),
    button("Regenerate", () => regenerateDialog(key, (receipt) => shown(format.receipt("Key regenerated", receipt)))),
    key.status === "revoked" ?
      button("Activate", change("activate", "Key activated: it works again."), "") :
      button("Revoke", () => confirmDialog(`Revoke “${key.name}”?`,
        `Traffic using “${key.name}” gets 401 at once: the gateway refuses every request with this key ` +
        "until it is activated again. Nothing is deleted.", "Revoke key",
        async () => {
          // Answered once every replica refuses the key (or past 5 s, naming those that do not).
          const { data } = await api("POST", `${keyPath(key.id, "/revoke")}?wait=applied`, {});
          shown(format.receipt("Key revoked", data.receipt));
        }), "danger"),
    button("Delete", () => confirmDialog(`Delete “${key.name}”?`,
      "The key stops working at once and cannot be brought back. Its audit trail is kept.", "Delete key",
      async () => {
        await api("DELETE", keyPath(key.id));
        flash(`Key “${key.name}” deleted.`);
        location.hash = "#/keys";
      }), "danger"));
}

function grace(key) {
  if (!key.grace_until) return null;
  const used = key.previous_last_used_at ? `last used ${format.relative(key.previous_last_used_at)} (${format.exact(key.previous_last_used_at)})` : "not used since the regeneration";
  return h("p", { class: "notice warn grace" },
    `Grace period: the previous secret keeps working until ${format.exact(key.grace_until)} (${format.relative(key.grace_until)}); it was ${used}.`);
}

function details(key) {
  const row = (term, value, title, name) => [h("dt", {}, term), h("dd", { title: title || null, class: name || null }, value)];
  const metadata = Object.keys(key.metadata || {}).length ? JSON.stringify(key.metadata) : "none";
  return h("section", { class: "card" }, h("h3", {}, "Details"), h("dl", { class: "details" },
    row("Environment", key.environment),
    row("Permissions", key.permissions.length ? key.permissions.join(", ") : "none"),
    row("Rate limit", key.rate_limit ? format.rateLimit(key.rate_limit) : "the gateway's default (rate_limit.default)"),
    row("Quota", key.quota ? format.quota(key.quota) : "none"),
    row("Customer", key.customer_id ? [customerLink(key.customer_id), " · ",
      h("a", { href: `#/customers/${encodeURIComponent(key.customer_id)}`, class: "customer-view" }, "its limits and quota")] : "—"),
    row("Allowed IPs", key.allowed_ips.length ? key.allowed_ips.join(", ") : "any address"),
    row("Expires", key.expires_at ? `${format.exact(key.expires_at)} (${format.relative(key.expires_at)})` : "never"),
    row("Last used", format.relative(key.last_used_at), format.exact(key.last_used_at), "last-used"),
    row("Created", format.exact(key.created_at)),
    row("Updated", format.exact(key.updated_at)),
    row("Metadata", metadata)));
}

/** "Last used" as the usage counts have it, once they include this replica's latest requests. */
function showLastUsed(view, at) {
  const cell = view.querySelector("dd.last-used");
  if (!cell || !at) return;
  cell.textContent = format.relative(at);
  cell.title = format.exact(at);
}
