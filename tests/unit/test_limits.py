"""Client address resolution behind proxies, allow-lists, and the token bucket."""

from __future__ import annotations

from gateway import clientip
from processors.reconcile.ratelimit import TokenBucket

TRUSTED = clientip.networks(["10.0.0.0/8", "127.0.0.1/32"])


def test_peer_is_the_client_without_trusted_proxy() -> None:
    assert clientip.client_ip("198.51.100.7", "203.0.113.1", TRUSTED) == "198.51.100.7"
    assert clientip.client_ip("10.1.1.1", None, TRUSTED) == "10.1.1.1"


def test_forwarded_for_from_trusted_proxy_yields_nearest_untrusted_hop() -> None:
    assert clientip.client_ip("10.1.1.1", "203.0.113.1, 198.51.100.2, 10.2.2.2", TRUSTED) == "198.51.100.2"
    assert clientip.client_ip("10.1.1.1", "garbage, 10.2.2.2", TRUSTED) == "garbage"


def test_allow_list() -> None:
    allow = clientip.networks(["203.0.113.0/24", "2001:db8::/32"])
    assert clientip.allowed("203.0.113.40", allow)
    assert clientip.allowed("2001:db8::1", allow)
    assert not clientip.allowed("198.51.100.1", allow)
    assert not clientip.allowed("garbage", allow)
    assert not clientip.allowed(None, allow)
    assert clientip.allowed(None, ())


def test_token_bucket_refills_at_its_rate() -> None:
    now = [0.0]
    bucket = TokenBucket(per_second=2, burst=3, clock=lambda: now[0])
    assert [bucket.take() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take() == 0.5
    now[0] = 0.5
    assert bucket.take() == 0.0
    assert bucket.take() > 0
