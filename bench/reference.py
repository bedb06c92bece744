"""The reference: a minimal hand-written Lua ZSET semaphore on redis-py.

One EVALSHA to acquire (purge expired members, admit if ZCARD < slots), one EVALSHA to release
(ZREM), waiters sleep-poll every 1 ms. The holder's entry carries an expiry (server clock), so a
crashed holder's slot comes back after its TTL. No fairness, no push wake-ups, no renewal: the
smallest thing that is still correct, to show what slotkeeper's features cost.
"""

from __future__ import annotations

import os
import time
from types import TracebackType

import redis

ACQUIRE_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
  return 1
end
return 0
"""

RELEASE_LUA = "return redis.call('ZREM', KEYS[1], ARGV[1])"

POLL = 0.001  # s between tries of a waiter


class RefSemaphore:
    """One reference limit: ``slots`` holders at most, each entry expiring after ``ttl`` s."""

    def __init__(
        self, client: redis.Redis, namespace: str, name: str, slots: int, ttl: float = 30.0
    ) -> None:
        self.client = client
        self.key = f"skref:{{{namespace}}}:{name}"
        self.slots = slots
        self.ttl_ms = int(ttl * 1000)
        self._acquire = client.register_script(ACQUIRE_LUA)
        self._release = client.register_script(RELEASE_LUA)

    def try_acquire(self, holder_id: str) -> bool:
        return bool(self._acquire(keys=[self.key], args=[holder_id, self.slots, self.ttl_ms]))

    def acquire(self, holder_id: str) -> None:
        while not self.try_acquire(holder_id):
            time.sleep(POLL)

    def release(self, holder_id: str) -> bool:
        return bool(self._release(keys=[self.key], args=[holder_id]))

    def remaining_ms(self) -> int | None:
        """Ms until the earliest live holder entry expires (server clock), None if none."""
        sec, usec = self.client.time()
        now = int(sec) * 1000 + int(usec) // 1000
        first = self.client.zrangebyscore(
            self.key, f"({now}", "+inf", start=0, num=1, withscores=True
        )
        return int(first[0][1]) - now if first else None

    def hold(self) -> RefHold:
        return RefHold(self)


class RefHold:
    """``with sem.hold():`` acquires (polling) on enter and releases on exit; reusable."""

    def __init__(self, sem: RefSemaphore) -> None:
        self.sem = sem
        self._ids: list[str] = []

    def __enter__(self) -> str:
        hid = os.urandom(8).hex()
        self.sem.acquire(hid)
        self._ids.append(hid)
        return hid

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.sem.release(self._ids.pop())
