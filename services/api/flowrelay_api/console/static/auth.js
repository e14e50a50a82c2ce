// Where the API key lives in the browser: sessionStorage (this tab only, gone when it closes).
//
// `/ui/?key=<key>` (or `#key=`, which never reaches the server) logs in: the key is stored
// and removed from the address bar before anything else runs, so it is not left in the
// history entry, bookmarks or a copied link.

const STORAGE_KEY = "flowrelay.apiKey";

/** Take a key from the current URL, if any, store it and clean the URL; the key or null. */
export function captureKeyFromUrl() {
  const url = new URL(window.location.href);
  const fromQuery = url.searchParams.get("key");
  const hash = new URLSearchParams(url.hash.replace(/^#/, ""));
  const fromHash = hash.get("key");
  const key = fromQuery || fromHash;
  if (fromQuery !== null) url.searchParams.delete("key");
  if (fromHash !== null) {
    hash.delete("key");
    url.hash = hash.toString();
  }
  if (fromQuery !== null || fromHash !== null) {
    window.history.replaceState(window.history.state, "", url.pathname + url.search + url.hash);
  }
  if (key) saveKey(key.trim());
  return key || null;
}

export function storedKey() {
  return window.sessionStorage.getItem(STORAGE_KEY);
}

export function saveKey(key) {
  window.sessionStorage.setItem(STORAGE_KEY, key);
}

export function forgetKey() {
  window.sessionStorage.removeItem(STORAGE_KEY);
}
