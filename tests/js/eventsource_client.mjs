// The npm `eventsource` package (a WHATWG EventSource for Node) reading one run's events
// until the server's 204 after `done` stops it. Prints one JSON line: {events, errors,
// readyState}. argv: <events url>
import { EventSource } from "eventsource";

const TYPES = ["run_started", "reasoning_started", "reasoning", "reasoning_completed",
  "tool_call_started", "tool_call_completed", "message_chunk",
  "require_user_input", "user_input_received", "done"];
const url = process.argv[2];
const events = [];
let errors = 0;
const es = new EventSource(url);
for (const t of TYPES) es.addEventListener(t, (m) => events.push(JSON.parse(m.data)));
// the protocol's `message` type is also the SSE default name, so it arrives on onmessage
es.onmessage = (m) => events.push(JSON.parse(m.data));
es.onerror = () => {
  errors += 1;
  if (es.readyState === EventSource.CLOSED) { // the 204 after done
    process.stdout.write(JSON.stringify({ events, errors, readyState: es.readyState }) + "\n");
    process.exit(0);
  }
};
setTimeout(() => { process.stdout.write(JSON.stringify({ timeout: true, events }) + "\n"); process.exit(1); }, 30000);
