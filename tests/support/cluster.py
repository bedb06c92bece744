"""A local Redis Cluster: three masters (no replicas) on free ports, created with
``redis-cli --cluster create``; helpers to place namespaces on chosen nodes."""

from __future__ import annotations

import shutil
import subprocess
import time

import redis

from tests.support.redisproc import RedisProc, free_port, redis_binary


def redis_cli() -> str:
    found = shutil.which("redis-cli")
    if found:
        return found
    # the embedded extra ships redis-server only; redis-cli sits next to a system redis-server
    sibling = redis_binary().rsplit("/", 1)[0] + "/redis-cli"
    return sibling


class ClusterSetup:
    def __init__(self, masters: int = 3) -> None:
        # the cluster bus gets its own free port (default: port + 10000, which may be taken)
        self.nodes = [
            RedisProc(
                args=[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "2000",
                    "--cluster-port",
                    str(free_port()),
                ]
            )
            for _ in range(masters)
        ]

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def start(self) -> ClusterSetup:
        for n in self.nodes:
            n.start()
        addrs = [f"127.0.0.1:{n.port}" for n in self.nodes]
        subprocess.run(
            [
                redis_cli(),
                "--cluster",
                "create",
                *addrs,
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if all(self._ok(n) for n in self.nodes):
                return self
            time.sleep(0.05)
        raise RuntimeError("cluster did not reach cluster_state:ok")

    @staticmethod
    def _ok(n: RedisProc) -> bool:
        info = n.client().execute_command("CLUSTER", "INFO")
        text = info.decode() if isinstance(info, bytes) else str(info)
        return "cluster_state:ok" in text and "cluster_slots_assigned:16384" in text

    def keyslot(self, key: str) -> int:
        """The slot of a key as the server computes it (CLUSTER KEYSLOT)."""
        return int(self.nodes[0].client().execute_command("CLUSTER", "KEYSLOT", key))

    def owner(self, slot: int) -> RedisProc:
        """The node serving ``slot`` (from CLUSTER SLOTS)."""
        for start, end, primary, *_ in self.nodes[0].client().execute_command("CLUSTER", "SLOTS"):
            if int(start) <= slot <= int(end):
                port = int(primary[1])
                return next(n for n in self.nodes if n.port == port)
        raise KeyError(slot)

    def client(self, n: RedisProc) -> redis.Redis:
        return n.client()

    def close(self) -> None:
        for n in self.nodes:
            n.cleanup()

    def __enter__(self) -> ClusterSetup:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()
