"""A local Redis Sentinel setup: one master, one replica, three sentinels, all private processes on
free ports. ``replica_via_proxy=True`` routes the replication link through a TcpProxy so a test can
stall replication on purpose (``setup.link.blackhole = True``)."""

from __future__ import annotations

import contextlib
import secrets
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import redis

from tests.support.proxy import TcpProxy
from tests.support.redisproc import RedisProc, free_port, redis_binary

SERVICE = "mymaster"
DOWN_AFTER_MS = 1000
FAST_SYNC = ["--repl-diskless-sync-delay", "0"]  # default: wait 5 s for more replicas


def wait_until(pred: Any, timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if pred():
                return
        except redis.RedisError as exc:
            last = exc
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what} (last error: {last})")


class SentinelProc:
    def __init__(self, directory: Path, port: int, myid: str) -> None:
        self.port = port
        self.myid = myid
        self.dir = directory
        self.conf = directory / f"sentinel-{self.port}.conf"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, master_port: int, replica_port: int | None, peers: list[SentinelProc]) -> None:
        # Known peers and replica up front: no waiting for discovery (hello messages every 2 s)
        lines = [
            f"port {self.port}",
            "bind 127.0.0.1",
            f"dir {self.dir}",
            f"logfile {self.dir / f'sentinel-{self.port}.log'}",
            f"sentinel myid {self.myid}",
            f"sentinel monitor {SERVICE} 127.0.0.1 {master_port} 2",
            f"sentinel down-after-milliseconds {SERVICE} {DOWN_AFTER_MS}",
            f"sentinel failover-timeout {SERVICE} 4000",
            f"sentinel parallel-syncs {SERVICE} 1",
        ]
        if replica_port is not None:
            lines.append(f"sentinel known-replica {SERVICE} 127.0.0.1 {replica_port}")
        for p in peers:
            if p is not self:
                lines.append(f"sentinel known-sentinel {SERVICE} 127.0.0.1 {p.port} {p.myid}")
        self.conf.write_text("\n".join(lines) + "\n")
        self.proc = subprocess.Popen(
            [redis_binary(), str(self.conf), "--sentinel"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def client(self) -> redis.Redis:
        return redis.Redis(
            host="127.0.0.1", port=self.port, socket_timeout=5, decode_responses=True
        )

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)


class SentinelSetup:
    def __init__(
        self, directory: Path, replica: bool = True, replica_via_proxy: bool = False
    ) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.master = RedisProc(args=FAST_SYNC)
        self.replica: RedisProc | None = None
        self.link: TcpProxy | None = None
        self.want_replica = replica
        self.replica_via_proxy = replica_via_proxy
        self.sentinels: list[SentinelProc] = []

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{SERVICE}"

    def start(self) -> SentinelSetup:
        self.master.start()
        if self.want_replica:
            port = self.master.port
            if self.replica_via_proxy:
                self.link = TcpProxy("127.0.0.1", self.master.port).start()
                port = self.link.port
            self.replica = RedisProc(
                args=[*FAST_SYNC, "--replicaof", "127.0.0.1", str(port)]
            ).start()
            wait_until(self._replica_in_sync, what="replica in sync")
        self.sentinels = [
            SentinelProc(self.dir, free_port(), secrets.token_hex(20)) for _ in range(3)
        ]
        rport = self.replica.port if self.replica is not None else None
        for sp in self.sentinels:
            sp.start(self.master.port, rport, self.sentinels)
        wait_until(self._sentinels_ready, what="sentinels ready")
        return self

    def _replica_in_sync(self) -> bool:
        assert self.replica is not None
        info = self.replica.client().info("replication")
        return info.get("master_link_status") == "up"

    def _sentinels_ready(self) -> bool:
        for s in self.sentinels:
            m = s.client().sentinel_master(SERVICE)
            if int(m["num-other-sentinels"]) != 2:
                return False
            if self.want_replica and int(m["num-slaves"]) != 1:
                return False
        return True

    def master_port(self) -> int:
        for s in self.sentinels:
            with contextlib.suppress(redis.RedisError):
                addr = s.client().sentinel_get_master_addr_by_name(SERVICE)
                if addr:
                    return int(addr[1])
        raise AssertionError("no sentinel answered")

    def failover(self) -> int:
        """SENTINEL FAILOVER (retried until the sentinels accept it); returns the new master port."""
        old = self.master_port()

        def ask() -> bool:
            try:
                self.sentinels[0].client().execute_command("SENTINEL", "FAILOVER", SERVICE)
                return True
            except redis.ResponseError as exc:  # NOGOODSLAVE until the replica's info is fresh
                if "INPROG" in str(exc):
                    return True
                return False

        wait_until(ask, what="SENTINEL FAILOVER accepted")
        wait_until(lambda: self.all_agree_master() not in (None, old), what="failover")
        return self.master_port()

    def all_agree_master(self) -> int | None:
        ports = set()
        for s in self.sentinels:
            addr = s.client().sentinel_get_master_addr_by_name(SERVICE)
            ports.add(int(addr[1]) if addr else None)
        return ports.pop() if len(ports) == 1 else None

    def node(self, port: int) -> RedisProc:
        for n in (self.master, self.replica):
            if n is not None and n.port == port:
                return n
        raise KeyError(port)

    def close(self) -> None:
        for s in self.sentinels:
            s.stop()
        if self.link is not None:
            self.link.close()
        for n in (self.master, self.replica):
            if n is not None:
                n.cleanup()

    def __enter__(self) -> SentinelSetup:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()
