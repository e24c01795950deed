// The replicas on this store (GET /v1/replicas): each gateway's version, config digest,
// key-table revision and age, and limiter, flagged where it differs from most of the others
// or its table lags.

import { api } from "./api.js";
import { errorBox, h, notice, show } from "./dom.js";
import * as format from "./format.js";

export function renderReplicas() {
  const results = h("div", { class: "results" }, notice("Loading the replicas…"));
  show(h("section", { class: "view" },
    h("div", { class: "view-head" }, h("h2", {}, "Replicas")),
    h("p", { class: "muted" }, "The gateways serving from this store, as their heartbeats (one a second) report them."),
    results));
  load(results);
}

async function load(target) {
  try {
    const { data } = await api("GET", "/v1/replicas");
    const replicas = (data && data.replicas) || [];
    target.replaceChildren(summary(replicas), replicas.length ? table(replicas) : "");
  } catch (error) {
    target.replaceChildren(error.status === 404 ?
      notice("This gateway does not list replicas (GET /v1/replicas is missing).") :
      errorBox(error, () => load(target)));
  }
}

function flagged(replica) {
  return replica.config_differs || replica.version_differs || replica.lagging;
}

function summary(replicas) {
  const n = replicas.length;
  if (!n) return notice("No replica has reported yet.");
  const odd = replicas.filter(flagged).length;
  const count = `${n} ${n === 1 ? "replica" : "replicas"}`;
  return odd ?
    notice(`${count}; ${odd} flagged below: another config or version than the others, or a lagging key table.`, "error") :
    notice(`${count}, on one config and one version, none lagging.`);
}

function table(replicas) {
  const now = Date.now();
  const head = ["Replica", "Version", "Config", "Key table", "Limiter", "Heartbeat"];
  return h("table", { class: "list replicas" },
    h("thead", {}, h("tr", {}, head.map((name) => h("th", { scope: "col" }, name)))),
    h("tbody", {}, replicas.map((replica) => row(replica, now))));
}

function row(r, now) {
  const cell = (label, ...content) => h("td", { "data-label": label }, ...content);
  const flag = (on, text) => on ? h("span", { class: "badge flag" }, text) : null;
  const where = r.advertise ? `${r.host} · ${r.advertise}` : `${r.host} · not advertised`;
  const synced = r.synced_at ? `synced ${format.relative(r.synced_at, now)}` : "not loaded yet";
  return h("tr", { "data-replica": r.id, "data-flagged": String(flagged(r)) },
    cell("Replica", h("code", {}, r.id), r.self ? h("span", { class: "muted small" }, " (this one)") : null,
      h("div", { class: "muted small" }, where)),
    cell("Version", `${r.version} `, flag(r.version_differs, "differs")),
    cell("Config", h("code", {}, r.config_digest), " ", flag(r.config_differs, "differs")),
    cell("Key table", `revision ${r.revision} `, flag(r.lagging, "lagging"), h("div", { class: "muted small" }, synced)),
    cell("Limiter", r.limiter),
    cell("Heartbeat", h("span", { title: format.exact(r.heartbeat_at) }, format.relative(r.heartbeat_at, now))));
}
