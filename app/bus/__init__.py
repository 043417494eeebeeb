"""The bus: how committed events reach every node's hub, and how nodes ask each other.

``LocalBus`` is the single-process default (the commit goes straight to the hub, as it
always did); ``RedisBus`` is the cluster's (Pub/Sub doorbells, the store is the truth).
"""
