// A tiny element builder. Text always goes in as text nodes: nothing a run produced
// (outputs, tool arguments, error messages) is ever parsed as HTML.

/**
 * h("a#id.button.primary", {href: "/x", onclick: fn}, "text", child, [more, children])
 * Attributes: `class`, `dataset`, `on<event>` handlers, booleans (true = present), others
 * as attributes. Children: strings, numbers, nodes, arrays; null/false are skipped.
 */
export function h(tag, attributes = {}, ...children) {
  const [, name, rest] = /^([a-z][a-z0-9-]*)(.*)$/i.exec(tag);
  const element = document.createElement(name);
  const classes = [];
  for (const [, sign, word] of rest.matchAll(/([#.])([^#.]+)/g)) {
    if (sign === "#") element.id = word;
    else classes.push(word);
  }
  if (classes.length) element.className = classes.join(" ");
  setAttributes(element, attributes);
  append(element, children);
  return element;
}

const SVG_NS = "http://www.w3.org/2000/svg";

/** The same for SVG elements. */
export function s(tag, attributes = {}, ...children) {
  const element = document.createElementNS(SVG_NS, tag);
  setAttributes(element, attributes);
  append(element, children);
  return element;
}

function setAttributes(element, attributes) {
  for (const [name, value] of Object.entries(attributes ?? {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") element.setAttribute("class", [element.getAttribute("class"), value].filter(Boolean).join(" "));
    else if (name === "dataset") Object.assign(element.dataset, value);
    else if (name.startsWith("on") && typeof value === "function") element.addEventListener(name.slice(2), value);
    else if (value === true) element.setAttribute(name, "");
    else element.setAttribute(name, String(value));
  }
}

function append(element, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** Replace all children of ``element``. */
export function replace(element, ...children) {
  element.replaceChildren();
  append(element, children);
  return element;
}

/** Tell screen readers something (the page's polite live region). */
export function announce(text) {
  const region = document.getElementById("announcer");
  if (!region) return;
  region.textContent = "";
  // A new text node in a later task is what makes screen readers read a repeat.
  setTimeout(() => { region.textContent = text; }, 30);
}
