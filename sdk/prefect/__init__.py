"""Prefect 3 integration.

* :class:`ThrottledTaskRunner` (``from slotkeeper.prefect import ThrottledTaskRunner``): throttle
  the tasks of any Prefect task runner by tag (needs ``pip install 'slotkeeper[prefect]'``); see
  :mod:`slotkeeper.prefect.task_runner`.
* Drop-ins for Prefect's global concurrency limits: ``slotkeeper.prefect.concurrency.sync`` and
  ``slotkeeper.prefect.concurrency.asyncio`` (``concurrency``, ``rate_limit``), backed by
  slotkeeper limits instead of a Prefect server. They import without Prefect installed.

The task runner is loaded on first use, so importing this package never needs Prefect.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from slotkeeper.prefect.task_runner import ThrottledTaskRunner


def __getattr__(name: str) -> Any:
    if name == "ThrottledTaskRunner":
        from slotkeeper.prefect.task_runner import ThrottledTaskRunner

        return ThrottledTaskRunner
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["ThrottledTaskRunner"]
