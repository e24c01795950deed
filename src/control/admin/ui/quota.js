// The quota of a key or a customer in its view (SPEC 11): this period's use as a bar with when
// it renews, from `quota_state` of GET /v1/keys/{id} or /v1/customers/{id}; for a full-access
// token, a top-up and a reset (POST .../quota), each audited by the gateway.

import { api, session } from "./api.js";
import { button, h, section, svg } from "./dom.js";
import * as format from "./format.js";
import { confirmDialog, formDialog, openDialog } from "./dialogs.js";

/** Share of the allowance from which the bar warns. */
const HIGH = 0.8;

/**
 * The quota card of `owner` (a key or a customer: its `name`, `quota` and `quota_state`), or
 * nothing without a quota; `path` is its POST .../quota, `again(message)` shows it again.
 */
export function quotaCard(owner, path, again) {
  if (!owner.quota) return null;
  const state = owner.quota_state;
  return section("Quota",
    state ? quotaBar(state) : h("p", { class: "notice" }, "The gateway did not say how much of the quota is used."),
    state ? h("p", { class: "quota-words" }, format.quotaUsed(owner.quota, state)) : null,
    state ? h("p", { class: "muted small quota-renews", title: format.exact(state.resets_at) || null }, format.quotaRenews(owner.quota, state)) : null,
    session.canWrite() ? h("div", { class: "actions" },
      button("Top up", () => topUpDialog(owner, path, again)),
      button("Reset", () => resetDialog(owner, path, again))) : null);
}

/** The share used as a bar; it warns from `HIGH` and is full (red) when nothing is left. */
export function quotaBar(state) {
  const share = state.limit > 0 ? Math.min(1, state.used / state.limit) : 1;
  const level = state.remaining === 0 ? "full" : share >= HIGH ? "high" : "ok";
  return h("div", {
    class: `quota-bar quota-${level}`, role: "progressbar", "aria-label": "Quota used this period",
    "aria-valuemin": 0, "aria-valuemax": state.limit, "aria-valuenow": Math.min(state.used, state.limit),
    "aria-valuetext": `${state.used} of ${state.limit} used`,
  }, svg("svg", { viewBox: "0 0 1000 10", preserveAspectRatio: "none", "aria-hidden": "true" },
    svg("rect", { class: "track", width: 1000, height: 10 }),
    svg("rect", { class: "used", width: Math.round(share * 1000), height: 10 })));
}

function topUpDialog(owner, path, again) {
  const parts = openDialog(`Top up the quota of “${owner.name}”`);
  const input = h("input", { id: "f-add", name: "add", type: "number", min: 1, step: 1, required: true, "aria-describedby": "h-add" });
  const help = owner.quota.period === "none" ?
    "credits added to what is left; they stay until used" :
    `added to this period's allowance only; the next period (a ${owner.quota.period}) starts from ${owner.quota.limit} again`;
  formDialog(parts, [h("div", { class: "field" }, h("label", { for: "f-add" }, "Requests to add"), input,
    h("small", { class: "muted", id: "h-add" }, help))], "Top up", async () => {
    const add = Number(input.value);
    if (!Number.isSafeInteger(add) || add < 1) {
      throw Object.assign(new Error("Give a whole number of requests, 1 or more."), { field: "add" });
    }
    await api("POST", path, { add });
    parts.dialog.close();
    again(`Quota topped up by ${add}.`);
  });
}

function resetDialog(owner, path, again) {
  const renews = owner.quota.period === "none" ? "" : " The period keeps its renewal time.";
  confirmDialog(`Reset the quota of “${owner.name}”?`,
    `This period starts afresh: nothing used and no top-ups, so “${owner.name}” has its full ${format.quota(owner.quota)} again.${renews}`,
    "Reset quota", async () => {
      await api("POST", path, { reset: true });
      again("Quota reset: nothing used this period.");
    });
}
