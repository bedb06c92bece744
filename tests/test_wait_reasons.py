"""Why am I waiting: a reason per waiter for each cause (read from a real Redis), `show NAME` lists
them, the SDK's waiting handle exposes position and reason, and a slow wait logs ONE INFO line."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from typing import Any

import pytest
from click.testing import CliRunner

from slotkeeper.broker.client import Broker
from slotkeeper.broker.errors import AcquireTimeout
from slotkeeper.broker.readmodel import ReadModel
from slotkeeper.broker.records import GRANTED, QUEUED, pack_meta
from slotkeeper.broker.waitreasons import Cause, waiter_reasons
from slotkeeper.cli.main import cli
from slotkeeper.limiter import Limiter
from slotkeeper.pending import PendingRequest
from tests.support.redisproc import RedisProc
from tests.test_daemon import wait_for

META = pack_meta("build-7", 4242, "w1", "nightly")


def grant(b: Broker, names: list[str], lid: str, occupy: int = 1) -> None:
    r = b.acquire(names, lid, occupy=occupy, ttl_ms=60_000, wait=False, meta=META)
    assert r.status == GRANTED


def queue(b: Broker, names: list[str], tid: str, occupy: int = 1, priority: int = 0) -> None:
    r = b.acquire(names, tid, occupy=occupy, ttl_ms=60_000, priority=priority, wait=True)
    assert r.status == QUEUED


def reasons(b: Broker, name: str) -> dict[str, Any]:
    snap = b.snapshot(name)
    return {w.ticket_id: r for w, r in zip(snap.waiters, waiter_reasons(snap), strict=True)}


def test_reason_for_each_cause(redis_server: RedisProc, namespace: str) -> None:
    b = Broker.from_url(redis_server.url, namespace)
    # slots held by whom; equal-priority requests ahead; higher priority ahead
    b.create_limit("one", 1)
    grant(b, ["one"], "holder")
    queue(b, ["one"], "first")
    queue(b, ["one"], "second")
    queue(b, ["one"], "vip", priority=5)
    r = reasons(b, "one")
    assert r["vip"].cause is Cause.SLOTS and r["vip"].ahead == 0
    assert r["vip"].holders == ("build-7 pid 4242 worker w1 'nightly'",)
    assert "needs 1 slot(s), 0 of 1 free" in r["vip"].text and "nightly" in r["vip"].text
    assert r["first"].cause is Cause.PRIORITY_AHEAD and "up to 5" in r["first"].text
    b.cancel(["one"], "vip", timed_out=False)
    r = reasons(b, "one")
    assert r["first"].cause is Cause.SLOTS
    assert r["second"].cause is Cause.AHEAD and r["second"].ahead == 1
    assert "1 request(s) ahead" in r["second"].text and "nightly" in r["second"].text

    # a bigger request at the head that does not fit yet keeps a smaller one (that would) waiting
    b.create_limit("three", 3)
    grant(b, ["three"], "h3", occupy=2)
    queue(b, ["three"], "big", occupy=2)
    queue(b, ["three"], "small", occupy=1)
    r = reasons(b, "three")
    assert r["big"].cause is Cause.SLOTS and "needs 2 slot(s), 1 of 3 free" in r["big"].text
    assert r["small"].cause is Cause.BIGGER_AHEAD and "needs 2 slot(s), 1 free" in r["small"].text

    # fits on one limit, blocked by another: each limit says so, the request's own view names
    # the limit that really blocks it
    b.create_limit("free", 5)
    b.create_limit("full", 1)
    grant(b, ["full"], "hf")
    queue(b, ["free", "full"], "both")
    assert reasons(b, "free")["both"].cause is Cause.OTHER_LIMIT
    assert "full" in reasons(b, "free")["both"].text
    found = ReadModel(b).wait_reason(["free", "full"], "both")
    assert found is not None
    pos, why = found
    assert (pos, why.cause, why.limit) == (1, Cause.SLOTS, "full")
    assert ReadModel(b).wait_reason(["free", "full"], "no-such-ticket") is None


def test_show_lists_each_waiter_with_its_reason(redis_server: RedisProc, namespace: str) -> None:
    b = Broker.from_url(redis_server.url, namespace)
    b.create_limit("gpu", 1)
    grant(b, ["gpu"], "holder")
    queue(b, ["gpu"], "t1")
    queue(b, ["gpu"], "t2")
    base = ["--url", redis_server.url, "-n", namespace]
    res = CliRunner().invoke(cli, [*base, "show", "gpu"])
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    assert "WHY" in next(line for line in lines if "TICKET" in line)
    t1 = next(line for line in lines if " t1 " in line)
    t2 = next(line for line in lines if " t2 " in line)
    assert "held by build-7 pid 4242" in t1 and "1 request(s) ahead" in t2
    res = CliRunner().invoke(cli, [*base, "--json", "show", "gpu"])
    queue_json = json.loads(res.stdout)["queue"]
    assert [q["reason"]["cause"] for q in queue_json] == ["slots", "ahead"]
    assert queue_json[0]["reason"]["holders"] == ["build-7 pid 4242 worker w1 'nightly'"]


def _hold_and_wait(
    lim: Limiter, **acquire_kw: Any
) -> tuple[Any, threading.Thread, list[PendingRequest], list[BaseException]]:
    holder = lim.acquire("job", label="the-holder")
    handles: list[PendingRequest] = []
    errors: list[BaseException] = []

    def waiter() -> None:
        try:
            lim.acquire("job", timeout=60, on_waiting=handles.append, **acquire_kw).release()
        except BaseException as exc:  # noqa: B036 - reported to the test
            errors.append(exc)

    t = threading.Thread(target=waiter)
    t.start()
    wait_for(lambda: handles or errors, what="the waiting handle")
    assert not errors, errors
    return holder, t, handles, errors


def test_waiting_handle_exposes_position_and_reason(
    redis_server: RedisProc, namespace: str
) -> None:
    lim = Limiter(redis_server.url, namespace, ttl=10, slow_wait=0)
    lim.create("job", 1)
    holder, t, handles, errors = _hold_and_wait(lim, label="the-waiter")
    h = handles[0]
    assert (h.names, h.occupy, h.label) == (("job",), 1, "the-waiter")
    assert h.waiting and h.position == 1 and h.position_at_entry == 1
    why = h.reason()
    assert why is not None and why.cause is Cause.SLOTS
    assert any("the-holder" in x for x in why.holders)
    assert "position 1 on job" in h.describe() and "the-holder" in h.describe()
    holder.release()
    t.join(30)
    assert not errors, errors
    assert h.granted and not h.waiting and h.reason() is None


def test_slow_wait_logs_one_info_line(
    redis_server: RedisProc, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    lim = Limiter(redis_server.url, namespace, ttl=10, slow_wait=0.3)
    lim.create("job", 1)
    caplog.set_level(logging.INFO, logger="slotkeeper")
    holder, t, handles, errors = _hold_and_wait(lim)
    wait_for(
        lambda: any("slow wait" in r.getMessage() for r in caplog.records),
        what="the slow-wait line",
    )
    time.sleep(1.5)  # several thresholds later: still one line
    holder.release()
    t.join(30)
    assert not errors, errors
    lines = [r for r in caplog.records if "slow wait" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == logging.INFO
    msg = lines[0].getMessage()
    assert "for job" in msg and "position 1 on job" in msg and "the-holder" in msg

    # per call: 0 turns it off. Positive control in the same wait: a waiter on "ctl" with the
    # limiter's 0.3 s threshold, queued after the first one, logs its line (same capture)
    caplog.clear()
    lim.create("ctl", 1)
    holder, t, handles, errors = _hold_and_wait(lim, slow_wait=0)
    ctl_holder = lim.acquire("ctl")
    ctl = threading.Thread(target=lambda: lim.acquire("ctl", timeout=60).release())
    ctl.start()
    wait_for(
        lambda: any("for ctl" in r.getMessage() for r in caplog.records),
        what="the control waiter's slow-wait line",
    )
    assert handles[0].waiting  # the first waiter has waited longer still
    holder.release()
    ctl_holder.release()
    t.join(30)
    ctl.join(30)
    assert not errors, errors
    lines = [r.getMessage() for r in caplog.records if "slow wait" in r.getMessage()]
    assert len(lines) == 1 and "for ctl" in lines[0], lines


def test_async_waiting_handle(redis_server: RedisProc, namespace: str) -> None:
    lim = Limiter(redis_server.url, namespace, ttl=10, slow_wait=0)
    lim.create("job", 1)

    async def main() -> PendingRequest:
        holder = lim.acquire("job")
        handles: list[PendingRequest] = []
        task = asyncio.create_task(lim.acquire_async("job", timeout=30, on_waiting=handles.append))
        while not handles:
            await asyncio.sleep(0.01)
        assert handles[0].position == 1
        holder.release()
        (await task).release()
        return handles[0]

    h = asyncio.run(main())
    assert h.granted


def test_rate_and_template_total_reasons(redis_server: RedisProc, namespace: str) -> None:
    lim = Limiter(redis_server.url, namespace, ttl=10, slow_wait=0)
    b = lim.broker
    # rate: the one unit of the minute is taken; the next request waits for its units' due time
    b.create_limit("api", rate="1/min")
    lim.rate_limit("api")
    handles: list[PendingRequest] = []
    t = threading.Thread(
        target=lambda: pytest.raises(
            AcquireTimeout, lim.acquire, "api", timeout=3, on_waiting=handles.append
        )
    )
    t.start()
    wait_for(lambda: handles, what="the rate waiter to queue")
    why = handles[0].reason()
    assert why is not None and why.cause is Cause.RATE and why.limit == "api"
    assert "rate 1/min" in why.text and "due in" in why.text
    t.join(30)

    # template total: keys have room of their own, the template's total is what blocks
    b.create_limit("tenant:*", 2, total=2)
    grant(b, ["tenant:a", "tenant:*"], "ta", occupy=2)
    r = b.acquire(["tenant:b", "tenant:*"], "tb", ttl_ms=60_000, wait=True)
    assert r.status == QUEUED
    found = ReadModel(b).wait_reason(["tenant:b", "tenant:*"], "tb")
    assert found is not None
    assert found[1].cause is Cause.TOTAL and found[1].limit == "tenant:*", found
    assert "total is reached: 2/2" in found[1].text
