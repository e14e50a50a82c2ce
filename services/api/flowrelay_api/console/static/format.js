// How numbers, times and values are shown. One place, so every view says things alike.

export const STATUSES = ["queued", "running", "succeeded", "failed", "cancelled"];
export const TERMINAL_STATUSES = new Set(["succeeded", "failed", "cancelled"]);

const integer = new Intl.NumberFormat("en", { maximumFractionDigits: 0 });

export function tokens(usage) {
  if (!usage) return "—";
  const total = (usage.input_tokens ?? 0) + (usage.output_tokens ?? 0);
  if (!total) return "0";
  return `${integer.format(total)}`;
}

export function tokensDetail(usage) {
  if (!usage) return "";
  return `${integer.format(usage.input_tokens ?? 0)} in, ${integer.format(usage.output_tokens ?? 0)} out`;
}

/** A cost in US dollars; null (the price is unknown) is said, never shown as 0. */
export function cost(value) {
  if (value === null || value === undefined) return "unknown";
  if (value === 0) return "$0";
  if (value < 0.000001) return "< $0.000001";
  if (value < 1) return `$${Number(value.toPrecision(2))}`; // 0.000086, not 8.6e-5
  return `$${value.toFixed(2)}`;
}

export function duration(ms) {
  if (ms === null || ms === undefined || Number.isNaN(ms)) return "—";
  if (ms < 1) return `${ms.toFixed(2)} ms`;
  if (ms < 1000) return `${ms < 10 ? ms.toFixed(1) : Math.round(ms)} ms`;
  const seconds = ms / 1000;
  if (seconds < 60) return `${seconds.toFixed(seconds < 10 ? 2 : 1)} s`;
  const minutes = Math.floor(seconds / 60);
  return `${minutes} min ${Math.round(seconds % 60)} s`;
}

/** Milliseconds a run took, or has taken so far (``now`` for a running one). */
export function runDuration(run, now = Date.now()) {
  const start = run.started_at ? Date.parse(run.started_at) : null;
  if (start === null) return null;
  const end = run.finished_at ? Date.parse(run.finished_at) : now;
  return Math.max(0, end - start);
}

const clock = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit", second: "2-digit" });
const dated = new Intl.DateTimeFormat(undefined, {
  year: "numeric", month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", second: "2-digit",
});

/** A moment: just the time for today, with the date otherwise. */
export function when(iso) {
  if (!iso) return "—";
  const moment = new Date(iso);
  return moment.toDateString() === new Date().toDateString() ? clock.format(moment) : dated.format(moment);
}

/** A short, still unique-looking form of a run id for dense tables. */
export function shortId(runId) {
  return runId.length > 12 ? `${runId.slice(0, 6)}…${runId.slice(-6)}` : runId;
}

/** A value from a trace (string, JSON, anything) as readable text. */
export function value(data) {
  if (data === null || data === undefined) return "";
  if (typeof data === "string") {
    const trimmed = data.trim();
    if ((trimmed.startsWith("{") || trimmed.startsWith("[")) && trimmed.length < 100000) {
      try { return JSON.stringify(JSON.parse(trimmed), null, 2); } catch { /* plain text */ }
    }
    return data;
  }
  return JSON.stringify(data, null, 2);
}
