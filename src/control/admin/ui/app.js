// The page's entry: which view the address (#/keys, #/keys/<id>, #/customers,
// #/customers/<id>, #/requests, #/replicas, each with its filters after a "?") asks for,
// and the sign-in when there is no token in this tab.

import { session } from "./api.js";
import { ageFlash, flash } from "./dom.js";
import { renderSignIn } from "./signin.js";
import { renderKeys } from "./keys.js";
import { renderKey } from "./key.js";
import { renderRequests } from "./requests.js";
import { renderReplicas } from "./replicas.js";
import { renderCustomers } from "./customers.js";
import { renderCustomer } from "./customer.js";
import { viewPath } from "./address.js";

function route() {
  ageFlash();
  const nav = document.getElementById("nav");
  if (!session.token()) {
    nav.hidden = true;
    // Signed in, the address shown first still holds: a shared link opens its view.
    renderSignIn(() => route());
    return;
  }
  nav.hidden = false;
  document.getElementById("access").textContent = session.canWrite() ? "Full access" : "Read-only";
  const path = viewPath();
  const [, view, id] = path.match(/^#\/([a-z]+)(?:\/([^/]+))?$/) || [];
  const known = Object.hasOwn(VIEWS, view || "") ? view : "keys";
  markNav(known);
  const [list, one] = VIEWS[known];
  return id !== undefined && one ? one(decoded(id)) : list();
}

/** Each view of the navigation: its list, and the view of one item (#/keys/<id>). */
const VIEWS = {
  keys: [renderKeys, renderKey],
  customers: [renderCustomers, renderCustomer],
  requests: [renderRequests, null],
  replicas: [renderReplicas, null],
};

/** An id from the address; a malformed escape is kept as typed (and is no key). */
function decoded(text) {
  try {
    return decodeURIComponent(text);
  } catch {
    return text;
  }
}

function markNav(current) {
  for (const link of document.querySelectorAll("#nav a[data-nav]")) {
    if (link.dataset.nav === current) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
}

// After a move to another view, the keyboard and screen readers start at its content.
window.addEventListener("hashchange", () => {
  route();
  document.getElementById("main").focus({ preventScroll: true });
});
window.addEventListener("keygate:signed-out", (event) => {
  route();
  flash(event.detail);
});
document.getElementById("sign-out").addEventListener("click", () => {
  session.signOut();
  history.replaceState(null, "", "#/keys");
  route();
  flash("Signed out. The token is gone from this tab.");
});
route();
