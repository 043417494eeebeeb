"""Ids on the wire and ids in the store: conversations are scoped per owner.

A client may choose its conversation id (PROTOCOL.md: ``[A-Za-z0-9_-]{1,64}``). If that id
were one global name, a stranger could learn that an id is taken (a start answers 404 where a
free id answers 202) and could squat an id before its owner uses it. So every owner has its
own namespace: the store, the hub and the engine key a conversation by

    key = "<public id>~<owner tag>"        (owner tag: 16 url-safe chars of SHA-256(owner))

and the wire shows only the public id. Two users who both choose ``chat-1`` get two
conversations; a stranger naming someone's id simply addresses an (empty) conversation of
their own, so every answer is the one an unknown id gets. ``~`` is outside the public
alphabet, so a key never collides with a public id or with another owner's key.

Without authentication there is one owner (``None``) and the key is the public id, so
single-tenant deployments and their stored data look exactly as before.

Run ids are server-made and random (one global namespace is fine); only the record that
retention leaves behind for an expired run is scoped the same way, so that ``410 run_expired``
is told to its owner and a stranger gets the unknown id's ``404``.
"""

from __future__ import annotations

import base64
import hashlib

SEPARATOR = "~"


def owner_tag(owner: str) -> str:
    digest = hashlib.sha256(owner.encode("utf-8", "surrogatepass")).digest()
    return base64.urlsafe_b64encode(digest[:12]).decode("ascii")


def scoped(owner: str | None, public_id: str) -> str:
    """The store key of ``public_id`` in ``owner``'s namespace."""
    if owner is None:
        return public_id
    return f"{public_id}{SEPARATOR}{owner_tag(owner)}"


def public(key: str) -> str:
    """The id a client knows for a store key (the inverse of ``scoped``)."""
    return key.partition(SEPARATOR)[0]
