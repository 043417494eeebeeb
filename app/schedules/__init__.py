"""Recurring schedules: each firing starts an ordinary run in the schedule's conversation."""
