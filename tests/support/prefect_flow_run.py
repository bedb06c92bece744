"""One flow-run process of the per-worker example, as a Prefect worker would start it:

    WORKER_ID=gpu-1 python -m tests.support.prefect_flow_run STAMP_DIR BARRIER_N IMAGE_ID...

The example's source is untouched. Its module-level ``time`` is swapped for a clock whose
``sleep(3)`` (the simulated inference, inside ``with concurrency(...)``) writes observer stamps
(tests/support/observer.py) right after it starts and right before it ends: each stamped
interval lies inside a held lease, so the observer can sweep them for over-admission. Before the
first flow run every process waits at a file barrier, so the flow runs really overlap.
"""

from __future__ import annotations

import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from tests.support.observer import StampWriter

INFERENCE_SECONDS = 3


class StampingClock:
    def __init__(self, writer: StampWriter, name: str) -> None:
        self.writer, self.name = writer, name

    def sleep(self, seconds: float) -> None:
        if seconds != INFERENCE_SECONDS:
            time.sleep(seconds)
            return
        lid = uuid.uuid4().hex
        self.writer.write("S", lid, self.name, 1)
        time.sleep(seconds)
        self.writer.write("E", lid, "ok")

    def __getattr__(self, attr: str) -> Any:
        return getattr(time, attr)


def barrier(directory: Path, n: int) -> None:
    (directory / f"ready-{os.getpid()}").touch()
    deadline = time.monotonic() + 600
    while len(list(directory.glob("ready-*"))) < n and time.monotonic() < deadline:
        time.sleep(0.05)


def main(argv: list[str]) -> None:
    stamps, n, images = Path(argv[0]), int(argv[1]), [int(a) for a in argv[2:]]
    from tests.support.examples import per_worker_task_concurrency as example

    worker = example.get_worker_id()
    writer = StampWriter(stamps / f"{os.getpid()}.stamps")
    example.time = StampingClock(writer, f"gpu:{worker}")  # type: ignore[assignment]
    barrier(stamps, n)
    for image in images:
        assert example.process_image(image_id=image) == f"processed-{image}"


if __name__ == "__main__":
    main(sys.argv[1:])
