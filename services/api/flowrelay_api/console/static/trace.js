// A run's trace events folded into what the run page shows: the state of each agent, the
// steps (agent, LLM and tool spans, nested), and totals. Pure: no DOM, so a replay is
// just feeding the same events again.

const TERMINAL = { "run.completed": "succeeded", "run.failed": "failed", "run.cancelled": "cancelled" };

/** What the agent spans still open at the end become, by how the run ended. */
const OPEN_AT_END = { succeeded: "succeeded", failed: "failed", cancelled: "cancelled" };

export class Trace {
  constructor() {
    this.events = [];
    /** @type {Map<string, {state, step, calls, usage, cost, costKnown, output}>} by agent name */
    this.agents = new Map();
    /** Steps in start order: {id, kind, agent, label, depth, start, end, state, data, result} */
    this.spans = [];
    /** Tool calls between agents now running, as "caller\u0000callee" (collaborative). */
    this.activeCalls = new Set();
    /** Calls between agents that have happened. */
    this.usedCalls = new Set();
    this.status = "queued";
    this.pattern = null;
    this.startedAt = null; // ms since epoch of run.started
    this.endedAt = null;
    this.started = null; // run.started data
    this.terminal = null; // the terminal event
    this.suggestions = [];
    this.usage = { input_tokens: 0, output_tokens: 0 };
    this.cost = 0;
    this.costKnown = true;
    this.#open = new Map();
    this.#depth = new Map();
  }

  #open; // key -> span (or list of spans for tools)
  #depth; // agent name -> depth of its agent span

  get ended() { return this.terminal !== null; }

  /** Add one TraceEvent (in seq order; repeats are ignored). Returns true if it was new. */
  add(event) {
    const last = this.events.at(-1);
    if (last && event.seq <= last.seq) return false;
    this.events.push(event);
    const at = Date.parse(event.at);
    const data = event.data ?? {};
    if (this.startedAt === null) this.startedAt = at;
    switch (event.type) {
      case "run.started":
        this.status = "running";
        this.started = data;
        break;
      case "agent.started": this.#agentStarted(data, at); break;
      case "agent.finished": this.#agentFinished(data, at); break;
      case "llm.started": this.#stepStarted("llm", `llm\u0000${data.agent}\u0000${data.turn}`, data, at); break;
      case "llm.finished": this.#llmFinished(data, at); break;
      case "tool.started": this.#toolStarted(data, at); break;
      case "tool.finished": this.#toolFinished(data, at); break;
      case "suggestion": this.suggestions = data.suggestions ?? []; break;
      default:
        if (event.type in TERMINAL) this.#ended(event, at);
    }
    return true;
  }

  #agent(name) {
    if (!this.agents.has(name)) {
      this.agents.set(name, { state: "pending", step: null, calls: 0, usage: { input_tokens: 0, output_tokens: 0 }, cost: 0, costKnown: true, output: undefined });
    }
    return this.agents.get(name);
  }

  #agentStarted(data, at) {
    const agent = this.#agent(data.agent);
    agent.state = "running";
    agent.step ??= data.step ?? null;
    agent.calls += 1;
    this.pattern ??= data.pattern ?? null;
    const caller = this.#openTools().find((span) => span.data.tool === data.agent);
    const depth = caller ? caller.depth + 1 : 0;
    if (caller) { // an agent called as another agent's tool (collaborative)
      const call = `${caller.agent}\u0000${data.agent}`;
      this.usedCalls.add(call);
      this.activeCalls.add(call);
    }
    this.#depth.set(data.agent, depth);
    const span = this.#push("agent", data.agent, data.agent, depth, at, data);
    this.#open.set(`agent\u0000${data.agent}`, span);
  }

  #agentFinished(data, at) {
    const agent = this.#agent(data.agent);
    agent.state = "succeeded";
    agent.usage.input_tokens += data.input_tokens ?? 0;
    agent.usage.output_tokens += data.output_tokens ?? 0;
    if (data.cost_usd === null || data.cost_usd === undefined) agent.costKnown = false;
    else agent.cost += data.cost_usd;
    agent.output = data.output;
    this.#close(`agent\u0000${data.agent}`, at, "succeeded", data);
  }

  #stepStarted(kind, key, data, at) {
    const depth = (this.#depth.get(data.agent) ?? 0) + 1;
    const label = kind === "llm" ? data.model ?? "model" : data.tool;
    const span = this.#push(kind, data.agent, label, depth, at, data);
    if (kind === "tool") {
      const list = this.#open.get(key) ?? [];
      list.push(span);
      this.#open.set(key, list);
    } else {
      this.#open.set(key, span);
    }
    return span;
  }

  #llmFinished(data, at) {
    this.usage.input_tokens += data.input_tokens ?? 0;
    this.usage.output_tokens += data.output_tokens ?? 0;
    if (data.cost_usd === null || data.cost_usd === undefined) this.costKnown = false;
    else this.cost += data.cost_usd;
    this.#close(`llm\u0000${data.agent}\u0000${data.turn}`, at, "succeeded", data);
  }

  #toolStarted(data, at) {
    this.#stepStarted("tool", `tool\u0000${data.agent}\u0000${data.tool}`, data, at);
  }

  #toolFinished(data, at) {
    const key = `tool\u0000${data.agent}\u0000${data.tool}`;
    const list = this.#open.get(key);
    const span = list?.shift();
    if (list && !list.length) this.#open.delete(key);
    if (span) this.#finish(span, at, data.error ? "failed" : "succeeded", data);
    this.activeCalls.delete(`${data.agent}\u0000${data.tool}`);
  }

  #ended(event, at) {
    const status = TERMINAL[event.type];
    this.status = status;
    this.terminal = event;
    this.endedAt = at;
    const data = event.data ?? {};
    if (data.usage) this.usage = { ...data.usage };
    if ("cost_usd" in data) {
      this.cost = data.cost_usd ?? 0;
      this.costKnown = data.cost_usd !== null && data.cost_usd !== undefined;
    }
    const failedAgent = data.error?.agent ?? null;
    for (const [key, value] of this.#open) {
      for (const span of Array.isArray(value) ? value : [value]) {
        this.#finish(span, at, OPEN_AT_END[status], null);
      }
      this.#open.delete(key);
    }
    for (const [name, agent] of this.agents) {
      if (agent.state === "running") agent.state = OPEN_AT_END[status];
      if (name === failedAgent && status === "failed") agent.state = "failed";
    }
    this.activeCalls.clear();
  }

  #openTools() {
    const out = [];
    for (const [key, value] of this.#open) if (key.startsWith("tool\u0000")) out.push(...value);
    return out;
  }

  #push(kind, agent, label, depth, at, data) {
    const span = { id: this.spans.length, kind, agent, label, depth, start: at, end: null, state: "running", data, result: null };
    this.spans.push(span);
    return span;
  }

  #close(key, at, state, result) {
    const span = this.#open.get(key);
    if (!span) return;
    this.#open.delete(key);
    this.#finish(span, at, state, result);
  }

  #finish(span, at, state, result) {
    span.end = at;
    span.state = state;
    if (result) span.result = result;
  }

  /** State of a workflow node by agent name: "pending", "running", ... or "not-run". */
  nodeState(name) {
    const agent = this.agents.get(name);
    if (!agent || agent.state === "pending") return this.ended ? "not-run" : "pending";
    return agent.state;
  }

  /** How long the run has taken, in ms (up to ``now`` while it runs). */
  elapsed(now = Date.now()) {
    if (this.startedAt === null) return 0;
    return Math.max(0, (this.endedAt ?? now) - this.startedAt);
  }
}
