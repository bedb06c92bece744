# Prefect's "Per-worker task concurrency" example (PrefectHQ/prefect, examples/
# per_worker_task_concurrency.py, Apache-2.0), kept as published except for ONE line: the import
# of `concurrency` comes from slotkeeper's drop-in instead of prefect.concurrency.sync. Its long
# explanatory comments are shortened; the code is unchanged. tests/test_prefect_dropin.py runs it.
#
# When a worker runs multiple flow runs concurrently, only the ML step may use the worker's GPU,
# at most N at a time per worker: the limit name includes the worker id (`gpu:gpu-1` = 2 slots,
# `gpu:gpu-2` = 2 slots; `slotkeeper create gpu:gpu-1 --slots 2`).

import os
import time

from prefect import flow, get_run_logger, task

from slotkeeper.prefect.concurrency.sync import concurrency


def get_worker_id() -> str:
    """
    Get worker identity from environment.
    Set this when starting the worker:
        WORKER_ID=gpu-1 prefect worker start --pool ml-pool
    """
    return os.getenv("WORKER_ID", "default")


@task
def download_image(image_id: int) -> dict:
    """Download an image from storage. Network-bound, no local resource contention."""
    logger = get_run_logger()
    logger.info(f"Image {image_id}: downloading...")
    time.sleep(1)  # simulate download
    return {"image_id": image_id, "path": f"/tmp/image_{image_id}.jpg"}


@task
def save_results(data: dict) -> str:
    """Save processed results. Fast operation, no limits needed."""
    logger = get_run_logger()
    logger.info(f"Image {data['image_id']}: saving results...")
    time.sleep(0.5)
    return f"processed-{data['image_id']}"


@task
def run_ml_model(data: dict) -> dict:
    """
    Run image through ML model.

    GPU memory is limited—only 1-2 can run at once per worker machine.
    Uses a Global Concurrency Limit scoped to this worker's identity.
    """
    logger = get_run_logger()
    worker_id = get_worker_id()
    image_id = data["image_id"]

    # Limit key includes worker ID: each worker has its own limit
    with concurrency(f"gpu:{worker_id}", occupy=1):
        logger.info(f"Image {image_id}: running ML inference (GPU)...")
        time.sleep(3)  # simulate model inference

    return {**data, "predictions": [0.9, 0.1]}


@flow(log_prints=True)
def process_image(image_id: int = 1) -> str:
    """
    Process an image through the ML pipeline.

    When multiple instances run concurrently on the same worker:
    - download and save tasks overlap freely
    - run_ml_model tasks are limited by the per-worker GPU concurrency limit
    """
    logger = get_run_logger()
    logger.info(f"Processing image {image_id} on worker '{get_worker_id()}'")

    image = download_image(image_id)
    predictions = run_ml_model(image)
    result = save_results(predictions)
    return result


if __name__ == "__main__":
    process_image(image_id=1)
