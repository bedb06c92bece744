"""Script status codes: the ONE table shared by Python and Lua.

The script registry (:mod:`slotkeeper.broker.scripts`) prepends a generated Lua line
``local OK, GRANTED, ... = 0, 1, ...`` to every script from this table, so the Lua side names the
same codes and cannot drift. ``tests/test_protocol.py`` checks that no script returns a bare number.
"""

from __future__ import annotations

from enum import IntEnum


class Status(IntEnum):
    OK = 0
    GRANTED = 1
    QUEUED = 2
    BUSY = 3
    NOT_FOUND = 4
    OCCUPY_EXCEEDS = 5
    LOST = 6
    CANCELLED = 7
    EXISTS = 8
    HELD = 9
    REJECTED = 10
    NEED_KEYS = 11
    MORE = 12
    QUEUE_FULL = 13


def lua_prelude() -> str:
    """The Lua declaration of every status code (prepended to each script)."""
    names = ", ".join(s.name for s in Status)
    values = ", ".join(str(int(s)) for s in Status)
    return f"local {names} = {values}\n"
