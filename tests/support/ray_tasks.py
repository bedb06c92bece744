"""Task bodies for tests/test_ray.py, imported by the Ray workers (PYTHONPATH via runtime_env).

Every body writes observer stamps (tests/support/observer.py) right after it holds its slots and
right before it gives them back, under the limit name *it* computes from Ray's runtime context
(independently of slotkeeper's ``{worker}`` resolution)."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import ray

from slotkeeper import limit, limited, tagged
from tests.support.observer import StampWriter


def node_id() -> str:
    return str(ray.get_runtime_context().get_node_id())


def _stamped(stamps: str, names: tuple[str, ...], seconds: float) -> None:
    writer = StampWriter(Path(stamps) / f"{os.getpid()}.stamps")
    lid = uuid.uuid4().hex
    writer.write("S", lid, "|".join(names), 1)
    time.sleep(seconds)
    writer.write("E", lid, "ok")
    writer.close()


def hold_global(stamps: str, seconds: float) -> str:
    """``with limit(...)`` on the default limiter (configured by the job's runtime_env)."""
    with limit("ray-global", timeout=120):
        _stamped(stamps, ("ray-global",), seconds)
    return node_id()


@limited("gpu:{worker}", timeout=120)
def hold_per_node(stamps: str, seconds: float) -> str:
    """``@limited`` with a per-node name: {worker} is the Ray node id."""
    _stamped(stamps, (f"gpu:{node_id()}",), seconds)
    return node_id()


@tagged("print")
def say_hi(stamps: str, seconds: float) -> str:
    """Tagged "print": throttled by ThrottledRay around its body."""
    _stamped(stamps, ("print",), seconds)
    return node_id()


def untagged(stamps: str) -> int:
    return os.getpid()


def hold_forever(pid_file: str, name: str, ttl: float) -> None:
    """Take the slot with a short TTL, write our pid, then sleep until killed."""
    with limit(name, ttl=ttl):
        Path(pid_file).write_text(str(os.getpid()))
        time.sleep(3600)


class GpuUser:
    """An actor whose method holds the per-node limit."""

    def held(self) -> tuple[str, tuple[str, ...]]:
        with limit("gpu:{worker}", timeout=120) as lease:
            return node_id(), lease.names
