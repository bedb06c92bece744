"""Script registry: loads the Lua files (package data) once, prepends the shared prelude, and runs
them by EVALSHA with redis-py's NOSCRIPT fallback (a restarted or flushed Redis reloads them)."""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Any

from redis import Redis
from redis.commands.core import Script

SCRIPT_NAMES = (
    "acquire",
    "release",
    "cancel",
    "heartbeat",
    "reclaim",
    "snapshot",
    "limit_config",
    "limit_delete",
    "doctor_probe",
)


@cache
def source(name: str) -> str:
    """Full source of one script: the shared prelude followed by the script body."""
    pkg = resources.files("slotkeeper.lua")
    lib = pkg.joinpath("_lib.lua").read_text(encoding="utf-8")
    body = pkg.joinpath(f"{name}.lua").read_text(encoding="utf-8")
    return lib + "\n" + body


class Scripts:
    """The registered scripts of one Redis client."""

    def __init__(self, client: Redis) -> None:
        self._scripts: dict[str, Script] = {
            n: client.register_script(source(n)) for n in SCRIPT_NAMES
        }

    def run(self, name: str, keys: list[str], args: list[Any]) -> Any:
        return self._scripts[name](keys=keys, args=args)

    def sha(self, name: str) -> str:
        """SHA1 of a script (for EVALSHA inside a pipeline)."""
        return str(self._scripts[name].sha)
