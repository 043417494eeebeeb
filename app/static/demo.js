// The demo page: plain DOM code over agentstream.js. State for tests and curious users is
// on window.agentstreamDemo (the run handle, the seqs rendered).
import { AgentstreamClient } from "/client/agentstream.js";

const $ = (id) => document.getElementById(id);
const demo = (window.agentstreamDemo = { run: null, seqs: [], events: [] });
const blocks = new Map(); // item_id -> element

function block(kind, key, title) {
  if (key && blocks.has(key)) return blocks.get(key);
  const el = document.createElement("div");
  el.className = `block ${kind}`;
  if (title) el.textContent = title;
  $("transcript").append(el);
  if (key) blocks.set(key, el);
  return el;
}

function render(e) {
  demo.seqs.push(e.seq);
  demo.events.push(e);
  const d = e.data || {};
  switch (e.type) {
    case "run_started": block("notice", null, `run ${e.run_id} started`); break;
    case "reasoning_started": block("reasoning", "r:" + e.item_id, "thinking: "); break;
    case "reasoning": block("reasoning", "r:" + e.item_id, "thinking: ").append(d.delta); break;
    case "tool_call_started":
      block("tool", "t:" + e.item_id, `tool ${d.name}(${JSON.stringify(d.arguments ?? null)})`); break;
    case "tool_call_completed":
      block("tool", "t:" + e.item_id).append(` → ${JSON.stringify(d.result ?? d.error ?? null)}`); break;
    case "message_chunk": block("message", "m:" + e.item_id).append(d.delta); break;
    case "message": block("message", "m:" + e.item_id).textContent = d.text; break;
    case "require_user_input": showQuestion(e); break;
    case "user_input_received":
      $("question").hidden = true;
      block("notice", null, `answered: ${JSON.stringify(d.value)}`); break;
    case "done":
      $("question").hidden = true;
      block("done", null, `done: ${d.status}${d.error ? ` (${d.error.code})` : ""}, ${d.events} events`);
      break;
    default: if (e.type !== "reasoning_completed") block("notice", null, `${e.type}`);
  }
}

function showQuestion(e) {
  $("prompt").textContent = e.data.prompt;
  const choices = e.data.choices?.length ? e.data.choices : ["yes", "no"];
  $("choices").replaceChildren(...choices.map((choice) => {
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = String(choice);
    b.dataset.answer = JSON.stringify(choice);
    b.addEventListener("click", () => demo.run.answer(choice, e.data.request_id).catch(showError));
    return b;
  }));
  $("question").hidden = false;
}

function showError(err) { block("notice", null, `error: ${err.message}`); }

function showStatus() {
  const run = demo.run;
  const state = run ? run.state : "idle";
  document.body.dataset.state = state;
  $("status").textContent = run
    ? `${state} · run ${run.runId ?? "…"} · last seq ${run.lastSeq} · connections ${run.connections}`
    : "idle";
  const live = run && !["done", "failed", "detached"].includes(state);
  $("cancel").disabled = $("detach").disabled = !live;
  $("go").disabled = Boolean(live);
}

function handlers() {
  return {
    onEvent: (e) => { render(e); showStatus(); },
    onState: () => showStatus(),
    onError: showError,
  };
}

function client() {
  const transport = new URLSearchParams(location.hash.slice(1)).get("transport") || $("transport").value;
  $("transport").value = transport;
  return new AgentstreamClient({ transport, backoff: { initial: 100, cap: 2000 } });
}

function clear() {
  blocks.clear();
  demo.seqs = [];
  demo.events = [];
  $("transcript").replaceChildren();
  $("question").hidden = true;
}

async function start(ev) {
  ev.preventDefault();
  clear();
  const input = {
    text: $("input").value, tokens: Number($("tokens").value), delay_ms: Number($("delay").value),
  };
  if ($("ask").checked) input.ask = "Shall I go on?";
  try {
    const c = client();
    demo.run = await c.start($("agent").value, $("agent").value === "demo" ? input : $("input").value, handlers());
    // The run id in the URL: a reload attaches to it again and resumes.
    location.hash = new URLSearchParams({ run: demo.run.runId, transport: c.transport }).toString();
  } catch (err) { showError(err); }
  showStatus();
}

async function init() {
  const c = client();
  try {
    const agents = await c.agents();
    $("agent").replaceChildren(...agents.map((a) => new Option(`${a.name} — ${a.description}`, a.name)));
  } catch (err) { showError(err); }
  $("start").addEventListener("submit", start);
  $("cancel").addEventListener("click", () => demo.run?.cancel().catch(showError));
  $("detach").addEventListener("click", () => { demo.run?.detach(); showStatus(); });
  const runId = new URLSearchParams(location.hash.slice(1)).get("run");
  if (runId) demo.run = c.attach(runId, handlers()); // a reload: replay, then live
  showStatus();
}

init();
