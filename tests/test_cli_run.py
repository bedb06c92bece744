"""``slotkeeper run NAME... -- CMD`` as real processes: exit codes, lost leases, signals, waiting,
mutual exclusion checked from the commands' own stamps."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from slotkeeper.broker.client import Broker
from tests.support.redisproc import RedisProc
from tests.test_daemon import wait_for

CLI = [sys.executable, "-m", "slotkeeper.cli"]
PY = sys.executable


def run_cmd(url: str, ns: str, *args: str) -> list[str]:
    return [*CLI, "--url", url, "--namespace", ns, "run", *args]


def start(url: str, ns: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        run_cmd(url, ns, *args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def start_logged(url: str, ns: str, log: Path, *args: str) -> subprocess.Popen[str]:
    """Like start(), stderr to a file that the test can read while the process runs."""
    with open(log, "w") as f:
        return subprocess.Popen(
            run_cmd(url, ns, *args), stdout=subprocess.DEVNULL, stderr=f, text=True
        )


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_exit_code_passes_through(redis_server: RedisProc, namespace: str) -> None:
    b = Broker.from_url(redis_server.url, namespace)
    b.create_limit("job", 1)
    p = subprocess.run(
        run_cmd(redis_server.url, namespace, "job", "--", PY, "-c", "import sys; sys.exit(3)"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 3, p.stderr
    p = subprocess.run(
        run_cmd(
            redis_server.url,
            namespace,
            "job",
            "--",
            PY,
            "-c",
            "import os; print(os.environ['SLOTKEEPER_LEASE_NAMES'])",
        ),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0 and p.stdout.strip() == "job"
    snap = b.snapshot("job")
    assert snap.used == 0 and snap.counters.acquired == 2 and snap.counters.released == 2


def test_missing_command_and_separator(redis_server: RedisProc, namespace: str) -> None:
    Broker.from_url(redis_server.url, namespace).create_limit("job", 1)
    p = subprocess.run(
        run_cmd(redis_server.url, namespace, "job", "--", "/no/such/program"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 127 and "Traceback" not in p.stderr
    assert Broker.from_url(redis_server.url, namespace).snapshot("job").used == 0
    p = subprocess.run(
        run_cmd(redis_server.url, namespace, "job", "true"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 2 and "--" in p.stderr
    p = subprocess.run(
        run_cmd(redis_server.url, namespace, "nolimit", "--", "true"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 1 and "does not exist" in p.stderr


def test_lost_lease_stops_the_command(
    redis_server: RedisProc, namespace: str, tmp_path: Path
) -> None:
    b = Broker.from_url(redis_server.url, namespace)
    b.create_limit("job", 1)
    marker = tmp_path / "child.pid"
    child = f"import os, time; open({str(marker)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
    p = start(
        redis_server.url, namespace, "job", "--ttl", "1", "--kill-after", "5", "--", PY, "-c", child
    )
    wait_for(lambda: marker.exists() and marker.read_text(), what="child started")
    child_pid = int(marker.read_text())
    lease_id = b.snapshot("job").holders[0].lease_id
    assert b.revoke(lease_id)
    _, err = p.communicate(timeout=30)
    assert p.returncode == 128 + signal.SIGTERM, err
    assert "lease was lost" in err and "terminating" in err
    wait_for(lambda: not pid_alive(child_pid), what="child gone")


def test_keep_on_lost_lets_the_command_finish(
    redis_server: RedisProc, namespace: str, tmp_path: Path
) -> None:
    b = Broker.from_url(redis_server.url, namespace)
    b.create_limit("job", 1)
    marker, go = tmp_path / "started", tmp_path / "go"
    child = (
        f"import os, time\nopen({str(marker)!r}, 'w').write('x')\n"
        f"while not os.path.exists({str(go)!r}): time.sleep(0.02)\nraise SystemExit(5)"
    )
    log = tmp_path / "stderr"
    p = start_logged(
        redis_server.url,
        namespace,
        log,
        "job",
        "--ttl",
        "1",
        "--keep-on-lost",
        "--",
        PY,
        "-c",
        child,
    )
    wait_for(marker.exists, what="child started")
    assert b.revoke(b.snapshot("job").holders[0].lease_id)
    wait_for(lambda: "keep-on-lost" in log.read_text(), what="the loss noticed")
    assert p.poll() is None  # ... and the command runs on
    go.write_text("x")
    p.wait(30)
    assert p.returncode == 5, log.read_text()


def test_signals_are_forwarded(redis_server: RedisProc, namespace: str, tmp_path: Path) -> None:
    Broker.from_url(redis_server.url, namespace).create_limit("job", 1)
    marker, got = tmp_path / "ready", tmp_path / "got"
    child = (
        "import signal, sys, time\n"
        "def h(s, f):\n"
        f"    open({str(got)!r}, 'a').write(str(s) + '\\n')\n"
        "    if s == signal.SIGTERM: sys.exit(7)\n"
        "signal.signal(signal.SIGTERM, h)\nsignal.signal(signal.SIGUSR1, h)\n"
        f"open({str(marker)!r}, 'w').write('x')\n"
        "while True: time.sleep(0.05)\n"
    )
    p = start(redis_server.url, namespace, "job", "--", PY, "-c", child)
    wait_for(marker.exists, what="child ready")
    p.send_signal(signal.SIGUSR1)
    wait_for(
        lambda: got.exists() and str(int(signal.SIGUSR1)) in got.read_text(),
        what="SIGUSR1 forwarded",
    )
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=30)
    assert p.returncode == 7, err
    assert got.read_text().split() == [str(int(signal.SIGUSR1)), str(int(signal.SIGTERM))]
    assert Broker.from_url(redis_server.url, namespace).snapshot("job").used == 0


def test_mutual_exclusion_from_the_commands_stamps(
    redis_server: RedisProc, namespace: str, tmp_path: Path
) -> None:
    Broker.from_url(redis_server.url, namespace).create_limit("one", 1)
    stamps = tmp_path / "stamps"
    stamps.mkdir()
    child = (
        "import json, os, sys, time\nt0 = time.time()\ntime.sleep(0.15)\n"
        f"open(os.path.join({str(stamps)!r}, str(os.getpid())), 'w').write("
        "json.dumps([t0, time.time()]))\n"
    )
    procs = [start(redis_server.url, namespace, "one", "--", PY, "-c", child) for _ in range(4)]
    for p in procs:
        p.communicate(timeout=60)
        assert p.returncode == 0
    spans = sorted(json.loads(f.read_text()) for f in stamps.iterdir())
    assert len(spans) == 4
    for (_, end), (start_next, _) in zip(spans, spans[1:], strict=False):
        assert end <= start_next, spans


def test_timeout_and_queue_position(
    redis_server: RedisProc, namespace: str, tmp_path: Path
) -> None:
    b = Broker.from_url(redis_server.url, namespace)
    b.create_limit("busy", 1)
    b.acquire(["busy"], "blocker", ttl_ms=60_000, wait=False)
    p = subprocess.run(
        run_cmd(redis_server.url, namespace, "busy", "--timeout", "0.3", "--", "true"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 1 and "no slot" in p.stderr
    assert b.snapshot("busy").n_waiters == 0
    # a waiter shows its place in the queue (forced on: stderr is not a terminal here)
    log = tmp_path / "stderr"
    w = start_logged(redis_server.url, namespace, log, "busy", "--progress", "--", "true")
    wait_for(lambda: "position 1 of 1" in log.read_text(), what="the queue position shown")
    b.release(["busy"], "blocker")
    w.wait(30)
    assert w.returncode == 0, log.read_text()


def test_sigterm_while_waiting_withdraws_the_ticket(
    redis_server: RedisProc, namespace: str
) -> None:
    b = Broker.from_url(redis_server.url, namespace)
    b.create_limit("busy", 1)
    b.acquire(["busy"], "blocker", ttl_ms=60_000, wait=False)
    w = start(redis_server.url, namespace, "busy", "--", "true")
    wait_for(lambda: b.snapshot("busy").n_waiters == 1, what="queued")
    w.send_signal(signal.SIGTERM)
    _, err = w.communicate(timeout=30)
    assert w.returncode == 128 + signal.SIGTERM, err
    assert "Traceback" not in err
    assert b.snapshot("busy").n_waiters == 0
    b.release(["busy"], "blocker")
    assert b.snapshot("busy").counters.acquired == 1  # the withdrawn waiter never got a slot
