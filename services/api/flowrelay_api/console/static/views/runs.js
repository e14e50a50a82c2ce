// The runs list: newest first, filtered by status (and tenant, for admins), kept current.
//
// Live updates poll GET /runs (first page) every POLL_S seconds while the tab is visible,
// rather than following the SSE streams of the running runs shown: one small request per
// interval whatever the number of runs, it also shows runs submitted elsewhere, and it
// leaves the browser's six connections per origin free (each followed stream holds one).

import { h, replace } from "../dom.js";
import { cost, duration, runDuration, STATUSES, TERMINAL_STATUSES, tokens, tokensDetail, when } from "../format.js";
import { graphOf } from "../workflow.js";
import { rememberedWorkflow } from "./submit.js";

/** Seconds between refreshes of the list while the tab is visible. */
export const POLL_S = 3;
const PAGE_SIZE = 25;

/** Runs' patterns once learnt (they never change), for every page of this tab. */
const patterns = new Map();
/** Records fetched at once to learn patterns the list does not carry. */
const PATTERN_LOOKUPS = 3;

export function runsPage(context) {
  const params = new URLSearchParams(window.location.search);
  const filters = { status: params.get("status") ?? "", tenant: params.get("tenant") ?? "" };
  const state = { pages: [], next: null, loading: false, error: null, updated: null, disposed: false };
  const rows = new Map();
  const admin = context.admin;

  const statusSelect = h("select#filter-status", { name: "status" },
    h("option", { value: "" }, "All"),
    ...STATUSES.map((status) => h("option", { value: status, selected: status === filters.status }, status)));
  const tenantInput = admin ? h("input#filter-tenant", { name: "tenant", value: filters.tenant, placeholder: "all tenants", pattern: "[a-z0-9][a-z0-9_-]{0,62}", size: "14" }) : null;
  const filterForm = h("form.filters", {
    onsubmit: (event) => { event.preventDefault(); applyFilters(); },
  },
  h("div.field", {}, h("label", { for: "filter-status" }, "Status"), statusSelect),
  admin ? h("div.field", {}, h("label", { for: "filter-tenant" }, "Tenant"), tenantInput) : null,
  admin ? h("button.button", { type: "submit" }, "Filter") : null);
  statusSelect.addEventListener("change", applyFilters);

  const freshness = h("p.freshness", { "aria-live": "off" });
  const errorBox = h("p.error", { role: "alert", hidden: true });
  const body = h("tbody");
  const emptyRow = h("tr.empty-row", {}, h("td", { colspan: admin ? "9" : "8" }, "No runs yet. ", h("a", { href: `${context.base}/submit` }, "Submit one"), "."));
  const more = h("button.button", { type: "button", hidden: true, onclick: loadMore }, "Load older runs");
  const table = h("table.runs", {},
    h("caption.sr-only", {}, "Runs, newest first"),
    h("thead", {}, h("tr", {},
      h("th", { scope: "col" }, "Run"),
      h("th", { scope: "col" }, "Status"),
      admin ? h("th", { scope: "col" }, "Tenant") : null,
      h("th", { scope: "col" }, "Pattern"),
      h("th", { scope: "col" }, "Created"),
      h("th.num", { scope: "col" }, "Duration"),
      h("th.num", { scope: "col" }, "Tokens"),
      h("th.num", { scope: "col" }, "Cost"),
      h("th", { scope: "col" }, "Mode"))),
    body);

  const element = h("section.page", {},
    h("div.page-head", {},
      h("h1", {}, "Runs"),
      context.can("submit") ? h("a.button.primary", { href: `${context.base}/submit` }, "Submit a run") : null),
    h("div.toolbar", {}, filterForm, freshness),
    errorBox,
    h("div.table-scroll", {}, table),
    h("div.actions", {}, more));

  function applyFilters() {
    filters.status = statusSelect.value;
    if (tenantInput) {
      if (!tenantInput.checkValidity()) { tenantInput.reportValidity(); return; }
      filters.tenant = tenantInput.value.trim();
    }
    const query = new URLSearchParams();
    if (filters.status) query.set("status", filters.status);
    if (filters.tenant) query.set("tenant", filters.tenant);
    window.history.replaceState(null, "", `${context.base}/${query.size ? `?${query}` : ""}`);
    state.pages = [];
    state.next = null;
    refresh();
  }

  async function fetchPage(cursor) {
    return context.api.listRuns({ status: filters.status || undefined, tenant: filters.tenant || undefined, cursor, limit: PAGE_SIZE });
  }

  async function refresh() {
    if (state.loading || state.disposed) return;
    state.loading = true;
    try {
      const page = await fetchPage(undefined);
      if (state.disposed) return;
      state.pages[0] = page.runs;
      if (state.pages.length === 1) state.next = page.next_cursor;
      state.error = null;
      state.updated = new Date();
    } catch (error) {
      if (error.status === 401) return; // the console shows the login page
      state.error = error;
    } finally {
      state.loading = false;
    }
    render();
  }

  async function loadMore() {
    if (!state.next) return;
    more.disabled = true;
    try {
      const page = await fetchPage(state.next);
      state.pages.push(page.runs);
      state.next = page.next_cursor;
    } catch (error) {
      state.error = error;
    } finally {
      more.disabled = false;
    }
    render();
  }

  function render() {
    const seen = new Set();
    const ordered = [];
    for (const run of state.pages.flat()) {
      if (seen.has(run.run_id)) continue; // a run can slide onto the next page between polls
      seen.add(run.run_id);
      ordered.push(run);
    }
    for (const [id, row] of rows) if (!seen.has(id)) { row.tr.remove(); rows.delete(id); }
    let previous = null;
    for (const run of ordered) {
      const row = rows.get(run.run_id) ?? makeRow(run);
      fill(row, run);
      // Keep rows in order without re-creating them (focus and selection survive a poll).
      const expected = previous ? previous.nextSibling : body.firstChild;
      if (expected !== row.tr) body.insertBefore(row.tr, expected);
      previous = row.tr;
    }
    if (!ordered.length) body.replaceChildren(emptyRow);
    else emptyRow.remove();
    more.hidden = !state.next;
    errorBox.hidden = !state.error;
    if (state.error) errorBox.textContent = `Could not load the runs: ${state.error.message}`;
    learnPatterns(ordered);
    freshness.textContent = state.updated
      ? `Updated ${state.updated.toLocaleTimeString()} · refreshes every ${POLL_S} s while this tab is visible`
      : "Loading…";
  }

  function makeRow(run) {
    const link = h("a.run-link", { href: `${context.base}/runs/${encodeURIComponent(run.run_id)}` }, run.run_id);
    const cell = (name, tag = "td") => h(tag, { dataset: { col: name } });
    const cells = {
      status: cell("status"),
      tenant: admin ? cell("tenant") : null,
      pattern: cell("pattern"),
      created: cell("created"),
      duration: cell("duration", "td.num"),
      tokens: cell("tokens", "td.num"),
      cost: cell("cost", "td.num"),
      mode: cell("mode"),
    };
    const tr = h("tr", { dataset: { runId: run.run_id } },
      h("th", { scope: "row" }, link),
      cells.status, cells.tenant, cells.pattern, cells.created, cells.duration, cells.tokens, cells.cost, cells.mode);
    const row = { tr, cells, run };
    rows.set(run.run_id, row);
    return row;
  }

  function fill(row, run) {
    row.run = run;
    const { cells } = row;
    replace(cells.status, statusBadge(run.status));
    if (cells.tenant) cells.tenant.textContent = run.tenant ?? "—";
    cells.pattern.textContent = patternOf(run) ?? "—";
    cells.created.textContent = when(run.created_at);
    cells.duration.textContent = duration(runDuration(run));
    cells.tokens.textContent = tokens(run.usage);
    cells.tokens.title = tokensDetail(run.usage);
    cells.cost.textContent = run.status === "queued" ? "—" : cost(run.cost_usd);
    cells.mode.textContent = run.mode === "degraded" ? "degraded" : run.model_provider === "scripted" ? "scripted model" : "";
  }

  /**
   * The list's records carry no workflow (it can be large), so the pattern of a run the list
   * does not name is read once from its own record (which has the workflow) and remembered.
   */
  let lookups = 0;
  function learnPatterns(runs) {
    for (const run of runs) {
      if (lookups >= PATTERN_LOOKUPS || state.disposed) return;
      if (run.pattern || patterns.has(run.run_id)) continue;
      const remembered = rememberedWorkflow(run.run_id);
      if (remembered) { patterns.set(run.run_id, graphOf(remembered).pattern); continue; }
      patterns.set(run.run_id, null); // asked once, whatever the answer
      lookups += 1;
      context.api.getRun(run.run_id)
        .then((record) => { if (record.workflow) patterns.set(run.run_id, graphOf(record.workflow).pattern); })
        .catch(() => {})
        .finally(() => {
          lookups -= 1;
          const row = rows.get(run.run_id);
          if (row && !state.disposed) { fill(row, row.run); learnPatterns([...rows.values()].map((r) => r.run)); }
        });
    }
  }

  // Running runs' durations tick between polls.
  const ticker = setInterval(() => {
    for (const row of rows.values()) {
      if (!TERMINAL_STATUSES.has(row.run.status)) row.cells.duration.textContent = duration(runDuration(row.run));
    }
  }, 1000);
  const poller = setInterval(() => { if (document.visibilityState === "visible") refresh(); }, POLL_S * 1000);
  const onVisible = () => { if (document.visibilityState === "visible") refresh(); };
  document.addEventListener("visibilitychange", onVisible);
  render();
  refresh();

  return {
    title: "Runs",
    element,
    dispose() {
      state.disposed = true;
      clearInterval(ticker);
      clearInterval(poller);
      document.removeEventListener("visibilitychange", onVisible);
    },
  };
}

/** The run's pattern: from the API when it says, else worked out from its workflow. */
export function patternOf(run) {
  if (run.pattern) return run.pattern;
  if (run.workflow) return graphOf(run.workflow).pattern;
  return patterns.get(run.run_id) ?? null;
}

export function statusBadge(status) {
  return h(`span.badge.status-${status}`, { dataset: { status } }, h("span.dot", { "aria-hidden": "true" }), status);
}
