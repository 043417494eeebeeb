// agentstream.js: a dependency-free browser client for agentstream (ES module).
//
//   import { AgentstreamClient } from "/client/agentstream.js";
//   const client = new AgentstreamClient();               // same origin, SSE
//   const run = await client.start("demo", { text: "hi", ask: "Proceed?" }, {
//     onEvent: (e) => console.log(e.seq, e.type, e.data),
//     onInput: (e) => "yes",                               // or run.answer(value) later
//     onState: (s) => console.log("state", s),             // connecting|open|reconnecting|done|detached|failed
//   });
//   const done = await run.done;                           // the run's one `done` event
//
// What it does: resumes after a drop from the last seq it delivered (EventSource with
// ?last_event_id=N, or WebSocket `subscribe {after: N}`), with capped exponential backoff
// and full jitter; drops repeats (seq <= last); calls onEvent once per event in seq order;
// a handshake timeout (no `open`/ack in time: retry); never reconnects after `done`.
// `run.cancel()` stops the run on the server (its `done {cancelled}` still arrives);
// `run.detach()` only closes the stream (the run goes on; attach again later).
// Answers and cancels are plain fetch() POSTs, on either transport.

export const EVENT_TYPES = [
  "conversation_started", "run_started", "require_user_input", "user_input_received",
  "run_cancelling", "done", "message_chunk", "message", "reasoning_started", "reasoning",
  "reasoning_completed", "tool_call_started", "tool_call_completed", "component_generator",
  "notify", "task_started", "task_completed", "task_failed", "task_cancelled",
];

export class AgentstreamError extends Error {
  constructor(message, { status = 0, code = "error" } = {}) {
    super(message);
    this.name = "AgentstreamError";
    this.status = status;
    this.code = code;
  }
}

const RETRYABLE_STATUS = (status) => status === 0 || status === 429 || status >= 500;

export function backoffDelay(attempt, { initial = 100, factor = 2, cap = 5000 } = {}) {
  const ceiling = Math.min(cap, initial * Math.pow(factor, Math.min(attempt, 64)));
  return Math.random() * ceiling; // full jitter
}

async function errorOf(resp) {
  let code = "http_error";
  let message = resp.statusText;
  try {
    const body = await resp.json();
    code = body.error.code;
    message = body.error.message;
  } catch (_) { /* not our error body */ }
  return new AgentstreamError(`${resp.status} ${code}: ${message}`, { status: resp.status, code });
}

export class AgentstreamClient {
  constructor({
    baseUrl = "", transport = "sse", token = null, accessToken = null,
    handshakeTimeout = 10000, backoff = {}, giveUpAfter = 60000, extraEventTypes = [],
  } = {}) {
    if (transport !== "sse" && transport !== "ws") throw new TypeError("transport: 'sse' or 'ws'");
    this.baseUrl = baseUrl.replace(/\/$/, "");
    this.transport = transport;
    this.token = token;
    this.accessToken = accessToken;
    this.handshakeTimeout = handshakeTimeout;
    this.backoff = backoff;
    this.giveUpAfter = giveUpAfter;
    this.eventTypes = [...EVENT_TYPES, ...extraEventTypes];
  }

  async _json(method, path, body, expect = [200]) {
    const headers = { Accept: "application/json" };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    if (this.token) headers.Authorization = `Bearer ${this.token}`;
    const ctrl = new AbortController();
    const timer = setTimeout(() => ctrl.abort(), this.handshakeTimeout);
    let resp;
    try {
      resp = await fetch(this.baseUrl + path, {
        method, headers, body: body === undefined ? undefined : JSON.stringify(body),
        signal: ctrl.signal, credentials: "same-origin",
      });
    } catch (err) {
      throw new AgentstreamError(`${method} ${path}: ${err.message || err}`, { code: "transport" });
    } finally {
      clearTimeout(timer);
    }
    if (!expect.includes(resp.status)) throw await errorOf(resp);
    return resp.json();
  }

  _url(path, params) {
    const url = new URL(this.baseUrl + path, globalThis.location ? location.href : undefined);
    for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null) url.searchParams.set(k, v);
    if (this.accessToken) url.searchParams.set("access_token", this.accessToken);
    return url;
  }

  agents() { return this._json("GET", "/v1/agents").then((r) => r.agents); }
  getRun(runId) { return this._json("GET", `/v1/runs/${encodeURIComponent(runId)}`); }
  answer(runId, requestId, value) {
    return this._json("POST", `/v1/runs/${encodeURIComponent(runId)}/input`, { request_id: requestId, value });
  }
  cancel(runId) {
    return this._json("POST", `/v1/runs/${encodeURIComponent(runId)}/cancel`, undefined, [200, 202]);
  }

  /** Start a run. Over SSE: POST (202), then the run's events; over WS: `start` on the socket. */
  async start(agent, input, options = {}) {
    const { conversationId, onDisconnect = "continue", metadata, ...handlers } = options;
    const body = { agent, input, on_disconnect: onDisconnect };
    if (conversationId) body.conversation_id = conversationId;
    if (metadata) body.metadata = metadata;
    if (this.transport === "ws") {
      const run = new AgentRun(this, null, handlers, 0);
      await run._startWs(body);
      return run;
    }
    const reply = await this._json("POST", "/v1/runs", body, [202]);
    const run = new AgentRun(this, reply.run_id, handlers, 0);
    run.conversationId = reply.conversation_id;
    run._connect();
    return run;
  }

  /** Follow an existing run from seq `after` (0: from its first event). */
  attach(runId, { after = 0, ...handlers } = {}) {
    const run = new AgentRun(this, runId, handlers, after);
    run._connect();
    return run;
  }

  /** Every event of a conversation after `after`, replay then live, until detach(). */
  subscribe(conversationId, { after = 0, ...handlers } = {}) {
    const sub = new Stream(this, { conversation_id: conversationId }, handlers, after);
    sub._connect();
    return sub;
  }
}

/** The resume loop shared by runs and subscriptions. */
class Stream {
  constructor(client, target, handlers, after) {
    this.client = client;
    this.target = target; // {run_id} or {conversation_id}
    this.handlers = handlers;
    this.lastSeq = after;
    this.counted = 0;
    this.state = "connecting";
    this.connections = 0;
    this.reconnects = 0;
    this._attempt = 0;
    this._failingSince = null;
    this._source = null;
    this._socket = null;
    this._timer = null;
    this._finished = false;
  }

  _setState(state, info) {
    if (this.state === state) return;
    this.state = state;
    this.handlers.onState?.(state, info);
  }

  _path() {
    return this.target.run_id
      ? `/v1/runs/${encodeURIComponent(this.target.run_id)}/events`
      : `/v1/conversations/${encodeURIComponent(this.target.conversation_id)}/events`;
  }

  _connect() {
    if (this._finished) return;
    this.connections += 1;
    this._setState(this.connections === 1 ? "connecting" : "reconnecting");
    if (this.client.transport === "ws") this._openWs({ type: "subscribe", ...this.target, after: this.lastSeq });
    else this._openSse();
  }

  _openSse() {
    const url = this.client._url(this._path(), { last_event_id: this.lastSeq || undefined });
    const source = (this._source = new EventSource(url, { withCredentials: false }));
    this._armHandshake(() => source.close());
    source.onopen = () => this._opened();
    const listener = (msg) => { if (this._source === source) this._frame(msg.data); };
    for (const type of this.client.eventTypes) source.addEventListener(type, listener);
    source.addEventListener("message", listener); // an event without `event:` (future types)
    source.onerror = () => {
      if (this._source !== source) return;
      source.close(); // our backoff, not the browser's fixed retry
      this._source = null;
      this._dropped(source.readyState === EventSource.CLOSED);
    };
  }

  _openWs(command) {
    const url = this.client._url("/v1/ws", {});
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    const socket = (this._socket = new WebSocket(url));
    const ref = `r${this.connections}`;
    this._armHandshake(() => socket.close());
    socket.onopen = () => socket.send(JSON.stringify({ ...command, ref }));
    socket.onmessage = (msg) => {
      if (this._socket !== socket) return;
      let frame;
      try { frame = JSON.parse(msg.data); } catch (_) { return; }
      if (frame.type === "event") this._frame(frame.event);
      else if (frame.type === "ack" && frame.ref === ref) this._acked(frame);
      else if (frame.type === "error" && (frame.ref === ref || !frame.ref)) {
        this._fail(new AgentstreamError(`${frame.code}: ${frame.message}`, { code: frame.code }));
      }
    };
    socket.onclose = () => {
      if (this._socket !== socket) return;
      this._socket = null;
      this._dropped(false);
    };
  }

  _acked(_frame) { this._opened(); }

  _armHandshake(abort) {
    clearTimeout(this._timer);
    this._timer = setTimeout(() => { abort(); this._dropped(false); }, this.client.handshakeTimeout);
  }

  _opened() {
    clearTimeout(this._timer);
    this._setState("open");
  }

  _frame(data) {
    const event = typeof data === "string" ? JSON.parse(data) : data;
    if (typeof event.seq !== "number" || event.seq <= this.lastSeq) return; // a repeat
    this.lastSeq = event.seq;
    this.counted += event.data && event.data.merged > 1 ? event.data.merged : 1;
    this._attempt = 0;
    this._failingSince = null;
    this._deliver(event);
  }

  _deliver(event) { this.handlers.onEvent?.(event); }

  async _dropped(closedByServer) {
    this._closeTransport();
    if (this._finished) return;
    if (closedByServer && (await this._serverSaysFinished())) return;
    this._failingSince ??= Date.now();
    if (Date.now() - this._failingSince > this.client.giveUpAfter) {
      this._fail(new AgentstreamError("could not reconnect", { code: "reconnect_failed" }));
      return;
    }
    this._setState("reconnecting");
    const delay = backoffDelay(this._attempt++, this.client.backoff);
    this.reconnects += 1;
    this._timer = setTimeout(() => this._connect(), delay);
  }

  async _serverSaysFinished() { return false; }

  _closeTransport() {
    clearTimeout(this._timer);
    if (this._source) { this._source.close(); this._source = null; }
    if (this._socket) { const s = this._socket; this._socket = null; s.close(); }
  }

  _finish(state) {
    this._finished = true;
    this._closeTransport();
    this._setState(state);
  }

  _fail(error) {
    if (this._finished) return;
    this._finish("failed");
    this.handlers.onError?.(error);
    this._reject?.(error);
  }

  /** Close the stream; the run (if any) goes on on the server. */
  detach() { if (!this._finished) this._finish("detached"); }
}

export class AgentRun extends Stream {
  constructor(client, runId, handlers, after) {
    super(client, { run_id: runId }, handlers, after);
    this.runId = runId;
    this.conversationId = null;
    this.pendingInput = null;
    this.result = null;
    this.done = new Promise((resolve, reject) => { this._resolve = resolve; this._reject = reject; });
    this.done.catch(() => {}); // a caller that never awaits it gets no unhandled rejection
  }

  async _startWs(body) {
    this.connections += 1;
    this._setState("connecting");
    await new Promise((resolve, reject) => {
      this._startWaiters = { resolve, reject };
      this._openWs({ type: "start", ...body });
    });
  }

  _acked(frame) {
    if (this._startWaiters) {
      this.runId = this.target.run_id = frame.run_id;
      this.conversationId = frame.conversation_id;
      this._startWaiters.resolve();
      this._startWaiters = null;
    }
    super._acked(frame);
  }

  _dropped(closedByServer) {
    if (this._startWaiters) { // a start we cannot know happened: not retried
      const waiters = this._startWaiters;
      this._startWaiters = null;
      this._finish("failed");
      waiters.reject(new AgentstreamError("start: connection lost before the ack", { code: "transport" }));
      return;
    }
    return super._dropped(closedByServer);
  }

  _fail(error) {
    if (this._startWaiters) {
      const waiters = this._startWaiters;
      this._startWaiters = null;
      this._finish("failed");
      waiters.reject(error);
      return;
    }
    super._fail(error);
  }

  _deliver(event) {
    this.conversationId ??= event.conversation_id;
    if (event.type === "require_user_input") this.pendingInput = event;
    if (event.type === "user_input_received" || event.type === "done") this.pendingInput = null;
    if (event.type === "done") {
      this.result = event;
      this._finish("done"); // closes the stream first: never a reconnect after done
    }
    this.handlers.onEvent?.(event);
    if (event.type === "require_user_input" && this.handlers.onInput) {
      Promise.resolve(this.handlers.onInput(event))
        .then((value) => this.answer(value, event.data.request_id))
        .catch((err) => this.handlers.onError?.(err));
    }
    if (event.type === "done") this._resolve(event);
  }

  /** EventSource reports a 204 (or any non-200) only as a closed error: ask the run. */
  async _serverSaysFinished() {
    try {
      const info = await this.client.getRun(this.runId);
      if (info.done_seq != null && info.done_seq <= this.lastSeq) {
        this._finish("done");
        return true;
      }
    } catch (err) {
      if (err.status && !RETRYABLE_STATUS(err.status)) { this._fail(err); return true; }
    }
    return false;
  }

  /** True once `done` arrived and every event of the run was delivered to this handle. */
  get complete() { return this.result !== null && this.counted === this.result.data.events; }

  answer(value, requestId) {
    const id = requestId ?? this.pendingInput?.data.request_id;
    if (!id) return Promise.reject(new AgentstreamError("nothing to answer", { code: "no_pending_input" }));
    return this.client.answer(this.runId, id, value);
  }

  /** Ask the server to stop the run; keep listening for its `done {cancelled}`. */
  cancel() { return this.client.cancel(this.runId); }
}
