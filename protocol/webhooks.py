"""Webhook wire types: the payload POSTed to a receiver, and the answer it may send back.

Signature header (Stripe-style): ``Agentstream-Signature: t=<unix seconds>,v1=<hex>`` where
``v1 = HMAC-SHA256(secret, "<t>." + raw body)``. ``verify_signature`` is what a receiver
runs (pure, so a client can import it).
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Annotated, Any, Literal

import msgspec

SIGNATURE_HEADER = "Agentstream-Signature"
DELIVERY_HEADER = "Agentstream-Delivery"


class AnswerLink(msgspec.Struct):
    """POST ``{"value": ...}`` as JSON to ``path`` (relative to the service) once."""

    path: str
    expires_at: int
    request_id: str
    method: str = "POST"


class WebhookPayload(msgspec.Struct, omit_defaults=True):
    id: str  # stable delivery id: a redelivery carries the same one
    type: Literal["run.done", "run.input_required"]
    created_at: int
    run_id: str
    conversation_id: str
    agent: str
    event: msgspec.Raw  # the stored envelope
    answer: AnswerLink | None = None


class AnswerRequest(msgspec.Struct, forbid_unknown_fields=True):
    value: Any = None


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret, b"%d." % timestamp + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify_signature(secret: bytes, header: str, body: bytes, now: int,
                     tolerance: int = 300) -> bool:
    """True if ``header`` signs ``body`` with ``secret`` within ``tolerance`` seconds."""
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    try:
        timestamp = int(parts.get("t", ""))
    except ValueError:
        return False
    if abs(now - timestamp) > tolerance:
        return False
    expected = sign(secret, timestamp, body).split("v1=", 1)[1]
    return hmac.compare_digest(expected, parts.get("v1", ""))


AnswerToken = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{20,100}$")]
