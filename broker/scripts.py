"""Script registry: loads the Lua files (package data) once, prepends the generated status-code
line and the shared prelude, and names each script by its SHA1 for EVALSHA (a transport falls back
to loading a script on NOSCRIPT, so a restarted or flushed Redis reloads them)."""

from __future__ import annotations

import hashlib
from functools import cache
from importlib import resources

from slotkeeper.broker.codes import lua_prelude

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
    "settle",
    "reap_idle",
)


@cache
def source(name: str) -> str:
    """Full source of one script: status codes, the shared prelude, then the script body."""
    if name not in SCRIPT_NAMES:
        raise KeyError(f"no slotkeeper script named {name!r}")
    pkg = resources.files("slotkeeper.lua")
    lib = pkg.joinpath("_lib.lua").read_text(encoding="utf-8")
    body = pkg.joinpath(f"{name}.lua").read_text(encoding="utf-8")
    return lua_prelude() + lib + "\n" + body


@cache
def sha(name: str) -> str:
    """SHA1 of a script's full source (what EVALSHA names)."""
    return hashlib.sha1(source(name).encode("utf-8")).hexdigest()
