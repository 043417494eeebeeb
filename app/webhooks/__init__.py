"""Webhooks: signed POSTs on a run's ``done`` and ``require_user_input``, from an outbox."""
