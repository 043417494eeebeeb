"""Crash-and-fault integrity harness: workload, faults and the invariant checker.

Shared by the short test suite (``tests/integrity/test_*.py``) and the long loop
(``scripts/crashloop.py``): one implementation of every invariant.
"""
