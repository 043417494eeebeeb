"""The fan-out layer: committed batches, their shared frames, the replay cache, the hub."""
