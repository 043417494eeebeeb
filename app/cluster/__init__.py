"""Cluster mode: node leases, conversation ownership with fencing, commands between nodes.

See docs/ARCHITECTURE.md (Cluster) for the design and the races it closes.
"""
