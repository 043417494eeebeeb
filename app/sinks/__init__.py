"""Per-connection sinks (SSE, WebSocket) sharing one policy."""
