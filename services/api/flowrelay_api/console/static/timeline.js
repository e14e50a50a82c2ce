// The trace as a timeline: one row per agent, LLM and tool step, nested as they ran, with a
// bar for when it ran, its latency, tokens and cost; each row opens to its arguments,
// results or output. Rows are updated in place, so an open row stays open as events arrive.

import { h, replace } from "./dom.js";
import { cost, duration, value, when } from "./format.js";
import { STATE_LABELS } from "./graph.js";

/** Events shown as one-line markers between the steps. */
const MARKERS = ["run.started", "run.retrying", "run.resumed", "suggestion", "run.completed", "run.failed", "run.cancelled"];

const KIND_LABELS = { agent: "Agent", llm: "LLM", tool: "Tool" };

export class TimelineView {
  constructor({ onClearFilter } = {}) {
    this.rows = new Map(); // span id -> {item, bar, latency, tokens, cost, state, detail, span}
    this.markers = new Map(); // event seq -> item
    this.filter = null;
    this.list = h("ol.steps", { "aria-label": "Steps of the run" });
    this.filterNote = h("p.filter-note", { hidden: true });
    this.empty = h("p.empty", {}, "No steps yet: the run has not started.");
    this.onClearFilter = onClearFilter;
    this.element = h("div.timeline", {},
      this.filterNote,
      h("div.steps-head", { "aria-hidden": "true" },
        h("span", {}, "Step"), h("span", {}, "When"), h("span.num", {}, "Latency"), h("span.num", {}, "Tokens in / out"), h("span.num", {}, "Cost")),
      this.empty,
      this.list);
  }

  /** Forget every row (a replay starts again from nothing). */
  reset() {
    this.rows.clear();
    this.markers.clear();
    this.list.replaceChildren();
  }

  /** Show only the steps of one agent (null: all). */
  setFilter(agent) {
    this.filter = agent;
    for (const { item, span } of this.rows.values()) item.hidden = agent !== null && span.agent !== agent;
    for (const item of this.markers.values()) item.hidden = agent !== null;
    if (agent === null) {
      this.filterNote.hidden = true;
    } else {
      replace(this.filterNote, `Showing the steps of agent ${agent} only. `,
        h("button.button.quiet", { type: "button", onclick: () => this.onClearFilter?.() }, "Show all steps"));
      this.filterNote.hidden = false;
    }
  }

  /** Bring the rows up to date with ``trace`` (times measured up to ``now`` while it runs). */
  update(trace, now = Date.now()) {
    const total = Math.max(trace.elapsed(now), 1);
    for (const event of trace.events) {
      if (MARKERS.includes(event.type) && !this.markers.has(event.seq)) {
        this.#marker(event, trace);
      }
    }
    for (const span of trace.spans) {
      const row = this.rows.get(span.id) ?? this.#row(span);
      const end = span.end ?? now;
      const left = ((span.start - trace.startedAt) / total) * 100;
      const width = Math.max(((end - span.start) / total) * 100, 0.6);
      row.bar.style.setProperty("--left", `${Math.min(left, 99.4).toFixed(2)}%`);
      row.bar.style.setProperty("--width", `${Math.min(width, 100 - Math.min(left, 99.4)).toFixed(2)}%`);
      row.item.className = `step kind-${span.kind} state-${span.state}`;
      row.item.dataset.state = span.state;
      row.state.textContent = STATE_LABELS[span.state] ?? span.state;
      const latency = span.result?.latency_ms ?? (span.end !== null ? span.end - span.start : now - span.start);
      row.latency.textContent = duration(latency);
      const usage = tokensOf(span);
      row.tokens.textContent = usage;
      row.cost.textContent = costOf(span);
      if (row.renderedDetail !== (span.result ? "done" : "open")) {
        replace(row.detail, ...details(span));
        row.renderedDetail = span.result ? "done" : "open";
      }
    }
    this.empty.hidden = trace.events.length > 0;
  }

  #row(span) {
    const bar = h("span.bar");
    const state = h("span.step-state");
    const latency = h("span.num.step-latency");
    const tokens = h("span.num.step-tokens");
    const costCell = h("span.num.step-cost");
    const detail = h("div.step-detail");
    const title = stepTitle(span);
    const item = h("li.step", { dataset: { kind: span.kind, agent: span.agent } },
      h("details", {},
        h("summary", {},
          h("span.step-name", {},
            h("span.kind-badge", {}, KIND_LABELS[span.kind]),
            h("span.step-title", {}, title),
            state),
          h("span.step-track", { "aria-hidden": "true" }, bar),
          latency, tokens, costCell),
        detail));
    item.style.setProperty("--depth", String(span.depth));
    item.hidden = this.filter !== null && span.agent !== this.filter;
    this.#insert(item, span.start);
    const row = { item, bar, state, latency, tokens, cost: costCell, detail, span, renderedDetail: null };
    this.rows.set(span.id, row);
    return row;
  }

  #marker(event, trace) {
    const data = event.data ?? {};
    let text;
    if (event.type === "run.started") {
      text = `Run started (attempt ${data.attempt ?? 1}) on executor ${data.executor_id ?? "?"}, ${data.isolation ?? "?"} isolation, model provider ${data.model_provider ?? "?"}`;
    } else if (event.type === "run.retrying") {
      text = `Retrying (${data.reason ?? "?"}): attempt ${data.attempt ?? "?"} of ${data.attempts ?? "?"} in ${duration((data.wait_s ?? 0) * 1000)}`;
    } else if (event.type === "run.resumed") {
      text = `Resumed after step ${data.step ?? "?"}: ${(data.agents ?? []).join(", ")} reused from checkpoints`;
    } else if (event.type === "suggestion") {
      text = `Suggestions arrived (${(data.suggestions ?? []).length})`;
    } else {
      const status = data.status ?? event.type.replace("run.", "");
      text = `Run ${status}${data.error?.message ? `: ${data.error.message}` : ""}`;
    }
    const at = Date.parse(event.at);
    const offset = trace.startedAt !== null ? ` at +${duration(at - trace.startedAt)}` : "";
    const item = h(`li.marker.marker-${event.type.replace(".", "-")}`, { dataset: { type: event.type } },
      h("span.marker-text", {}, text), h("span.marker-time", { title: when(event.at) }, offset));
    item.hidden = this.filter !== null;
    this.markers.set(event.seq, item);
    this.#insert(item, at, event.type !== "run.started");
  }

  /** Keep the list in time order (events arrive in order; this only guards ties). */
  #insert(item, at, after = true) {
    item.dataset.at = String(at);
    if (!after) { this.list.prepend(item); return; }
    this.list.append(item);
  }
}

function stepTitle(span) {
  const data = span.data ?? {};
  if (span.kind === "agent") return `${span.agent}${data.step ? ` (step ${data.step})` : ""}`;
  if (span.kind === "llm") return `${span.agent}, turn ${data.turn ?? "?"} (${data.model ?? "model"})`;
  return `${span.agent} calls ${data.tool}`;
}

function tokensOf(span) {
  const result = span.result;
  if (!result || span.kind === "tool") return "—";
  if (result.input_tokens === undefined && result.output_tokens === undefined) return "—";
  return `${result.input_tokens ?? 0} / ${result.output_tokens ?? 0}`;
}

function costOf(span) {
  const result = span.result;
  if (!result || span.kind === "tool" || !("cost_usd" in result)) return "—";
  return cost(result.cost_usd);
}

function details(span) {
  const data = span.data ?? {};
  const result = span.result ?? {};
  const rows = [];
  const add = (term, description) => {
    if (description === undefined || description === null || description === "") return;
    rows.push(h("dt", {}, term), h("dd", {}, description));
  };
  add("Started", when(new Date(span.start).toISOString()));
  if (span.end !== null) add("Took", duration(result.latency_ms ?? span.end - span.start));
  if (span.kind === "llm") {
    add("Model", data.model);
    add("Turn", data.turn);
    if (span.result) {
      add("Input tokens", result.input_tokens);
      add("Output tokens", result.output_tokens);
      add("Cost", cost(result.cost_usd));
      add("Cost note", result.cost_note);
    }
  }
  if (span.kind === "agent") {
    add("Pattern", data.pattern);
    if (span.result) {
      add("Tokens", `${result.input_tokens ?? 0} in, ${result.output_tokens ?? 0} out`);
      add("Cost", cost(result.cost_usd));
    }
  }
  if (span.kind === "tool") add("Error", result.error);
  const blocks = [];
  if (span.kind === "tool") {
    blocks.push(block("Arguments", data.arguments));
    if (span.result) blocks.push(block("Result", result.result));
  }
  if (span.kind === "agent" && span.result && result.output !== undefined) blocks.push(block("Output", result.output));
  if (!span.result && span.state === "running") blocks.push(h("p.muted", {}, "Still running."));
  if (!span.result && span.state !== "running") blocks.push(h("p.muted", {}, `Ended with the run (${STATE_LABELS[span.state] ?? span.state}) before it reported a result.`));
  return [rows.length ? h("dl.facts", {}, rows) : null, ...blocks];
}

function block(title, data) {
  const text = value(data);
  return h("div.block", {}, h("h3", {}, title), h("pre.code", { tabindex: "0" }, text === "" ? "(empty)" : text));
}
