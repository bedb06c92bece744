"""``slotkeeper bench``: slotkeeper side by side with a minimal Lua reference semaphore and the raw
Redis round trip (the floor), on the same Redis and client library, in the same run.

Modules: :mod:`.server` (a private redis-server), :mod:`.reference` (the reference semaphore),
:mod:`.impls` (what a workload drives: slotkeeper, the reference, or a peer), :mod:`.stats`,
:mod:`.workloads` (W1..W5), :mod:`.runner` (one run of the chosen workloads), :mod:`.report`
(the table, the performance targets, JSON).
"""

from slotkeeper.bench.runner import ALL_WORKLOADS, BenchConfig, run_bench

__all__ = ["ALL_WORKLOADS", "BenchConfig", "run_bench"]
