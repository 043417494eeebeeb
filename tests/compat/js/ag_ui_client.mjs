// Runs /v1/ag-ui/{agent} with @ag-ui/client's HttpAgent (its SSE parser, event verifier and
// state reducer), answering an interrupt with `resume` when the run asks.
// usage: node ag_ui_client.mjs <base-url> <thread-id> <input-json> <answer-or-empty>
import { HttpAgent } from '@ag-ui/client';

const [base, threadId, inputJson, answer] = process.argv.slice(2);
const runIds = [];
const events = [];
const agent = new HttpAgent({
  url: `${base}/v1/ag-ui/demo`, threadId,
  initialMessages: [{ id: 'u1', role: 'user', content: 'hi' }],
  fetch: async (url, init) => {
    const response = await fetch(url, init);
    runIds.push(response.headers.get('x-agentstream-run-id'));
    return response;
  },
});
const out = { runIds, events, finished: [] };
const subscriber = {
  onEvent: ({ event }) => { events.push(event.type); },
  onRunErrorEvent: ({ event }) => { out.runError = { code: event.code, message: event.message }; },
};
try {
  const first = await agent.runAgent({ forwardedProps: { input: JSON.parse(inputJson) } }, subscriber);
  out.finished.push(first.result ?? null);
  out.interrupts = agent.pendingInterrupts;
  if (answer && agent.pendingInterrupts.length) {
    await agent.runAgent({
      resume: agent.pendingInterrupts.map((i) => ({ interruptId: i.id, status: 'resolved', payload: answer })),
    }, subscriber);
    out.pendingAfter = agent.pendingInterrupts.length;
  }
} catch (e) {
  out.error = String(e);
}
out.messages = agent.messages;
console.log(JSON.stringify(out));
