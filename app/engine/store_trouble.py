"""Store trouble ends runs, it does not wedge them: the writer's two hooks.

``fail_all`` is the writer's ``on_stalled`` (the store failed for ``--store-fail-timeout``:
every open run ends ``failed {store_unavailable}``); ``on_rejected`` is its ``on_rejected``
(a conversation's writes were refused: its counter is reloaded from the store and its runs
end ``failed {store_rejected}``, their ``done`` numbered from the committed counter). Both
only mark the run and cancel its agent: the run's driver writes the ``done``.
"""

from __future__ import annotations

from collections.abc import Mapping

from app.engine.conversations import Conversations
from app.engine.state import ActiveRun
from app.store.writer import StoreUnavailable
from protocol.messages import ErrorDetail


class StoreTrouble:
    def __init__(self, conversations: Conversations, active: Mapping[str, ActiveRun]) -> None:
        self.conversations = conversations
        self.active = active

    def fail_all(self, exc: StoreUnavailable) -> None:
        """The store has failed for too long: end every open run ``failed``."""
        for run in list(self.active.values()):
            fail(run, ErrorDetail("store_unavailable", str(exc)))

    def on_rejected(self, conversation_ids: set[str], exc: BaseException) -> None:
        """The store refused these conversations' writes: their runs end ``failed``."""
        for cid in conversation_ids:
            self.conversations.mark_broken(cid)
            for run in list(self.active.values()):
                if run.record.conversation_id == cid:
                    fail(run, ErrorDetail(
                        "store_rejected", f"the store refused this conversation's writes: {exc}"))


def fail(run: ActiveRun, error: ErrorDetail) -> None:
    """Mark the run to end ``failed`` with ``error`` (first reason wins); stop its agent."""
    if run.ended or run.failure is not None:
        return
    run.failure = error
    if run.agent_task is not None:
        run.agent_task.cancel()
