"""HTTP and WebSocket handlers: parse, call the engine, respond. Thin by design."""
