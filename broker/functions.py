"""The scripts as one Redis Functions library (Redis >= 7), for least-privilege clients.

A client that may only ``FCALL``/``FCALL_RO`` (no ``EVAL``, ``EVALSHA`` or ``SCRIPT``) cannot run
Lua of its own: it can only call what the operator loaded. The library is built from the same
script files as the EVALSHA path (:mod:`slotkeeper.broker.scripts`), one function per script::

    #!lua name=slotkeeper
    redis.register_function{function_name='sk_version', callback=..., flags={'no-writes'}}
    redis.register_function{function_name='sk_<version>_acquire', callback=function(KEYS, ARGV)
      <status codes, lua/_lib.lua, lua/acquire.lua> end}
    ...

``<version>`` is a hash of the library's code, so a client can only ever call the code it was
built with: a library of another version is one clear error (:class:`FunctionLibraryMismatch`)
naming the command that fixes it. Read-only scripts are flagged ``no-writes`` and called with
``FCALL_RO`` (replicas accept them too).

Which path a connection uses is decided once (:func:`decide`): the library when it is loaded (or
this user may load it), EVALSHA on Redis 6.2 (no Functions), or where the ACL grants EVALSHA but
not FCALL (an older deployment's ACL line).
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Generator
from functools import cache
from typing import Any

import redis

from slotkeeper.broker.errors import FunctionLibraryMismatch, FunctionLibraryMissing
from slotkeeper.broker.scripts import SCRIPT_NAMES, source

LIBRARY = "slotkeeper"
READ_ONLY = frozenset({"snapshot"})
VERSION_FUNCTION = "sk_version"
LOAD_COMMAND = "slotkeeper functions load"

# the paths: the library; EVALSHA; EVALSHA because this user may not load the (absent) library
FUNCTIONS, EVALSHA, EVALSHA_UNLOADED = "functions", "evalsha", "evalsha-unloaded"


@cache
def version() -> str:
    """A hash of every script's code: what the function names carry."""
    h = hashlib.sha1()
    for name in SCRIPT_NAMES:
        h.update(source(name).encode("utf-8"))
    return h.hexdigest()[:12]


def function_name(script: str) -> str:
    return f"sk_{version()}_{script}"


@cache
def library_source() -> str:
    """The library, as ``FUNCTION LOAD`` takes it (first line ``#!lua name=slotkeeper``)."""
    out = [
        f"#!lua name={LIBRARY}",
        f"-- slotkeeper scripts as Redis Functions, version {version()} (generated from lua/*.lua)",
        f"redis.register_function{{function_name='{VERSION_FUNCTION}', "
        f"callback=function() return '{version()}' end, flags={{'no-writes'}}}}",
    ]
    for name in SCRIPT_NAMES:
        flags = ", flags={'no-writes'}" if name in READ_ONLY else ""
        out.append(
            f"redis.register_function{{function_name='{function_name(name)}', "
            f"callback=function(KEYS, ARGV)\n{source(name)}\nend{flags}}}"
        )
    return "\n".join(out) + "\n"


def fcall_args(script: str, keys: tuple[str, ...], args: tuple[Any, ...]) -> tuple[Any, ...]:
    verb = "FCALL_RO" if script in READ_ONLY else "FCALL"
    return (verb, function_name(script), len(keys), *keys, *args)


# -- reading Redis's answers (it has no error types for these: the message is all there is) ------


def is_missing_function(exc: BaseException) -> bool:
    return isinstance(exc, redis.ResponseError) and "function not found" in str(exc).lower()


def is_unknown_command(exc: BaseException) -> bool:
    return isinstance(exc, redis.ResponseError) and "unknown command" in str(exc).lower()


def is_already_loaded(exc: BaseException) -> bool:
    return isinstance(exc, redis.ResponseError) and "already exists" in str(exc).lower()


def mismatch(found: str) -> FunctionLibraryMismatch:
    return FunctionLibraryMismatch(
        f"Redis holds slotkeeper function library version {found}; this slotkeeper needs "
        f"{version()}: run `{LOAD_COMMAND} --replace` (as a Redis user allowed FUNCTION LOAD) "
        "once every client runs this slotkeeper version"
    )


def missing() -> FunctionLibraryMissing:
    return FunctionLibraryMissing(
        f"the slotkeeper function library (version {version()}) is not loaded and this Redis user "
        f"may neither load it nor run scripts: run `{LOAD_COMMAND}` as a Redis user allowed "
        "FUNCTION LOAD"
    )


def _decide() -> Generator[tuple[Any, ...], Any, str]:
    """Which path a connection takes, sans-IO: yields each command to run and receives its reply
    (or has the redis-py error thrown in). The library at this version -> FUNCTIONS. No library ->
    load it (FUNCTIONS), or EVALSHA_UNLOADED when this user may not. Another version ->
    FunctionLibraryMismatch. No Functions in this Redis, or no FCALL for this user -> EVALSHA."""
    for _ in range(2):
        try:
            found = yield ("FCALL_RO", VERSION_FUNCTION, 0)
        except redis.exceptions.NoPermissionError:
            return EVALSHA
        except redis.ResponseError as exc:
            if is_unknown_command(exc):
                return EVALSHA
            if not is_missing_function(exc):
                raise
            found = None
        if found is not None:
            found = found.decode() if isinstance(found, bytes) else str(found)
            if found != version():
                raise mismatch(found)
            return FUNCTIONS
        try:
            yield ("FUNCTION", "LOAD", library_source())
            return FUNCTIONS
        except (redis.exceptions.NoPermissionError, redis.exceptions.OutOfMemoryError):
            return EVALSHA_UNLOADED  # may not (or, Redis full, cannot now) load it: EVALSHA
        except redis.ResponseError as exc:
            if not is_already_loaded(exc):  # another client loaded it meanwhile: look again
                raise
    return EVALSHA


def decide(execute: Callable[..., Any]) -> str:
    """:func:`_decide` driven by a blocking ``execute(*command)``."""
    steps = _decide()
    cmd = next(steps)
    while True:
        try:
            try:
                reply = execute(*cmd)
            except redis.ResponseError as exc:
                cmd = steps.throw(exc)
                continue
            cmd = steps.send(reply)
        except StopIteration as done:
            return str(done.value)


async def decide_async(execute: Callable[..., Awaitable[Any]]) -> str:
    """:func:`_decide` driven by an awaited ``execute(*command)`` (asyncio clients)."""
    steps = _decide()
    cmd = next(steps)
    while True:
        try:
            try:
                reply = await execute(*cmd)
            except redis.ResponseError as exc:
                cmd = steps.throw(exc)
                continue
            cmd = steps.send(reply)
        except StopIteration as done:
            return str(done.value)


def load(client: Any, replace: bool = False) -> str:
    """``slotkeeper functions load``: (re)load the library; returns its version."""
    args = ["FUNCTION", "LOAD", *(["REPLACE"] if replace else []), library_source()]
    try:
        client.execute_command(*args)
    except redis.ResponseError as exc:
        if not is_already_loaded(exc):
            raise
        found = loaded_version(client)
        if found != version():
            raise mismatch(found or "?") from None
    return version()


def loaded_version(client: Any) -> str | None:
    """The version of the library Redis holds, or None."""
    try:
        found = client.execute_command("FCALL_RO", VERSION_FUNCTION, 0)
    except redis.ResponseError as exc:
        if is_missing_function(exc):
            return None
        raise
    return found.decode() if isinstance(found, bytes) else str(found)
