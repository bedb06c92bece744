"""A TCP proxy between a client and Redis that can delay, drop and cut connections on purpose.

    with TcpProxy("127.0.0.1", redis_port) as proxy:
        url = proxy.url                      # point the client here
        proxy.delay = 0.02                   # every chunk waits 20 ms (both directions)
        proxy.cut_reply(b"EVALSHA", 3)       # the next 3 script calls run on Redis, but their
                                             # replies are dropped and the connection is cut
        proxy.cut_request(b"EVALSHA")        # the next script call never reaches Redis (cut)
        proxy.blackhole = True               # swallow everything, keep sockets open (a freeze)
        proxy.paused = True                  # hold everything back, deliver it when unpaused
        proxy.refuse = True                  # accept and close at once (Redis unreachable)
        proxy.cut_all()                      # reset every open connection now
        proxy.accepted                       # connection attempts seen so far

Redis commands travel as RESP arrays, so a whole command is normally one chunk on loopback; the
match is a plain substring test on the chunk. One thread per direction per connection.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from dataclasses import dataclass, field


def _reset(sock: socket.socket) -> None:
    """Drop a connection now: the peer sees it closed or reset, like a broken link. (shutdown()
    first: a bare close() while another thread is blocked in recv() on it would do nothing.)"""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()


@dataclass
class _Rule:
    match: bytes
    left: int
    hits: int = 0


@dataclass
class _Conn:
    client: socket.socket
    server: socket.socket
    cut_pending: bool = False  # a request was forwarded whose reply must be dropped
    closed: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    def close(self) -> None:
        with self.lock:
            if self.closed:
                return
            self.closed = True
        _reset(self.client)
        _reset(self.server)


class TcpProxy:
    def __init__(self, target_host: str, target_port: int, listen_port: int = 0) -> None:
        self.target = (target_host, target_port)
        self.delay = 0.0
        self.blackhole = False
        self.paused = False
        self.refuse = False
        self.accepted = 0
        self.forwarded_requests = 0
        self.cut_replies = 0
        self.cut_requests = 0
        self._lock = threading.Lock()
        self._conns: list[_Conn] = []
        self._reply_rules: list[_Rule] = []
        self._request_rules: list[_Rule] = []
        self._closed = False
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", listen_port))
        self._listener.listen(128)
        self.port = int(self._listener.getsockname()[1])
        self._thread = threading.Thread(target=self._accept_loop, name="proxy-accept", daemon=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    # -- controls -----------------------------------------------------------------------------

    def cut_reply(self, match: bytes = b"", count: int = 1) -> None:
        """The next ``count`` requests containing ``match`` reach Redis; their replies are dropped
        and the connection reset (the client cannot tell whether the command ran)."""
        with self._lock:
            self._reply_rules.append(_Rule(match, count))

    def cut_request(self, match: bytes = b"", count: int = 1) -> None:
        """The next ``count`` requests containing ``match`` are dropped and the connection reset."""
        with self._lock:
            self._request_rules.append(_Rule(match, count))

    def pending_rules(self) -> int:
        with self._lock:
            return sum(r.left for r in self._reply_rules + self._request_rules)

    def cut_all(self) -> int:
        """Reset every open connection; returns how many there were."""
        with self._lock:
            conns, self._conns = self._conns, []
        for c in conns:
            c.close()
        return len(conns)

    def open_connections(self) -> int:
        with self._lock:
            self._conns = [c for c in self._conns if not c.closed]
            return len(self._conns)

    # -- machinery ----------------------------------------------------------------------------

    def start(self) -> TcpProxy:
        self._thread.start()
        return self

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self._listener.close()
        self.cut_all()

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self.accepted += 1
            if self.refuse:
                _reset(client)
                continue
            try:
                server = socket.create_connection(self.target, timeout=2.0)
                server.settimeout(None)
            except OSError:
                _reset(client)  # upstream down: the client sees a reset, as if unreachable
                continue
            for s in (client, server):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = _Conn(client, server)
            with self._lock:
                self._conns.append(conn)
            threading.Thread(target=self._pump_up, args=(conn,), daemon=True).start()
            threading.Thread(target=self._pump_down, args=(conn,), daemon=True).start()

    def _take(self, rules: list[_Rule], chunk: bytes) -> bool:
        with self._lock:
            for r in rules:
                if r.left > 0 and r.match in chunk:
                    r.left -= 1
                    r.hits += 1
                    return True
        return False

    def _hold(self) -> None:
        while self.paused and not self._closed:
            time.sleep(0.002)

    def _pump_up(self, conn: _Conn) -> None:
        """client -> Redis"""
        try:
            while not conn.closed:
                chunk = conn.client.recv(65536)
                if not chunk:
                    break
                if self.blackhole:
                    continue
                self._hold()
                if self.delay:
                    time.sleep(self.delay)
                if self._take(self._request_rules, chunk):
                    with self._lock:
                        self.cut_requests += 1
                    break
                if self._take(self._reply_rules, chunk):
                    conn.cut_pending = True
                conn.server.sendall(chunk)
                with self._lock:
                    self.forwarded_requests += 1
        except OSError:
            pass
        conn.close()

    def _pump_down(self, conn: _Conn) -> None:
        """Redis -> client"""
        try:
            while not conn.closed:
                chunk = conn.server.recv(65536)
                if not chunk:
                    break
                if conn.cut_pending:
                    with self._lock:
                        self.cut_replies += 1
                    break
                if self.blackhole:
                    continue
                self._hold()
                if self.delay:
                    time.sleep(self.delay)
                conn.client.sendall(chunk)
        except OSError:
            pass
        conn.close()
