// Drives /v1/ai-sdk/{agent}/chat with the `ai` package's own client code: AbstractChat (what
// useChat wraps) over DefaultChatTransport, and for resume the transport's reconnectToStream
// read with readUIMessageStream. Prints one JSON object for the Python test to check.
// usage: node ai_sdk_client.mjs <base-url> <mode: plain|ask|resume> <chat-id> <input-json>
import {
  AbstractChat, DefaultChatTransport, lastAssistantMessageIsCompleteWithToolCalls,
  readUIMessageStream,
} from 'ai';

const [base, mode, chatId, inputJson] = process.argv.slice(2);
const input = JSON.parse(inputJson);
const api = `${base}/v1/ai-sdk/demo/chat`;
const runIds = [];
const recordingFetch = async (url, init) => {
  const response = await fetch(url, init);
  const runId = response.headers.get('x-agentstream-run-id');
  if (runId) runIds.push(runId);
  return response;
};

class MemoryState {
  constructor() { this.status = 'ready'; this.error = undefined; this.messages = []; }
  pushMessage(m) { this.messages = this.messages.concat(m); }
  popMessage() { this.messages = this.messages.slice(0, -1); }
  replaceMessage(i, m) { this.messages = [...this.messages.slice(0, i), m, ...this.messages.slice(i + 1)]; }
  snapshot(thing) { return structuredClone(thing); }
}

class Chat extends AbstractChat {
  constructor(init) { super({ ...init, state: new MemoryState() }); }
}

const settle = async (chat) => {
  for (let i = 0; i < 600 && (chat.status === 'submitted' || chat.status === 'streaming'); i++) {
    await new Promise((r) => setTimeout(r, 25));
  }
};

const errors = [];
const out = { runIds };
const transport = new DefaultChatTransport({ api, body: { input }, fetch: recordingFetch });

if (mode === 'plain' || mode === 'ask') {
  const chat = new Chat({
    id: chatId, transport, onError: (e) => errors.push(String(e)),
    sendAutomaticallyWhen: lastAssistantMessageIsCompleteWithToolCalls,
  });
  await chat.sendMessage({ text: 'hi' });
  await settle(chat);
  if (mode === 'ask') {
    const last = chat.messages.at(-1);
    const ask = last.parts.find((p) => p.type === 'dynamic-tool' && p.toolName === 'require_user_input');
    out.question = ask ? { state: ask.state, input: ask.input } : null;
    await chat.addToolOutput({ tool: 'require_user_input', toolCallId: ask.toolCallId, output: 'yes' });
    for (let i = 0; i < 400 && runIds.length < 2; i++) await new Promise((r) => setTimeout(r, 25));
    await settle(chat);
  }
  out.status = chat.status;
  out.messages = chat.messages;
} else if (mode === 'resume') {
  // A first client starts the run and drops after its first bytes...
  const controller = new AbortController();
  const first = await recordingFetch(api, {
    method: 'POST', headers: { 'Content-Type': 'application/json' }, signal: controller.signal,
    body: JSON.stringify({ id: chatId, messages: [{ id: 'u1', role: 'user', parts: [{ type: 'text', text: 'hi' }] }], trigger: 'submit-message', input }),
  });
  const reader = first.body.getReader();
  await reader.read();
  controller.abort();
  // ...and a reloaded page resumes the active stream.
  const stream = await transport.reconnectToStream({ chatId });
  let message = null;
  for await (const snapshot of readUIMessageStream({ stream, onError: (e) => errors.push(String(e)) })) {
    message = snapshot;
  }
  out.messages = [message];
  out.noActive = (await transport.reconnectToStream({ chatId })) === null;
}
out.errors = errors;
console.log(JSON.stringify(out));
