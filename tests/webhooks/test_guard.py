"""The webhook guard and signature, fed values (no I/O)."""

from __future__ import annotations

import pytest

from app.errors import InvalidInput
from app.webhooks.deliverer import BACKOFF_MAX_MS, backoff_ms
from app.webhooks.guard import WebhookPolicy, check_url, parse_hosts
from protocol.webhooks import sign, verify_signature


@pytest.mark.parametrize("address,ok", [
    ("93.184.216.34", True), ("2606:2800:220:1::1", True),
    ("127.0.0.1", False), ("10.1.2.3", False), ("192.168.0.1", False), ("172.16.5.5", False),
    ("169.254.169.254", False), ("::1", False), ("fe80::1%eth0", False), ("0.0.0.0", False),
    ("::ffff:127.0.0.1", False), ("100.64.0.1", False), ("224.0.0.1", False), ("nonsense", False),
])
def test_addresses(address: str, ok: bool) -> None:
    assert WebhookPolicy().address_allowed(address) is ok
    assert WebhookPolicy(allow_private=True).address_allowed(address) is True


def test_hosts_and_urls() -> None:
    policy = WebhookPolicy(parse_hosts(" hooks.example.com, .corp.example "))
    assert policy.host_allowed("HOOKS.example.com.")
    assert policy.host_allowed("a.corp.example") and policy.host_allowed("corp.example")
    assert not policy.host_allowed("evilcorp.example") and not policy.host_allowed("x.com")
    check_url("https://hooks.example.com/x?y=1", policy)
    for bad in ("https://x.com/", "file:///etc/passwd", "hooks.example.com/x", "http:///x"):
        with pytest.raises(InvalidInput):
            check_url(bad, policy)


def test_signature_round_trip_and_tolerance() -> None:
    header = sign(b"k", 1_000, b'{"a":1}')
    assert verify_signature(b"k", header, b'{"a":1}', now=1_100)
    assert not verify_signature(b"k", header, b'{"a":2}', now=1_100)
    assert not verify_signature(b"k", header, b'{"a":1}', now=2_000)
    assert not verify_signature(b"k", "t=x,v1=y", b"", now=0)


def test_backoff_doubles_and_is_capped() -> None:
    assert [backoff_ms(n, 100) for n in (1, 2, 3, 4)] == [100, 200, 400, 800]
    assert backoff_ms(60) == BACKOFF_MAX_MS
