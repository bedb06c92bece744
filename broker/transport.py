"""Transports: move a protocol :class:`~slotkeeper.broker.protocol.Op` to Redis and its reply
back, under a deadline. :class:`SyncTransport` runs on redis-py (its sockets capped by
:mod:`slotkeeper.broker.deadline`); :class:`AsyncTransport` on ``redis.asyncio`` (each try bounded
by ``asyncio.wait_for``; it never blocks or sleeps on the event loop). Both share the retry policy
and the error mapping below, so every rule is the same on both paths.

Every mutating script is idempotent on its client-made id, so re-sending after a lost reply is
safe. On Redis >= 7 scripts run as the Functions library (FCALL: broker/functions.py). On the
EVALSHA path, after NOSCRIPT (a restarted or flushed Redis) a script is loaded with SCRIPT LOAD
and run again by EVALSHA: the Redis 6.2 ACL grants those two, never EVAL. A call retries
connection errors with backoff until its deadline, then raises :class:`BrokerUnavailable`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, TypeVar

import redis
import redis.asyncio

from slotkeeper.broker import functions as F
from slotkeeper.broker import protocol as P
from slotkeeper.broker.connection import redact
from slotkeeper.broker.deadline import DEADLINE
from slotkeeper.broker.errors import (
    BrokerError,
    BrokerUnavailable,
    PermissionDenied,
    SlotkeeperError,
)
from slotkeeper.broker.protocol import Op
from slotkeeper.broker.scripts import sha, source

T = TypeVar("T")

DEFAULT_OP_TIMEOUT = 10.0  # s: how long a call with no deadline of its own may take, in all
RETRY_DELAYS = (0.05, 0.1, 0.2, 0.4, 0.8, 1.0)  # backoff between tries (the last one repeats)
RETRYABLE = (redis.ConnectionError, redis.TimeoutError, redis.ReadOnlyError, OSError)


def backoff(attempt: int) -> float:
    return RETRY_DELAYS[min(attempt, len(RETRY_DELAYS) - 1)]


def unavailable(where: str, tries: int, exc: BaseException | None) -> BrokerUnavailable:
    what = f"{type(exc).__name__}: {redact(str(exc))[:300]}" if exc is not None else "deadline"
    return BrokerUnavailable(f"Redis at {where} unreachable after {tries} tries: {what}")


def wrap(exc: Exception) -> SlotkeeperError:
    """A non-retryable redis-py error as the slotkeeper error it means."""
    if isinstance(exc, redis.exceptions.NoPermissionError):
        return PermissionDenied(f"Redis ACL: {redact(str(exc))}")
    if isinstance(exc, redis.ResponseError):
        return BrokerError(f"Redis error: {redact(str(exc))}")
    return BrokerError(f"Redis client error: {redact(str(exc))}")


def _is_noscript(exc: BaseException) -> bool:
    return isinstance(exc, redis.exceptions.NoScriptError)


def _script_args(op: Op[Any]) -> tuple[Any, ...]:
    return (len(op.keys), *op.keys, *op.args)


def _is_cluster(client: Any) -> bool:
    """A Redis Cluster client (it routes each command by key)."""
    return hasattr(client, "get_node_from_key")


def _where(client: Any, op: Op[Any]) -> dict[str, Any]:
    """Where SCRIPT LOAD must go: on Redis Cluster the node owning the op's keys (redis-py would
    send a keyless command to a random node); a plain client has only one place."""
    if _is_cluster(client) and op.keys:
        return {"target_nodes": client.get_node_from_key(op.keys[0])}
    return {}


def _tries(op: Op[Any], execute: Callable[[Op[Any]], Any]) -> Callable[[], Any]:
    """One try of ``op`` per call (a transport's retry loop calls it again). The first copy may
    still arrive after a later one, so from the second try on the transport sends what
    protocol.note_resent says (an ask that would queue goes as a re-check)."""
    tries = 0
    again = op  # what to send: the op itself, then what note_resent says

    def once() -> Any:
        nonlocal tries, again
        tries += 1
        if tries == 2:
            again = P.note_resent(op)
        return execute(again)

    return once


class SyncTransport:
    """Runs ops on a redis-py client (thread-safe: the pool gives each thread a connection)."""

    def __init__(self, client: redis.Redis, where: str,
                 op_timeout: float = DEFAULT_OP_TIMEOUT) -> None:
        self.client = client
        self.where = where
        self.op_timeout = op_timeout
        self.path: str | None = None  # F.FUNCTIONS or F.EVALSHA*, once decided
        # a plain client's pool, for script calls sent straight on a pooled connection (a
        # cluster client routes by key: it keeps redis-py's execute_command)
        self._pool: Any = None if _is_cluster(client) else client.connection_pool

    def _send(self, *args: Any) -> Any:
        """One script call on a pooled connection, without redis-py's per-command layers (its
        retry wrapper, observability hooks, response callbacks: none apply to a script reply),
        which cost a call some 5 us of CPU. Any failure but an error reply closes the connection
        (a reply may still be on its way)."""
        pool = self._pool
        if pool is None:
            c: Any = self.client
            return c.execute_command(*args)
        conn = pool.get_connection()
        try:
            conn.send_command(*args)
            return conn.read_response()
        except redis.ResponseError:
            raise
        except BaseException:
            conn.disconnect()
            raise
        finally:
            pool.release(conn)

    def _execute(self, op: Op[Any]) -> Any:
        c: Any = self.client
        if not op.script:
            return c.execute_command(*op.command)
        if self._path() == F.FUNCTIONS:
            try:
                return self._send(*F.fcall_args(op.script, op.keys, op.args))
            except redis.ResponseError as exc:
                if not F.is_missing_function(exc):
                    raise
                self.path = None  # the library was flushed or replaced: decide again, once
                if self._path() == F.FUNCTIONS:
                    return self._send(*F.fcall_args(op.script, op.keys, op.args))
        try:
            try:
                return self._send("EVALSHA", sha(op.script), *_script_args(op))
            except redis.exceptions.NoScriptError:  # (SCRIPT LOAD, not EVAL: see the module doc)
                c.execute_command("SCRIPT", "LOAD", source(op.script), **_where(c, op))
                return self._send("EVALSHA", sha(op.script), *_script_args(op))
        except redis.exceptions.NoPermissionError as exc:
            if self.path == F.EVALSHA_UNLOADED:
                self.path = None  # decide again next call (the library may be loaded by then)
                raise F.missing() from exc
            raise

    def _path(self) -> str:
        """The library (Redis >= 7) or EVALSHA: decided on first use (see broker/functions.py)."""
        if self.path is None:
            c: Any = self.client
            if _is_cluster(c):  # Redis Cluster: scripts by EVALSHA
                self.path = F.EVALSHA
            else:
                self.path = F.decide(c.execute_command)
        return self.path

    def script_path(self) -> str:
        """How scripts run on this connection (functions.FUNCTIONS / EVALSHA / EVALSHA_UNLOADED),
        deciding it now if no call has yet."""
        return str(self.call(self._path))

    def run(self, op: Op[T], deadline: float | None = None, retry: bool = True) -> T:
        """Run ``op``, retrying connection errors until ``deadline`` (monotonic; default: now +
        the op timeout). Raises BrokerUnavailable at the deadline, BrokerError for an error reply,
        or whatever the op's parser raises."""
        return op.parse(self.call(_tries(op, self._execute), deadline, retry))

    def call(self, fn: Any, deadline: float | None = None, retry: bool = True) -> Any:
        end = deadline if deadline is not None else time.monotonic() + self.op_timeout
        attempt = 0
        while True:
            token = DEADLINE.set(end)
            try:
                return fn()
            except RETRYABLE as exc:
                attempt += 1
                pause = backoff(attempt - 1)
                if not retry or time.monotonic() + pause >= end:
                    raise unavailable(self.where, attempt, exc) from exc
            except redis.RedisError as exc:
                raise wrap(exc) from exc
            finally:
                DEADLINE.reset(token)
            time.sleep(pause)

    def run_then_wait(self, op: Op[T], replicas: int, timeout_ms: int,
                      deadline: float | None = None) -> tuple[T, int]:
        """Run a script op and WAIT for ``replicas`` on ONE connection (WAIT covers only the writes
        of its own connection). Returns (parsed reply, replicas that acknowledged)."""
        c: Any = self.client
        target = c
        if _is_cluster(c):  # Redis Cluster: the namespace's node
            target = c.get_redis_connection(c.get_node_from_key(op.keys[0]))

        def go() -> tuple[Any, int]:
            for _ in range(2):
                fcall = target is c and self._path() == F.FUNCTIONS
                pipe = target.pipeline(transaction=False)
                if fcall:
                    pipe.execute_command(*F.fcall_args(op.script, op.keys, op.args))
                else:
                    pipe.execute_command("EVALSHA", sha(op.script), *_script_args(op))
                pipe.execute_command("WAIT", replicas, timeout_ms)
                reply, acked = pipe.execute(raise_on_error=False)
                if fcall and F.is_missing_function(reply):
                    self.path = None
                    continue
                if _is_noscript(reply):
                    target.execute_command("SCRIPT", "LOAD", source(op.script))
                    continue
                for res in (reply, acked):
                    if isinstance(res, Exception):
                        raise res
                return reply, int(acked)
            raise BrokerError(f"internal: script {op.script!r} could not be loaded")

        end = deadline if deadline is not None else (
            time.monotonic() + self.op_timeout + timeout_ms / 1000)
        reply, acked = self.call(go, end)
        return op.parse(reply), acked

    def close(self) -> None:
        self.client.close()


def _forget(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()  # retrieved: an abandoned call's failure is not an "unhandled" error


async def _bounded(coro: Any, timeout: float) -> Any:
    """Await ``coro`` for at most ``timeout`` s. Unlike ``asyncio.wait_for`` (Python 3.11), this
    never waits for the call to acknowledge its own cancellation: redis.asyncio can take a socket
    timeout to give up a call on a dead connection, and the caller's deadline (or its clean-up,
    e.g. handing a release to the background) must not wait for that."""
    task = asyncio.ensure_future(coro)
    try:
        done, _ = await asyncio.wait({task}, timeout=timeout)
    except BaseException:  # the caller was cancelled: abandon the call, do not wait for it
        task.cancel()
        task.add_done_callback(_forget)
        raise
    if not done:
        task.cancel()
        task.add_done_callback(_forget)
        raise asyncio.TimeoutError()
    return task.result()


class AsyncTransport:
    """Runs ops on a ``redis.asyncio`` client. A client belongs to the event loop it was made on."""

    def __init__(self, client: redis.asyncio.Redis, where: str,
                 op_timeout: float = DEFAULT_OP_TIMEOUT) -> None:
        self.client = client
        self.where = where
        self.op_timeout = op_timeout
        self.path: str | None = None  # F.FUNCTIONS or F.EVALSHA*, once decided

    async def _execute(self, op: Op[Any]) -> Any:
        c: Any = self.client
        if not op.script:
            return await c.execute_command(*op.command)
        if await self._path() == F.FUNCTIONS:
            try:
                return await c.execute_command(*F.fcall_args(op.script, op.keys, op.args))
            except redis.ResponseError as exc:
                if not F.is_missing_function(exc):
                    raise
                self.path = None  # the library was flushed or replaced: decide again, once
                if await self._path() == F.FUNCTIONS:
                    return await c.execute_command(*F.fcall_args(op.script, op.keys, op.args))
        try:
            try:
                return await c.execute_command("EVALSHA", sha(op.script), *_script_args(op))
            except redis.exceptions.NoScriptError:  # (SCRIPT LOAD, not EVAL: see the module doc)
                await c.execute_command("SCRIPT", "LOAD", source(op.script), **_where(c, op))
                return await c.execute_command("EVALSHA", sha(op.script), *_script_args(op))
        except redis.exceptions.NoPermissionError as exc:
            if self.path == F.EVALSHA_UNLOADED:
                self.path = None  # decide again next call (the library may be loaded by then)
                raise F.missing() from exc
            raise

    async def _path(self) -> str:
        if self.path is None:
            c: Any = self.client
            if _is_cluster(c):
                self.path = F.EVALSHA
            else:
                self.path = await F.decide_async(c.execute_command)
        return self.path

    async def run(self, op: Op[T], deadline: float | None = None, retry: bool = True) -> T:
        return op.parse(await self.call(_tries(op, self._execute), deadline, retry))

    async def call(self, fn: Any, deadline: float | None = None, retry: bool = True) -> Any:
        end = deadline if deadline is not None else time.monotonic() + self.op_timeout
        attempt = 0
        while True:
            left = end - time.monotonic()
            exc: BaseException | None = None
            if left > 0:
                try:
                    return await _bounded(fn(), left)
                except (*RETRYABLE, asyncio.TimeoutError) as e:
                    exc = e
                except redis.RedisError as e:
                    raise wrap(e) from e
            attempt += 1
            pause = backoff(attempt - 1)
            if not retry or time.monotonic() + pause >= end:
                raise unavailable(self.where, attempt, exc) from exc
            await asyncio.sleep(pause)

    async def run_then_wait(self, op: Op[T], replicas: int, timeout_ms: int,
                            deadline: float | None = None) -> tuple[T, int]:
        c: Any = self.client

        async def go() -> tuple[Any, int]:
            for _ in range(2):
                fcall = await self._path() == F.FUNCTIONS
                pipe = c.pipeline(transaction=False)
                if fcall:
                    pipe.execute_command(*F.fcall_args(op.script, op.keys, op.args))
                else:
                    pipe.execute_command("EVALSHA", sha(op.script), *_script_args(op))
                pipe.execute_command("WAIT", replicas, timeout_ms)
                reply, acked = await pipe.execute(raise_on_error=False)
                if fcall and F.is_missing_function(reply):
                    self.path = None
                    continue
                if _is_noscript(reply):
                    await c.execute_command("SCRIPT", "LOAD", source(op.script))
                    continue
                for res in (reply, acked):
                    if isinstance(res, Exception):
                        raise res
                return reply, int(acked)
            raise BrokerError(f"internal: script {op.script!r} could not be loaded")

        end = deadline if deadline is not None else (
            time.monotonic() + self.op_timeout + timeout_ms / 1000)
        reply, acked = await self.call(go, end)
        return op.parse(reply), acked

    async def aclose(self) -> None:
        await self.client.aclose()
