// useAgentRun: a React hook over agentstream.js. No build step: import it through your
// bundler, or in a plain page through an import map that names "react".
//
//   const { events, state, result, pendingInput, start, answer, cancel, detach } =
//     useAgentRun(client, { runId });      // runId: attach to a run (e.g. after a reload)
//   <button onClick={() => start("demo", "hi")}>Go</button>

import { useCallback, useEffect, useRef, useState } from "react";

export function useAgentRun(client, { runId = null, after = 0 } = {}) {
  const [events, setEvents] = useState([]);
  const [state, setState] = useState(runId ? "connecting" : "idle");
  const [pendingInput, setPendingInput] = useState(null);
  const [result, setResult] = useState(null);
  const [error, setError] = useState(null);
  const runRef = useRef(null);

  const handlers = useCallback(() => ({
    onEvent: (event) => {
      setEvents((prev) => [...prev, event]);
      if (event.type === "require_user_input") setPendingInput(event);
      if (event.type === "user_input_received" || event.type === "done") setPendingInput(null);
      if (event.type === "done") setResult(event);
    },
    onState: setState,
    onError: setError,
  }), []);

  const reset = () => { setEvents([]); setResult(null); setError(null); setPendingInput(null); };

  useEffect(() => {
    if (!runId) return undefined;
    reset();
    const run = client.attach(runId, { after, ...handlers() });
    runRef.current = run;
    return () => run.detach(); // unmount detaches: the run goes on on the server
  }, [client, runId, after, handlers]);

  const start = useCallback(async (agent, input, options = {}) => {
    runRef.current?.detach();
    reset();
    const run = await client.start(agent, input, { ...options, ...handlers() });
    runRef.current = run;
    return run;
  }, [client, handlers]);

  const answer = useCallback((value) => runRef.current?.answer(value), []);
  const cancel = useCallback(() => runRef.current?.cancel(), []);
  const detach = useCallback(() => runRef.current?.detach(), []);
  useEffect(() => () => runRef.current?.detach(), []);

  return { events, state, result, pendingInput, error, start, answer, cancel, detach, run: runRef.current };
}
