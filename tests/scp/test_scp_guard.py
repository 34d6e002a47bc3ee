"""Units of the accept-time guard (scp/_guard.py): admission counts and the rate-limited log."""

from __future__ import annotations

import logging
import socket
import time

import pytest

from scp._guard import AcceptGuard, RateLimitedLog


def test_rate_limited_log_one_line_per_key_then_counts_what_it_dropped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rl = RateLimitedLog(interval=0.2)
    with caplog.at_level(logging.WARNING, logger="scp._guard"):
        assert rl.warning("a", "from %s", "10.0.0.1")
        assert not any(rl.warning("a", "from %s", "10.0.0.1") for _ in range(50))
        assert rl.warning("b", "from %s", "10.0.0.2")  # another address has its own budget
        time.sleep(0.25)
        assert rl.warning("a", "from %s", "10.0.0.1")
    assert caplog.messages == [
        "from 10.0.0.1",
        "from 10.0.0.2",
        "from 10.0.0.1 (50 more like it suppressed)",
    ]


def test_rate_limited_log_stays_bounded_with_many_addresses(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rl = RateLimitedLog(interval=60, max_keys=8)
    with caplog.at_level(logging.WARNING, logger="scp._guard"):
        logged = sum(rl.warning(f"ip{i}", "from %d", i) for i in range(1000))
    assert logged == 9  # eight addresses, then one line for all the others
    assert len(rl._seen) <= 9


def test_guard_admits_up_to_the_limit_and_release_is_idempotent() -> None:
    refused: list[str] = []
    guard = AcceptGuard(
        lambda ip: ip.startswith("10."),
        max_per_address=2,
        request_timeout=60,
        on_network_refused=lambda: refused.append("network"),
        on_limit_refused=lambda: refused.append("limit"),
    )
    s = socket.socket()
    try:
        assert guard.admit(s, "192.168.0.1") is None
        a, b = guard.admit(s, "10.0.0.1"), guard.admit(s, "10.0.0.1")
        assert a is not None and b is not None
        assert guard.admit(s, "10.0.0.1") is None
        assert guard.admit(s, "10.0.0.2") is not None  # the limit is per address
        guard.release(a)
        guard.release(a)
        assert guard.open_from("10.0.0.1") == 1
        assert guard.admit(s, "10.0.0.1") is not None
        assert refused == ["network", "limit"]
    finally:
        guard.stop()
        s.close()
