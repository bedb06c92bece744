"""Properties (hypothesis): the rate parser round-trips and rejects garbage with one clear error;
the window accounting of the scripts matches a model (grant iff the window has room, settle moves
the sum by the difference) over random sequences."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from slotkeeper import AcquireTimeout, Limiter, SlotkeeperError
from slotkeeper.broker.rates import UNITS_MS, Rate, duration_text, parse_duration, parse_rate
from tests.support.redisproc import RedisProc

SETTINGS = settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

units = st.integers(min_value=1, max_value=10**9)
unit_names = st.sampled_from(["s", "sec", "second", "seconds", "min", "minute", "minutes", "h",
                              "hr", "hour", "hours"])


@SETTINGS
@given(n=units, mult=st.integers(min_value=1, max_value=168), unit=st.sampled_from(["s", "min", "h"]))
def test_rate_round_trips(n: int, mult: int, unit: str) -> None:
    period = mult * UNITS_MS[unit]
    if period > 7 * 86_400_000:
        with pytest.raises(SlotkeeperError):
            parse_rate(f"{n}/{mult}{unit}")
        return
    r = parse_rate(f"{n}/{mult}{unit}")
    assert r == Rate(n, period)
    assert parse_rate(str(r)) == r  # the canonical text reads back
    assert r.per_second == pytest.approx(n * 1000 / period)


@SETTINGS
@given(n=units, unit=unit_names, pad=st.sampled_from(["", " "]))
def test_unit_aliases(n: int, unit: str, pad: str) -> None:
    r = parse_rate(f"{pad}{n}{pad}/{pad}{unit.upper() if n % 2 else unit}{pad}")
    assert r.units == n and r.period_ms in UNITS_MS.values()


@SETTINGS
@given(text=st.text(max_size=30))
def test_garbage_gives_one_clear_error(text: str) -> None:
    try:
        r = parse_rate(text)
    except SlotkeeperError as exc:
        assert isinstance(exc, ValueError)
        msg = str(exc)
        assert "\n" not in msg and ("rate" in msg)
        return
    assert parse_rate(str(r)) == r


@pytest.mark.parametrize("bad", ["0/s", "-1/s", "5/fortnight", "abc", "5", "/s", "5/", "1.5/s",
                                 "5/0s", "1e3/s", "5/s/s", "10000000000/s"])
def test_known_bad_rates(bad: str) -> None:
    with pytest.raises(SlotkeeperError):
        parse_rate(bad)


@SETTINGS
@given(secs=st.integers(min_value=1, max_value=365 * 86400))
def test_duration_round_trips(secs: int) -> None:
    assert parse_duration(duration_text(secs)) == secs
    assert parse_duration(str(secs)) == secs


@pytest.fixture(scope="module")
def prop_redis() -> Any:
    with RedisProc(tcp=True) as r:
        yield r


ops = st.lists(
    st.one_of(
        st.tuples(st.just("take"), st.integers(min_value=1, max_value=12)),
        st.tuples(st.just("settle"), st.integers(min_value=0, max_value=15)),
    ),
    min_size=1,
    max_size=25,
)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(min_value=1, max_value=30), seq=ops)
def test_window_accounting_matches_a_model(prop_redis: RedisProc, n: int,
                                           seq: list[tuple[str, int]]) -> None:
    """A one-hour window never slides during the test, so the model is exact: a request is granted
    iff used + k <= N; settling a grant moves the sum by the difference; the window's sum, the
    cached sum and the all-time counter agree with the model after every step."""
    lim = Limiter(prop_redis.url, "p" + uuid.uuid4().hex[:10])
    b = lim.broker
    b.create_limit("w", rate=f"{n}/h")
    used, total = 0, 0
    grants: list[Any] = []
    for op, k in seq:
        if op == "take":
            if k > n:
                with pytest.raises(SlotkeeperError):
                    lim.rate_limit("w", occupy=k, timeout=0)
                continue
            if used + k <= n:
                grants.append(lim.rate_limit("w", occupy=k, timeout=0))
                used += k
                total += k
            else:
                with pytest.raises(AcquireTimeout):
                    lim.rate_limit("w", occupy=k, timeout=0)
        elif grants:
            g = grants[k % len(grants)]
            before = g.units
            assert g.settle(k)
            used += k - before
            total += k - before
        snap = b.snapshot("w")
        assert snap.rate_in_window == used
        assert int(b.redis.hget(b.keys.limit("w")[0], "r_used") or 0) == used
        assert snap.counters.units == total
