// The admin API, as the page uses it: the signed-in token (kept in this tab's sessionStorage,
// never in a cookie), JSON in and out, and every failure turned into an ApiError with words.

const TOKEN = "keygate.token";
const ACCESS = "keygate.access";

export class ApiError extends Error {
  constructor(message, status, field) {
    super(message);
    this.status = status;
    this.field = field || null;
  }
}

export const session = {
  token: () => sessionStorage.getItem(TOKEN),
  canWrite: () => sessionStorage.getItem(ACCESS) === "write",
  signIn(token, access) {
    sessionStorage.setItem(TOKEN, token);
    sessionStorage.setItem(ACCESS, access);
  },
  signOut() {
    sessionStorage.removeItem(TOKEN);
    sessionStorage.removeItem(ACCESS);
  },
};

const LOST =
  "The gateway cannot be reached: the connection was lost or the gateway stopped. " +
  "Check that it runs, then try again.";

/** `method path` with the session's token (or `token`); resolves to { data, headers }. */
export async function api(method, path, body, token = session.token()) {
  const headers = { Authorization: `Bearer ${token}` };
  const init = { method, headers, cache: "no-store", credentials: "omit" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch {
    throw new ApiError(LOST, 0);
  }
  const data = await readJson(response);
  if (response.ok) return { data, headers: response.headers };
  if (response.status === 401 && token === session.token()) {
    session.signOut();
    window.dispatchEvent(new CustomEvent("keygate:signed-out", {
      detail: "The gateway no longer accepts your token (it may have been changed). Sign in again.",
    }));
  }
  const message = (data && typeof data.error === "string" && data.error) || response.statusText || "request failed";
  throw new ApiError(message, response.status, data && data.field);
}

async function readJson(response) {
  try {
    const text = await response.text();
    return text ? JSON.parse(text) : null;
  } catch {
    return null;
  }
}

/** A query string from the non-empty values of `params`. */
export function query(params) {
  const pairs = Object.entries(params).filter(([, value]) => value !== "" && value !== null && value !== undefined);
  return pairs.length ? `?${new URLSearchParams(pairs)}` : "";
}

export const keyPath = (id, rest = "") => `/v1/keys/${encodeURIComponent(id)}${rest}`;
export const customerPath = (id, rest = "") => `/v1/customers/${encodeURIComponent(id)}${rest}`;
