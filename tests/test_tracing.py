"""OpenTelemetry spans (the ``otel`` extra) captured with the SDK's in-memory exporter: acquire
(names, occupy, position at entry, waited ms, outcome) and hold, as children of the caller's span;
and nothing at all when opentelemetry is not installed."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from slotkeeper import tracing
from slotkeeper.broker.errors import AcquireTimeout
from slotkeeper.limiter import Limiter
from tests.support.redisproc import RedisProc
from tests.test_daemon import wait_for

_EXPORTER = InMemorySpanExporter()


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))
        trace.set_tracer_provider(provider)
    _EXPORTER.clear()
    yield _EXPORTER
    _EXPORTER.clear()


def named(exp: InMemorySpanExporter, name: str) -> list[Any]:
    return [s for s in exp.get_finished_spans() if s.name == name]


def test_acquire_and_hold_spans(
    redis_server: RedisProc, namespace: str, spans: InMemorySpanExporter
) -> None:
    assert tracing.ENABLED
    lim = Limiter(redis_server.url, namespace, ttl=10, slow_wait=0)
    lim.create("gpu", 1)
    tracer = trace.get_tracer("test")
    with tracer.start_as_current_span("job") as job:
        lease = lim.acquire("gpu", label="train")
        assert lease.release()
    (acq,) = named(spans, "slotkeeper.acquire")
    (hold,) = named(spans, "slotkeeper.hold")
    a = acq.attributes
    assert list(a["slotkeeper.names"]) == ["gpu"] and a["slotkeeper.occupy"] == 1
    assert a["slotkeeper.outcome"] == "granted" and a["slotkeeper.position_at_entry"] == 0
    assert a["slotkeeper.namespace"] == namespace and a["slotkeeper.label"] == "train"
    assert a["slotkeeper.waited_ms"] >= 0
    assert hold.attributes["slotkeeper.lease_id"] == lease.id
    assert hold.attributes["slotkeeper.outcome"] == "released"
    job_id = job.get_span_context().span_id
    assert acq.parent.span_id == job_id and hold.parent.span_id == job_id
    assert acq.end_time <= hold.start_time <= hold.end_time


def test_waited_position_and_failures(
    redis_server: RedisProc, namespace: str, spans: InMemorySpanExporter
) -> None:
    lim = Limiter(redis_server.url, namespace, ttl=10, slow_wait=0)
    lim.create("one", 1)
    holder = lim.acquire("one")
    got: list[Any] = []
    t = threading.Thread(target=lambda: got.append(lim.acquire("one", timeout=30)))
    t.start()
    wait_for(lambda: lim.broker.snapshot("one").n_waiters == 1, what="the waiter to queue")
    time.sleep(0.2)
    holder.release()
    t.join(30)
    got[0].release()
    waited = [
        s
        for s in named(spans, "slotkeeper.acquire")
        if s.attributes["slotkeeper.position_at_entry"]
    ]
    assert len(waited) == 1
    assert waited[0].attributes["slotkeeper.position_at_entry"] == 1
    assert waited[0].attributes["slotkeeper.waited_ms"] >= 200  # it waited at least that long
    assert waited[0].attributes["slotkeeper.outcome"] == "granted"

    spans.clear()
    holder = lim.acquire("one")
    with pytest.raises(AcquireTimeout):
        lim.acquire("one", timeout=0.2)
    (timed_out,) = [
        s
        for s in named(spans, "slotkeeper.acquire")
        if s.attributes["slotkeeper.outcome"] != "granted"
    ]
    assert timed_out.attributes["slotkeeper.outcome"] == "timeout"
    assert timed_out.status.status_code is StatusCode.ERROR
    # a revoked lease's hold span ends as lost
    assert lim.broker.revoke(holder.id)
    assert not holder.release()
    (hold,) = named(spans, "slotkeeper.hold")
    assert hold.attributes["slotkeeper.outcome"] == "lost"
    assert hold.status.status_code is StatusCode.ERROR


def test_no_opentelemetry_no_spans(redis_server: RedisProc, namespace: str) -> None:
    code = f"""
import sys
sys.modules["opentelemetry"] = None  # as if the otel extra were not installed
from slotkeeper import tracing
from slotkeeper.limiter import Limiter
assert tracing.ENABLED is False and tracing.start_acquire(("a",), 1, "ns", "") is None
lim = Limiter({redis_server.url!r}, {namespace!r}, ttl=5)
lim.create("x", 1)
lease = lim.acquire("x")
assert lease._span is None and lease.release()
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
