// Building the page with DOM calls only: every string becomes a text node or an attribute
// value, never markup, so nothing a user typed can run as script.

/** An element: `attrs` are attributes (`on` maps events to listeners), children are nodes or text. */
export function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  setAttributes(node, attrs);
  append(node, children);
  return node;
}

/** The same for SVG elements. */
export function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  setAttributes(node, attrs);
  append(node, children);
  return node;
}

function setAttributes(node, attrs) {
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "on") {
      for (const [event, listener] of Object.entries(value)) node.addEventListener(event, listener);
    } else {
      node.setAttribute(name, value === true ? "" : String(value));
    }
  }
}

function append(node, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

export function button(label, onClick, className = "") {
  return h("button", { type: "button", class: className || null, on: { click: onClick } }, label);
}

/** Replaces the main area's content. */
export function show(...children) {
  const main = document.getElementById("main");
  main.replaceChildren(...children.filter((child) => child !== null && child !== undefined));
  return main;
}

export function notice(text, kind = "info") {
  return h("p", { class: `notice ${kind}`, role: kind === "error" ? "alert" : "status" }, text);
}

/** An error in words, with a way to try again. */
export function errorBox(error, retry) {
  return h("div", { class: "notice error", role: "alert" },
    h("p", {}, describe(error)),
    retry ? button("Try again", retry) : null);
}

export function describe(error) {
  if (!error) return "Something went wrong.";
  if (error.status === 0) return error.message;
  const field = error.field ? ` (field: ${error.field})` : "";
  const status = error.status && error.status !== 400 ? `The gateway answered ${error.status}: ` : "";
  return `${status}${error.message}${field}`;
}

let keepFlash = false;

/** A message that survives the next view change (e.g. "Key deleted."). */
export function flash(text) {
  const node = document.getElementById("flash");
  node.textContent = text;
  node.hidden = false;
  keepFlash = true;
}

/** Called on each view change: the flash stays for one change after it was set. */
export function ageFlash() {
  if (keepFlash) {
    keepFlash = false;
    return;
  }
  const node = document.getElementById("flash");
  node.hidden = true;
  node.textContent = "";
}

/**
 * A table cell labelled `label`; its content in one block, so that at a phone's width, where
 * each cell is its label beside its content, the content stays beside the label.
 */
export function cell(label, ...content) {
  return h("td", { "data-label": label }, h("div", {}, ...content));
}

/** A titled section whose body is filled later. */
export function section(title, ...children) {
  return h("section", { class: "card" }, h("h3", {}, title), ...children);
}
