"""Worker-scoped names: ``{worker}`` and ``{host}`` resolve where the body runs.

Worker identity, in order: an explicit setting (``Limiter(worker=...)`` or
``configure(worker=...)``), env ``SLOTKEEPER_WORKER``, the Dask worker's name inside a Dask
task, the Ray node id inside a Ray task or actor, then the host name.
"""

from __future__ import annotations

import os
import re
import socket
import sys

from slotkeeper.broker.errors import InvalidName, InvalidType
from slotkeeper.broker.keys import check_name

ENV_WORKER = "SLOTKEEPER_WORKER"
TEMPLATES = ("{worker}", "{host}")
_PLACEHOLDER = re.compile(r"\{[^{}]*\}")


def host_name() -> str:
    return socket.gethostname() or "localhost"


def dask_worker_name() -> str | None:
    if "distributed" not in sys.modules:
        return None
    try:
        from distributed import get_worker

        return str(get_worker().name)
    except Exception:
        return None


def ray_node_id() -> str | None:
    """Inside a Ray task or actor (not the driver): the hex id of the Ray node running it."""
    if "ray" not in sys.modules:
        return None
    try:
        import ray

        if not ray.is_initialized():
            return None
        ctx = ray.get_runtime_context()
        if ctx.worker.mode != ray.WORKER_MODE:
            return None
        return str(ctx.get_node_id())
    except Exception:
        return None


def worker_name(explicit: str | None = None) -> str:
    return (
        explicit or os.environ.get(ENV_WORKER) or dask_worker_name() or ray_node_id() or host_name()
    )


def check_template(name: object) -> str:
    """Validate a name that may still contain {worker}/{host} templates."""
    if not isinstance(name, str):
        raise InvalidType(f"limit name must be a str, not {type(name).__name__}")
    for ph in _PLACEHOLDER.findall(name):
        if ph not in TEMPLATES:
            raise InvalidName(
                f"limit name {name!r}: unknown template {ph} (use {{worker}} or {{host}})"
            )
    check_name(_PLACEHOLDER.sub("x", name))
    return name


def resolve(name: str, worker: str | None = None) -> str:
    """Substitute templates, then validate the result."""
    if "{" in name:
        name = name.replace("{worker}", worker_name(worker)).replace("{host}", host_name())
    return check_name(name)
