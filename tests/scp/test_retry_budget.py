"""The default retry budget outlasts a PACS restart; jittered waits stay in bounds (#16.8)."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from node.config import NodeConfig
from node.netsettings import sender_settings
from scp import SenderSettings


def test_default_budget_outlasts_a_pacs_restart_by_minutes() -> None:
    budget = SenderSettings().budget()
    assert budget.min_seconds >= 5 * 60  # even with every wait at its jittered floor
    assert budget.max_seconds >= budget.min_seconds
    assert budget.attempts == SenderSettings().max_attempts


def test_node_config_defaults_are_the_same_budget() -> None:
    cfg = NodeConfig.model_validate({"node": {"state_dir": "/tmp/x"}})
    assert sender_settings(cfg).budget() == SenderSettings().budget()
    assert sender_settings(cfg).budget().min_seconds >= 5 * 60


def test_budget_sums_the_waits_between_tries() -> None:
    s = SenderSettings(max_attempts=4, initial_backoff_seconds=2, max_backoff_seconds=5)
    b = s.budget()
    assert (b.min_seconds, b.max_seconds) == ((2 + 4 + 5) * 0.5, 2 + 4 + 5)
    assert SenderSettings(max_attempts=1).budget().max_seconds == 0


@settings(max_examples=200, deadline=None)
@given(
    attempts=st.integers(1, 30),
    jitter=st.floats(0, 1),
    seed=st.integers(0, 2**32),
)
def test_jittered_waits_stay_within_bounds(attempts: int, jitter: float, seed: int) -> None:
    s = SenderSettings(jitter=jitter)
    nominal = s.backoff(attempts)
    wait = s.jittered_backoff(attempts, random.Random(seed))
    assert nominal * (1 - jitter) - 1e-9 <= wait <= nominal <= s.max_backoff_seconds


def test_jitter_is_seeded_and_spreads_retries() -> None:
    s = SenderSettings()
    a = [s.jittered_backoff(3, random.Random(7)) for _ in range(3)]
    assert a[0] == a[1] == a[2]  # reproducible with a seeded RNG
    rng = random.Random(1)
    spread = {round(s.jittered_backoff(3, rng), 3) for _ in range(50)}
    assert len(spread) > 10  # jobs failing together do not retry in lockstep
