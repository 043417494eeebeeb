"""Agents: the interface, the registry and the built-in ones."""
