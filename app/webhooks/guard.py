"""Where webhooks may go: ``http(s)`` only, to hosts the operator allows, never into the
service's own network unless the operator says so (SSRF).

Checked twice: the URL when a run names it (scheme, host list, literal addresses), and every
address the name resolves to when a delivery connects (``GuardedResolver``, aiohttp's
resolver hook), so a name that resolves to 127.0.0.1 or 10.x (DNS rebinding) is refused at
connect time too, not only at start.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from app.errors import InvalidInput


@dataclass(frozen=True)
class WebhookPolicy:
    # Host names allowed (exact, or ".example.com" for it and its subdomains); empty: any.
    allow_hosts: tuple[str, ...] = ()
    # Loopback, private, link-local and other non-global addresses allowed (tests, intranet).
    allow_private: bool = False

    def host_allowed(self, host: str) -> bool:
        if not self.allow_hosts:
            return True
        host = host.lower().rstrip(".")
        return any(host == h or (h.startswith(".") and (host.endswith(h) or host == h[1:]))
                   for h in self.allow_hosts)

    def address_allowed(self, address: str) -> bool:
        if self.allow_private:
            return True
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return ip.is_global and not ip.is_multicast


def parse_hosts(raw: str) -> tuple[str, ...]:
    return tuple(h.strip().lower() for h in raw.split(",") if h.strip())


def check_url(url: str, policy: WebhookPolicy) -> None:
    """Refuse a webhook URL a run names: ``422 webhook_url_not_allowed``."""
    parts = urlsplit(url)
    host = parts.hostname
    if parts.scheme not in ("http", "https") or not host:
        raise InvalidInput("webhook_url_not_allowed", "webhook_url must be an http(s) URL")
    if parts.username or parts.password:
        raise InvalidInput("webhook_url_not_allowed", "webhook_url must not carry credentials")
    if not policy.host_allowed(host):
        raise InvalidInput("webhook_url_not_allowed", f"host {host!r} is not allowed")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return  # a name: its addresses are checked when a delivery connects
    if not policy.address_allowed(host):
        raise InvalidInput("webhook_url_not_allowed",
                           f"address {host!r} is private, loopback or reserved")


class AddressNotAllowed(OSError):
    """Every address of a webhook host is one the policy refuses (never retried)."""

    def __init__(self, host: str) -> None:
        super().__init__(errno.EACCES, f"webhook host {host!r} resolves only to addresses "
                                       "that are not allowed (private, loopback, reserved)")


def refused_address(exc: BaseException) -> AddressNotAllowed | None:
    """The ``AddressNotAllowed`` behind a client error (aiohttp wraps resolver errors)."""
    seen = 0
    current: BaseException | None = exc
    while current is not None and seen < 4:
        if isinstance(current, AddressNotAllowed):
            return current
        current = current.__cause__ or getattr(current, "os_error", None)
        seen += 1
    return None


class GuardedResolver(AbstractResolver):
    """aiohttp's resolver, keeping only addresses the policy allows (none: connect fails)."""

    def __init__(self, policy: WebhookPolicy) -> None:
        self.policy = policy
        self._inner = DefaultResolver()

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        allowed = [r for r in results if self.policy.address_allowed(r["host"])]
        if not allowed:
            raise AddressNotAllowed(host)
        return allowed

    async def close(self) -> None:
        await self._inner.close()
