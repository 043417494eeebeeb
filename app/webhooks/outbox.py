"""What to deliver: a run's ``done`` or ``require_user_input`` becomes an outbox row (and, for
a question, a one-time answer token), committed in the event's own transaction.

``WebhookPlanner`` is the lifecycle's ``side_ops`` hook: called with the run row and the
encoded event while its group is built; no I/O.
"""

from __future__ import annotations

import hashlib
import secrets

import msgspec

from app.clock import now_ms
from app.ids import public
from app.store.ops import Op, PutOutbox
from app.store.records import AnswerToken, OutboxEntry, RunRecord
from protocol.codec import EncodedEvent, decode_event
from protocol.events import RequireUserInput
from protocol.webhooks import AnswerLink, WebhookPayload

WEBHOOK_TYPES = {"done": "run.done", "require_user_input": "run.input_required"}
ANSWER_PATH = "/webhooks/answers/"
# An answer link of a question without a deadline lives this long (ms).
ANSWER_TTL_MS = 24 * 3600 * 1000


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class WebhookPlanner:
    def __init__(self, default_url: str | None) -> None:
        self.default_url = default_url or None

    def __call__(self, record: RunRecord, event: EncodedEvent) -> list[Op]:
        kind = WEBHOOK_TYPES.get(event.type)
        url = record.webhook_url or self.default_url
        if kind is None or url is None:
            return []
        now = now_ms()
        delivery_id = f"{record.run_id}.{event.seq}"
        token: AnswerToken | None = None
        answer: AnswerLink | None = None
        if event.type == "require_user_input":
            question = decode_event(event.body)
            assert isinstance(question, RequireUserInput)
            raw = secrets.token_urlsafe(32)
            expires = question.data.expires_at or now + ANSWER_TTL_MS
            token = AnswerToken(token_hash(raw), record.run_id, question.data.request_id,
                                record.conversation_id, expires)
            answer = AnswerLink(ANSWER_PATH + raw, expires, question.data.request_id)
        body = msgspec.json.encode(WebhookPayload(
            delivery_id, kind, now, record.run_id, public(record.conversation_id), record.agent,  # type: ignore[arg-type]
            msgspec.Raw(event.body), answer))
        entry = OutboxEntry(delivery_id, record.conversation_id, url, body, now, now)
        return [PutOutbox(entry, token)]
