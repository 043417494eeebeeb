"""Access control: who is calling (authenticator), what they may touch (access), limits, CORS."""
