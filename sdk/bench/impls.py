"""What a workload drives: slotkeeper (through its public SDK), the reference, or a peer.

An implementation is named by a spec: ``"slotkeeper"``, ``"reference"``, or ``"module:Class"`` for a
peer (tests/benchmarks has dask and Prefect). Child processes rebuild it from (spec, url,
namespace), so everything here is cheap to construct and needs no pickled state.
"""

from __future__ import annotations

import importlib
from contextlib import AbstractContextManager
from typing import Any, Protocol

import redis

from slotkeeper.bench.reference import RefSemaphore


class Impl(Protocol):
    label: str

    def create(self, name: str, slots: int, ttl: float | None = None) -> None:
        """Create (or reset the slots of) a limit."""

    def hold(self, name: str, ttl: float | None = None) -> AbstractContextManager[Any]:
        """A reusable context manager holding one slot of ``name`` (blocking until granted)."""

    def remaining_ms(self, name: str) -> int | None:
        """Ms until the earliest holder of ``name`` expires (server clock); None if unknown."""

    def close(self) -> None: ...


class SlotkeeperImpl:
    """slotkeeper as users run it: ``Limiter(url, namespace)`` and ``with limit(...)``."""

    label = "slotkeeper"

    def __init__(self, url: str, namespace: str) -> None:
        from slotkeeper import Limiter

        self.limiter = Limiter(url, namespace)

    def create(self, name: str, slots: int, ttl: float | None = None) -> None:
        self.limiter.set(name, slots=slots, ttl=ttl, create=True)

    def hold(self, name: str, ttl: float | None = None) -> AbstractContextManager[Any]:
        from slotkeeper import limit

        return limit(name, ttl=ttl, limiter=self.limiter)

    def remaining_ms(self, name: str) -> int | None:
        snap = self.limiter.broker.snapshot(name)
        if not snap.holders:
            return None
        return int(min(h.expires_ms for h in snap.holders) - snap.now_ms)

    def close(self) -> None:
        pass


class SlotkeeperNoEventsImpl(SlotkeeperImpl):
    """slotkeeper with audit events switched off in its namespace (what recording costs)."""

    label = "slotkeeper-noevents"

    def create(self, name: str, slots: int, ttl: float | None = None) -> None:
        from slotkeeper.broker.readmodel import ReadModel

        ReadModel(self.limiter.broker).set_event_settings(False, None)
        super().create(name, slots, ttl)


class ReferenceImpl:
    """The minimal Lua ZSET semaphore (:mod:`slotkeeper.bench.reference`)."""

    label = "reference"
    DEFAULT_TTL = 30.0

    def __init__(self, url: str, namespace: str) -> None:
        self.client = redis.Redis.from_url(url)
        self.namespace = namespace
        self._sems: dict[tuple[str, float], RefSemaphore] = {}

    def _slots_key(self, name: str) -> str:
        return f"skref:{{{self.namespace}}}:slots:{name}"

    def create(self, name: str, slots: int, ttl: float | None = None) -> None:
        # the slot count lives in Redis only so that other processes can find it
        self.client.set(self._slots_key(name), slots)

    def sem(self, name: str, ttl: float | None = None) -> RefSemaphore:
        t = ttl or self.DEFAULT_TTL
        s = self._sems.get((name, t))
        if s is None:
            raw = self.client.get(self._slots_key(name))
            slots = int(raw) if raw is not None else 1
            s = self._sems[(name, t)] = RefSemaphore(self.client, self.namespace, name, slots, t)
        return s

    def hold(self, name: str, ttl: float | None = None) -> AbstractContextManager[Any]:
        return self.sem(name, ttl).hold()

    def remaining_ms(self, name: str) -> int | None:
        return self.sem(name).remaining_ms()

    def close(self) -> None:
        self.client.close()


def make_impl(spec: str, url: str, namespace: str) -> Impl:
    if spec == "slotkeeper":
        return SlotkeeperImpl(url, namespace)
    if spec == "slotkeeper-noevents":
        return SlotkeeperNoEventsImpl(url, namespace)
    if spec == "reference":
        return ReferenceImpl(url, namespace)
    module, _, cls = spec.partition(":")
    if not cls:
        raise ValueError(f"unknown implementation {spec!r}: slotkeeper, reference or module:Class")
    impl: Impl = getattr(importlib.import_module(module), cls)(url, namespace)
    return impl
