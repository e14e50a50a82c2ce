// One run: its graph coloured live, the trace as a timeline, the output or the failure with
// its suggestions, cancel, and a replay of a finished run's trace.

import { announce, h, replace } from "../dom.js";
import { cost, duration, runDuration, TERMINAL_STATUSES, tokensDetail, value, when } from "../format.js";
import { GraphView } from "../graph.js";
import { TimelineView } from "../timeline.js";
import { Trace } from "../trace.js";
import { graphFromTrace, graphOf } from "../workflow.js";
import { patternOf, statusBadge } from "./runs.js";
import { rememberedWorkflow } from "./submit.js";

/** Replay speeds offered (times faster than the run went). */
const SPEEDS = [1, 2, 5, 10];
/** A replay never waits longer than this between two events, whatever the trace says. */
const MAX_REPLAY_GAP_MS = 1500;

export function runPage(context, runId) {
  const aborter = new AbortController();
  const state = {
    run: null, // the record (GET /runs/{id}), refreshed when the stream says the run ended
    trace: new Trace(), // what the page draws: the live trace, or a replay's
    liveTrace: null, // the live trace, kept aside while a replay plays
    liveBacklog: [], // live events that arrived during a replay
    graphSource: null, // "record", "session" or "trace": where the drawn graph came from
    graph: null,
    disposed: false,
    replay: null, // {timer, index} while replaying
    cancelling: false,
    linkedOutput: null, // {output} or {error} once fetched, when the record links the output (output_ref)
    announced: null, // the status last announced to screen readers
  };

  const heading = h("h1", {}, "Run ", h("code.run-id", {}, runId));
  const badge = h("span.status-slot");
  const cancelButton = h("button.button.danger", { type: "button", hidden: true, onclick: cancel }, "Cancel run");
  const speedSelect = h("select#replay-speed", {}, ...SPEEDS.map((speed) => h("option", { value: String(speed), selected: speed === 2 }, `${speed}×`)));
  const replayButton = h("button.button", { type: "button", disabled: true, onclick: toggleReplay }, "Replay trace");
  const replayControls = h("div.replay", { hidden: true },
    h("label", { for: "replay-speed" }, "Speed"), speedSelect, replayButton);
  const notice = h("p.notice", { role: "status", hidden: true });
  const summary = h("dl.summary");
  const graphSlot = h("div.graph-slot", {}, h("p.muted", {}, "Loading the workflow…"));
  const outcome = h("div.outcome");
  const timeline = new TimelineView({ onClearFilter: () => selectAgent(null) });

  const element = h("section.page.run-page", { dataset: { runId } },
    h("p.crumbs", {}, h("a", { href: `${context.base}/` }, "← All runs")),
    h("div.page-head", {}, h("div.title-line", {}, heading, badge), h("div.actions", {}, cancelButton, replayControls)),
    notice,
    h("div.run-grid", {},
      h("section.panel.summary-panel", { "aria-labelledby": "summary-title" }, h("h2#summary-title", {}, "Summary"), summary),
      h("section.panel.graph-panel", { "aria-labelledby": "graph-title" }, h("h2#graph-title", {}, "Workflow"), graphSlot)),
    h("section.panel.outcome-panel", { "aria-labelledby": "outcome-title" }, h("h2#outcome-title", {}, "Result"), outcome),
    h("section.panel.timeline-panel", { "aria-labelledby": "timeline-title" }, h("h2#timeline-title", {}, "Trace"), timeline.element));

  // -- loading and following ------------------------------------------------------------

  async function load() {
    try {
      state.run = await context.api.getRun(runId, { signal: aborter.signal });
    } catch (error) {
      if (aborter.signal.aborted || error.status === 401) return;
      showMissing(error);
      return;
    }
    fetchLinkedOutput();
    chooseGraph();
    render();
    follow();
  }

  async function follow() {
    try {
      for await (const event of context.api.follow(runId, { signal: aborter.signal })) {
        if (state.replay) state.liveBacklog.push(event);
        else if (state.trace.add(event)) onEvent(event);
      }
    } catch (error) {
      if (aborter.signal.aborted || error.status === 401) return;
      showNotice(`The live trace stopped: ${error.message}`);
    }
    if (!state.disposed) await refreshRecord(); // the record holds the last word (output, guidance)
  }

  async function refreshRecord() {
    try {
      state.run = await context.api.getRun(runId, { signal: aborter.signal });
    } catch (error) {
      return;
    }
    fetchLinkedOutput();
    if (!state.graphSource || state.graphSource === "trace") chooseGraph();
    render();
  }

  function onEvent(event) {
    if ((state.graphSource === "trace" || state.graphSource === null) && event.type === "agent.started" && !state.graph?.names.has(event.data.agent)) {
      chooseGraph();
    }
    if (TERMINAL_STATUSES.has(state.trace.status) && event.type.startsWith("run.")) {
      // The stream's terminal event is the news; the record follows with the output.
      state.run = { ...state.run, status: state.trace.status };
      refreshRecord();
    }
    scheduleRender();
  }

  /** An output too large for the record is linked (output_ref): fetch it once, from links.output. */
  function fetchLinkedOutput() {
    const run = state.run;
    if (!run?.output_ref || (run.output !== null && run.output !== undefined) || state.linkedOutput) return;
    state.linkedOutput = { loading: true };
    context.api.getOutput(run, { signal: aborter.signal }).then(
      (output) => { state.linkedOutput = { output }; render(); },
      (error) => {
        if (aborter.signal.aborted || error.status === 401) return;
        state.linkedOutput = { error };
        render();
      });
  }

  // -- the graph --------------------------------------------------------------------------

  function chooseGraph() {
    let graph = null;
    let note = null;
    let source = null;
    const submitted = state.run?.workflow ?? rememberedWorkflow(runId);
    if (submitted) {
      graph = graphOf(submitted);
      source = state.run?.workflow ? "record" : "session";
      if (source === "session") note = "Drawn from the workflow submitted from this tab.";
    } else {
      const steps = new Map();
      for (const event of state.trace.events) {
        if (event.type === "agent.started" && !steps.has(event.data.agent)) steps.set(event.data.agent, event.data.step ?? steps.size + 1);
      }
      if (!steps.size) {
        state.graphSource = null;
        replace(graphSlot, h("p.muted", {}, "The graph appears when the first agent starts (this API does not return the submitted workflow)."));
        return;
      }
      graph = graphFromTrace(steps, state.trace.pattern);
      source = "trace";
      note = "Drawn from the trace: agents that have not run yet are not shown (this API does not return the submitted workflow).";
    }
    if (!graph.nodes.length) {
      replace(graphSlot, h("p.muted", {}, "The workflow has no agents to draw."));
      return;
    }
    state.graphSource = source;
    const view = new GraphView(graph, { note, onSelect: (name) => selectAgent(name, false) });
    state.graph = { view, names: new Set(graph.nodes.map((n) => n.name)) };
    if (timeline.filter) view.select(timeline.filter);
    view.update(state.trace);
    replace(graphSlot, view.element);
  }

  function selectAgent(name, fromTimeline = true) {
    timeline.setFilter(name);
    if (fromTimeline) state.graph?.view.select(name);
    announce(name ? `Showing the steps of agent ${name}` : "Showing all steps");
  }

  // -- rendering --------------------------------------------------------------------------

  let frame = null;
  function scheduleRender() {
    if (frame === null) frame = requestAnimationFrame(() => { frame = null; render(); });
  }

  /** The status the page shows: the stream's news first, the record otherwise. */
  function status() {
    if (state.replay) return state.trace.status;
    const recorded = state.run?.status ?? "queued";
    if (TERMINAL_STATUSES.has(recorded)) return recorded;
    return state.trace.status === "queued" ? recorded : state.trace.status;
  }

  function render() {
    if (!state.run || state.disposed) return;
    const current = status();
    replace(badge, statusBadge(current), state.replay ? h("span.badge.replaying", {}, "replay") : null);
    const live = !TERMINAL_STATUSES.has(current) && !state.replay;
    cancelButton.hidden = !live || !context.can("cancel");
    cancelButton.disabled = state.cancelling || Boolean(state.run.cancel_requested);
    cancelButton.textContent = state.cancelling || state.run.cancel_requested ? "Cancelling…" : "Cancel run";
    replayControls.hidden = !state.trace.ended && !state.replay;
    replayButton.disabled = !state.trace.ended && !state.replay;
    replayButton.textContent = state.replay ? "Stop replay" : "Replay trace";
    renderSummary(current);
    state.graph?.view.update(state.trace);
    timeline.update(state.trace);
    renderOutcome(current);
    if (!state.replay && state.announced !== current) {
      if (state.announced !== null) announce(`Run ${current}`);
      state.announced = current;
    }
    element.dataset.status = current;
  }

  function renderSummary(current) {
    const run = state.run;
    const trace = state.trace;
    const replaying = Boolean(state.replay);
    const usage = replaying || !TERMINAL_STATUSES.has(run.status) ? trace.usage : run.usage;
    const runCost = replaying || !TERMINAL_STATUSES.has(run.status) ? (trace.costKnown ? trace.cost : null) : run.cost_usd;
    const elapsed = replaying ? trace.elapsed() : runDuration(run) ?? (trace.startedAt ? trace.elapsed() : null);
    const facts = [
      ["Status", current],
      ["Pattern", patternOf(run) ?? trace.pattern ?? state.graph?.view.graph.pattern ?? "—"],
      ["Duration", duration(elapsed)],
      ["Tokens", tokensDetail(usage)],
      ["Cost", `${cost(runCost)}${run.cost_note ? ` (${run.cost_note})` : ""}`],
      ["Mode", run.mode === "degraded" ? "degraded (guidance instead of output)" : "real execution"],
      ["Isolation", run.isolation ?? trace.started?.isolation ?? "—"],
      ["Model provider", run.model_provider ?? trace.started?.model_provider ?? "—"],
      ["Attempts", String(run.attempts ?? 0)],
      ["Created", when(run.created_at)],
      ["Started", when(run.started_at)],
      ["Finished", when(run.finished_at)],
    ];
    if (run.tenant && context.admin) facts.splice(1, 0, ["Tenant", run.tenant]);
    replace(summary, ...facts.flatMap(([term, description]) => [h("dt", {}, term), h("dd", { dataset: { fact: term.toLowerCase().replace(/ /g, "-") } }, description)]));
  }

  function renderOutcome(current) {
    const run = state.run;
    const trace = state.trace;
    const terminal = state.replay ? trace.terminal?.data : null;
    const parts = [];
    if (current === "queued") parts.push(h("p.muted", {}, "Queued: waiting for an executor."));
    if (current === "running") parts.push(h("p.muted", {}, "Running: the output appears when the run ends."));
    if (current === "succeeded") {
      parts.push(h("h3", {}, "Output"), outputBlock(terminal ?? run));
    }
    if (current === "failed" || current === "cancelled") {
      const error = (terminal ? terminal.error : run.error) ?? trace.terminal?.data?.error;
      if (error) {
        parts.push(h(`div.error-box${current === "cancelled" ? ".cancelled" : ""}`, {},
          h("p", {}, h("strong", {}, current === "cancelled" ? "Cancelled" : `Failed: ${error.code}`), " — ", error.message),
          errorFacts(error)));
      }
    }
    const suggestions = run.suggestions?.length && !state.replay ? run.suggestions : trace.suggestions;
    if (current === "failed" || suggestions.length) {
      parts.push(h("h3", {}, "Suggestions"));
      if (suggestions.length) {
        parts.push(h("ol.suggestions", {}, ...suggestions.map((s) => h("li.suggestion", { dataset: { code: s.code } },
          h("h4", {}, ...inlineCode(s.title)),
          h("p", {}, ...inlineCode(s.detail)),
          h("p.fix", {}, h("strong", {}, "Fix: "), ...inlineCode(s.fix))))));
      } else {
        parts.push(h("p.muted", {}, "Waiting for the suggester's guidance…"));
      }
    }
    replace(outcome, ...parts);
  }

  /** The output of ``source`` (the record, or a replay's terminal event), or where it stands. */
  function outputBlock(source) {
    let output = source.output;
    if (source.output_ref && (output === null || output === undefined)) {
      const linked = state.linkedOutput;
      const size = `${Number(source.output_ref.bytes).toLocaleString("en")} bytes`;
      if (linked?.error) return h("p.error", {}, `Could not load the output (${size}): ${linked.error.message}`);
      if (!linked || !("output" in linked)) return h("p.muted", {}, `Loading the output (${size})…`);
      output = linked.output;
    }
    return h("pre.code.output", { tabindex: "0" }, value(output) || "(empty)");
  }

  function showMissing(error) {
    const tenant = context.session.me?.tenant;
    replace(element,
      h("p.crumbs", {}, h("a", { href: `${context.base}/` }, "← All runs")),
      h("h1", {}, "Run not found"),
      h("p.error", { role: "alert" }, error.status === 404
        ? `There is no run ${runId}${tenant ? ` visible to tenant ${tenant}` : ""}. It may have expired, or belong to another tenant.`
        : `Could not load run ${runId}: ${error.message}`));
    element.dataset.status = "missing";
    element.querySelector("h1").setAttribute("tabindex", "-1");
    element.querySelector("h1").focus();
  }

  function showNotice(text) {
    notice.textContent = text;
    notice.hidden = false;
  }

  // -- actions ----------------------------------------------------------------------------

  async function cancel() {
    state.cancelling = true;
    render();
    try {
      const answer = await context.api.cancel(runId);
      announce(answer.status === "cancelled" ? "Run cancelled" : "Cancellation requested; the run stops within a second or so");
      state.run = { ...state.run, cancel_requested: true };
    } catch (error) {
      showNotice(error.status === 409 ? "The run had already ended." : `Could not cancel: ${error.message}`);
    } finally {
      state.cancelling = false;
    }
    refreshRecord();
  }

  function toggleReplay() {
    if (state.replay) stopReplay();
    else startReplay();
  }

  function startReplay() {
    const events = state.trace.events.slice();
    const speed = Number(speedSelect.value) || 1;
    const replayTrace = new Trace();
    state.liveTrace = state.trace;
    state.liveBacklog = [];
    state.trace = replayTrace;
    state.replay = { timer: null, index: 0 };
    timeline.reset();
    announce(`Replaying the trace at ${speed}× speed`);
    const step = () => {
      const replay = state.replay;
      if (!replay) return;
      const event = events[replay.index++];
      replayTrace.add(event);
      render();
      if (replay.index >= events.length) { stopReplay(true); return; }
      const gap = Date.parse(events[replay.index].at) - Date.parse(event.at);
      replay.timer = setTimeout(step, Math.min(Math.max(gap, 0), MAX_REPLAY_GAP_MS) / speed);
    };
    render();
    state.replay.timer = setTimeout(step, 300 / speed);
  }

  function stopReplay(finished = false) {
    if (!state.replay) return;
    clearTimeout(state.replay.timer);
    state.replay = null;
    state.trace = state.liveTrace;
    for (const event of state.liveBacklog) state.trace.add(event);
    timeline.reset();
    announce(finished ? "Replay finished" : "Replay stopped");
    render();
  }

  // Durations and the bars of running steps grow between events.
  const ticker = setInterval(() => {
    if (state.run && (state.replay || !TERMINAL_STATUSES.has(status()))) render();
  }, 500);

  load();
  return {
    title: `Run ${runId}`,
    element,
    dispose() {
      state.disposed = true;
      aborter.abort();
      clearInterval(ticker);
      if (state.replay) clearTimeout(state.replay.timer);
      if (frame !== null) cancelAnimationFrame(frame);
    },
  };
}

function errorFacts(error) {
  const facts = [
    ["Agent", error.agent], ["Tool", error.tool], ["Step", error.step],
    ["Provider status", error.provider_status], ["Provider said", error.provider_message],
    ["Exception", error.exception_type], ["Retryable", error.retryable ? "yes" : null],
  ].filter(([, v]) => v !== null && v !== undefined && v !== "");
  return facts.length ? h("dl.facts", {}, ...facts.flatMap(([t, d]) => [h("dt", {}, t), h("dd", {}, String(d))])) : null;
}

/** Text with `backtick` spans (as the suggester writes them) as <code>, all as text nodes. */
function inlineCode(text) {
  return String(text ?? "").split("`").map((part, i) => (i % 2 ? h("code", {}, part) : part));
}
