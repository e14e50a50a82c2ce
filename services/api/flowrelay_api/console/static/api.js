// The console's only way to the API: fetch() with the user's key in a header, never in a URL.

import { readEvents } from "./sse.js";

/** An HTTP answer that is not a success, with the API's JSON detail when it sent one. */
export class ApiError extends Error {
  constructor(status, body) {
    super(ApiError.describe(status, body));
    this.status = status;
    this.body = body;
  }

  /** The API's machine-readable code ("unauthenticated", "forbidden", ...) if any. */
  get code() {
    return this.body && typeof this.body === "object" ? this.body.code ?? null : null;
  }

  /** 422 problems as [{loc, msg}], else []. */
  get problems() {
    const detail = this.body?.detail;
    return Array.isArray(detail) ? detail : [];
  }

  static describe(status, body) {
    const detail = body?.detail;
    if (typeof detail === "string") return detail;
    if (Array.isArray(detail)) return detail.map((p) => p.msg ?? JSON.stringify(p)).join("; ");
    return `HTTP ${status}`;
  }
}

/** Event types after which a run's stream has nothing more to say. */
const TERMINAL = new Set(["run.completed", "run.failed", "run.cancelled"]);

/** Seconds between reconnects of a dropped event stream (then it stays at the last). */
const RECONNECT_DELAYS_S = [0.5, 1, 2, 5];

export class Api {
  /**
   * @param {object} options
   * @param {string} options.root  the API's mount point ("" or a proxy prefix)
   * @param {() => string|null} options.key  the current API key (or null: no auth)
   * @param {(error: ApiError) => void} options.onUnauthorized  called on every 401
   */
  constructor({ root, key, onUnauthorized }) {
    this.root = root;
    this.key = key;
    this.onUnauthorized = onUnauthorized;
  }

  #headers(extra = {}) {
    const headers = { Accept: "application/json", ...extra };
    const key = this.key();
    if (key) headers.Authorization = `Bearer ${key}`;
    return headers;
  }

  #url(path, query) {
    const params = new URLSearchParams();
    for (const [name, value] of Object.entries(query ?? {})) {
      if (value !== undefined && value !== null && value !== "") params.set(name, value);
    }
    const search = params.toString();
    return `${this.root}${path}${search ? `?${search}` : ""}`;
  }

  async #fail(response) {
    let body = null;
    try { body = await response.json(); } catch { /* not JSON */ }
    const error = new ApiError(response.status, body);
    if (response.status === 401) this.onUnauthorized(error);
    throw error;
  }

  /** One JSON request; resolves to the parsed body, rejects with ApiError. */
  async request(method, path, { body, query, headers, signal, key } = {}) {
    const init = { method, headers: this.#headers(headers), signal, cache: "no-store" };
    if (key !== undefined) {
      if (key) init.headers.Authorization = `Bearer ${key}`;
      else delete init.headers.Authorization;
    }
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    return this.#send(this.#url(path, query), init);
  }

  async #send(url, init) {
    const response = await fetch(url, init);
    if (!response.ok) await this.#fail(response);
    return response.status === 204 ? null : response.json();
  }

  /** Who the key belongs to: {key_id, tenant, scopes, name}. ``key`` tries another key. */
  me(options = {}) { return this.request("GET", "/auth/me", options); }

  listRuns({ status, tenant, cursor, limit, signal } = {}) {
    return this.request("GET", "/runs", { query: { status, tenant, cursor, limit }, signal });
  }

  getRun(runId, { signal } = {}) {
    return this.request("GET", `/runs/${encodeURIComponent(runId)}`, { signal });
  }

  /**
   * The output of a run whose record only links it (``output_ref``: too large for the
   * record): GET ``links.output``, which the API spells with its own mount point.
   */
  getOutput(run, { signal } = {}) {
    const link = run.links?.output ?? this.#url(`/runs/${encodeURIComponent(run.run_id)}/output`);
    return this.#send(link, { method: "GET", headers: this.#headers(), signal, cache: "no-store" });
  }

  submit(body) { return this.request("POST", "/runs", { body }); }

  cancel(runId) { return this.request("POST", `/runs/${encodeURIComponent(runId)}/cancel`); }

  /**
   * Follow a run's trace: yields TraceEvent objects in seq order, from ``after`` on.
   * A dropped connection is resumed with Last-Event-ID (no gap, no duplicate); the
   * generator ends when the API closes the stream (after the terminal event and, for a
   * failure, its suggestion) or when ``signal`` aborts.
   */
  async *follow(runId, { after = 0, signal } = {}) {
    let last = after;
    let attempt = 0;
    let ended = false;
    while (!signal?.aborted) {
      let response;
      try {
        const headers = this.#headers({ Accept: "text/event-stream" });
        if (last > 0) headers["Last-Event-ID"] = String(last);
        response = await fetch(this.#url(`/runs/${encodeURIComponent(runId)}/events`), {
          headers, signal, cache: "no-store",
        });
      } catch (error) {
        if (signal?.aborted) return;
        await pause(RECONNECT_DELAYS_S[Math.min(attempt++, RECONNECT_DELAYS_S.length - 1)], signal);
        continue;
      }
      if (!response.ok) await this.#fail(response);
      try {
        for await (const message of readEvents(response)) {
          const event = JSON.parse(message.data);
          if (event.seq <= last) continue;
          last = event.seq;
          attempt = 0;
          if (TERMINAL.has(event.type)) ended = true;
          yield event;
        }
        return; // the API closed the stream: the run has ended and everything was sent
      } catch (error) {
        if (signal?.aborted) return;
        if (error instanceof SyntaxError) throw error;
        if (ended) return; // only the suggestion could still come; do not spin for it
        await pause(RECONNECT_DELAYS_S[Math.min(attempt++, RECONNECT_DELAYS_S.length - 1)], signal);
      }
    }
  }
}

function pause(seconds, signal) {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, seconds * 1000);
    signal?.addEventListener("abort", () => { clearTimeout(timer); resolve(); }, { once: true });
  });
}
