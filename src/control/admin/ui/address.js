// The address of a view, e.g. #/keys?environment=staging&cursor=42: filters and the page shown
// live in it, so a reload or a shared link shows the same view and back and forward move
// between views. The cursors of the pages before the one shown travel in the history entry.

import { button, h } from "./dom.js";

function split() {
  const hash = location.hash || "#/keys";
  const at = hash.indexOf("?");
  return at < 0 ? [hash, ""] : [hash.slice(0, at), hash.slice(at + 1)];
}

/** The view's path: "#/keys", "#/keys/<id>" or "#/requests". */
export function viewPath() {
  return split()[0];
}

/** The view's parameters, e.g. { environment: "staging" }; "" for each of `names` not given. */
export function viewParams(names) {
  const given = new URLSearchParams(split()[1]);
  return Object.fromEntries(names.map((name) => [name, given.get(name) || ""]));
}

/** `path` with the non-empty `values` as its query. */
export function address(path, values = {}) {
  const pairs = Object.entries(values).filter(([, value]) => value !== "" && value !== null && value !== undefined);
  return pairs.length ? `${path}?${new URLSearchParams(pairs)}` : path;
}

/** Shows `path` with `values`: a new history entry, or the same one when nothing changed. */
export function go(path, values = {}, state = null) {
  const next = address(path, values);
  if (next === location.hash) history.replaceState(state, "", next);
  else history.pushState(state, "", next);
  window.dispatchEvent(new HashChangeEvent("hashchange"));
}

/** The cursors of the pages before the one shown, oldest first, as this history entry knows them. */
function previousCursors() {
  const state = history.state;
  return state && Array.isArray(state.previous) ? state.previous.filter((c) => typeof c === "string") : [];
}

/**
 * Buttons to the page before and the next one (`next`: the API's X-Next-Cursor) of the view
 * at `path` showing `values` (with its `cursor`). Opened from a link on a later page, the way
 * back leads to the first page.
 */
export function pager(path, values, next, labels = { back: "← Previous page", forward: "Next page →" }) {
  const previous = previousCursors();
  const cursor = values.cursor || "";
  const back = () => {
    const earlier = previous.slice(0, -1);
    go(path, { ...values, cursor: previous.length ? previous[previous.length - 1] : "" }, { previous: earlier });
  };
  const forward = () => go(path, { ...values, cursor: next }, { previous: [...previous, cursor] });
  return h("nav", { class: "pager", "aria-label": "Pages" },
    cursor ? button(previous.length ? labels.back : "← First page", back) : h("span"),
    next ? button(labels.forward, forward) : null);
}
