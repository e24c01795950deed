// Turning API values into words for people. Pure functions: no DOM.

const UNITS = [
  ["year", 365 * 86400],
  ["month", 30 * 86400],
  ["day", 86400],
  ["hour", 3600],
  ["minute", 60],
];

/** "3 hours ago", "in 2 days", "just now", or `never` for a missing time. */
export function relative(iso, now = Date.now(), never = "never") {
  if (!iso) return never;
  const then = Date.parse(iso);
  if (Number.isNaN(then)) return iso;
  const seconds = Math.round((now - then) / 1000);
  const size = Math.abs(seconds);
  if (size < 60) return "just now";
  for (const [unit, length] of UNITS) {
    if (size >= length) {
      const n = Math.floor(size / length);
      const words = `${n} ${unit}${n === 1 ? "" : "s"}`;
      return seconds >= 0 ? `${words} ago` : `in ${words}`;
    }
  }
  return "just now";
}

/** A full UTC time, e.g. "2026-12-01 14:05:09 UTC". */
export function exact(iso) {
  if (!iso) return "";
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return iso;
  return `${date.toISOString().slice(0, 19).replace("T", " ")} UTC`;
}

/**
 * When usage counts were last written, for "as of": "14:05:09 UTC" on the same UTC day as
 * `now`, the full time otherwise; `null` for never.
 */
export function asOf(iso, now = Date.now()) {
  if (!iso) return null;
  const full = exact(iso);
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return full;
  const sameDay = date.toISOString().slice(0, 10) === new Date(now).toISOString().slice(0, 10);
  return sameDay ? full.slice(11) : full;
}

/** "customer:read, customer:write +2 more", "all (*)", or "none". */
export function permissions(list) {
  if (!list || list.length === 0) return "none";
  if (list.includes("*")) return "all (*)";
  const shown = list.slice(0, 2).join(", ");
  return list.length > 2 ? `${shown} +${list.length - 2} more` : shown;
}

/** "100 per 1m (burst 20)" or "default" (the gateway's rate_limit.default). */
export function rateLimit(limit) {
  if (!limit) return "default";
  const burst = limit.burst && limit.burst !== limit.requests ? ` (burst ${limit.burst})` : "";
  return `${limit.requests} per ${limit.per}${burst}`;
}

/** "1000 a month" or "1000 credits" (period none). */
export function quota(spec) {
  return spec.period === "none" ? `${spec.limit} credits` : `${spec.limit} a ${spec.period}`;
}

/**
 * "120 of 1000 requests used this period (12%), 880 left." from a key's quota and quota_state
 * (a period starts at the quota's anchor, not at midnight: its renewal says when it ends).
 */
export function quotaUsed(spec, state) {
  const share = state.limit > 0 ? Math.floor((state.used * 100) / state.limit) : 100;
  const what = spec.period === "none" ? "credits used" : "requests used this period";
  const added = state.limit > spec.limit ? ` The allowance includes ${state.limit - spec.limit} topped up.` : "";
  return `${state.used} of ${state.limit} ${what} (${share}%), ${state.remaining} left.${added}`;
}

/** "Renews 2026-02-15 00:00:00 UTC (in 5 days)." or, for credits, that only a top-up adds more. */
export function quotaRenews(spec, state) {
  if (!state.resets_at) return "Never renews: only a top-up adds more.";
  return `Renews ${exact(state.resets_at)} (${relative(state.resets_at)}).`;
}

/** "8 of 10 (80%), renews in 23 hours" or "5 of 50 credits (10%), never renews": a list's line. */
export function quotaBrief(spec, state, now = Date.now()) {
  const share = state.limit > 0 ? Math.floor((state.used * 100) / state.limit) : 100;
  const what = spec.period === "none" ? " credits" : "";
  const renews = state.resets_at ? `renews ${relative(state.resets_at, now)}` : "never renews";
  return `${state.used} of ${state.limit}${what} (${share}%), ${renews}`;
}

/** "no keys", "1 key", "3 keys", or "100+ keys" when there are `more` than counted. */
export function keyCount(n, more = false) {
  if (more) return `${n}+ keys`;
  return n === 0 ? "no keys" : `${n} key${n === 1 ? "" : "s"}`;
}

const REASONS = {
  missing: "no key sent",
  malformed: "malformed key",
  unknown: "unknown key",
  revoked: "key revoked",
  expired: "key expired",
  wrong_environment: "key of another environment",
  permission: "permission denied",
  ip: "client address not allowed",
  customer: "other customer's resource",
  rate_limited: "rate limited",
  customer_rate_limited: "customer's rate limit reached",
  quota: "quota spent",
  customer_quota: "customer's quota spent",
  no_route: "no route",
};

/** A refusal reason in words, keeping the code: "permission denied (permission)". */
export function reason(code) {
  if (!code) return "";
  const words = REASONS[code];
  return words ? `${words} (${code})` : code.replaceAll("_", " ");
}

/** Splits "a, b c" into ["a", "b", "c"]. */
export function list(text) {
  return text.split(/[\s,]+/).filter((item) => item !== "");
}

/** A datetime-local input value (local time) from an RFC 3339 time, or "". */
export function toLocalInput(iso) {
  if (!iso) return "";
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return "";
  const local = new Date(date.getTime() - date.getTimezoneOffset() * 60000);
  return local.toISOString().slice(0, 16);
}

/** A change's receipt in words: "Key revoked on 3 of 3 replicas in 14 ms." */
export function receipt(done, receipt) {
  if (!receipt || receipt.error || !Array.isArray(receipt.applied)) {
    return `${done} on this replica; the others could not be checked.`;
  }
  const replicas = receipt.replicas === 1 ? "replica" : "replicas";
  const words = `${done} on ${receipt.applied.length} of ${receipt.replicas} ${replicas} in ${Math.round(receipt.waited_ms)} ms`;
  if (!receipt.behind.length) return `${words}.`;
  const behind = receipt.behind.map((r) => `${r.host} (${r.replica})`).join(", ");
  return `${words}; not yet on ${behind}.`;
}
