// Types for agentstream.js (the wire contract is PROTOCOL.md).

export type RunState = "connecting" | "open" | "reconnecting" | "done" | "detached" | "failed";

export interface AgentEvent<T extends string = string, D = any> {
  seq: number;
  type: T;
  conversation_id: string;
  run_id: string | null;
  agent: string | null;
  ts: number;
  item_id?: string;
  thread_id?: string;
  task_id?: string;
  data: D;
}

export interface DoneData {
  status: "completed" | "failed" | "cancelled" | "interrupted";
  events: number;
  error?: { code: string; message: string };
}
export type DoneEvent = AgentEvent<"done", DoneData>;
export type RequireUserInputEvent = AgentEvent<"require_user_input", {
  request_id: string; prompt: string; choices?: unknown[]; schema?: object; expires_at?: number;
}>;

export const EVENT_TYPES: string[];

export class AgentstreamError extends Error {
  status: number;
  code: string;
}

export interface Handlers {
  onEvent?(event: AgentEvent): void;
  onState?(state: RunState, info?: unknown): void;
  onError?(error: AgentstreamError): void;
}
export interface RunHandlers extends Handlers {
  /** Return (or resolve to) the answer; it is posted for you. */
  onInput?(event: RequireUserInputEvent): unknown | Promise<unknown>;
}

export interface ClientOptions {
  baseUrl?: string;
  transport?: "sse" | "ws";
  /** Sent as `Authorization: Bearer` on fetch() calls. */
  token?: string | null;
  /** A stream token for EventSource/WebSocket URLs (`?access_token=`). */
  accessToken?: string | null;
  /** ms to wait for `open` (SSE) or the ack (WS) before retrying. */
  handshakeTimeout?: number;
  backoff?: { initial?: number; factor?: number; cap?: number };
  /** ms of consecutive failures before the stream fails. */
  giveUpAfter?: number;
  /** Event types newer than this module, to listen for over EventSource. */
  extraEventTypes?: string[];
}

export function backoffDelay(attempt: number, backoff?: ClientOptions["backoff"]): number;

export class Stream {
  readonly state: RunState;
  readonly lastSeq: number;
  readonly connections: number;
  readonly reconnects: number;
  /** Close the stream; a run goes on on the server. */
  detach(): void;
}

export class AgentRun extends Stream {
  readonly runId: string;
  readonly conversationId: string | null;
  readonly pendingInput: RequireUserInputEvent | null;
  readonly result: DoneEvent | null;
  readonly done: Promise<DoneEvent>;
  readonly complete: boolean;
  answer(value: unknown, requestId?: string): Promise<unknown>;
  cancel(): Promise<{ run_id: string; status: string }>;
}

export class AgentstreamClient {
  constructor(options?: ClientOptions);
  start(agent: string, input: unknown, options?: RunHandlers & {
    conversationId?: string; onDisconnect?: "continue" | "cancel"; metadata?: object;
  }): Promise<AgentRun>;
  attach(runId: string, options?: RunHandlers & { after?: number }): AgentRun;
  subscribe(conversationId: string, options?: Handlers & { after?: number }): Stream;
  agents(): Promise<Array<{ name: string; description: string; can_request_input: boolean }>>;
  getRun(runId: string): Promise<Record<string, unknown>>;
  answer(runId: string, requestId: string, value: unknown): Promise<unknown>;
  cancel(runId: string): Promise<{ run_id: string; status: string }>;
}
