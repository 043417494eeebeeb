"""Who is calling: API keys, JWTs (pyjwt) or short-lived conversation-scoped stream tokens.

Credentials come from ``Authorization: Bearer``, the ``agentstream_token`` cookie, or, for
browsers' EventSource and WebSocket (which cannot set headers), ``?access_token=``. Only
stream tokens are accepted in a URL: a long-lived key in a query string ends up in proxies'
logs. The cookie is ambient (a browser sends it on other sites' requests too), so a cookie
request that changes state must also pass ``app.auth.origin``. pyjwt does the signing and
verification; nothing here re-implements crypto.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import jwt
from aiohttp import web

from app.errors import Unauthenticated

COOKIE = "agentstream_token"
STREAM_TOKEN_TYPE = "stream"
ANONYMOUS = "anonymous"
CredentialSource = Literal["none", "header", "cookie", "query"]


@dataclass(frozen=True)
class Principal:
    user: str
    admin: bool = False
    # A stream token may only read this conversation.
    conversation_scope: str | None = None
    # Unix seconds after which the credential is no longer valid (None: never).
    expires_at: float | None = None
    # False only for the one principal of a deployment without authentication: it owns
    # nothing, and its ids are unscoped (app/ids.py).
    scoped: bool = True

    @property
    def owner(self) -> str | None:
        """The owner recorded on what this caller creates, and its id namespace."""
        return self.user if self.scoped else None

    def can_access(self, owner: str | None) -> bool:
        return self.admin or owner is None or owner == self.user


# The one caller of a deployment without authentication: shared (the dataclass is frozen), so
# an idle stream under ``--auth none`` holds no principal of its own (issue 13, P3).
NO_AUTH = Principal(ANONYMOUS, admin=True, scoped=False)


def unauthenticated(message: str) -> Unauthenticated:
    return Unauthenticated("unauthenticated", message)


def invalid_token(message: str) -> Unauthenticated:
    return Unauthenticated("invalid_token", message)


def parse_key_lines(text: str) -> dict[str, Principal]:
    """``<key> <user> [admin]`` per line (``#`` comments), or ``key=user`` comma lists."""
    keys: dict[str, Principal] = {}
    entries = [e.strip() for line in text.splitlines() for e in line.split(",")]
    for entry in entries:
        entry = entry.split("#", 1)[0].strip()
        if not entry:
            continue
        parts = entry.replace("=", " ").split()
        if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] != "admin"):
            raise ValueError(f"bad API key entry {parts[0][:4]}…: want '<key> <user> [admin]'")
        key, user = parts[0], parts[1]
        if len(key) < 16:
            raise ValueError(f"API key for {user!r} is shorter than 16 characters")
        keys[_digest(key)] = Principal(user, admin=len(parts) == 3)
    return keys


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class Authenticator:
    def __init__(
        self,
        mode: str = "none",
        *,
        api_keys: str = "",
        api_keys_file: str = "",
        jwt_secret: str = "",
        jwt_public_key_file: str = "",
        jwt_audience: str = "",
        stream_token_secret: str = "",
        stream_token_ttl: float = 300.0,
    ) -> None:
        if mode not in ("none", "token", "jwt"):
            raise ValueError("auth must be none, token or jwt")
        self.mode = mode
        self._keys: dict[str, Principal] = {}
        if mode == "token":
            text = api_keys
            if api_keys_file:
                text += "\n" + Path(api_keys_file).read_text()
            self._keys = parse_key_lines(text)
            if not self._keys:
                raise ValueError("auth=token needs api_keys or api_keys_file")
        self._jwt_key: str | bytes = ""
        self._jwt_algorithms: list[str] = []
        if mode == "jwt":
            if jwt_public_key_file:
                self._jwt_key = Path(jwt_public_key_file).read_bytes()
                self._jwt_algorithms = ["RS256"]
            elif jwt_secret:
                if len(jwt_secret) < 32:
                    raise ValueError("jwt_secret must be at least 32 characters")
                self._jwt_key = jwt_secret
                self._jwt_algorithms = ["HS256"]
            else:
                raise ValueError("auth=jwt needs jwt_secret (HS256) or jwt_public_key_file (RS256)")
        self._audience = jwt_audience or None
        # Without a configured secret, stream tokens only live as long as this process.
        self._stream_secret = stream_token_secret or secrets.token_urlsafe(32)
        self.stream_token_ttl = stream_token_ttl

    @property
    def enabled(self) -> bool:
        return self.mode != "none"

    # ---- requests -----------------------------------------------------------------------

    def authenticate(self, request: web.Request) -> Principal:
        return self.resolve(request)[0]

    def resolve(self, request: web.Request) -> tuple[Principal, CredentialSource]:
        """The caller and where its credential came from (the cookie is ambient: a browser
        sends it on other sites' requests too, so the caller checks their origin)."""
        if not self.enabled:
            return NO_AUTH, "none"
        header = request.headers.get("Authorization", "")
        if header:
            scheme, _, value = header.partition(" ")
            if scheme.lower() != "bearer" or not value.strip():
                raise invalid_token("use 'Authorization: Bearer <token>'")
            return self.verify(value.strip()), "header"
        cookie = request.cookies.get(COOKIE)
        if cookie:
            return self.verify(cookie), "cookie"
        query = request.query.get("access_token")
        if query:
            principal = self.verify(query)
            if principal.conversation_scope is None:
                raise invalid_token("only stream tokens may be sent in the URL")
            return principal, "query"
        raise unauthenticated("send 'Authorization: Bearer <token>' or ?access_token=")

    def verify(self, token: str) -> Principal:
        """Any credential: stream token, API key, or JWT (in that order of cheapness)."""
        if token.count(".") == 2:
            stream = self._verify_stream_token(token)
            if stream is not None:
                return stream
            if self.mode == "jwt":
                return self._verify_jwt(token)
        if self.mode == "token":
            digest = _digest(token)
            for known, principal in self._keys.items():
                if hmac.compare_digest(known, digest):
                    return principal
        raise invalid_token("unknown or malformed credential")

    def _verify_jwt(self, token: str) -> Principal:
        try:
            claims = jwt.decode(
                token, self._jwt_key, algorithms=self._jwt_algorithms, audience=self._audience,
                options={"require": ["sub", "exp"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("token_expired", "the token has expired") from None
        except jwt.InvalidTokenError as exc:
            raise invalid_token(f"invalid token: {exc}") from None
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub:
            raise invalid_token("the token's 'sub' must be a non-empty string")
        return Principal(sub, admin=claims.get("admin") is True, expires_at=float(claims["exp"]))

    # ---- stream tokens ------------------------------------------------------------------

    def issue_stream_token(self, principal: Principal, conversation_id: str) -> tuple[str, int]:
        expires = int(time.time() + self.stream_token_ttl)
        token = jwt.encode(
            {"sub": principal.user, "cid": conversation_id, "typ": STREAM_TOKEN_TYPE,
             "exp": expires, "adm": principal.admin},
            self._stream_secret, algorithm="HS256",
        )
        return token, expires

    def _verify_stream_token(self, token: str) -> Principal | None:
        """A valid stream token's principal; None if it is not one of ours at all."""
        try:
            claims = jwt.decode(token, self._stream_secret, algorithms=["HS256"],
                                options={"require": ["sub", "exp", "cid"]})
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("token_expired", "the stream token has expired") from None
        except jwt.InvalidTokenError:
            return None
        if claims.get("typ") != STREAM_TOKEN_TYPE:
            return None
        return Principal(str(claims["sub"]), admin=claims.get("adm") is True,
                         conversation_scope=str(claims["cid"]), expires_at=float(claims["exp"]))
