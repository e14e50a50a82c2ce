// The console's entry point: log in, route between the pages, keep the header current.
//
// Pages (client-side routes under <root>/ui/): the runs list, a run (/ui/runs/<id>) and the
// submit form (/ui/submit). Each page module exports a function that builds the page and
// returns {element, title, dispose}; dispose stops its polling and streams.

import { Api } from "./api.js";
import { captureKeyFromUrl, forgetKey, saveKey, storedKey } from "./auth.js";
import { h, replace } from "./dom.js";
import { loginPage } from "./views/login.js";
import { runPage } from "./views/run.js";
import { runsPage } from "./views/runs.js";
import { submitPage } from "./views/submit.js";

const root = (document.documentElement.dataset.root ?? "").replace(/\/$/, "");
const base = `${root}/ui`;
const main = document.getElementById("main");

/** What the whole console knows about who is using it. */
const session = {
  /** GET /auth/me, or null when the API has no authentication. */
  me: null,
  /** "key": logged in with a key; "none": the API asks for none; "login": a key is needed. */
  auth: "login",
  message: null,
};

const api = new Api({ root, key: storedKey, onUnauthorized: () => loggedOut("The API refused the key (it may have been revoked). Log in again.") });

let current = null;

/** Can the logged-in key do ``scope``? (true when the API has no authentication) */
function can(scope) {
  if (session.auth === "none") return true;
  const scopes = session.me?.scopes ?? [];
  return scopes.includes(scope) || scopes.includes("admin");
}

const context = {
  api,
  base,
  session,
  can,
  get admin() { return session.me?.scopes?.includes("admin") ?? false; },
  navigate,
  login: logIn,
};

/** Who is this key? Sets ``session``; true when the console may show pages. */
async function identify() {
  try {
    session.me = await api.me();
    session.auth = session.me.via === "none" || !storedKey() ? "none" : "key"; // FLOWRELAY_AUTH=none
  } catch (error) {
    if (error.status === 404) { // an API without authentication has no /auth/me
      session.me = null;
      session.auth = "none";
    } else if (error.status === 401) {
      session.me = null;
      session.auth = "login";
    } else {
      throw error;
    }
  }
  showIdentity();
  return session.auth !== "login";
}

function showIdentity() {
  const box = document.getElementById("identity");
  const text = document.getElementById("identity-text");
  const me = session.me;
  box.hidden = session.auth === "login";
  if (session.auth === "none") text.textContent = "No authentication on this API";
  else if (me) text.textContent = `Tenant ${me.tenant}${me.name ? ` · key ${me.name}` : ""} · ${(me.scopes ?? []).join(", ")}`;
  document.getElementById("logout").hidden = session.auth !== "key";
  const submitLink = document.querySelector('[data-section="submit"]');
  if (submitLink) submitLink.closest("li").hidden = session.auth !== "login" && !can("submit");
}

/** Try ``key``; on success keep it and show the page the user wanted. */
async function logIn(key) {
  try {
    const me = await api.me({ key });
    saveKey(key);
    session.me = me;
    session.auth = me.via === "none" ? "none" : "key";
  } catch (error) {
    if (error.status !== 404) throw error;
    session.auth = "none"; // nothing to log in to: the API takes no keys
    session.me = null;
  }
  session.message = null;
  showIdentity();
  route();
}

function loggedOut(message) {
  forgetKey();
  session.me = null;
  session.auth = "login";
  session.message = message;
  showIdentity();
  route();
}

/** Go to a console path (e.g. "/runs/ID") without reloading. */
function navigate(path, { replace: replaceEntry = false } = {}) {
  const url = path.startsWith(base) ? path : `${base}${path}`;
  if (replaceEntry) window.history.replaceState(null, "", url);
  else window.history.pushState(null, "", url);
  route();
}

function pageFor(path) {
  const relative = decodeURIComponent(path.startsWith(base) ? path.slice(base.length) : path);
  const run = /^\/runs\/([^/]+)\/?$/.exec(relative);
  if (run) return { section: "runs", build: () => runPage(context, run[1]) };
  if (/^\/submit\/?$/.test(relative)) return { section: "submit", build: () => submitPage(context) };
  if (relative === "" || relative === "/" || /^\/runs\/?$/.test(relative)) return { section: "runs", build: () => runsPage(context) };
  return { section: null, build: () => notFoundPage(relative) };
}

function route() {
  current?.dispose?.();
  current = null;
  const page = session.auth === "login"
    ? { section: null, build: () => loginPage(context, session.message) }
    : pageFor(window.location.pathname);
  for (const link of document.querySelectorAll("[data-section]")) {
    if (link.dataset.section === page.section) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  current = page.build();
  replace(main, current.element);
  document.title = `${current.title} · flowrelay`;
  // Moving focus to the new heading tells keyboard and screen-reader users the page changed.
  const heading = main.querySelector("h1");
  if (heading) {
    heading.setAttribute("tabindex", "-1");
    heading.focus({ preventScroll: true });
  }
}

function notFoundPage(path) {
  return {
    title: "Not found",
    element: h("section.page", {},
      h("h1", {}, "No such page"),
      h("p", {}, `The console has no page at ${path}. `, h("a", { href: `${base}/`, dataset: { nav: "" } }, "Go to the runs"), ".")),
  };
}

/** Console links switch pages in place (history API); modified clicks behave as usual. */
document.addEventListener("click", (event) => {
  if (event.defaultPrevented || event.button !== 0 || event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) return;
  const link = event.target.closest?.("a[href]");
  if (!link || link.target || link.hasAttribute("download")) return;
  const url = new URL(link.href, window.location.href);
  if (url.origin !== window.location.origin || !url.pathname.startsWith(`${base}/`) && url.pathname !== base) return;
  event.preventDefault();
  window.history.pushState(null, "", url.pathname + url.search + url.hash);
  route();
});

window.addEventListener("popstate", route);

document.getElementById("logout").addEventListener("click", () => {
  forgetKey();
  session.me = null;
  session.auth = "login";
  session.message = "Logged out. The key was removed from this tab.";
  showIdentity();
  window.history.pushState(null, "", `${base}/`);
  route();
});

async function boot() {
  captureKeyFromUrl(); // before anything else: the key leaves the address bar at once
  try {
    await identify();
  } catch (error) {
    session.auth = "login";
    session.message = `Cannot reach the API: ${error.message}`;
  }
  route();
  document.body.dataset.ready = "true";
}

boot();
