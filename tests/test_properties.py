"""Property-based tests (hypothesis) over names, slots, occupy, timeouts, priorities and TTLs, for
the SDK, the Broker and the CLI: a valid value works and round-trips; an invalid one raises a clear
ValueError / TypeError that is also a SlotkeeperError -- and nothing at all is written to Redis
(checked with DBSIZE on a private Redis that only these tests use)."""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from slotkeeper import Limiter, OccupyExceedsLimit, SlotkeeperError, limit
from slotkeeper.broker.client import Broker
from slotkeeper.broker.errors import InvalidName
from slotkeeper.cli.main import cli
from slotkeeper.naming import host_name
from tests.support.redisproc import RedisProc

SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

NASTY = [
    "",
    " ",
    " a",
    "a ",
    "\x00",
    "a\nb",
    "tab\there",
    "\u200b",
    "\ud800",
    "a" * 200,
    "a" * 201,
    "{worker}",
    "{nope}",
    "x{y",
    "}",
    "é:ü 漢字",
    "group A",
    "a/b:c*?[]",
    "🙂",
    "\u00a0pad",
    "DEL",
    "'; DROP",
    "\\",
    "%s%n",
    "sk:{ns}:leases",
]

anything = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True),
    st.text(max_size=20),
    st.binary(max_size=8),
    st.lists(st.integers(), max_size=2),
)


def spec_valid_name(s: object) -> bool:
    """The name rules, written independently of the implementation: 1-200 printable characters,
    no surrounding whitespace, no braces (only the {worker}/{host} templates, resolved before use);
    '*' only ends the name of a limit template, see spec_template_name)."""
    return (
        isinstance(s, str)
        and 1 <= len(s) <= 200
        and s.isprintable()
        and s == s.strip()
        and "{" not in s
        and "}" not in s
        and "*" not in s
    )


def spec_template_name(s: object) -> bool:
    """A limit template: a valid name plus a trailing '*' (created, never acquired itself)."""
    return isinstance(s, str) and len(s) >= 2 and s.endswith("*") and spec_valid_name(s[:-1])


def is_clear(exc: BaseException, *kinds: type[BaseException]) -> bool:
    return isinstance(exc, SlotkeeperError) and isinstance(exc, kinds)


@pytest.fixture(scope="module")
def private() -> Iterator[RedisProc]:
    with RedisProc() as r:
        yield r


@pytest.fixture(scope="module")
def lim(private: RedisProc) -> Limiter:
    lim = Limiter(private.url, "props", ttl=5)
    lim.create("fixed", 3)
    return lim


_CLIENTS: dict[int, Any] = {}


def raw(r: RedisProc) -> Any:
    if r.port not in _CLIENTS:
        _CLIENTS[r.port] = r.client()
    return _CLIENTS[r.port]


def dbsize(r: RedisProc) -> int:
    return int(raw(r).dbsize())


def state(r: RedisProc) -> list[tuple[bytes, bytes]]:
    """Every key and its serialized value (SCAN + DUMP): any write shows up here -- except the
    audit event streams, where a rejection is recorded on purpose (see ``audit``)."""
    c = raw(r)
    return [
        (k, c.dump(k)) for k in sorted(c.scan_iter(count=1000)) if not k.endswith(b":events")
    ]


def audit(r: RedisProc) -> list[bytes]:
    """The kinds of every audit event of every namespace, in order."""
    c = raw(r)
    return [
        e[1][b"k"] for k in sorted(c.scan_iter(match="*:events")) for e in c.xrange(k)
    ]


def rejected_without_writes(
    r: RedisProc,
    fn: Callable[[], Any],
    *kinds: type[BaseException],
) -> None:
    """``fn`` must raise one of ``kinds`` (and SlotkeeperError) and leave Redis untouched."""
    before, events = state(r), audit(r)
    with pytest.raises(SlotkeeperError) as err:
        fn()
    assert is_clear(err.value, *kinds), repr(err.value)
    assert str(err.value)  # a message, not an empty error
    assert state(r) == before
    added = audit(r)[len(events) :]
    assert set(added) <= {b"reject"}, added  # at most the audit record of the rejection


@SETTINGS
@given(
    name=st.one_of(
        st.text(max_size=210),
        st.sampled_from(NASTY),
        st.text(alphabet=st.characters(codec="utf-8"), max_size=5),
    )
)
@example(name="a" * 200)
def test_names(private: RedisProc, lim: Limiter, name: str) -> None:
    b = lim.broker
    if spec_valid_name(name):
        b.create_limit(name, 1)
        try:
            assert name in b.list_limits()
            assert b.snapshot(name).config.name == name
            with limit(name, limiter=lim, timeout=0) as lease:
                assert lease.names == (name,) and lease.renew()
            assert b.snapshot(name).counters.released == 1
        finally:
            b.delete_limit(name)
    elif spec_template_name(name):
        b.create_limit(name, 1)
        try:
            assert name in b.list_limits() and name in b.templates()
            rejected_without_writes(private, lambda: lim.acquire(name, timeout=0), ValueError)
        finally:
            b.delete_limit(name)
    else:
        rejected_without_writes(private, lambda: b.create_limit(name, 1), ValueError, TypeError)
        if "{worker}" not in name and "{host}" not in name:  # templates: see test_templates
            rejected_without_writes(
                private, lambda: lim.acquire(name, timeout=0), ValueError, TypeError
            )


@SETTINGS
@given(name=anything)
def test_non_string_names(private: RedisProc, lim: Limiter, name: object) -> None:
    assume(not isinstance(name, str))
    rejected_without_writes(private, lambda: lim.broker.create_limit(name, 1), TypeError)  # type: ignore[arg-type]
    rejected_without_writes(private, lambda: lim.acquire(name), TypeError)  # type: ignore[arg-type]
    rejected_without_writes(private, lambda: limit(name), TypeError)  # type: ignore[arg-type]


@SETTINGS
@given(tpl=st.text(alphabet="{}workerhostx", min_size=1, max_size=14))
def test_templates(private: RedisProc, lim: Limiter, tpl: str) -> None:
    stripped = tpl.replace("{worker}", "").replace("{host}", "")
    if "{" in stripped or "}" in stripped:
        rejected_without_writes(private, lambda: limit(tpl), InvalidName)
        rejected_without_writes(private, lambda: lim.acquire(tpl, timeout=0), InvalidName)
    else:
        w = Limiter(private.url, "props", worker="w1")
        req = w.request([tpl])
        assert req.names == (tpl.replace("{worker}", "w1").replace("{host}", host_name()),)


@SETTINGS
@given(slots=st.one_of(anything, st.integers(-5, 5), st.integers(10**9 - 2, 10**9 + 2)))
def test_slots(private: RedisProc, lim: Limiter, slots: object) -> None:
    b = lim.broker
    name = "s-" + uuid.uuid4().hex[:8]
    ok = isinstance(slots, int) and not isinstance(slots, bool) and 0 <= slots <= 10**9
    if ok:
        b.create_limit(name, slots)  # type: ignore[arg-type]
        assert b.snapshot(name).config.slots == slots
        b.update_limit(name, slots=slots)  # type: ignore[arg-type]
        b.delete_limit(name)
    else:
        kinds = (
            (TypeError,) if not isinstance(slots, int) or isinstance(slots, bool) else (ValueError,)
        )
        rejected_without_writes(private, lambda: b.create_limit(name, slots), *kinds)  # type: ignore[arg-type]
        if slots is not None:  # update_limit(slots=None) means "leave slots alone"
            rejected_without_writes(private, lambda: b.update_limit("fixed", slots=slots), *kinds)  # type: ignore[arg-type]


@SETTINGS
@given(occupy=st.one_of(anything, st.integers(-3, 6), st.integers(9998, 10002)))
def test_occupy(private: RedisProc, lim: Limiter, occupy: object) -> None:
    is_int = isinstance(occupy, int) and not isinstance(occupy, bool)
    if not is_int:
        rejected_without_writes(private, lambda: lim.acquire("fixed", occupy=occupy), TypeError)  # type: ignore[arg-type]
        rejected_without_writes(private, lambda: limit("fixed", occupy=occupy), TypeError)  # type: ignore[arg-type]
    elif not 1 <= occupy <= 10_000:  # type: ignore[operator]
        rejected_without_writes(private, lambda: lim.acquire("fixed", occupy=occupy), ValueError)  # type: ignore[arg-type]
    elif occupy > 3:  # type: ignore[operator]
        # more than the limit has: fails at once (never waits), and writes nothing
        rejected_without_writes(
            private,
            lambda: lim.acquire("fixed", occupy=occupy),  # type: ignore[arg-type]
            OccupyExceedsLimit,
        )
    else:
        with limit("fixed", occupy=occupy, limiter=lim, timeout=0) as lease:  # type: ignore[arg-type]
            assert lease.occupy == occupy
            assert lim.broker.snapshot("fixed").used == occupy


@SETTINGS
@given(timeout=st.one_of(anything, st.floats(-1, 0.05), st.just(math.inf), st.just(-0.0)))
def test_timeouts(private: RedisProc, lim: Limiter, timeout: object) -> None:
    is_num = isinstance(timeout, int | float) and not isinstance(timeout, bool)
    if timeout is not None and not is_num:
        rejected_without_writes(private, lambda: lim.acquire("fixed", timeout=timeout), TypeError)  # type: ignore[arg-type]
        rejected_without_writes(private, lambda: limit("fixed", timeout=timeout), TypeError)  # type: ignore[arg-type]
    elif timeout is not None and (math.isnan(timeout) or timeout < 0):  # type: ignore[arg-type]
        rejected_without_writes(private, lambda: lim.acquire("fixed", timeout=timeout), ValueError)  # type: ignore[arg-type]
    else:  # a free slot: granted at once whatever the (valid) timeout
        with limit("fixed", limiter=lim, timeout=timeout) as lease:  # type: ignore[arg-type]
            assert not lease.lost


@SETTINGS
@given(priority=st.one_of(anything, st.integers(-1002, 1002)))
def test_priorities(private: RedisProc, lim: Limiter, priority: object) -> None:
    is_int = isinstance(priority, int) and not isinstance(priority, bool)
    if not is_int:
        rejected_without_writes(private, lambda: lim.acquire("fixed", priority=priority), TypeError)  # type: ignore[arg-type]
    elif abs(priority) > 1000:  # type: ignore[arg-type]
        rejected_without_writes(
            private,
            lambda: lim.acquire("fixed", priority=priority),  # type: ignore[arg-type]
            ValueError,
        )
    else:
        with limit("fixed", limiter=lim, timeout=0, priority=priority):  # type: ignore[arg-type]
            pass


@SETTINGS
@given(ttl=st.one_of(anything, st.floats(0, 0.1), st.floats(86400 * 29, 86400 * 31)))
def test_ttls(private: RedisProc, lim: Limiter, ttl: object) -> None:
    is_num = isinstance(ttl, int | float) and not isinstance(ttl, bool)
    if ttl is None:
        return
    if not is_num:
        rejected_without_writes(private, lambda: lim.acquire("fixed", ttl=ttl), TypeError)  # type: ignore[arg-type]
    elif math.isnan(ttl) or not 0.05 <= ttl <= 86400 * 30:  # type: ignore[arg-type]
        rejected_without_writes(private, lambda: lim.acquire("fixed", ttl=ttl), ValueError)  # type: ignore[arg-type]
        rejected_without_writes(private, lambda: Limiter(private.url, "props", ttl=ttl), ValueError)  # type: ignore[arg-type]
    else:
        with limit("fixed", limiter=lim, timeout=0, ttl=ttl) as lease:  # type: ignore[arg-type]
            assert lease.ttl == pytest.approx(int(ttl * 1000) / 1000.0)  # type: ignore[operator]


@SETTINGS
@given(ns=st.one_of(anything, st.text(max_size=70)))
def test_namespaces(private: RedisProc, ns: object) -> None:
    ok = (
        isinstance(ns, str)
        and 1 <= len(ns) <= 64
        and all(c.isascii() and (c.isalnum() or c in "_.-") for c in ns)
    )
    if ok:
        assert Broker.from_url(private.url, ns).namespace == ns  # type: ignore[arg-type]
    elif ns:  # "" and None mean "the default namespace" for a Limiter
        rejected_without_writes(private, lambda: Limiter(private.url, ns), ValueError, TypeError)  # type: ignore[arg-type]


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    name=st.one_of(st.text(max_size=30), st.sampled_from(NASTY)),
    slots=st.one_of(st.integers(-3, 5).map(str), st.text(max_size=6)),
)
def test_cli_create_arguments(private: RedisProc, name: str, slots: str) -> None:
    """Any arguments: exit 0, or a one-line error (exit 1/2) with nothing written; never a
    traceback."""
    assume("\x00" not in name and "\x00" not in slots)  # argv cannot carry NUL bytes
    ns = "cli" + uuid.uuid4().hex[:6]
    before = dbsize(private)
    res = CliRunner().invoke(
        cli, ["--url", private.url, "--namespace", ns, "create", "--slots", slots, "--", name]
    )
    assert res.exception is None or isinstance(res.exception, SystemExit), res.output
    assert "Traceback" not in res.output
    good_slots = slots.strip().lstrip("+").isdecimal() or (
        slots.strip().startswith("-") and slots.strip()[1:].isdecimal() and int(slots) == 0
    )
    if res.exit_code == 0:
        assert (spec_valid_name(name) or spec_template_name(name)) and good_slots
        assert Broker.from_url(private.url, ns).snapshot(name).config.slots == int(slots)
        Broker.from_url(private.url, ns).delete_limit(name)
    else:
        assert res.exit_code in (1, 2), res.output
        assert dbsize(private) == before
        if spec_valid_name(name) and good_slots and int(slots) >= 0:
            pytest.fail(f"valid create refused: {name!r} --slots {slots!r}: {res.output}")
