"""Peer benchmarks (not part of the test run): slotkeeper next to dask.distributed's Semaphore and
Prefect 3's global concurrency limits, on the same workloads. Run ``python -m
tests.benchmarks.bench_peers`` (see its docstring)."""
