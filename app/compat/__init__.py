"""Views of a run in other ecosystems' protocols: pure mappings, no I/O (issue 17)."""
