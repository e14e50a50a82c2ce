// Server-Sent Events over fetch(): EventSource cannot send an Authorization header, and the
// key must never go into a URL, so the console reads the stream itself.

/** Incremental parser of the text/event-stream format (the WHATWG rules flowrelay needs). */
export class SseParser {
  #buffer = "";
  #data = [];
  #event = "";
  #id = null;

  /** Feed decoded text; returns the events completed by it: {id, event, data}. */
  push(text) {
    this.#buffer += text;
    const out = [];
    for (;;) {
      const match = /\r\n|\r|\n/.exec(this.#buffer);
      // A lone \r at the end may be the first half of \r\n: wait for more.
      if (!match || (match[0] === "\r" && match.index === this.#buffer.length - 1)) break;
      const line = this.#buffer.slice(0, match.index);
      this.#buffer = this.#buffer.slice(match.index + match[0].length);
      const event = this.#line(line);
      if (event) out.push(event);
    }
    return out;
  }

  /** The stream ended: a last line cut by a lone \r still counts. Returns the events. */
  end() {
    if (!this.#buffer.endsWith("\r")) return [];
    const line = this.#buffer.slice(0, -1);
    this.#buffer = "";
    const event = this.#line(line);
    return event ? [event] : [];
  }

  #line(line) {
    if (line === "") {
      if (this.#data.length === 0) { this.#event = ""; return null; }
      const event = { id: this.#id, event: this.#event || "message", data: this.#data.join("\n") };
      this.#data = [];
      this.#event = "";
      return event;
    }
    if (line.startsWith(":")) return null; // keep-alive comment
    const colon = line.indexOf(":");
    const field = colon === -1 ? line : line.slice(0, colon);
    let value = colon === -1 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "data") this.#data.push(value);
    else if (field === "event") this.#event = value;
    else if (field === "id" && !value.includes("\0")) this.#id = value;
    return null;
  }
}

/**
 * Yield the SSE events of ``response`` (a fetch Response) as they arrive.
 * Ends when the server closes the stream; throws on a network error.
 */
export async function* readEvents(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  const parser = new SseParser();
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) { yield* parser.end(); return; }
      yield* parser.push(value);
    }
  } finally {
    reader.cancel().catch(() => {});
  }
}
