"""The session engine: runs, conversations, seq, input, cancel, and the fan-out hub."""
