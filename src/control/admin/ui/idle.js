// Idle expiry (lifecycle.idle_expiry): which keys it will revoke within the largest
// warn_before, from GET /v1/idle-keys, shown as a notice beside the key.

import { api } from "./api.js";
import { h } from "./dom.js";
import * as format from "./format.js";

/** { idle_expiry, warn_before, byId } or null when the gateway does not say. */
export async function loadIdle() {
  try {
    const { data } = await api("GET", "/v1/idle-keys");
    const byId = new Map((data.keys || []).map((key) => [key.id, key]));
    return { ...data, byId };
  } catch (error) {
    if (error.status === 404) return null;
    throw error;
  }
}

/** The notice for key `id`, or null when idle expiry does not concern it. */
export function idleNotice(idle, id, now = Date.now()) {
  const key = idle && idle.byId.get(id);
  if (!key) return null;
  const due = Date.parse(key.revokes_at) <= now;
  const text = due ? "Idle: revoked at the next sweep unless used" : `Idle: revoked ${format.relative(key.revokes_at, now)} unless used`;
  const title = `Unused since ${format.exact(key.idle_since)}; idle expiry (${idle.idle_expiry}) revokes it at ${format.exact(key.revokes_at)}.`;
  return h("p", { class: "idle-warning", title }, `⚠ ${text}`);
}
