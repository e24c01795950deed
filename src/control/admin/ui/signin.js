// Sign-in: an admin token, checked against the gateway, then kept in this tab only.

import { api, session } from "./api.js";
import { describe, h, show } from "./dom.js";

/** Shows the sign-in form; `done` runs once a token is accepted. */
export function renderSignIn(done) {
  const input = h("input", {
    id: "token", name: "token", type: "password", required: true,
    autocomplete: "off", spellcheck: "false",
  });
  const status = h("p", { class: "form-error", role: "alert" });
  const form = h("form", { class: "card signin", on: { submit: (event) => submit(event, input, status, done) } },
    h("h2", {}, "Sign in"),
    h("p", {}, "Paste an admin token: the full one (admin.token_env) or the read-only one (admin.read_token_env). " +
      "It stays in this browser tab only and is gone when you sign out or close the tab."),
    h("label", { for: "token" }, "Admin token"),
    input,
    h("div", { class: "actions" }, h("button", { type: "submit", class: "primary" }, "Sign in")),
    status);
  show(form);
  input.focus();
}

async function submit(event, input, status, done) {
  event.preventDefault();
  const token = input.value.trim();
  if (!token) {
    status.textContent = "Enter a token.";
    return;
  }
  status.textContent = "Checking the token…";
  try {
    const access = await accessOf(token);
    session.signIn(token, access);
    done();
  } catch (error) {
    status.textContent = error.status === 401 ? refusal(error.message) : describe(error);
    input.focus();
  }
}

/** The words of the admin API's 401 from a gateway started without an admin token. */
const NO_TOKEN = "no admin token is configured: ";

/** Why a token was refused: a gateway with no admin token configured accepts none, and says
 * what to set. */
function refusal(message) {
  if (typeof message !== "string" || !message.startsWith(NO_TOKEN)) {
    return "The gateway did not accept that token.";
  }
  const what = message.slice(NO_TOKEN.length);
  return "This gateway has no admin token configured, so it accepts none. " +
    what.charAt(0).toUpperCase() + what.slice(1) + ".";
}

/** "write" or "read". A gateway without GET /v1/token knows only the full token. */
async function accessOf(token) {
  try {
    const { data } = await api("GET", "/v1/token", undefined, token);
    return data && data.access === "write" ? "write" : "read";
  } catch (error) {
    if (error.status !== 404) throw error;
    await api("GET", "/v1/keys?limit=1", undefined, token);
    return "write";
  }
}
